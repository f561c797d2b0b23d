package replica

import (
	"errors"
	"math/bits"
	"sync"
	"time"

	"github.com/metrolun/metrolun/replica/core"
)

// Writes a replica acknowledged but has not flushed (DESIGN.md write path
// step 5: without FUA or SYNCHRONIZE CACHE, acknowledged means in memory
// at every in-sync site). A replica that loses power loses them, and the
// writer cannot tell a power loss from a process that died with its page
// cache intact. So the writer keeps, per peer and in memory, the regions
// (the dirty bitmap's size) it sent as writes or unmaps since the last
// flush that peer acknowledged, and copies them into the peer's
// persistent bitmap whenever the peer starts missing writes:
//
//   - when its link goes down (linkDown), for every state;
//   - when it is dropped (drop), before the drop can settle, hence before
//     any write is acknowledged without it (awaitDrop);
//   - when a resync of it starts, before the bitmap is read, and when
//     this writer stops, for what was sent on a link that had already
//     failed.
//
// A resync then copies them as it copies what the peer missed, and the
// peer is never in sync without the bytes it lost (I4), nor the cluster
// one copy short of what it acknowledged (I1). A flush the peer
// acknowledged made every frame before it stable there: regions written
// before that flush was sent leave the set, those written after stay.
// FUA writes are stable when acknowledged and are not recorded.
//
// A peer that was in sync when this writer started may hold writes of the
// previous epoch unflushed, which this writer never saw: until its first
// flush is acknowledged (manage sends one on connecting), losing it makes
// its bitmap full (a compare of everything).
//
// The writer's own page cache needs nothing here when another site
// becomes the writer: writer.marker is on disk (synced, directory too)
// for as long as this site is the writer and goes only at a clean stop,
// so a writer that lost power comes back with it (NewSite), answers
// hellos with FlagDiverged, and the next writer compares it in full,
// copying its own bytes over whatever the power loss took. When the same
// site becomes the writer again first (it is in sync in the cluster's
// view, and raftlog may elect it), the marker's boot id tells a crash
// from a power loss (statefiles.go): after a crash (the page cache
// survived) manage compares its in-sync peers in full with this site's
// bytes winning; after a restart of the host it hands the writer role to
// an in-sync peer, whose bytes then win (handOverAfterPowerLoss,
// TestSiteWriterPowerLoss).
//
// The set is bounded by the number of regions (two bits per region and
// peer) and kept small by a background flush: while writes go on, each
// peer with unflushed regions is sent a flush every flushEvery, so a
// resync after a power loss copies about that much writing. An idle
// writer sends none and does not wake up.

// flushEvery is how long a replica may hold acknowledged writes
// unflushed while writes go on before the writer asks it to flush. The
// kernel alone would keep them up to 30 s (dirty_expire_centisecs); a
// second keeps a resync after a power loss to about a second's writing,
// and one fdatasync a second per replica is no load.
const flushEvery = time.Second

// unflushed is one peer's set of regions written since its last flush.
type unflushed struct {
	mu     sync.Mutex
	region int64
	n      int64 // regions
	// cur: written since the tracked flush was sent (or since the set
	// was last emptied); old: written before it. flushSeq is the tracked
	// flush (0: none): once the peer acknowledges it, or any later one,
	// old is stable there. Only one flush is tracked at a time; a flush
	// sent meanwhile leaves its writes in cur for the next one.
	cur, old []uint64
	// The words of cur and old that may be non-zero are [lo, hi): a
	// flush costs the span written since the last one, not the LU.
	curLo, curHi, oldLo, oldHi int
	flushSeq                   uint64
	// unknown: the peer may hold unflushed writes this writer did not
	// send (see above).
	unknown bool
	// spillMu makes a spill (take and mark) whole: a second one waits
	// until the first is on disk rather than find the set empty and
	// report nothing to do.
	spillMu sync.Mutex
}

func newUnflushed(size, region int64) *unflushed {
	n := (size + region - 1) / region
	words := (n + 63) / 64
	u := &unflushed{region: region, n: n, cur: make([]uint64, words), old: make([]uint64, words)}
	u.curLo, u.oldLo = int(words), int(words)
	return u
}

// add records a write or unmap sent to the peer (w.mu held, so in the
// stream's order with flushSent).
func (u *unflushed) add(off, n int64) {
	if n <= 0 {
		return
	}
	first, last := off/u.region, min((off+n-1)/u.region, u.n-1)
	if off < 0 || first > last {
		return
	}
	u.mu.Lock()
	for r := first; r <= last; r++ {
		setBit(u.cur, r)
	}
	u.curLo = min(u.curLo, int(first/64))
	u.curHi = max(u.curHi, int(last/64)+1)
	u.mu.Unlock()
}

// flushSent records a flush sent to the peer at seq whose answer will be
// passed to flushed (w.mu held).
func (u *unflushed) flushSent(seq uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.flushSeq != 0 {
		return
	}
	for i := u.curLo; i < u.curHi; i++ {
		u.old[i] |= u.cur[i]
		u.cur[i] = 0
	}
	if u.curLo < u.curHi {
		u.oldLo, u.oldHi = min(u.oldLo, u.curLo), max(u.oldHi, u.curHi)
	}
	u.curLo, u.curHi = len(u.cur), 0
	u.flushSeq = seq
}

