package replica

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/metrolun/metrolun/internal/pollslot"
)

// loopPair returns both ends of a loopback TCP connection.
func loopPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// tlsPair is loopPair under TLS (a throwaway self-signed certificate),
// handshake done.
func tlsPair(t *testing.T) (client, server *tls.Conn) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "poll"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"poll"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	c, s := loopPair(t)
	client = tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "poll"})
	server = tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return client, server
}

// pollTestWindow makes pollWindow long enough for a busy (or
// race-instrumented) test to tell "within the window" from "after it".
func pollTestWindow(t *testing.T) {
	if pollslot.Max() < 1 {
		t.Skip("one CPU: links never poll")
	}
	w, y := pollWindow, yieldedLong
	// A yield that lets the race detector's goroutines run is not a
	// crowded machine here (TestPollConnCrowded tests that).
	pollWindow, yieldedLong = 5*time.Second, time.Hour
	crowdedUntil.Store(0)
	t.Cleanup(func() { pollWindow, yieldedLong = w, y; crowdedUntil.Store(0) })
}

func readN(t *testing.T, r io.Reader, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPollConnPolls: an expected read polls and finds bytes that come
// while it polls; an unexpected one does not poll; the slot is given
// back.
func TestPollConnPolls(t *testing.T) {
	pollTestWindow(t)
	client, server := loopPair(t)
	pc := newPollConn(server)
	if pc.rc == nil || pc.layered {
		t.Fatalf("TCP socket: rc %v, layered %v", pc.rc, pc.layered)
	}
	client.Write([]byte("one"))
	if got := readN(t, pc, 3); got != "one" || pc.polls != 0 {
		t.Fatalf("unexpected read: %q, %d polls", got, pc.polls)
	}
	pc.expect(time.Now())
	go client.Write([]byte("two"))
	if got := readN(t, pc, 3); got != "two" || pc.polls != 1 || pc.hits != 1 {
		t.Fatalf("expected read: %q, %d polls, %d hits", got, pc.polls, pc.hits)
	}
	if !pc.pays.Load() || pc.expected.Load() != 0 {
		t.Fatalf("after a prompt answer: pays %v, expected %v", pc.pays.Load(), pc.expected.Load())
	}
	if n := pollslot.InUse(); n != 0 {
		t.Fatalf("%d poll slots taken after the read", n)
	}
	// The end of the stream ends a polled read too.
	pc.expect(time.Now())
	client.Close()
	if n, err := pc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("polled read at the end: %d, %v", n, err)
	}
}

// TestPollConnBound: with every slot of the process taken, an expected
// read does not poll; it reads as usual.
func TestPollConnBound(t *testing.T) {
	pollTestWindow(t)
	client, server := loopPair(t)
	pc := newPollConn(server)
	taken := 0
	for pollslot.Take() {
		taken++
	}
	defer func() {
		for range taken {
			pollslot.Release()
		}
	}()
	if int32(taken) != pollslot.Max() {
		t.Fatalf("took %d slots, max %d", taken, pollslot.Max())
	}
	pc.expect(time.Now())
	client.Write([]byte("x"))
	if got := readN(t, pc, 1); got != "x" || pc.polls != 0 {
		t.Fatalf("read with no slot free: %q, %d polls", got, pc.polls)
	}
}

// TestPollConnLearns: bytes that came later than twice the window after
// they were expected stop the polling; bytes that come in time, on a
// read that did not poll, start it again.
func TestPollConnLearns(t *testing.T) {
	pollTestWindow(t)
	client, server := loopPair(t)
	pc := newPollConn(server)
	client.Write([]byte("late"))
	pc.expect(time.Now().Add(-3 * pollWindow)) // as if it came late
	if got := readN(t, pc, 4); got != "late" {
		t.Fatalf("read %q", got)
	}
	if pc.pays.Load() {
		t.Fatal("polling still pays after a late answer")
	}
	pc.expect(time.Now())
	client.Write([]byte("soon"))
	if got := readN(t, pc, 4); got != "soon" || pc.polls != 0 {
		t.Fatalf("read after a late answer: %q, %d polls (want none)", got, pc.polls)
	}
	if !pc.pays.Load() {
		t.Fatal("a prompt answer did not make polling pay again")
	}
	pc.expect(time.Now())
	go client.Write([]byte("poll"))
	if got := readN(t, pc, 4); got != "poll" || pc.polls != 1 {
		t.Fatalf("read %q, %d polls (want 1)", got, pc.polls)
	}
}

