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
