// Package stamp is a timeline of one operation at a time, per kind, for
// finding where a queue-depth-1 write spends its time (docs/bench.md,
// "Where a mirrored 4 KiB write spends its time"). Built with the tag
// "stamp" it records monotonic stamps at each stage and writes medians
// and 90th percentiles per stage, with the process's context switches
// and CPU per operation, to $METROLUN_STAMPS/stamps-PID.txt every
// Window operations; without the tag every function is empty and
// compiles away.
package stamp

// Kind is the timeline a stamp belongs to: one operation of each kind is
// recorded at a time (the measurement runs at queue depth 1).
type Kind int

const (
	// Cmd: a SCSI command, from its PDU read to its answer written.
	Cmd Kind = iota
	// Frame: a stream frame at a replica, from its read to its ack.
	Frame
	// Fwd: a forwarded operation at the writer, from its read to the
	// origin's ack.
	Fwd
	nKinds
)

var kindNames = [nKinds]string{"cmd", "frame", "fwd"}

// Window is how many operations of a kind each report covers.
const Window = 4000
