// Package pollslot bounds how many goroutines of the process busy-poll a
// socket at once (target's iSCSI reader at queue depth 1, replica's
// replication links): a poller keeps a CPU, and at least one must stay
// for the work that answers it, in this process or another.
package pollslot

import (
	"runtime"
	"sync/atomic"
)

var inUse atomic.Int32

// Max is GOMAXPROCS-1: none on one CPU, where polling would only take
// the CPU from the peer or from other work.
func Max() int32 { return int32(runtime.GOMAXPROCS(0) - 1) }

// Take takes a slot if one is free; the caller polls only if it got
// one, and gives it back with Release.
func Take() bool {
	if inUse.Add(1) > Max() {
		inUse.Add(-1)
		return false
	}
	return true
}

// Release gives back a slot Take gave.
func Release() { inUse.Add(-1) }

// InUse is the number of slots taken now.
func InUse() int32 { return inUse.Load() }
