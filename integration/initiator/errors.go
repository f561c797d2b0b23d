package initiator

import (
	"context"
	"errors"
	"fmt"
)

// SCSI status codes (SAM-5 section 5.3.1).
const (
	StatusGood                = 0x00
	StatusCheckCondition      = 0x02
	StatusConditionMet        = 0x04
	StatusBusy                = 0x08
	StatusReservationConflict = 0x18
	StatusTaskSetFull         = 0x28
	StatusACAActive           = 0x30
	StatusTaskAborted         = 0x40
)

// Sense keys (SPC-4 table 48).
const (
	SenseNoSense        = 0x0
	SenseRecoveredError = 0x1
	SenseNotReady       = 0x2
	SenseMediumError    = 0x3
	SenseHardwareError  = 0x4
	SenseIllegalRequest = 0x5
	SenseUnitAttention  = 0x6
	SenseDataProtect    = 0x7
	SenseBlankCheck     = 0x8
	SenseAbortedCommand = 0xb
	SenseMiscompare     = 0xe
)

// SCSIError is a command that the target answered with a status other
// than GOOD: the command reached the target and the target said what
// became of it. Sense fields are zero when the target sent no sense data.
type SCSIError struct {
	// Op is the CDB's operation code.
	Op     byte
	Status byte
	// SenseKey, ASC and ASCQ come from fixed or descriptor format sense
	// data (SPC-4 section 4.5).
	SenseKey, ASC, ASCQ byte
	// Sense is the raw sense data (without iSCSI's 2-byte SenseLength).
	Sense []byte
}

func (e *SCSIError) Error() string {
	if e.Status == StatusCheckCondition {
		return fmt.Sprintf("scsi: op 0x%02x: CHECK CONDITION, sense key 0x%x (%s), ASC/ASCQ 0x%02x/0x%02x",
			e.Op, e.SenseKey, senseKeyName(e.SenseKey), e.ASC, e.ASCQ)
	}
	return fmt.Sprintf("scsi: op 0x%02x: status 0x%02x (%s)", e.Op, e.Status, statusName(e.Status))
}

func statusName(s byte) string {
	switch s {
	case StatusGood:
		return "GOOD"
	case StatusCheckCondition:
		return "CHECK CONDITION"
	case StatusConditionMet:
		return "CONDITION MET"
	case StatusBusy:
		return "BUSY"
	case StatusReservationConflict:
		return "RESERVATION CONFLICT"
	case StatusTaskSetFull:
		return "TASK SET FULL"
	case StatusACAActive:
		return "ACA ACTIVE"
	case StatusTaskAborted:
		return "TASK ABORTED"
	}
	return "unknown"
}

func senseKeyName(k byte) string {
	names := [...]string{"NO SENSE", "RECOVERED ERROR", "NOT READY", "MEDIUM ERROR", "HARDWARE ERROR",
		"ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT", "BLANK CHECK", "VENDOR SPECIFIC",
		"COPY ABORTED", "ABORTED COMMAND", "reserved", "VOLUME OVERFLOW", "MISCOMPARE", "COMPLETED"}
	return names[k&0x0f]
}

// ParseSense decodes sense data in fixed (response codes 0x70, 0x71) or
// descriptor (0x72, 0x73) format, SPC-4 section 4.5. ok is false when
// the data is too short or has another response code. Fields that a
// short but valid fixed-format buffer lacks are returned as zero.
func ParseSense(b []byte) (key, asc, ascq byte, ok bool) {
	if len(b) < 1 {
		return 0, 0, 0, false
	}
	switch b[0] & 0x7f {
	case 0x70, 0x71:
		if len(b) < 3 {
			return 0, 0, 0, false
		}
		key = b[2] & 0x0f
		// ADDITIONAL SENSE LENGTH (byte 7) says how much follows; a
		// target may send fewer than 18 bytes (SPC-4 4.5.3).
		avail := len(b)
		if len(b) >= 8 && 8+int(b[7]) < avail {
			avail = 8 + int(b[7])
		}
		if avail > 12 {
			asc = b[12]
		}
		if avail > 13 {
			ascq = b[13]
		}
		return key, asc, ascq, true
	case 0x72, 0x73:
		if len(b) < 4 {
			return 0, 0, 0, false
		}
		return b[1] & 0x0f, b[2], b[3], true
	}
	return 0, 0, 0, false
}

// ConnError is a failure of the connection or the protocol rather than a
// SCSI status: dial or login failed, the connection broke, the target
// sent something this initiator cannot follow, or ctx ended. Sent tells
// whether any part of the command had been handed to the connection, in
// which case the target may have executed it.
type ConnError struct {
	Op   string
	Sent bool
	Err  error
}

func (e *ConnError) Error() string {
	s := "not sent"
	if e.Sent {
		s = "outcome unknown"
	}
	return fmt.Sprintf("iscsi: %s (%s): %v", e.Op, s, e.Err)
}

func (e *ConnError) Unwrap() error { return e.Err }

// LoginError is a login the target refused (RFC 7143 section 11.13.5).
type LoginError struct {
	Class, Detail byte
	// TargetAddress is where a redirect (class 1) sends the initiator
	// (RFC 7143 section 11.13.5), as the target wrote it.
	TargetAddress string
}

