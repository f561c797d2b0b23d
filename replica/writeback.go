package replica

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// wbRegion is the granularity at which LocalFile remembers unflushed and
// lost data. 64 KiB keeps the record at 2 MiB per TiB and set each, and a
// resync (which copies whole bitmap regions, 1 MiB by default) rewrites
// lost regions completely.
const wbRegion = 64 << 10

// writeBack is LocalFile's record of the regions written since the last
// successful flush (active, and flushing while a flush runs) and of the
// regions whose write-back failed (lost). See LocalFile.
type writeBack struct {
	mu       sync.Mutex
	active   []uint64
	flushing []uint64
	// anyActive, anyFlushing: a bit may be set in active (flushing), so
	// a flush of an idle LU touches no bitmap.
	anyActive, anyFlushing bool
	lost                   []uint64
	nlost                  atomic.Int64 // bits set in lost: reads skip the lock at 0
	// absent: regions the writer has lost (its resync sent FrameLost):
	// reads fail here as there, until a write covers them. Unlike lost,
	// they are not this store's failure, so flushes do not fail for
	// them and the end of a resync does not forget them.
	absent  []uint64
	nabsent atomic.Int64
}

func (w *writeBack) init(size int64) {
	n := (size + wbRegion - 1) / wbRegion
	words := (n + 63) / 64
	w.active = make([]uint64, words)
	w.flushing = make([]uint64, words)
	w.lost = make([]uint64, words)
	w.absent = make([]uint64, words)
}

// span returns the regions off..off+n touches, and the ones it covers
// completely.
func span(off, n int64) (first, last, fullFirst, fullLast int64) {
	first, last = off/wbRegion, (off+n-1)/wbRegion
	fullFirst, fullLast = (off+wbRegion-1)/wbRegion, (off+n)/wbRegion-1
	return
}

func setBit(b []uint64, r int64) bool {
	i, m := r/64, uint64(1)<<(r%64)
	if i >= int64(len(b)) || b[i]&m != 0 {
		return false
	}
	b[i] |= m
	return true
}

func clearBit(b []uint64, r int64) bool {
	i, m := r/64, uint64(1)<<(r%64)
	if i >= int64(len(b)) || b[i]&m == 0 {
		return false
	}
	b[i] &^= m
	return true
}

func testBit(b []uint64, r int64) bool {
	i := r / 64
	return i < int64(len(b)) && b[i]&(1<<(r%64)) != 0
}

// wrote records a write that reached the page cache: the regions it
// covers completely are whole again, and all it touches wait for a flush.
func (w *writeBack) wrote(off, n int64) (cleared bool) {
	if n <= 0 {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	first, last, ff, fl := span(off, n)
	for r := first; r <= last; r++ {
		setBit(w.active, r)
	}
	w.anyActive = true
	return w.rewroteLocked(ff, fl)
}

// rewrote records a write that is already stable (FUA).
func (w *writeBack) rewrote(off, n int64) (cleared bool) {
	if n <= 0 || w.nlost.Load() == 0 && w.nabsent.Load() == 0 {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_, _, ff, fl := span(off, n)
	return w.rewroteLocked(ff, fl)
}

// rewroteLocked clears the lost and absent bits of regions ff..fl and
// reports whether any was set.
func (w *writeBack) rewroteLocked(ff, fl int64) (cleared bool) {
	if w.nlost.Load() == 0 && w.nabsent.Load() == 0 {
		return false
	}
	for r := ff; r <= fl; r++ {
		if clearBit(w.lost, r) {
			w.nlost.Add(-1)
			cleared = true
		}
		if clearBit(w.absent, r) {
			w.nabsent.Add(-1)
			cleared = true
		}
	}
	return cleared
}

// markAbsent marks the regions off..off+n touches as lost at the writer
// (FrameLost).
func (w *writeBack) markAbsent(off, n int64) { w.mark(w.absent, &w.nabsent, off, n) }

// lose marks off..off+n lost (a write that failed).
func (w *writeBack) lose(off, n int64) { w.mark(w.lost, &w.nlost, off, n) }

// mark sets the bits of the regions off..off+n touches in b, counting
// new ones in count.
func (w *writeBack) mark(b []uint64, count *atomic.Int64, off, n int64) {
	if n <= 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	first, last, _, _ := span(off, n)
	for r := first; r <= last; r++ {
		if setBit(b, r) {
			count.Add(1)
		}
	}
}

// startFlush: the regions written so far are what this flush covers.
func (w *writeBack) startFlush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.anyActive {
		return
	}
	if !w.anyFlushing {
		// Flushes are serialised and each ends with flushing empty.
		w.active, w.flushing = w.flushing, w.active
	} else {
		for i, x := range w.active {
			w.flushing[i] |= x
			w.active[i] = 0
		}
	}
	w.anyActive, w.anyFlushing = false, true
}

// flushed: the flush succeeded; what it covered is stable.
func (w *writeBack) flushed() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.anyFlushing {
		clear(w.flushing)
		w.anyFlushing = false
	}
}

