package raftlog

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestUnprovenConn: an accepted connection is cut when it has not been
// answered within its bound, even if it trickles bytes; once answered it
// is left alone however long it idles.
func TestUnprovenConn(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := newUnprovenConn(a, 100*time.Millisecond)
	go func() {
		for range 10 {
			if _, err := b.Write([]byte{1}); err != nil {
				return
			}
			time.Sleep(30 * time.Millisecond) // a trickle, each byte within the bound
		}
	}()
	start := time.Now()
	_, err := io.Copy(io.Discard, c)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("unanswered connection: %v, want a deadline error", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("unanswered connection cut after %v, want about 100ms", el)
	}

	a2, b2 := net.Pipe()
	defer b2.Close()
	c = newUnprovenConn(a2, 100*time.Millisecond)
	go func() {
		b2.Write([]byte{1})
		io.ReadFull(b2, make([]byte, 1))
		time.Sleep(300 * time.Millisecond) // idle past the bound after the answer
		b2.Write([]byte{2})
	}()
	buf := make([]byte, 1)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte{9}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(buf); err != nil || buf[0] != 2 {
		t.Fatalf("answered connection after idling: %v", err)
	}
}
