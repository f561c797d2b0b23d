package netguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeConn is a connection from addr that records its Close.
type fakeConn struct {
	net.Conn // nil: only the methods below are used
	addr     net.Addr
	mu       sync.Mutex
	closed   bool
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.addr }
func (c *fakeConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}
func (c *fakeConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// fakeListener hands out what the test queues: a connection or an error.
type fakeListener struct {
	next chan any
	done chan struct{}
	once sync.Once
}

func newFakeListener() *fakeListener {
	return &fakeListener{next: make(chan any, 64), done: make(chan struct{})}
}

func (l *fakeListener) Accept() (net.Conn, error) {
	select {
	case v := <-l.next:
		if err, ok := v.(error); ok {
			return nil, err
		}
		return v.(net.Conn), nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *fakeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func from(ip string, port int) *fakeConn {
	return &fakeConn{addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: port}}
}

// acceptN accepts n connections or fails after a deadline.
func acceptN(t *testing.T, l net.Listener, n int) []net.Conn {
	t.Helper()
	var out []net.Conn
	for range n {
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() { c, err := l.Accept(); ch <- res{c, err} }()
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatalf("accept: %v", r.err)
			}
			out = append(out, r.c)
		case <-time.After(5 * time.Second):
			t.Fatalf("accept %d of %d: nothing within 5s", len(out)+1, n)
		}
	}
	return out
}

func TestPerIPCap(t *testing.T) {
	fl := newFakeListener()
	l := Wrap(fl, "test", Limits{MaxConns: 10, MaxConnsPerIP: 2}, nil)
	defer l.Close()
	a1, a2, a3 := from("127.0.0.2", 1), from("127.0.0.2", 2), from("127.0.0.2", 3)
	b1 := from("127.0.0.3", 1)
	for _, c := range []*fakeConn{a1, a2, a3, b1} {
		fl.next <- c
	}
	got := acceptN(t, l, 3)
	if !a3.isClosed() {
		t.Fatal("a third connection from 127.0.0.2 was not closed")
	}
	if got[2].RemoteAddr() != b1.addr {
		t.Fatalf("third accepted connection is from %v, want 127.0.0.3", got[2].RemoteAddr())
	}
	if a1.isClosed() || a2.isClosed() || b1.isClosed() {
		t.Fatal("an admitted connection was closed")
	}
	// A closed connection frees its slot, once however often it is closed.
	got[0].Close()
	got[0].Close()
	a4, a5 := from("127.0.0.2", 4), from("127.0.0.2", 5)
	// A connection from another address after a5 shows that a5 was
	// dealt with.
	c1 := from("127.0.0.4", 1)
	fl.next <- a4
	fl.next <- a5
	fl.next <- c1
	got = acceptN(t, l, 2)
	if a4.isClosed() || got[0].RemoteAddr() != a4.addr {
		t.Fatal("a connection within the per-IP cap after a close was refused")
	}
	if !a5.isClosed() || got[1].RemoteAddr() != c1.addr {
		t.Fatal("a connection over the per-IP cap was not closed")
	}
	if n := l.Open(); n != 4 {
		t.Fatalf("open = %d, want 4", n)
	}
}

