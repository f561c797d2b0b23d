package replica

import "errors"

// Settling a forwarded operation whose writer went away.
//
// A site forwards a write to the writer and waits for the answer. When the
// connection to the writer ends first (kill -9, a crash, a cut), the write
// may or may not have been ordered, and the site used to answer ABORTED
// COMMAND at once: an unknown outcome. Linux retries that; QEMU's own
// initiator and others fail the write to the guest.
//
// When this site becomes the writer itself (in a cluster of two data
// sites it always does), the outcome is knowable here, because the old
// writer made a forwarded write visible only once its origin had applied
// the reference to it (FlagRef, receiver.apply: fwdOp.applied), and this
// site's store is what the new writer serves and copies to the others:
//   - applied here: the write is in the new writer's store. It is on every
//     in-sync site once the writer's carried ranges (what this site applied
//     that the old writer never committed) are released, which happens
//     when each in-sync peer has been given them or dropped; the operation
//     then succeeds, without running again.
//   - not applied here: no site ever showed the write to a reader, and no
//     surviving copy keeps it (a replica that applied it is given this
//     site's bytes for that range, carried ranges again). Running it now
//     at the new writer is its first and only visible execution, so it
//     runs, and its result is the answer.
//
// After the receiver's epoch was raised (startWriter, before the writer is
// published), no frame of the old writer applies here any more, so
// fwdOp.isApplied is final when this runs.
//
// Writes, UNMAP and flushes are settled so; COMPARE AND WRITE and the SCSI
// shared record (reservations) are not (their payload was computed from
// state that may have moved since) and keep the unknown outcome. If
// another site becomes the writer, whether it has the operation is not
// known here either: the unknown outcome stands, as it does when the hold
// time ends first.

// settleable reports whether a lost forwarded operation of kind may be
// settled at the new writer.
func settleable(kind uint8) bool {
	return kind == FrameFwdWrite || kind == FrameFwdUnmap || kind == FrameFwdFlush
}

// settleLost settles lost at w, this site's writer: ok reports an answer
// (at, err); !ok means wait (for the carried ranges, or for a writer that
// takes writes).
func (s *Site) settleLost(w *writer, lost *lostForward, local func(*writer) (int, error)) (at int, err error, ok bool) {
	op := lost.op
	op.mu.Lock()
	applied, localErr := op.isApplied, op.localErr
	op.mu.Unlock()
	if localErr != nil {
		// Ordered, and this site's store failed it: as forwarder.do.
		return -1, localErr, true
	}
	if !applied || op.kind == FrameFwdFlush {
		// Never in the order this site took over (or a flush, which is
		// always safe to run again): run it now.
		at, err := local(w)
		if errors.Is(err, errNotWriter) {
			return 0, nil, false
		}
		s.lostSettled.Add(1)
		s.log.Info("forwarded operation whose writer went away: run at this site, the new writer", "kind", op.kind, "offset", op.off, "length", op.n, "error", err)
		return at, err, true
	}
	w.mu.Lock()
	out := w.carriedOut
	w.mu.Unlock()
	if !out {
		return 0, nil, false
	}
	s.lostSettled.Add(1)
	s.log.Info("forwarded operation whose writer went away: already applied here, the new writer", "kind", op.kind, "offset", op.off, "length", op.n)
	return -1, nil, true
}
