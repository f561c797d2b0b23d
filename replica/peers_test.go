package replica

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// impostor opens a replication connection to addr from the loopback
// address local (so that a test's Authenticate can tell it from a real
// site), says hello as from at epoch with flags, and returns the
// connection and the answer.
func impostor(t *testing.T, local, addr, from string, epoch uint64, flags uint8) (net.Conn, *bufio.Reader, *Frame) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := WriteFrame(c, &Frame{Kind: FrameHello, Epoch: epoch, From: from, Flags: flags}); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	ack, err := ReadFrame(br, MaxHelloAckLen)
	if err != nil {
		// A refusal may close the connection without an answer.
		return c, br, &Frame{Kind: FrameHelloAck, Err: err.Error()}
	}
	return c, br, ack
}

// mirrorsStill checks that a write at the writer still reaches b in sync
// and that both images are the same.
func mirrorsStill(t *testing.T, tc *testCluster, a *Site, seed uint64) {
	t.Helper()
	if err := a.WriteAt(block(seed, 65536), 0, true); err != nil {
		t.Fatalf("write at the writer after the impostor: %v", err)
	}
	if !tc.c.inSync("b") {
		t.Fatal("b left the in-sync set after the impostor")
	}
	sameFiles(t, tc.sites["a"].img, tc.sites["b"].img)
}

// TestHelloEpochPoison: a hello that names the writer but carries an
// epoch the cluster never committed is refused, leaves the replica's
// epoch alone, and the real writer keeps mirroring to it (issue 12 item
// 6: it used to raise the replica's epoch so that it refused the real
// writer until restarted).
func TestHelloEpochPoison(t *testing.T) {
	tc := newTestCluster(t, 4<<20, "a", "b")
	tc.c.view.InSync = []string{"a", "b"}
	a, b := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	mirrorsStill(t, tc, a, 1)

	for _, ep := range []uint64{1 << 40, ^uint64(0)} {
		_, _, ack := impostor(t, "127.0.0.1", tc.addrs["b"], "a", ep, 0)
		if ack.Err == "" {
			t.Fatalf("hello as the writer at epoch %d accepted: %+v", ep, ack)
		}
		if got, _ := b.recv.Applied(); got > tc.c.view.Epoch {
			t.Fatalf("b's epoch is %d after the hello, the cluster committed %d", got, tc.c.view.Epoch)
		}
	}
	mirrorsStill(t, tc, a, 2)
}

// TestHelloNotTheWriter: a data site that is not the committed writer
// cannot open a stream to a replica, even at the current epoch.
func TestHelloNotTheWriter(t *testing.T) {
	tc := newTestCluster(t, 4<<20, "a", "b", "c")
	tc.c.view.InSync = []string{"a", "b", "c"}
	a, _, _ := tc.start("a"), tc.start("b"), tc.start("c")
	tc.c.setWriter("a")
	waitWriter(t, a)
	mirrorsStill(t, tc, a, 1)
	_, _, ack := impostor(t, "127.0.0.1", tc.addrs["b"], "c", tc.c.view.Epoch, 0)
	if ack.Err == "" {
		t.Fatalf("stream hello from c, not the writer, accepted: %+v", ack)
	}
	mirrorsStill(t, tc, a, 2)
}

// TestHelloAuthenticate: a site's Authenticate sees every hello's name
// before anything else happens; a connection it refuses writes nothing,
// neither as a stream into a replica nor forwarded through the writer.
func TestHelloAuthenticate(t *testing.T) {
	tc := newTestCluster(t, 4<<20, "a", "b")
	tc.c.view.InSync = []string{"a", "b"}
	// Real sites dial from 127.0.0.1; the impostor from 127.0.0.9.
	var asked atomic.Int32
	tc.opts = func(cfg *SiteConfig) {
		cfg.Authenticate = func(c net.Conn, from string) error {
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			asked.Add(1)
			if host != "127.0.0.1" {
				return errors.New("no credential")
			}
			return nil
		}
	}
	a, _ := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	mirrorsStill(t, tc, a, 1)
	before, err := os.ReadFile(tc.sites["b"].img)
	if err != nil {
		t.Fatal(err)
	}

	// As the writer, into the replica.
	c, br, ack := impostor(t, "127.0.0.9", tc.addrs["b"], "a", tc.c.view.Epoch, 0)
	if ack.Err == "" || !strings.Contains(ack.Err, "authenticat") {
		t.Fatalf("unauthenticated stream hello answered %+v", ack)
	}
	WriteFrame(c, &Frame{Kind: FrameWrite, Epoch: tc.c.view.Epoch, Seq: 1 << 30, Offset: 0, Length: 4096, Data: bytes.Repeat([]byte{0xEE}, 4096)})
	if f, err := ReadFrame(br, MaxControlLen); err == nil && f.Kind == FrameAck {
		t.Fatalf("a frame after a refused hello was acknowledged: %+v", f)
	}
	// As b, forwarding through the writer.
	c, br, ack = impostor(t, "127.0.0.9", tc.addrs["a"], "b", tc.c.view.Epoch, FlagForward)
	if ack.Err == "" {
		t.Fatalf("unauthenticated forward hello answered %+v", ack)
	}
	data := bytes.Repeat([]byte{0xEE}, 4096)
	WriteFrame(c, &Frame{Kind: FrameFwdWrite, Epoch: tc.c.view.Epoch, Seq: 1, Offset: 0, Length: 4096, Data: data, CRC: Checksum(data)})
	if f, err := ReadFrame(br, MaxControlLen); err == nil && f.Kind == FrameFwdResult && f.Err == "" {
		t.Fatalf("a forwarded write after a refused hello was taken: %+v", f)
	}
	after, err := os.ReadFile(tc.sites["b"].img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("the impostor changed b's image")
	}
	mirrorsStill(t, tc, a, 2)
	if asked.Load() == 0 {
		t.Fatal("Authenticate was never asked")
	}
}