// TestPerIPCapIPv6Prefix: IPv6 sources are counted by their /64, so a
// host that takes a new address in its prefix for every connection is
// still one source; another /64 is another source.
func TestPerIPCapIPv6Prefix(t *testing.T) {
	fl := newFakeListener()
	l := Wrap(fl, "test", Limits{MaxConns: 10, MaxConnsPerIP: 2}, nil)
	defer l.Close()
	a1, a2, a3 := from("2001:db8:1:2::1", 1), from("2001:db8:1:2:ffff::9", 2), from("2001:db8:1:2:abcd::3", 3)
	b1 := from("2001:db8:1:3::1", 1)
	for _, c := range []*fakeConn{a1, a2, a3, b1} {
		fl.next <- c
	}
	got := acceptN(t, l, 3)
	if !a3.isClosed() {
		t.Fatal("a third connection from 2001:db8:1:2::/64 was not closed")
	}
	if got[2].RemoteAddr() != b1.addr || b1.isClosed() {
		t.Fatal("a connection from another /64 was refused")
	}
	for in, want := range map[string]string{
		"2001:db8:1:2:ffff::9": "2001:db8:1:2::", "::ffff:10.0.0.1": "10.0.0.1", "::1": "::1", "10.0.0.1": "10.0.0.1",
	} {
		if got := Source(netip.MustParseAddr(in)).String(); got != want {
			t.Errorf("Source(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestPortCap(t *testing.T) {
	fl := newFakeListener()
	l := Wrap(fl, "test", Limits{MaxConns: 3, MaxConnsPerIP: 3}, nil)
	defer l.Close()
	var cs []*fakeConn
	for i := range 5 {
		c := from(fmt.Sprintf("127.0.0.%d", 2+i), 1)
		cs = append(cs, c)
		fl.next <- c
	}
	got := acceptN(t, l, 3)
	next := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		next <- c
	}()
	for deadline := time.Now().Add(5 * time.Second); !cs[3].isClosed() || !cs[4].isClosed(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("connections over the port cap were not closed")
		}
	}
	got[1].Close()
	last := from("127.0.0.9", 1)
	fl.next <- last
	select {
	case c := <-next:
		if c == nil || c.RemoteAddr() != last.addr {
			t.Fatalf("accepted %v after a slot freed, want 127.0.0.9", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing accepted after a slot freed")
	}
}

// TestEMFILEBacksOff: accept errors that pass by themselves are waited
// out with a growing, bounded pause, never returned; a closed listener
// ends a pause at once.
func TestEMFILEBacksOff(t *testing.T) {
	fl := newFakeListener()
	l := Wrap(fl, "test", Limits{MaxConns: 10, MaxConnsPerIP: 10}, nil)
	var waits []time.Duration
	l.wait = func(d time.Duration, done <-chan struct{}) bool {
		waits = append(waits, d)
		return true
	}
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	for range 10 {
		fl.next <- emfile
	}
	fl.next <- &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.ENFILE)}
	c := from("127.0.0.2", 1)
	fl.next <- c
	got := acceptN(t, l, 1)
	if got[0].RemoteAddr() != c.addr {
		t.Fatal("the connection after the errors was not returned")
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000}
	if len(waits) != len(want) {
		t.Fatalf("waited %d times (%v), want %d", len(waits), waits, len(want))
	}
	for i, w := range want {
		if waits[i] != w*time.Millisecond {
			t.Fatalf("pause %d = %v, want %v (all: %v)", i, waits[i], w*time.Millisecond, waits)
		}
	}
	// Success resets the pause.
	fl.next <- emfile
	fl.next <- from("127.0.0.2", 2)
	acceptN(t, l, 1)
	if last := waits[len(waits)-1]; last != minBackoff {
		t.Fatalf("pause after a success = %v, want %v", last, minBackoff)
	}

	// A permanent error is returned.
	fl.next <- errors.New("listener broke")
	if _, err := l.Accept(); err == nil || err.Error() != "listener broke" {
		t.Fatalf("permanent error: got %v", err)
	}

	// Close during a real pause returns promptly.
	paused := make(chan struct{})
	l.wait = func(_ time.Duration, done <-chan struct{}) bool {
		close(paused)
		return sleep(time.Hour, done)
	}
	fl.next <- emfile
	errc := make(chan error, 1)
	go func() { _, err := l.Accept(); errc <- err }()
	<-paused
	l.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("accept after close: %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

// TestRealTCP: on a real socket the wrapped connection still offers what
// the iSCSI target looks for, and refused clients see the close.
func TestRealTCP(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Wrap(inner, "test", Limits{MaxConns: 4, MaxConnsPerIP: 1}, nil)
	defer l.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	c1, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	var s1 net.Conn
	select {
	case s1 = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("first connection not accepted")
	}
	defer s1.Close()
	if _, ok := s1.(syscall.Conn); !ok {
		t.Fatal("guarded TCP connection lost SyscallConn")
	}
	if _, ok := s1.(interface{ SetNoDelay(bool) error }); !ok {
		t.Fatal("guarded TCP connection lost SetNoDelay")
	}
	// The second from the same address is closed by the server.
	c2, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c2.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatalf("second connection from one address: read %d, %v; want it closed", n, err)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("second connection from one address was left open")
	}
	// writev still reaches the socket through the wrapper.
	bufs := net.Buffers{[]byte("ab"), []byte("cd")}
	if _, err := bufs.WriteTo(s1); err != nil {
		t.Fatal(err)
	}
	c1.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 4)
	if _, err := c1.Read(b[:4]); err != nil || string(b) != "abcd" {
		t.Fatalf("read %q, %v", b, err)
	}
}

func TestClamp(t *testing.T) {
	if got := (Limits{MaxConns: 1024, MaxConnsPerIP: 256}).Clamp(1024); got.MaxConns != 128 || got.MaxConnsPerIP != 128 {
		t.Fatalf("clamp to 1024 descriptors: %+v", got)
	}
	if got := (Limits{MaxConns: 1024, MaxConnsPerIP: 256}).Clamp(20000); got.MaxConns != 1024 || got.MaxConnsPerIP != 256 {
		t.Fatalf("clamp to 20000 descriptors: %+v", got)
	}
}
