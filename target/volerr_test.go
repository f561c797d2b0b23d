package target

import (
	"errors"
	"fmt"
	"testing"
)

// TestVolumeErrorSense: each kind of volume failure reaches the
// initiator as the sense SBC-3/SPC-4 give it, and is reported once with
// the command's LU, name and LBA range.
func TestVolumeErrorSense(t *testing.T) {
	cases := []struct {
		err  error
		read bool
		key  byte
		asc  uint16
		kind string
	}{
		{fmt.Errorf("write x: %w: no space left on device", ErrNoSpace), false, senseDataProtect, ascSpaceAllocFailed, "no_space"},
		{fmt.Errorf("%w: input/output error", ErrMedium), false, senseMediumError, ascWriteError, "medium"},
		{fmt.Errorf("%w: input/output error", ErrMedium), true, senseMediumError, ascUnrecoveredReadError, "medium"},
		{ErrOutcomeUnknown, false, senseAbortedCommand, 0, "outcome_unknown"},
		{&NotReadyError{ASC: ascNotReadyTransition}, true, senseNotReady, ascNotReadyTransition, "not_ready"},
		{errors.New("something else"), false, senseHardwareError, ascInternalTargetFailure, "other"},
	}
	for _, c := range cases {
		res := volumeError(c.err, c.read)
		if len(res.sense) < 14 || res.sense[2]&0x0f != c.key || uint16(res.sense[12])<<8|uint16(res.sense[13]) != c.asc {
			t.Errorf("%v (read %v): sense % x, want key %x asc %04x", c.err, c.read, res.sense, c.key, c.asc)
			continue
		}
		var got []VolumeError
		lu := &LU{id: 3, target: &Target{Name: "iqn.t"}, onVolErr: func(e VolumeError) { got = append(got, e) }}
		cmd := &scsiCmd{lu: lu, op: &opInfo{name: "WRITE(10)"}, lba: 2048, blocks: 16}
		lu.reportVolumeError(cmd, res)
		if len(got) != 1 {
			t.Fatalf("%v: reported %d times", c.err, len(got))
		}
		e := got[0]
		if e.LUN != 3 || e.Target != "iqn.t" || e.Op != "WRITE(10)" || e.LBA != 2048 || e.Blocks != 16 || e.SenseKey != c.key || e.ASC != c.asc || e.Kind() != c.kind || !errors.Is(e.Err, c.err) {
			t.Errorf("%v: reported %+v (kind %s)", c.err, e, e.Kind())
		}
	}
}