// TestPollConnTLS: under TLS the socket beneath is polled, what the TLS
// layer holds already (two records read at once) is returned without
// waiting for the window, and the bytes are the plaintext.
func TestPollConnTLS(t *testing.T) {
	pollTestWindow(t)
	client, server := tlsPair(t)
	pc := newPollConn(server)
	if pc.rc == nil || !pc.layered {
		t.Fatalf("TLS over TCP: rc %v, layered %v", pc.rc, pc.layered)
	}
	// Two records on the socket before the first read: it takes both
	// off the socket and returns the first.
	client.Write([]byte("first"))
	client.Write([]byte("second"))
	waitRecords(t, server.NetConn(), 2)
	if got := readN(t, pc, 5); got != "first" {
		t.Fatalf("read %q", got)
	}
	start := time.Now()
	pc.expect(start)
	if got := readN(t, pc, 6); got != "second" {
		t.Fatalf("read %q", got)
	}
	if pc.polls != 1 || pc.hits != 1 {
		t.Fatalf("%d polls, %d hits; want the held record at once", pc.polls, pc.hits)
	}
	if time.Since(start) >= pollWindow {
		t.Fatal("waited out the window for a record the TLS layer held")
	}
	pc.expect(time.Now())
	go client.Write([]byte("third"))
	if got := readN(t, pc, 5); got != "third" || pc.polls != 2 || pc.hits != 2 {
		t.Fatalf("read %q, %d polls, %d hits", got, pc.polls, pc.hits)
	}
	if n := pollslot.InUse(); n != 0 {
		t.Fatalf("%d poll slots taken", n)
	}
}