// flushFailed: the kernel may have dropped any page written since the
// last successful flush (including those written while this flush ran,
// whose write-back error it may have reported): all of them are lost. It
// returns the byte range they span and how many regions are lost now.
func (w *writeBack) flushFailed() (lo, hi int64, regions int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.anyActive, w.anyFlushing = false, false
	lo = -1
	for i := range w.lost {
		add := w.flushing[i] | w.active[i]
		w.flushing[i], w.active[i] = 0, 0
		if add == 0 {
			continue
		}
		if lo < 0 {
			lo = int64(i*64+bits.TrailingZeros64(add)) * wbRegion
		}
		hi = int64(i*64+63-bits.LeadingZeros64(add)+1) * wbRegion
		w.nlost.Add(int64(bits.OnesCount64(add &^ w.lost[i])))
		w.lost[i] |= add
	}
	if lo < 0 {
		lo = 0
	}
	return lo, hi, int(w.nlost.Load())
}

// lostIn reports whether off..off+n touches a lost region (this
// store's own failed write-back, or one the writer lost when own is
// false), and the byte range of the lost regions it touches.
func (w *writeBack) lostIn(off, n int64, own bool) (lo, hi int64, ok bool) {
	na := w.nabsent.Load()
	if own {
		na = 0
	}
	if n <= 0 || w.nlost.Load()+na == 0 {
		return 0, 0, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	first, last, _, _ := span(off, n)
	lo = -1
	for r := first; r <= last; r++ {
		i := r / 64
		word := w.lost[i]
		if na > 0 {
			word |= w.absent[i]
		}
		if r%64 == 0 && r+63 <= last && word == 0 {
			r += 63
			continue
		}
		if word&(1<<(r%64)) != 0 {
			if lo < 0 {
				lo = r * wbRegion
			}
			hi = (r + 1) * wbRegion
		}
	}
	return max(lo, off), min(hi, off+n), lo >= 0
}

// lostRanges returns up to max byte ranges of lost regions (own or
// absent), in order, adjacent regions merged, and how many regions are
// lost in all.
func (w *writeBack) lostRanges(max int) (rs [][2]int64, regions int) {
	if w.nlost.Load()+w.nabsent.Load() == 0 {
		return nil, 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return ranges(func(i int) uint64 { return w.lost[i] | w.absent[i] }, len(w.lost), max)
}

// absentRanges returns every range marked by markAbsent, merged.
func (w *writeBack) absentRanges() [][2]int64 {
	if w.nabsent.Load() == 0 {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	rs, _ := ranges(func(i int) uint64 { return w.absent[i] }, len(w.absent), -1)
	return rs
}

// ranges turns the set bits of words 0..n-1 into byte ranges, adjacent
// regions merged, at most max of them (max < 0: all), and counts the bits.
func ranges(word func(i int) uint64, n, max int) (rs [][2]int64, regions int) {
	for i := range n {
		for x := word(i); x != 0; {
			b := int64(bits.TrailingZeros64(x))
			x &^= 1 << b
			regions++
			lo := (int64(i)*64 + b) * wbRegion
			if k := len(rs); k > 0 && rs[k-1][1] == lo {
				rs[k-1][1] = lo + wbRegion
				continue
			}
			if max < 0 || len(rs) < max {
				rs = append(rs, [2]int64{lo, lo + wbRegion})
			}
		}
	}
	return rs, regions
}

func (w *writeBack) lostCount() int { return int(w.nlost.Load() + w.nabsent.Load()) }

// clearLost forgets this store's own lost regions and reports whether
// there were any.
func (w *writeBack) clearLost() bool {
	if w.nlost.Load() == 0 {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	clear(w.lost)
	w.nlost.Store(0)
	return true
}
