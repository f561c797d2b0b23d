package raftlog

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// TestIdleConn: an accepted connection that sends nothing is cut after
// the first-byte bound; one that has spoken gets the longer idle bound,
// renewed by every read.
func TestIdleConn(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := &idleConn{Conn: a, first: 50 * time.Millisecond, idle: 400 * time.Millisecond}
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent connection: %v, want a deadline error", err)
	}
	if el := time.Since(start); el > 300*time.Millisecond {
		t.Fatalf("silent connection cut after %v, want about 50ms", el)
	}

	a, b = net.Pipe()
	defer b.Close()
	c = &idleConn{Conn: a, first: 50 * time.Millisecond, idle: 400 * time.Millisecond}
	go func() {
		b.Write([]byte{1})
		time.Sleep(150 * time.Millisecond) // longer than the first-byte bound, shorter than idle
		b.Write([]byte{2})
	}()
	buf := make([]byte, 1)
	for i := range 2 {
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("read %d of a connection that has spoken: %v", i, err)
		}
	}
	start = time.Now()
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle connection: %v, want a deadline error", err)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("idle connection cut after %v, want about 400ms", el)
	}
}
