package target

import (
	"errors"
	"strings"
)

// VolumeError describes one volume failure that reached an initiator as
// sense data: which LU, which command and blocks, what it was told and
// why. The server logs each one once; Config.OnVolumeError may count it.
type VolumeError struct {
	Target   string
	LUN      uint64
	Op       string // the command's name, e.g. "WRITE(10)"
	LBA      uint64
	Blocks   uint64
	SenseKey byte
	ASC      uint16 // ASC<<8 | ASCQ
	Err      error
}

// Kind names the failure for a metric label: no_space, medium,
// outcome_unknown, not_ready or other.
func (e VolumeError) Kind() string {
	var nr *NotReadyError
	switch {
	case errors.Is(e.Err, ErrNoSpace):
		return "no_space"
	case errors.Is(e.Err, ErrMedium):
		return "medium"
	case errors.Is(e.Err, ErrOutcomeUnknown):
		return "outcome_unknown"
	case errors.As(e.Err, &nr):
		return "not_ready"
	}
	return "other"
}

func (lu *LU) reportVolumeError(c *scsiCmd, res *scsiResult) {
	e := VolumeError{LUN: lu.id, Op: strings.TrimSpace(c.op.name), LBA: c.lba, Blocks: c.blocks, Err: res.volErr}
	if lu.target != nil {
		e.Target = lu.target.Name
	}
	if len(res.sense) >= 14 {
		e.SenseKey = res.sense[2] & 0x0f
		e.ASC = uint16(res.sense[12])<<8 | uint16(res.sense[13])
	}
	if lu.onVolErr != nil {
		lu.onVolErr(e)
	}
	if lu.log == nil {
		return
	}
	args := []any{"op", e.Op, "lba", e.LBA, "blocks", e.Blocks, "sense_key", e.SenseKey, "asc", e.ASC, "error", e.Err}
	if e.Kind() == "not_ready" {
		// Transitions (a failover, a lost lease) are expected and
		// frequent; the cluster logs why.
		lu.log.Debug("I/O answered NOT READY", args...)
		return
	}
	lu.log.Error("I/O failed; the initiator gets CHECK CONDITION", args...)
}
