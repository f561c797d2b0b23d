package proxy

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// echo starts an echo server on loopback and returns its address.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func start(t *testing.T) (*Proxy, net.Conn) {
	t.Helper()
	p, err := New("127.0.0.1:0", echo(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return p, c
}

// roundTrip sends msg and reads the echo, with a deadline.
func roundTrip(c net.Conn, msg []byte, deadline time.Duration) ([]byte, error) {
	c.SetDeadline(time.Now().Add(deadline))
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	return got, err
}

func TestForwardsBytes(t *testing.T) {
	_, c := start(t)
	msg := bytes.Repeat([]byte("metrolun"), 100000)
	got, err := roundTrip(c, msg, 10*time.Second)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the proxy: err=%v equal=%v", err, bytes.Equal(got, msg))
	}
}

// Latency is a lower bound: whatever the machine's load, a round trip
// through 2 x 40 ms cannot take less than 80 ms.
func TestLatency(t *testing.T) {
	p, c := start(t)
	p.Set(Shape{Latency: 40 * time.Millisecond}, Shape{Latency: 40 * time.Millisecond})
	for i := 0; i < 3; i++ {
		start := time.Now()
		if _, err := roundTrip(c, []byte("ping"), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if rtt := time.Since(start); rtt < 80*time.Millisecond {
			t.Fatalf("round trip %v with 2 x 40 ms added", rtt)
		}
	}
	// Back to no delay: the next round trip is not held.
	p.Set(Shape{}, Shape{})
	if _, err := roundTrip(c, []byte("ping"), 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// Bandwidth is a lower bound on time too: 1 MiB at 2 MiB/s each way
// takes at least about half a second (minus the limiter's first burst).
func TestBandwidthCap(t *testing.T) {
	p, c := start(t)
	p.Set(Shape{Bandwidth: 2 << 20}, Shape{})
	msg := bytes.Repeat([]byte{1}, 1<<20)
	start := time.Now()
	if _, err := roundTrip(c, msg, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("1 MiB through a 2 MiB/s cap took %v", d)
	}
}

func TestPartitionAndHeal(t *testing.T) {
	p, c := start(t)
	p.Partition(true, false)
	// Nothing arrives while the forward direction is cut.
	if _, err := roundTrip(c, []byte("lost?"), 300*time.Millisecond); err == nil {
		t.Fatal("data crossed a partition")
	}
	p.Partition(false, false)
	// After the heal the held bytes arrive, in order.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "lost?" {
		t.Fatalf("after heal: %q %v", got, err)
	}
	// Back direction only: requests arrive, answers do not.
	p.Partition(false, true)
	if _, err := roundTrip(c, []byte("x"), 300*time.Millisecond); err == nil {
		t.Fatal("answer crossed a one-way partition")
	}
	p.Partition(false, false)
}

func TestPartitionHoldsNewConnections(t *testing.T) {
	p, err := New("127.0.0.1:0", echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Partition(true, true)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(c, []byte("hi"), 300*time.Millisecond); err == nil {
		t.Fatal("a new connection got through a partition")
	}
	p.Partition(false, false)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 2)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hi" {
		t.Fatalf("after heal: %q %v", got, err)
	}
}

func TestReset(t *testing.T) {
	p, c := start(t)
	if _, err := roundTrip(c, []byte("a"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Reset()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection survived a reset")
	}
	// New connections still work.
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := roundTrip(c2, []byte("b"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// Close returns promptly even with a connection stuck in a partition.
func TestCloseDuringPartition(t *testing.T) {
	p, c := start(t)
	p.Partition(true, true)
	c.Write([]byte("stuck"))
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung on a partitioned connection")
	}
}
