package target

import (
	"fmt"
	"testing"
)

func newTestSession(qd int, cmdSN uint32) *session {
	lim := DefaultLimits()
	lim.QueueDepth = qd
	srv := NewServer(Config{Limits: lim})
	return newSession(srv, nil, Params{InitiatorName: "iqn.i", MaxConnections: 1}, [6]byte{1}, 1, cmdSN)
}

// serialGE is RFC 1982 comparison for 32-bit sequence numbers.
func serialGE(a, b uint32) bool { return int32(a-b) >= 0 }

func TestCmdSNWindow(t *testing.T) {
	for _, start := range []uint32{0, 1000, 0xfffffffe, 0x7ffffffe} {
		t.Run(fmt.Sprintf("start=%#x", start), func(t *testing.T) {
			s := newTestSession(4, start)
			exp, max := s.window()
			if exp != start || max != start+3 {
				t.Fatalf("initial window [%#x,%#x], want [%#x,%#x]", exp, max, start, start+3)
			}
			// RFC 7143 4.2.2.1: below ExpCmdSN (a duplicate) and beyond
			// MaxCmdSN are outside the window and dropped.
			if s.admit(start-1, false) {
				t.Fatal("CmdSN below ExpCmdSN admitted")
			}
			if s.admit(start+4, false) {
				t.Fatal("CmdSN beyond MaxCmdSN admitted")
			}
			if !s.admit(start, false) || !s.admit(start+1, false) {
				t.Fatal("in-window CmdSN refused")
			}
			if s.admit(start+1, false) {
				t.Fatal("the same CmdSN admitted twice")
			}
			exp, _ = s.window()
			if exp != start+2 {
				t.Fatalf("ExpCmdSN %#x, want %#x", exp, start+2)
			}
			// Immediate commands do not advance ExpCmdSN.
			if !s.admit(exp, true) {
				t.Fatal("immediate command refused")
			}
			if e2, _ := s.window(); e2 != exp {
				t.Fatal("immediate command advanced ExpCmdSN")
			}
			s.done()
			// MaxCmdSN never moves backwards and opens as commands finish.
			lastMax := max
			next := exp
			for i := 0; i < 50; i++ {
				if s.inWindow(next) {
					if !s.admit(next, false) {
						t.Fatalf("CmdSN %#x in window but refused", next)
					}
					next++
				}
				if i%3 != 0 {
					s.done()
				}
				e, m := s.window()
				if !serialGE(m, lastMax) {
					t.Fatalf("MaxCmdSN went back from %#x to %#x", lastMax, m)
				}
				if !serialGE(m+1, e) {
					t.Fatalf("MaxCmdSN %#x below ExpCmdSN-1 (%#x)", m, e)
				}
				lastMax = m
			}
		})
	}
}

func TestCmdSNWindowClosed(t *testing.T) {
	// RFC 7143 4.2.2.1: the target MUST silently ignore any non-immediate
	// command outside [ExpCmdSN, MaxCmdSN]; a full queue shows as
	// MaxCmdSN = ExpCmdSN - 1.
	s := newTestSession(2, 10)
	if !s.admit(10, false) || !s.admit(11, false) {
		t.Fatal("in-window commands refused")
	}
	exp, max := s.window()
	if exp != 12 || max != 11 {
		t.Fatalf("window [%d,%d], want closed [12,11]", exp, max)
	}
	if s.inWindow(12) {
		t.Fatal("inWindow(12) with the window closed")
	}
	if s.admit(12, false) {
		t.Fatal("CmdSN 12 admitted beyond MaxCmdSN 11")
	}
}
