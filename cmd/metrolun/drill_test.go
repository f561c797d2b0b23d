package main

import (
	"testing"
	"time"
)

func TestParseScratch(t *testing.T) {
	off, n, err := parseScratch("100GiB:4MiB")
	if err != nil || off != 100<<30 || n != 4<<20 {
		t.Fatalf("100GiB:4MiB = %d, %d, %v", off, n, err)
	}
	for _, bad := range []string{"", "4MiB", "x:4MiB", "1GiB:", "1GiB:0", "-1:4MiB"} {
		if _, _, err := parseScratch(bad); err == nil {
			t.Errorf("--scratch %q accepted", bad)
		}
	}
}

// TestStall: the longest time without an acknowledged write runs from the
// action (or the last write acknowledged after it) to the first write
// acknowledged after it; writes after the step's effect was seen do not
// count.
func TestStall(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	st := &drillStep{at: 100 * time.Millisecond, done: 900 * time.Millisecond}
	gap, from, to := stall(ms(10, 90, 105, 110, 800, 810, 950, 5000), st)
	if gap != 690*time.Millisecond || from != 110*time.Millisecond || to != 800*time.Millisecond {
		t.Fatalf("stall %v from %v to %v, want 690ms from 110ms to 800ms", gap, from, to)
	}
	// Nothing acknowledged between the action and the effect.
	gap, from, to = stall(ms(50, 1000, 1001), st)
	if gap != 900*time.Millisecond || from != 100*time.Millisecond || to != time.Second {
		t.Fatalf("stall %v from %v to %v, want 900ms from the action to 1s", gap, from, to)
	}
}

func TestErrKind(t *testing.T) {
	a := errKind("scsi: op 0x8a: CHECK CONDITION, sense key 0x2 (NOT READY), ASC/ASCQ 0x04/0x0c")
	b := errKind("scsi: op 0x88: CHECK CONDITION, sense key 0x2 (NOT READY), ASC/ASCQ 0x04/0x0c")
	if a != b {
		t.Fatalf("a read and a write refused alike are of two kinds: %q, %q", a, b)
	}
	c := errKind("connect: iscsi: dial 127.0.0.2:3260 (not sent): connection refused")
	d := errKind("connect: iscsi: dial 127.0.0.1:3261 (not sent): connection refused")
	if c != d {
		t.Fatalf("%q != %q", c, d)
	}
}
