package replica

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// The write order: every operation takes the next sequence number under
// w.mu, is applied here, sent to the replicas and answered once every
// in-sync one has it (DESIGN.md write path); settle and the committer make
// it visible to readers here and at the replicas.

type pendingWait struct {
	p  *peer
	ch <-chan Ack // nil: the peer is being dropped, wait for that
}

// order runs one operation in the write order: it takes the next
// sequence number for f, applies it locally with apply (which may decline
// with errSkip, a miscompare), sends it to the replicas and waits for
// every in-sync one. origin is the site that forwarded it ("" for a local
// one): that site gets a FlagRef frame and is not waited for here.
func (w *writer) order(f *Frame, origin string, apply func() error) error {
	w.mu.Lock()
	if w.closed || w.paused || !w.ready() || !w.leaseOK() {
		w.mu.Unlock()
		return errNotWriter
	}
	w.seq++
	f.Epoch, f.Seq = w.epoch, w.seq
	if w.markerErr != nil {
		w.mu.Unlock()
		return fmt.Errorf("writer marker: %w", w.markerErr)
	}
	w.rmu.Lock()
	if err := apply(); err != nil {
		w.rmu.Unlock()
		w.seq--
		if !errors.Is(err, errMiscompare) {
			// Under w.mu, as localFailed requires: a stop() that ran
			// between here and an unlocked call would see the writer
			// untainted and clear the marker this failure sets, and the
			// next writer would trust this site's bitmap over its torn
			// bytes (I4).
			w.localFailed(f, err)
		}
		w.mu.Unlock()
		return err
	}
	w.inflight.Add(1)
	defer w.inflight.Done()
	seq := f.Seq
	w.unsettled = append(w.unsettled, seq)
	var busy *busyRange
	if n := frameBytes(f); n > 0 {
		busy = &busyRange{off: f.Offset, n: n, done: make(chan struct{})}
		w.busy = append(w.busy, busy)
	}
	w.rmu.Unlock()
	settling := false
	defer func() {
		if !settling && busy != nil {
			// Failed: the writer is going down; readers here need not
			// wait for a commit that will not come.
			w.release(busy)
		}
	}()
	var originCh <-chan Ack
	var originPeer *peer
	var waits []pendingWait
	var dirty []*peer
	for _, p := range w.peers {
		switch p.state {
		case peerInSync:
			if p.name == origin {
				ref := *f
				ref.Data, ref.Flags = nil, f.Flags|FlagRef // f.Ref names the origin's operation
				// The origin answers its initiator; its ack only makes
				// the write visible (settle).
				originCh, originPeer = p.link.Send(&ref), p
				w.track(p, &ref, true)
				continue
			}
			waits = append(waits, pendingWait{p, p.link.Send(f)})
			w.track(p, f, true)
		case peerDrop:
			waits = append(waits, pendingWait{p: p})
		case peerSyncing:
			if f.Kind == FrameFlush || f.Kind == FrameMeta || f.Offset < p.cursor {
				p.link.Send(f) // a failure marks it dirty (onDown)
				w.track(p, f, false)
				if p.link.Err() != nil {
					// Refused by a link that had failed already: onDown
					// ran before and will not see this one.
					dirty = append(dirty, p)
				}
			} else {
				dirty = append(dirty, p)
			}
		default:
			dirty = append(dirty, p)
		}
	}
	// Marked before w.mu is released: a resync starting meanwhile could
	// otherwise pass these regions before they are marked, and end with
	// the peer in sync without this write (I4).
	var errs []error
	for _, p := range dirty {
		if err := p.mark(f.Offset, frameBytes(f)); err != nil && !p.gone {
			errs = append(errs, fmt.Errorf("dirty bitmap for %s: %w", p.name, err))
		}
	}
	w.mu.Unlock()
	for _, pw := range waits {
		if bugAckEarly && pw.ch != nil {
			continue // a known bug, for the torture test (bug_none.go)
		}
		if pw.ch != nil {
			a := <-pw.ch
			if a.Err == nil {
				if f.Kind == FrameFlush {
					pw.p.unfl.flushed(seq)
				}
				continue
			}
			// linkDown marked the frame before a.Err came; marking again
			// costs nothing and says whether that is on disk.
			if err := pw.p.mark(f.Offset, frameBytes(f)); err != nil && !w.isGone(pw.p) {
				errs = append(errs, fmt.Errorf("dirty bitmap for %s: %w", pw.p.name, err))
			}
			w.failPeer(pw.p, a.Err)
		} else if err := pw.p.mark(f.Offset, frameBytes(f)); err != nil && !w.isGone(pw.p) {
			errs = append(errs, fmt.Errorf("dirty bitmap for %s: %w", pw.p.name, err))
		}
		// The replica missed this write (marked above, before its drop
		// and before the answer). It may go on only once the cluster
		// has dropped it (I2) and its lease has run out (I3).
		if !w.awaitDrop(pw.p) {
			errs = append(errs, fmt.Errorf("replica %s unreachable and not dropped", pw.p.name))
			continue
		}
	}
	if len(errs) == 0 && !w.leaseOK() && !w.leaseReturns() {
		// The epoch may have ended while the replicas answered: a writer
		// without its lease acknowledges nothing (I2).
		errs = append(errs, errors.New("writer lease lapsed before the answer"))
	}
	if len(errs) > 0 {
		w.mu.Lock()
		w.tainted = true
		w.mu.Unlock()
		// Applied here and perhaps elsewhere: not a clean failure.
		return &indeterminate{err: errors.Join(errs...)}
	}
	settling = true
	if originCh == nil {
		w.settle(seq, busy)
		return nil
	}
	go func() {
		if a := <-originCh; a.Err != nil {
			// The origin could not apply its own write (its store
			// failed): linkDown marked the range for it; it answers its
			// initiator with the error and leaves the in-sync set.
			if err := originPeer.mark(f.Offset, frameBytes(f)); err != nil && !w.isGone(originPeer) {
				w.log.Error("dirty bitmap", "replica", originPeer.name, "error", err)
			}
			w.failPeer(originPeer, a.Err)
			if !w.awaitDrop(originPeer) {
				if busy != nil {
					w.release(busy)
				}
				return
			}
		} else if f.Kind == FrameFlush {
			originPeer.unfl.flushed(seq)
		}
		w.settle(seq, busy)
	}()
	return nil
}

