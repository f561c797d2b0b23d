package target

import (
	"sync/atomic"
	"testing"
)

// lostVolume is a memVolume that can be reported lost (DeviceLoss).
type lostVolume struct {
	*memVolume
	lost atomic.Bool
}

func (v *lostVolume) Lost() bool { return v.lost.Load() }

// TestDeviceLossAnswersLUNotSupported: while the volume reports itself
// lost, every command to the LU, the ones that never report a unit
// attention or a not-ready state included, is answered ILLEGAL REQUEST,
// LOGICAL UNIT NOT SUPPORTED (05/25/00, what VMware ESXi takes for a
// permanent device loss), except REPORT LUNS, which still lists it; once
// it is back, commands are served again.
func TestDeviceLossAnswersLUNotSupported(t *testing.T) {
	vol := &lostVolume{memVolume: newMemVolume(1 << 20)}
	e := newLUEnv(t, LUNConfig{Volume: vol})
	n := e.nexus("iqn.esxi-1", 1)
	tur := []byte{0, 0, 0, 0, 0, 0}
	for i := 0; e.do(n, tur, nil).status != statusGood; i++ { // the power-on UA first
		if i == 4 {
			t.Fatal("TEST UNIT READY keeps failing")
		}
	}
	vol.lost.Store(true)
	e.lu.mu.Lock()
	e.lu.queueUA(ascAsymAccessStateChanged, nil) // a pending UA does not come first
	e.lu.mu.Unlock()
	for _, c := range []struct {
		name string
		cdb  []byte
		out  int
	}{
		{"TEST UNIT READY", tur, 0},
		{"INQUIRY", []byte{0x12, 0, 0, 0, 96, 0}, 0},
		{"INQUIRY VPD 83h", []byte{0x12, 1, 0x83, 0, 255, 0}, 0},
		{"REQUEST SENSE", []byte{0x03, 0, 0, 0, 18, 0}, 0},
		{"READ(10)", []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, 0},
		{"WRITE(10)", []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}, 512},
		{"READ CAPACITY(10)", []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0},
		{"REPORT TARGET PORT GROUPS", []byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0}, 0},
		{"PERSISTENT RESERVE IN", []byte{0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0}, 0},
		{"an unknown opcode", []byte{0xff, 0, 0, 0, 0, 0}, 0},
	} {
		wantSense(t, e.do(n, c.cdb, make([]byte, c.out)), senseIllegalRequest, ascLUNotSupported, c.name+" on a lost LU")
	}
	wantGood(t, e.do(n, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0}, nil), "REPORT LUNS on a lost LU")
	vol.lost.Store(false)
	wantSense(t, e.do(n, tur, nil), senseUnitAttention, ascAsymAccessStateChanged, "the unit attention still pending once back")
	wantGood(t, e.do(n, tur, nil), "TEST UNIT READY once back")
	wantGood(t, e.do(n, []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, nil), "READ(10) once back")
}
