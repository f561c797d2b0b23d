package target

import (
	"fmt"
	"strings"
	"testing"
)

// TestTransitionBusyForSinglePath: while the volume is in transition, an
// initiator that SinglePath says has no other path gets BUSY for a
// retry-safe command (which QEMU's driver retries, where NOT READY fails
// the VM's I/O); a multipath initiator keeps the sense data its ALUA
// handler acts on, and so does COMPARE AND WRITE, which could answer
// differently if run twice, and a standby or unavailable path, which does
// not end by itself. A write whose outcome is unknown keeps ABORTED
// COMMAND for everyone: BUSY would say it was not carried out.
func TestTransitionBusyForSinglePath(t *testing.T) {
	vol := newMemVolume(1 << 20)
	e := newLUEnv(t, LUNConfig{Volume: vol, Thin: true})
	busies := 0
	e.lu.singlePath = func(initiator, isid string) bool {
		return strings.HasPrefix(initiator, "iqn.single") && isid == hex6([6]byte{0x80, 0, 0, 0, 0, 1})
	}
	e.lu.onBusy = func() { busies++ }
	single, multi := e.nexus("iqn.single-qemu", 1), e.nexus("iqn.multi-linux", 2)
	tur := []byte{0, 0, 0, 0, 0, 0}
	for _, n := range []*Nexus{single, multi} {
		for i := 0; e.do(n, tur, nil).status != statusGood; i++ { // the power-on UA first
			if i == 4 {
				t.Fatal("TEST UNIT READY keeps failing")
			}
		}
	}
	write10 := []byte{0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0}
	read16 := []byte{0x88, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0}
	unmapCDB := []byte{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}
	unmapParams := make([]byte, 24)
	unmapParams[1], unmapParams[3] = 22, 16 // one descriptor: LBA 0, 1 block
	unmapParams[8+11] = 1
	caw := []byte{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0}
	sync10 := []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}

	vol.mu.Lock()
	vol.state = PathTransitioning
	vol.mu.Unlock()
	for _, c := range []struct {
		name string
		cdb  []byte
		out  []byte
	}{
		{"WRITE(10)", write10, make([]byte, 512)},
		{"READ(16)", read16, nil},
		{"UNMAP", unmapCDB, unmapParams},
		{"SYNCHRONIZE CACHE(10)", sync10, nil},
	} {
		if r := e.do(single, c.cdb, c.out); r.status != statusBusy || len(r.sense) != 0 {
			t.Errorf("%s from a single-path initiator in transition: got %v, want BUSY", c.name, r)
		}
		wantSense(t, e.do(multi, c.cdb, c.out), senseNotReady, ascNotReadyTransition, c.name+" from a multipath initiator in transition")
	}
	wantSense(t, e.do(single, caw, make([]byte, 1024)), senseNotReady, ascNotReadyTransition, "COMPARE AND WRITE from a single-path initiator in transition")
	wantSense(t, e.do(single, tur, nil), senseNotReady, ascNotReadyTransition, "TEST UNIT READY from a single-path initiator in transition")
	for _, st := range []PathState{PathStandby, PathUnavailable} {
		vol.mu.Lock()
		vol.state = st
		vol.mu.Unlock()
		if r := e.do(single, write10, make([]byte, 512)); r.status != statusCheckCondition {
			t.Errorf("WRITE(10) from a single-path initiator, path state %v: got %v, want NOT READY", st, r)
		}
	}
	vol.mu.Lock()
	vol.state = PathActiveOptimized
	vol.mu.Unlock()

	// The volume's own NOT READY for a transition (a held write that
	// found no writer in time): BUSY for a single path only.
	for _, c := range []struct {
		n    *Nexus
		busy bool
	}{{single, true}, {multi, false}} {
		vol.mu.Lock()
		vol.failNext = &NotReadyError{ASC: ascNotReadyTransition}
		vol.mu.Unlock()
		r := e.do(c.n, write10, make([]byte, 512))
		if c.busy && (r.status != statusBusy || len(r.sense) != 0) {
			t.Errorf("the volume's transition for %s: got %v, want BUSY", c.n.Initiator, r)
		} else if !c.busy {
			wantSense(t, r, senseNotReady, ascNotReadyTransition, "the volume's transition for "+c.n.Initiator)
		}
	}
	// A write whose outcome the volume does not know (its writer went
	// away): ABORTED COMMAND, single path or not.
	unknown := fmt.Errorf("forwarded write: %w", ErrOutcomeUnknown)
	for _, n := range []*Nexus{single, multi} {
		vol.mu.Lock()
		vol.failNext = unknown
		vol.mu.Unlock()
		wantSense(t, e.do(n, write10, make([]byte, 512)), senseAbortedCommand, 0, "a write of unknown outcome from "+n.Initiator)
	}
	// Other failures keep their sense data for everyone.
	vol.mu.Lock()
	vol.failNext = ErrMedium
	vol.mu.Unlock()
	wantSense(t, e.do(single, write10, make([]byte, 512)), senseMediumError, ascWriteError, "a medium error from a single-path initiator")
	wantGood(t, e.do(single, write10, make([]byte, 512)), "WRITE(10) once the path serves")
	if want := 5; busies != want {
		t.Errorf("OnTransitionBusy counted %d BUSY answers, want %d", busies, want)
	}
}