// carriedDone: one more in-sync peer is connected clean or dropped.
func (w *writer) carriedDone() {
	w.mu.Lock()
	w.carriedLeft--
	last := w.carriedLeft == 0
	w.mu.Unlock()
	if last {
		w.releaseCarried()
	}
}

func (w *writer) releaseCarried() {
	w.mu.Lock()
	bs := w.carriedBusy
	w.carriedBusy = nil
	w.mu.Unlock()
	for _, b := range bs {
		w.release(b)
	}
}

// settle records that seq is on every in-sync site: its range becomes
// readable here, and the commit point the replicas get moves on.
func (w *writer) settle(seq uint64, busy *busyRange) {
	w.mu.Lock()
	if w.settledAt == nil {
		w.settledAt = make(map[uint64]bool)
	}
	w.settledAt[seq] = true
	for len(w.unsettled) > 0 && w.settledAt[w.unsettled[0]] {
		delete(w.settledAt, w.unsettled[0])
		w.unsettled = w.unsettled[1:]
	}
	c := w.seq
	if len(w.unsettled) > 0 {
		c = w.unsettled[0] - 1
	}
	advanced := c > w.commit
	if advanced {
		w.commit = c
	}
	w.mu.Unlock()
	if busy != nil {
		w.release(busy)
	}
	if advanced {
		select {
		case w.commitSig <- struct{}{}:
		default:
		}
	}
}

// committer tells the replicas how far the stream is on every in-sync
// site, so they may show those writes to their readers.
// It also ticks, for frames outside the write order (resync copies)
// and for links that came up since.
func (w *writer) committer() {
	sent := map[*Link]uint64{}
	tick := time.NewTicker(max(w.s.cfg.Lease/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-w.commitSig:
		case <-tick.C:
		}
		w.mu.Lock()
		c := w.seq
		if len(w.unsettled) > 0 {
			c = w.unsettled[0] - 1
		}
		var links []*Link
		for _, p := range w.peers {
			if p.link != nil && (p.state == peerInSync || p.state == peerSyncing) {
				links = append(links, p.link)
			}
		}
		w.mu.Unlock()
		live := map[*Link]uint64{}
		for _, l := range links {
			if sent[l] < c {
				l.Grant(&Frame{Kind: FrameCommit, Epoch: w.epoch, Seq: c})
				live[l] = c
			} else {
				live[l] = sent[l]
			}
		}
		sent = live
	}
}

// busyRange is a write applied here but not yet on every in-sync site.
type busyRange struct {
	off, n int64
	done   chan struct{}
}

func (w *writer) release(r *busyRange) {
	w.rmu.Lock()
	w.busy = slices.DeleteFunc(w.busy, func(x *busyRange) bool { return x == r })
	w.rmu.Unlock()
	close(r.done)
}

// readSettled reads p at off from the local store once no write to it
// is unsettled, with no write applied between the check and the read.
func (w *writer) readSettled(p []byte, off int64) error {
	n := int64(len(p))
	for {
		w.rmu.RLock()
		var wait chan struct{}
		for _, r := range w.busy {
			if r.off < off+n && off < r.off+r.n {
				wait = r.done
				break
			}
		}
		if wait == nil {
			err := w.s.cfg.Store.ReadAt(p, off)
			w.rmu.RUnlock()
			return err
		}
		w.rmu.RUnlock()
		<-wait
	}
}

// ready reports whether every in-sync peer is connected (at the start of
// an epoch they are being connected, or dropped). w.mu is held.
func (w *writer) ready() bool {
	for _, p := range w.peers {
		if p.state == peerInSync && p.link == nil {
			return false
		}
	}
	return true
}

func frameBytes(f *Frame) int64 {
	switch f.Kind {
	case FrameWrite, FrameUnmap:
		return int64(f.Length)
	}
	return 0
}
