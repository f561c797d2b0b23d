package target

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// TestColdResetAnsweredBeforeClose: a TARGET COLD RESET is answered, and
// only then is the connection closed (RFC 7143 section 11.5.1): the answer
// queued just before the close must still go out. Repeated, because a
// write side that lets the close win drops it only some of the time.
func TestColdResetAnsweredBeforeClose(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	for i := range 20 {
		in := dial(t, s.addr)
		in.isid[5] = byte(i)
		in.login(loginOpts{})
		if resp := in.tmf(tmfColdReset, 0xffffffff, in.cmdSN); resp != tmfComplete {
			t.Fatalf("round %d: TARGET COLD RESET response %d", i, resp)
		}
		if p, err := in.rd.ReadPDU(); err == nil {
			t.Fatalf("round %d: PDU 0x%02x after the cold reset's answer", i, p.Opcode())
		} else if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("round %d: after the cold reset: %v", i, err)
		}
	}
}
