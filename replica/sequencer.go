package replica

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/metrolun/metrolun/internal/grid"
	"github.com/metrolun/metrolun/internal/stamp"
	"github.com/metrolun/metrolun/replica/core"
)

// The write order: every operation takes the next sequence number under
// w.mu, is applied here, sent to the replicas and answered once every
// in-sync one has it (DESIGN.md write path); the core (replica/core)
// decides, order and step act, and the committer makes the writes visible
// to readers at the replicas.

// waiter is an operation waiting for the core's answer (order).
type waiter struct {
	ch   chan core.Answer // the core's answers for it: Poll, then the verdict
	busy *busyRange       // its range here, released when it settles or fails
}

// commitIdle is how long a moved commit point waits for a data frame to
// carry it to a replica before the committer sends it on its own: under
// load every frame carries it; an idle writer's replicas learn it within
// this. A writer takes it when it starts (tests widen it so that a loaded
// machine's slow writes still find the commit point waiting).
var commitIdle = time.Millisecond

// kindOf is the core's kind of a stream frame.
func kindOf(f *Frame) core.Kind {
	switch f.Kind {
	case FrameWrite:
		return core.Write
	case FrameUnmap:
		return core.Unmap
	case FrameFlush:
		return core.Flush
	}
	return core.Meta
}

