package target

import (
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
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
	deadline := time.Now().Add(10 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func readAll(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	return buf
}

func TestPollReader(t *testing.T) {
	if maxPollers() < 1 {
		t.Skip("one CPU: readers never poll")
	}
	// A window long enough for a busy (or race-instrumented) test to
	// tell "within the window" from "after it".
	defer func(w time.Duration) { pollWindow = w }(pollWindow)
	pollWindow = 200 * time.Millisecond
	client, server := tcpPair(t)
	r := newPollReader(server)
	if r.rc == nil {
		t.Fatal("no raw connection on a TCP socket")
	}

	// Data already there, read while polling: returned, slot given back.
	client.Write([]byte("command"))
	r.answeredAt(time.Now())
	if got := readAll(t, r, 7); string(got) != "command" {
		t.Fatalf("read %q", got)
	}
	if n := pollers.Load(); n != 0 {
		t.Fatalf("%d pollers after a read", n)
	}
	if !r.poll {
		t.Fatal("a command right after its answer turned polling off")
	}

	// Nothing comes within the window: the reader gives its slot back and
	// waits in the netpoller, and still gets what comes later.
	r.answeredAt(time.Now())
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 4)
		n, _ := io.ReadFull(r, buf)
		got <- buf[:n]
	}()
	for end := time.Now().Add(10 * time.Second); pollers.Load() == 0; {
		if time.Now().After(end) {
			t.Fatal("the reader did not start polling")
		}
		runtime.Gosched()
	}
	for end := time.Now().Add(10 * time.Second); pollers.Load() != 0; {
		if time.Now().After(end) {
			t.Fatal("the reader kept polling past its window")
		}
		runtime.Gosched()
	}
	client.Write([]byte("late"))
	if b := <-got; string(b) != "late" {
		t.Fatalf("read %q after the window", b)
	}

	// A command long after its answer: no polling for the next one.
	r.answeredAt(time.Now().Add(-time.Second))
	client.Write([]byte("x"))
	readAll(t, r, 1)
	if r.poll {
		t.Fatal("a slow initiator left polling on")
	}
	r.answeredAt(time.Now())
	if !r.until.IsZero() {
		t.Fatal("polling armed although it is off")
	}
	// A quick one turns it on again.
	client.Write([]byte("y"))
	readAll(t, r, 1)
	if !r.poll {
		t.Fatal("a quick initiator did not turn polling back on")
	}

	// The end of the stream while polling.
	r.answeredAt(time.Now())
	client.Close()
	if _, err := r.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read after close: %v, want EOF", err)
	}
	if n := pollers.Load(); n != 0 {
		t.Fatalf("%d pollers at the end", n)
	}
}

// TestPollReaderLimit: no more readers poll at once than maxPollers.
func TestPollReaderLimit(t *testing.T) {
	max := maxPollers()
	for range max {
		if !takePoller() {
			t.Fatal("a free polling slot was refused")
		}
	}
	defer pollers.Add(-max)
	if takePoller() {
		pollers.Add(-1)
		t.Fatalf("more than %d readers may poll", max)
	}
	// A reader without a slot reads as usual.
	client, server := tcpPair(t)
	r := newPollReader(server)
	r.answeredAt(time.Now())
	client.Write([]byte("ok"))
	if got := readAll(t, r, 2); string(got) != "ok" {
		t.Fatalf("read %q", got)
	}
}
