package replica

import (
	"errors"

	"github.com/metrolun/metrolun/replica/core"
)

// When the writer's own store fails (DESIGN.md Failures, "Storage
// fails"): a write, unmap or flush that failed here was not sent to any
// replica, so the initiator gets the error (never GOOD) and the
// replicas keep the old bytes. This site's image, though, may now differ
// from theirs: part of a write landed, or a write-back failed and the
// kernel dropped pages that the replicas hold. Such a copy must not stay
// the source the others are resynced from. So the writer:
//
//  1. marks this site diverged, persistently: the writer marker stays
//     (the stop is unclean), and the receiver reports FlagDiverged to the
//     next writer, which compares every region with it and copies those
//     that differ (or that its store cannot read: lost regions);
//  2. hands the writer role to an in-sync replica through the cluster
//     (a planned move, Control's WriterMover), which then drops and
//     resyncs this site as in 1.
//
// With no in-sync replica to take over, the writer stays: its store's
// sticky errors (LocalFile) keep failing what it cannot serve. I1-I4 hold:
// nothing acknowledged is missing anywhere in sync (the failed operation
// was not acknowledged), and no in-sync site holds bytes another lacks
// once this one is out.

// WriterMover is implemented by a Control that can move the writer role
// to another in-sync data site (a planned move, as `metrolun promote`).
type WriterMover interface {
	// MoveWriter moves the writer of epoch away from this site to an
	// in-sync data site other than it.
	MoveWriter(epoch uint64, to string) error
}

// localFailed is called (w.mu held) when an operation failed on this
// site's own store.
func (w *writer) localFailed(f *Frame, err error) {
	w.log.Error("the writer's own store failed; this site's image may differ from the replicas': marking it diverged and handing the writer role over",
		"kind", f.Kind, "offset", f.Offset, "bytes", frameBytes(f), "error", err)
	w.tainted = true
	w.s.markDiverged()
	if w.steppingDown || w.closed {
		return
	}
	var to string
	for _, p := range w.peers {
		if w.st(p) == core.InSync && p.link != nil && !p.gone {
			to = p.name
			break
		}
	}
	mv, ok := w.s.cfg.Control.(WriterMover)
	if to == "" || !ok {
		w.log.Warn("no in-sync replica can take over; staying writer with a failing store")
		return
	}
	if n := frameBytes(f); n > 0 {
		// Until the hand-over, reads here of what the failed write may
		// have torn fail, rather than show bytes the replicas do not
		// have (I4); the next writer's full compare rewrites them.
		w.s.cfg.Store.wb.lose(f.Offset, n)
	}
	w.steppingDown = true
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		w.stepDown(mv, to)
	}()
}

// handOverAfterPowerLoss (w.mu held) hands the writer role to the in-sync
// replica p because this host restarted since this site was last the
// writer (Site.powerLost): unlike a process that died, a host that lost
// power lost the writes it had not flushed, which p acknowledged and
// holds. Comparing p with this site's bytes winning, as a writer does
// with an unclean marker, would undo them (I1); so this site steps down
// as after a store failure and the new writer compares it in full.
func (w *writer) handOverAfterPowerLoss(p *peer) {
	why := "this host restarted since it was the writer, so its unflushed writes are gone"
	if !w.s.powerLost.Load() {
		why = "this site's store lost a write-back before it stopped"
	}
	w.log.Warn(why+": handing the writer role to an in-sync replica, which then compares this site in full",
		"to", p.name, "lost_regions", w.s.cfg.Store.Lost())
	w.tainted = true
	w.s.markDiverged()
	if w.steppingDown || w.closed {
		return
	}
	mv, ok := w.s.cfg.Control.(WriterMover)
	if !ok {
		w.log.Warn("the cluster cannot move the writer role; staying writer")
		return
	}
	w.steppingDown = true
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		w.stepDown(mv, p.name)
	}()
}

// stepDown moves the writer role to the replica to, as a planned move:
// operations in flight finish, new ones wait for the new writer.
func (w *writer) stepDown(mv WriterMover, to string) {
	hold := w.s.cfg.ReplicaTimeout + w.s.cfg.Lease
	err := w.s.Handover(hold, func() error { return mv.MoveWriter(w.epoch, to) })
	if err != nil && !errors.Is(err, errNotWriter) {
		w.log.Error("handing the writer role over after a store failure", "to", to, "error", err)
		w.mu.Lock()
		w.steppingDown = false // the next failure tries again
		w.mu.Unlock()
		return
	}
	w.log.Warn("writer role handed over after a store failure", "to", to)
}

// markDiverged records that this site's image may differ from the
// in-sync copies: the next writer compares it in full (FlagDiverged) and
// the writer marker stays until a resync ends.
func (s *Site) markDiverged() {
	if err := s.setMarker(); err != nil {
		s.log.Error("could not persist that this site diverged", "error", err)
	}
	s.markerStale.Store(true)
	s.recv.setDiverged()
}