// order runs one operation in the write order: it takes the next
// sequence number for f, applies it locally with apply (which may decline
// with errSkip, a miscompare), sends it to the replicas and waits for
// every in-sync one. origin is the site that forwarded it ("" for a local
// one): that site gets a FlagRef frame and is not waited for here.
//
// The decisions are the core's (replica/core): which replica gets the
// frame, which misses it and is marked dirty, when the answer may be
// given and when the write becomes visible. This loop feeds it the
// replicas' answers and acts on its Ready (step).
func (w *writer) order(f *Frame, origin string, apply func() error) error {
	sk := stamp.Cmd
	if origin != "" {
		sk = stamp.Fwd
	}
	stamp.Mark(sk, "order")
	w.mu.Lock()
	stamp.Mark(sk, "order.locked")
	if w.closed || w.paused {
		w.mu.Unlock()
		return errNotWriter
	}
	seq, err := w.c.Begin()
	if err != nil {
		w.mu.Unlock()
		return errNotWriter
	}
	if w.markerErr != nil {
		w.c.Abort(seq)
		w.mu.Unlock()
		return fmt.Errorf("writer marker: %w", w.markerErr)
	}
	f.Epoch, f.Seq = w.epoch, seq
	w.rmu.Lock()
	if err := apply(); err != nil {
		w.rmu.Unlock()
		w.c.Abort(seq)
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
	stamp.Mark(sk, "local.done")
	w.inflight.Add(1)
	defer w.inflight.Done()
	wt := &waiter{ch: make(chan core.Answer, 2)}
	if n := frameBytes(f); n > 0 {
		wt.busy = &busyRange{off: f.Offset, n: n, done: make(chan struct{})}
		w.busy = append(w.busy, wt.busy)
	}
	w.rmu.Unlock()
	w.waiters[seq] = wt
	op := core.Op{Kind: kindOf(f), Off: f.Offset, N: frameBytes(f)}
	var originPeer *peer
	if origin != "" {
		for _, p := range w.peers {
			if p.name == origin {
				op.Origin, originPeer = p.id, p
			}
		}
	}
	type ackWait struct {
		p  *peer
		ch <-chan Ack
	}
	var acks []ackWait
	var originCh <-chan Ack
	for _, sd := range w.c.Admit(seq, op) {
		p := w.byID(sd.Peer)
		g := f
		if sd.Ref {
			ref := *f
			// f.Ref names the origin's operation: the origin answers
			// its initiator; its ack only makes the write visible.
			ref.Data, ref.Flags = nil, f.Flags|FlagRef
			g = &ref
		}
		if sd.Commit != 0 {
			c := *g
			c.Commit = sd.Commit
			g = &c
		}
		ch := p.link.Send(g)
		w.track(p, g, sd.Wait)
		switch {
		case sd.Ref:
			originCh = ch
		case sd.Wait:
			acks = append(acks, ackWait{p, ch})
		case p.link.Err() != nil:
			// A resyncing replica's link that had failed already
			// refused it: onDown ran before and will not see it.
			w.c.SendFailed(seq, p.id)
		}
	}
	// The marks for the replicas that miss it are made before w.mu is
	// released: a resync starting meanwhile could otherwise pass these
	// regions before they are marked, and end with the peer in sync
	// without this write (I4).
	w.step()
	w.mu.Unlock()
	stamp.Mark(sk, "sent")
	for _, a := range acks {
		var r Ack
		if bugAckEarly {
			r = Ack{} // a known bug, for the torture test (bug_none.go)
		} else {
			r = <-a.ch
		}
		stamp.Mark(sk, "ack.got")
		w.mu.Lock()
		if r.Err == nil && f.Kind == FrameFlush {
			a.p.unfl.flushed(seq)
		}
		w.ack(seq, a.p, r.Err)
		w.mu.Unlock()
	}
	var poll <-chan time.Time
	var closing <-chan struct{}
	for {
		var a core.Answer
		select {
		case a = <-wt.ch:
		case <-poll:
			w.mu.Lock()
			w.c.Tick()
			w.step()
			w.mu.Unlock()
			continue
		case <-closing:
			w.mu.Lock()
			w.c.GiveUp()
			w.step()
			w.mu.Unlock()
			closing = nil
			continue
		}
		if a.Poll {
			// The writer lease lapsed while the replicas answered: the
			// core answers once it comes back for this epoch, or fails
			// the write after a lease.
			t := time.NewTicker(5 * time.Millisecond)
			defer t.Stop()
			poll, closing = t.C, w.s.closing
			continue
		}
		if a.Err != nil {
			w.mu.Lock()
			w.tainted = true
			w.mu.Unlock()
			// Applied here and perhaps elsewhere: not a clean failure.
			return &indeterminate{err: a.Err}
		}
		break
	}
	stamp.Mark(sk, "order.answered")
	if originCh != nil {
		w.awaitOrigin(originPeer, originWait{seq: seq, ch: originCh, flush: f.Kind == FrameFlush})
	}
	return nil
}

// originWait is a forwarded operation's acknowledgement by its origin,
// which the answer does not wait for (the origin answers its initiator)
// but which makes the write visible (order).
type originWait struct {
	seq   uint64
	ch    <-chan Ack
	flush bool
}

// originAckStarts counts the acknowledgement goroutines started (tests).
var originAckStarts atomic.Int64

// originIdle is how long an origin's acknowledgement goroutine waits for
// more work before it ends.
const originIdle = time.Second

// awaitOrigin has o handed to the core once p acknowledges it, by p's
// acknowledgement goroutine (originAcks), which it starts if none runs.
// One goroutine per origin, not one per operation: none is created per
// write, and acknowledgements that arrive together are handed over in
// one wake-up.
func (w *writer) awaitOrigin(p *peer, o originWait) {
	p.omu.Lock()
	p.oq = append(p.oq, o)
	start := !p.orunning
	p.orunning = true
	if p.osig == nil {
		p.osig = make(chan struct{}, 1)
	}
	p.omu.Unlock()
	if start {
		originAckStarts.Add(1)
		go w.originAcks(p)
		return
	}
	select {
	case p.osig <- struct{}{}:
	default:
	}
}

// originAcks hands p's acknowledgements of its forwarded operations to
// the core, in the order they were queued (the link acknowledges in
// sequence order, so none waits for a later one). It ends after
// originIdle without work or once the writer stopped and nothing is
// queued; a link that fails answers every frame it holds, so no wait
// outlives the link.
func (w *writer) originAcks(p *peer) {
	idle := time.NewTimer(originIdle)
	defer idle.Stop()
	var q []originWait
	for {
		p.omu.Lock()
		q, p.oq = p.oq, q[:0]
		if len(q) == 0 {
			select {
			case <-w.ctx.Done():
				p.orunning = false
				p.omu.Unlock()
				return
			default:
			}
			p.omu.Unlock()
			idle.Reset(originIdle)
			select {
			case <-p.osig:
				continue
			case <-w.ctx.Done():
			case <-idle.C:
			}
			p.omu.Lock()
			if len(p.oq) == 0 {
				p.orunning = false
				p.omu.Unlock()
				return
			}
			p.omu.Unlock()
			continue
		}
		p.omu.Unlock()
		for i, o := range q {
			a := <-o.ch
			stamp.Mark(stamp.Fwd, "origin.ack.got")
			w.mu.Lock()
			if a.Err == nil && o.flush {
				p.unfl.flushed(o.seq)
			}
			// A failure: the origin could not apply its own write (its
			// store failed); it answers its initiator with the error,
			// and the core drops it with the range marked.
			w.ack(o.seq, p, a.Err)
			w.mu.Unlock()
			stamp.End(stamp.Fwd)
			q[i] = originWait{}
		}
	}
}

// ack hands p's answer to the frame of seq to the core (w.mu held). A
// failed answer drops p, logged with its error here.
func (w *writer) ack(seq uint64, p *peer, err error) {
	if err != nil && w.c.Fail(p.id) {
		w.dropStarted(p, err)
	}
	w.c.Ack(seq, p.id, err)
	w.step()
}

// errAnswerFailed is why the core drops a replica on its own (ack passes
// the answer's error when it can).
var errAnswerFailed = errors.New("its answer to a frame failed")

// step acts on the core's decisions (w.mu held): marks first, so that
// nothing is answered before the regions a replica misses are recorded;
// then drops, answers, and the ranges that became readable.
func (w *writer) step() {
	for w.c.HasReady() {
		rd := w.c.Ready()
		for _, m := range rd.Marks {
			p := w.byID(m.Peer)
			if p == nil {
				continue
			}
			if err := p.mark(m.Off, m.N); err != nil && !p.gone {
				if m.Must {
					w.c.MarkFailed(m.Seq, m.Peer, err)
				} else {
					w.log.Error("dirty bitmap", "replica", p.name, "error", err)
				}
			}
		}
		for _, id := range rd.Drops {
			if p := w.byID(id); p != nil {
				w.dropStarted(p, errAnswerFailed)
			}
		}
		for _, a := range rd.Answers {
			if wt := w.waiters[a.Seq]; wt != nil {
				wt.ch <- a
			}
		}
		for _, seq := range append(rd.Settled, rd.Released...) {
			if wt := w.waiters[seq]; wt != nil {
				delete(w.waiters, seq)
				if wt.busy != nil {
					w.release(wt.busy)
				}
			}
		}
		if rd.CommitMoved {
			w.commitTimer.Reset(w.commitIdle)
		}
		w.c.Advance(rd)
	}
}

// byID finds a peer by its core ID (w.mu held).
func (w *writer) byID(id core.PeerID) *peer {
	for _, p := range w.peers {
		if p.id == id {
			return p
		}
	}
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
	w.carriedOut = true
	w.mu.Unlock()
	// Not inline: startWriter may run this under s.mu.
	go w.s.notify()
	for _, b := range bs {
		w.release(b)
	}
}

// committer sends the commit point to replicas that no data frame
// carried it to within commitIdle (the core decides which), so they may
// show those writes to their readers. It also ticks, for frames outside
// the write order (resync copies) and for links that came up since. The
// tick is on the process's grid (internal/grid), with its other periodic
// work: an idle process pays per wake-up, not per task.
func (w *writer) committer() {
	tick := grid.NewTicker(w.s.cfg.Lease / 4)
	defer tick.Stop()
	defer w.commitTimer.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-tick.C:
		case <-w.commitTimer.C:
		}
		w.mu.Lock()
		w.commitWakes++
		fs, wait := w.c.CommitsDue()
		if wait > 0 {
			w.commitTimer.Reset(wait)
		}
		type out struct {
			l   *Link
			seq uint64
		}
		var outs []out
		for _, c := range fs {
			if p := w.byID(c.Peer); p != nil && p.link != nil {
				outs = append(outs, out{p.link, c.Seq})
			}
		}
		w.commitFrames += len(outs)
		w.mu.Unlock()
		for _, o := range outs {
			o.l.Grant(&Frame{Kind: FrameCommit, Epoch: w.epoch, Seq: o.seq})
		}
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

// tryReadSettled is readSettled when no write to the range is
// unsettled, and false (nothing read) when readSettled would wait. It
// does not wait for rmu either: an apply holds it for as long as the
// store takes, a flush included.
func (w *writer) tryReadSettled(p []byte, off int64) (bool, error) {
	n := int64(len(p))
	if !w.rmu.TryRLock() {
		return false, nil
	}
	defer w.rmu.RUnlock()
	if slices.ContainsFunc(w.busy, func(r *busyRange) bool { return r.off < off+n && off < r.off+r.n }) {
		return false, nil
	}
	return true, w.s.cfg.Store.ReadAt(p, off)
}

// ready reports whether every in-sync peer is connected (at the start of
// an epoch they are being connected, or dropped). w.mu is held.
func (w *writer) ready() bool { return w.c.Linked() }

func frameBytes(f *Frame) int64 {
	switch f.Kind {
	case FrameWrite, FrameUnmap:
		return int64(f.Length)
	}
	return 0
}