func (e *LoginError) Error() string {
	what := "target error"
	switch {
	case e.Class == 1:
		what = "redirection"
	case e.Class == 2 && e.Detail == 0x01:
		what = "authentication failure"
	case e.Class == 2 && e.Detail == 0x02:
		what = "authorization failure"
	case e.Class == 2 && e.Detail == 0x03:
		what = "target not found"
	case e.Class == 2:
		what = "initiator error"
	case e.Class == 3 && e.Detail == 0x01:
		what = "service unavailable"
	}
	if e.TargetAddress != "" {
		what += " to " + e.TargetAddress
	}
	return fmt.Sprintf("iscsi: login rejected, status 0x%02x%02x (%s)", e.Class, e.Detail, what)
}

// ResponseError is a SCSI Response whose iSCSI Response field is not
// "command completed at target" (RFC 7143 section 11.4.3): the target
// failed while handling the command.
type ResponseError struct {
	Op       byte
	Response byte
}

func (e *ResponseError) Error() string {
	return fmt.Sprintf("iscsi: op 0x%02x: target failure, response 0x%02x", e.Op, e.Response)
}

// ResidualError is a GOOD status whose transfer was shorter (or longer)
// than asked for: the target acted on part of the data.
type ResidualError struct {
	Op        byte
	Underflow bool
	Residual  uint32
}

func (e *ResidualError) Error() string {
	kind := "overflow"
	if e.Underflow {
		kind = "underflow"
	}
	return fmt.Sprintf("iscsi: op 0x%02x: residual %s of %d bytes", e.Op, kind, e.Residual)
}

// ErrClosed is returned for an operation on a session that has already
// ended (closed, logged out, or lost its connection earlier). Nothing of
// the operation was sent.
var ErrClosed = errors.New("iscsi: session closed")

// ErrTargetLogout is why a session ended when the target asked for a
// logout or dropped the connection or session through an asynchronous
// message (RFC 7143 section 11.9.1, AsyncEvent 1, 2 or 3).
var ErrTargetLogout = errors.New("iscsi: target requested logout or dropped the connection")

// Indeterminate tells whether the operation that returned err might have
// taken effect on the target. It is false for nil and for outcomes that
// prove the command was not executed; true whenever that cannot be
// proven. For a write, true means the data may or may not be on the LUN.
//
// Definitely not executed (false):
//   - nothing was sent: ErrNotSent, ErrClosed, dial and login failures,
//     ctx ended before the command went out (a *ConnError with Sent ==
//     false);
//   - BUSY, RESERVATION CONFLICT, TASK SET FULL, ACA ACTIVE: the target
//     refused the command without starting it (SAM-5 section 5.3.1);
//   - CHECK CONDITION with NOT READY, ILLEGAL REQUEST, DATA PROTECT or
//     MISCOMPARE: these are reported before any data is changed
//     (SBC-3: a write is checked for LBA range, protection and readiness
//     before it transfers; COMPARE AND WRITE writes nothing on a
//     miscompare), except SPACE ALLOCATION FAILED WRITE PROTECT below.
//
// Possibly executed (true):
//   - connection errors, timeouts and ctx cancellation after the command
//     was sent (*ConnError with Sent), protocol errors, *ResponseError;
//   - TASK ABORTED: the command may have run partly before it was
//     aborted;
//   - CHECK CONDITION with ABORTED COMMAND (may be reported after the
//     medium changed), UNIT ATTENTION (SAM-5 says a UA replaces the
//     command, but a target that reports it late, e.g. after a failover,
//     may already have applied the write; safe side), MEDIUM ERROR and
//     HARDWARE ERROR (a write may be partly done), RECOVERED ERROR (the
//     command completed), NO SENSE and anything unknown;
//   - DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27/07): a thin
//     LU ran out of space while it wrote, so part of the write may be
//     stored (SBC-3 section 4.7.3.6 does not say otherwise), and a
//     mirrored LU answers it from a site whose own disk is full while
//     the writer and the other sites keep the data;
//   - a *ResidualError: part of the transfer was acted on.
//
// Any other error is treated as indeterminate.
func Indeterminate(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrNotSent) {
		return false
	}
	var ce *ConnError
	if errors.As(err, &ce) {
		return ce.Sent
	}
	if errors.Is(err, ErrClosed) {
		return false
	}
	var se *SCSIError
	if errors.As(err, &se) {
		switch se.Status {
		case StatusBusy, StatusReservationConflict, StatusTaskSetFull, StatusACAActive:
			return false
		case StatusCheckCondition:
			if se.SenseKey == SenseDataProtect && se.ASC == 0x27 && se.ASCQ == 0x07 {
				return true
			}
			switch se.SenseKey {
			case SenseNotReady, SenseIllegalRequest, SenseDataProtect, SenseMiscompare:
				return false
			}
			return true
		}
		return true
	}
	var le *LoginError
	if errors.As(err, &le) {
		return false
	}
	return true
}

// NotExecuted is !Indeterminate(err) for a non-nil err: the target
// certainly did not carry out the command.
func NotExecuted(err error) bool { return err != nil && !Indeterminate(err) }

// ctxErr wraps a context error as the cause of a failed operation.
func ctxErr(ctx context.Context) error {
	if c := context.Cause(ctx); c != nil {
		return c
	}
	return ctx.Err()
}
