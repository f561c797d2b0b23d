package replica

import "sync"

// blockLocks makes every logical block of a LocalFile atomic, as a disk
// makes a sector: a read overlapping a write in flight returns, block by
// block, the data from before or after that write, never a mix. Linux does
// not promise this for buffered I/O on ext4 (a read copies a page out
// while a write is copying into it), and a torn block is what a
// linearizable history forbids (TestLocalFileBlockAtomic).
//
// The file is cut into 64 KiB stripes, each guarded by one of
// lockStripes read-write locks (stripe number modulo lockStripes). Reads
// share the locks of the stripes they touch, writes and unmaps hold them
// alone; every caller takes its locks in ascending index order, so two
// ranges never wait for each other in a cycle. Writes to one file are
// already serialised by the file system's inode lock, so holding a
// stripe alone costs only reads that overlap, or happen to share a
// stripe with, a write in flight.
type blockLocks struct {
	mu [lockStripes]sync.RWMutex
}

const (
	lockStripes     = 64
	lockStripeShift = 16 // 64 KiB
)

// span returns the indices of the locks [off, off+n) needs: first..last
// in ascending order, wrapping at lockStripes; all of them when the range
// covers lockStripes stripes or more.
func (b *blockLocks) span(off, n int64) (first, count int) {
	if n <= 0 {
		return 0, 0
	}
	lo := off >> lockStripeShift
	hi := (off + n - 1) >> lockStripeShift
	if hi-lo+1 >= lockStripes {
		return 0, lockStripes
	}
	return int(lo % lockStripes), int(hi - lo + 1)
}

// each calls f for the lock indices of [off, off+n) in ascending order.
func (b *blockLocks) each(off, n int64, f func(*sync.RWMutex)) {
	first, count := b.span(off, n)
	// The stripes first, first+1, ... wrap past the end of the array:
	// visit the wrapped ones (low indices) first to keep the order
	// ascending.
	if end := first + count; end > lockStripes {
		for i := 0; i < end-lockStripes; i++ {
			f(&b.mu[i])
		}
		count = lockStripes - first
	}
	for i := first; i < first+count; i++ {
		f(&b.mu[i])
	}
}

func (b *blockLocks) rlock(off, n int64)   { b.each(off, n, (*sync.RWMutex).RLock) }
func (b *blockLocks) runlock(off, n int64) { b.each(off, n, (*sync.RWMutex).RUnlock) }
func (b *blockLocks) lock(off, n int64)    { b.each(off, n, (*sync.RWMutex).Lock) }
func (b *blockLocks) unlock(off, n int64)  { b.each(off, n, (*sync.RWMutex).Unlock) }