// flushed records that the peer acknowledged the flush at seq.
func (u *unflushed) flushed(seq uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.unknown = false
	if u.flushSeq == 0 || seq < u.flushSeq {
		return
	}
	if u.oldLo < u.oldHi {
		clear(u.old[u.oldLo:u.oldHi])
	}
	u.oldLo, u.oldHi = len(u.old), 0
	u.flushSeq = 0
}

// regions returns how many regions are in the set.
func (u *unflushed) regions() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for i := min(u.curLo, u.oldLo); i < max(u.curHi, u.oldHi); i++ {
		n += bits.OnesCount64(u.cur[i] | u.old[i])
	}
	return n
}

// take empties the set and returns what it held.
func (u *unflushed) take() (rs []int64, unknown bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := min(u.curLo, u.oldLo); i < max(u.curHi, u.oldHi); i++ {
		x := u.cur[i] | u.old[i]
		for ; x != 0; x &= x - 1 {
			rs = append(rs, int64(i)*64+int64(bits.TrailingZeros64(x)))
		}
		u.cur[i], u.old[i] = 0, 0
	}
	u.curLo, u.curHi, u.oldLo, u.oldHi = len(u.cur), 0, len(u.old), 0
	unknown, u.unknown, u.flushSeq = u.unknown, false, 0
	return rs, unknown
}

// putBack returns what take gave when it could not be recorded.
func (u *unflushed) putBack(rs []int64, unknown bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, r := range rs {
		if setBit(u.cur, r) {
			u.curLo = min(u.curLo, int(r/64))
			u.curHi = max(u.curHi, int(r/64)+1)
		}
	}
	u.unknown = u.unknown || unknown
}

// spill marks p's unflushed regions in its persistent bitmap and
// returns once they are on disk. It takes no writer lock (linkDown may
// run with w.mu held).
func (p *peer) spill() error {
	u := p.unfl
	u.spillMu.Lock()
	defer u.spillMu.Unlock()
	rs, unknown := u.take()
	if len(rs) == 0 && !unknown {
		return nil
	}
	var err error
	switch {
	case p.dirty == nil:
		err = errors.New("no dirty bitmap")
	case unknown:
		err = p.dirty.SetFull()
	default:
		if err = p.dirty.MarkRegions(rs); err != nil {
			// Comparing everything is a true record too.
			if ferr := p.dirty.SetFull(); ferr == nil {
				err = nil
			} else {
				err = errors.Join(err, ferr)
			}
		}
	}
	if err != nil {
		u.putBack(rs, unknown)
		p.w.log.Error("could not record the regions a replica had not flushed", "replica", p.name, "regions", len(rs), "error", err)
		return err
	}
	p.w.log.Info("replica left with writes it had not flushed; their regions are dirty for it", "replica", p.name,
		"regions", len(rs), "compare_all", unknown)
	return nil
}

// track records, for the peer p is sent f on a link, what f leaves
// unflushed there. ack says whether f's answer will reach flushed.
// w.mu is held.
func (w *writer) track(p *peer, f *Frame, ack bool) {
	switch f.Kind {
	case FrameWrite:
		if f.Flags&FlagFUA != 0 {
			return
		}
	case FrameUnmap:
	case FrameFlush:
		if ack {
			p.unfl.flushSent(f.Seq)
		}
		return
	default:
		return
	}
	p.unfl.add(f.Offset, int64(f.Length))
	if !w.flushDue {
		w.flushDue = true
		select {
		case w.flushSig <- struct{}{}:
		default:
		}
	}
}

// flusher sends the background flushes: flushEvery after the first write
// since the last one, to every connected peer with unflushed regions.
func (w *writer) flusher() {
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-w.flushSig:
		}
		w.mu.Lock()
		d := w.flushEvery
		w.flushWakes++
		w.mu.Unlock()
		t := time.NewTimer(d)
		select {
		case <-w.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		w.mu.Lock()
		w.flushDue = false
		if w.closed || w.paused {
			w.mu.Unlock()
			continue
		}
		var ps []*peer
		for _, p := range w.peers {
			if st := w.st(p); p.link != nil && (st == core.InSync || st == core.Syncing) && p.unfl.regions() > 0 {
				ps = append(ps, p)
			}
		}
		w.mu.Unlock()
		if len(ps) == 0 {
			continue
		}
		w.mu.Lock()
		w.bgFlushes++
		w.mu.Unlock()
		for i, err := range w.flushPeers(ps) {
			if err != nil {
				// Its link failed (linkDown recorded the set); an
				// in-sync peer is dropped as a failed write would.
				w.failPeer(ps[i], err)
			}
		}
	}
}

// flushPeers sends one flush to each of ps (connected, in sync or
// syncing) and waits for their answers.
func (w *writer) flushPeers(ps []*peer) []error {
	errs := make([]error, len(ps))
	chs := make([]<-chan Ack, len(ps))
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		for i := range errs {
			errs[i] = errNotWriter
		}
		return errs
	}
	f := &Frame{Kind: FrameFlush, Epoch: w.epoch, Seq: w.c.NextSeq()}
	for i, p := range ps {
		if st := w.st(p); p.link == nil || (st != core.InSync && st != core.Syncing) {
			errs[i] = ErrLinkDown
			continue
		}
		chs[i] = p.link.Send(f)
		w.track(p, f, true)
	}
	w.mu.Unlock()
	for i, ch := range chs {
		if ch == nil {
			continue
		}
		if a := <-ch; a.Err != nil {
			errs[i] = a.Err
			continue
		}
		ps[i].unfl.flushed(f.Seq)
	}
	return errs
}