// waitRecords waits until n whole TLS records are on c's socket.
func waitRecords(t *testing.T, c net.Conn, n int) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for end := time.Now().Add(10 * time.Second); ; {
		var got int
		rc.Control(func(fd uintptr) {
			got, _, _ = syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		})
		whole, at := 0, 0
		for at+5 <= got {
			at += 5 + (int(buf[at+3])<<8 | int(buf[at+4]))
			if at <= got {
				whole++
			}
		}
		if whole >= n {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%d of %d records arrived", whole, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPollConnKick: a kickable reader waiting in the netpoller is woken
// by kick and polls; the kick's deadline is never seen as an error.
func TestPollConnKick(t *testing.T) {
	pollTestWindow(t)
	client, server := tlsPair(t)
	pc := newPollConn(server)
	waits := func() bool {
		pc.kmu.Lock()
		defer pc.kmu.Unlock()
		return pc.waiting
	}
	got := make(chan string, 1)
	go func() {
		pc.atFrame()
		b := make([]byte, 4)
		_, err := io.ReadFull(pc, b)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
	}()
	for end := time.Now().Add(10 * time.Second); !waits(); {
		if time.Now().After(end) {
			t.Fatal("the reader never waited")
		}
		time.Sleep(time.Millisecond)
	}
	pc.kick()
	// The kicked reader polls: it holds a slot until the bytes come.
	for end := time.Now().Add(10 * time.Second); pollslot.InUse() == 0; {
		if time.Now().After(end) {
			t.Fatal("the kicked reader did not poll")
		}
		time.Sleep(time.Millisecond)
	}
	client.Write([]byte("ack!"))
	if s := <-got; s != "ack!" {
		t.Fatalf("kicked read: %q", s)
	}
	if pc.polls != 1 || pc.hits != 1 {
		t.Fatalf("%d polls, %d hits", pc.polls, pc.hits)
	}
	// A kick when polling does not pay leaves the reader waiting.
	pc.pays.Store(false)
	go func() {
		pc.atFrame()
		b := make([]byte, 4)
		_, err := io.ReadFull(pc, b)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
	}()
	for end := time.Now().Add(10 * time.Second); !waits(); {
		if time.Now().After(end) {
			t.Fatal("the reader never waited")
		}
		time.Sleep(time.Millisecond)
	}
	pc.kick()
	if !waits() {
		t.Fatal("kicked although polling does not pay")
	}
	client.Write([]byte("more"))
	if s := <-got; s != "more" {
		t.Fatalf("read: %q", s)
	}
}

// TestPollConnCrowded: a poll whose yield gave the CPU away for long
// ends, and then no link polls or kicks until the backoff is over.
func TestPollConnCrowded(t *testing.T) {
	pollTestWindow(t)
	yieldedLong = time.Millisecond
	y := yield
	slow := make(chan struct{}, 1)
	yield = func() {
		select {
		case <-slow:
			time.Sleep(5 * time.Millisecond) // another thread ran
		default:
			runtime.Gosched()
		}
	}
	defer func() { yield = y }()
	client, server := loopPair(t)
	pc := newPollConn(server)

	slow <- struct{}{}
	pc.expect(time.Now())
	go func() {
		// After the slow yield: the poll must have given up by then.
		for !crowded(time.Now()) {
			runtime.Gosched()
		}
		client.Write([]byte("a"))
	}()
	if got := readN(t, pc, 1); got != "a" || pc.polls != 1 || pc.hits != 0 || pc.crowded != 1 {
		t.Fatalf("read %q: %d polls, %d hits, %d crowded; want the poll to give up", got, pc.polls, pc.hits, pc.crowded)
	}
	if !crowded(time.Now()) {
		t.Fatal("no backoff after a crowded poll")
	}
	pc.expect(time.Now())
	client.Write([]byte("b"))
	if got := readN(t, pc, 1); got != "b" || pc.polls != 1 {
		t.Fatalf("read %q: %d polls; want none during the backoff", got, pc.polls)
	}
	crowdedUntil.Store(0)
	pc.expect(time.Now())
	go client.Write([]byte("c"))
	if got := readN(t, pc, 1); got != "c" || pc.polls != 2 {
		t.Fatalf("read %q: %d polls; want one after the backoff", got, pc.polls)
	}
}

// TestLinkPollsForWaitedAcks: the writer's link expects (and polls for)
// an ack only for frames someone waits on, not for a forwarded
// operation's reference, whose ack nobody waits for.
func TestLinkPollsForWaitedAcks(t *testing.T) {
	pollTestWindow(t)
	client, server := loopPair(t)
	pc := newPollConn(client)
	l := NewLink(client, bufio.NewReader(pc), pc, nil, nil)
	defer l.Close()
	br := bufio.NewReader(server)
	l.Send(&Frame{Kind: FrameWrite, Epoch: 1, Seq: 1, Flags: FlagRef, Ref: 7, Length: 4096})
	if _, err := ReadFrame(br, MaxDataFrameLen); err != nil {
		t.Fatal(err)
	}
	if n := l.nwaited.Load(); n != 0 || pc.expected.Load() != 0 {
		t.Fatalf("after a reference: %d waited, expected %d; want none", n, pc.expected.Load())
	}
	ch := l.Send(&Frame{Kind: FrameWrite, Epoch: 1, Seq: 2, Data: []byte("data"), CRC: Checksum([]byte("data")), Length: 4})
	if _, err := ReadFrame(br, MaxDataFrameLen); err != nil {
		t.Fatal(err)
	}
	if n := l.nwaited.Load(); n != 1 || pc.expected.Load() == 0 {
		t.Fatalf("after a write: %d waited, expected %d; want one, due", n, pc.expected.Load())
	}
	if err := WriteFrame(server, &Frame{Kind: FrameAck, Epoch: 1, Seq: 2}); err != nil {
		t.Fatal(err)
	}
	if a := <-ch; a.Err != nil {
		t.Fatal(a.Err)
	}
	if n := l.nwaited.Load(); n != 0 {
		t.Fatalf("%d waited after the ack", n)
	}
}
