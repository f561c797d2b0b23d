package target

import "errors"

// Volume is the storage behind one logical unit. The target reaches
// storage only through it: a local file implements it for a single site,
// replica.Volume implements it for a mirrored LUN. Offsets and lengths are
// in bytes and always multiples of the LU's block size.
type Volume interface {
	// Size is the capacity in bytes.
	Size() int64
	ReadAt(p []byte, off int64) error
	// WriteAt writes p at off. With fua the data is on stable storage
	// (at every in-sync site) before it returns.
	WriteAt(p []byte, off int64, fua bool) error
	// Flush makes every completed write stable (SYNCHRONIZE CACHE).
	Flush() error
	// Unmap deallocates the range; it reads back as zeros afterwards.
	Unmap(off, length int64) error
	// CompareAndWrite atomically compares the range at off with cmp and,
	// only if equal, writes data (len(data) == len(cmp)). It returns the
	// offset of the first differing byte within cmp, or -1 when it wrote.
	CompareAndWrite(off int64, cmp, data []byte) (int, error)
	// Mapped reports whether the byte at off is allocated and how many
	// bytes from off share that state (GET LBA STATUS). A volume that
	// cannot tell reports everything mapped.
	Mapped(off int64) (mapped bool, run int64, err error)
	// State is the volume's path state as this site sees it (ALUA).
	State() PathState
	Close() error
}

// SharedState is implemented by a volume whose LU state must be the same
// at every site that serves it (persistent reservations, RESERVE(6),
// resets). The record is small (at most 60 KiB). A volume that wraps
// another (for metrics, say) passes it on by implementing it too, or by
// an Unwrap() Volume method that returns the wrapped volume.
type SharedState interface {
	// SharedState returns the current version and bytes (0, nil before the first set).
	// Cheap: callers may call it on every command.
	SharedState() (version uint64, data []byte)
	// SharedVersion is SharedState's version alone, cheaper still (an atomic load).
	SharedVersion() uint64
	// SetSharedState replaces the record if its version is still expect;
	// ok is false when it changed meanwhile (read it again, recompute, retry).
	// On success version expect+1 is in place at every in-sync site before it returns.
	SetSharedState(expect uint64, data []byte) (ok bool, err error)
}

// DeviceLoss is implemented by a volume that this site can lose while it
// runs and that is to be reported lost, not merely unreachable, as
// VMware ESXi expects of a device that is gone for good: a cluster site
// cut off from the others, configured so (conf's quorum_loss = "pdl").
// While Lost reports true, every command to the LU but REPORT LUNS is
// answered CHECK CONDITION, ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED
// (05/25/00), the sense ESXi takes for a permanent device loss (PDL) on
// that path; REPORT LUNS still lists the LU, so that a rescan finds it
// once it is back. A volume that wraps another passes it on as it does
// SharedState. Lost is called on every command: it must be cheap.
type DeviceLoss interface {
	Lost() bool
}

// InlineReader is implemented by a volume that may wait for another
// site (one with SharedState) but can tell when a read would not. The
// target runs a lone small READ on such a volume on the connection's
// reader (task.go) through TryReadAt; a volume that wraps another passes
// it on as for SharedState.
type InlineReader interface {
	// TryReadAt reads p at off, as ReadAt would, if it can do so now
	// waiting for nothing but its local store, and reports true.
	// Otherwise it reads nothing, returns false and a nil error, and the
	// target calls ReadAt from a goroutine of its own.
	TryReadAt(p []byte, off int64) (ok bool, err error)
}

// PathState is the ALUA access state of this site's port group for a
// volume (SPC-4 section 5.15.2).
type PathState int

const (
	PathActiveOptimized    PathState = 0x0
	PathActiveNonOptimized PathState = 0x1
	PathStandby            PathState = 0x2
	PathUnavailable        PathState = 0x3
	PathTransitioning      PathState = 0xf
)

// ErrMedium marks a volume error that maps to a MEDIUM ERROR sense key
// rather than a hardware error.
var ErrMedium = errors.New("medium error")

// ErrNoSpace marks a write that failed because the backing store is out
// of space (ENOSPC, a quota). On a thin LU it maps to DATA PROTECT, SPACE
// ALLOCATION FAILED WRITE PROTECT (SBC-3 section 4.7.3.6), which tells
// the initiator the LU is full rather than broken.
var ErrNoSpace = errors.New("out of space")
