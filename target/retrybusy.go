package target

import "errors"

// BUSY for single-path initiators at a transition.
//
// While the cluster moves its writer, a site answers NOT READY,
// ASYMMETRIC ACCESS STATE TRANSITION (no lease yet), and a command whose
// outcome became unknown when the old writer went away answers ABORTED
// COMMAND. A multipath host wants exactly that: its ALUA handler retries
// the transition and fails a path over. An initiator with one path in
// the whole cluster has nowhere else to go, and some of them turn those
// answers into an I/O error at once: QEMU's own iSCSI driver (libiscsi)
// retries BUSY, TASK SET FULL and unit attentions, but fails the request
// on NOT READY and ABORTED COMMAND, so a VM saw two to four failed writes
// at every unplanned failover.
//
// So, for an initiator that SinglePath says has no other path, a command
// that met a transition is answered BUSY, which every initiator retries
// after a pause (QEMU backs off exponentially from 8 ms over seven
// retries, 43 s on average in all), but only when running it again is
// harmless: the opcodes marked fRetrySafe. BUSY says the command was not
// carried out, which for an outcome-unknown write is not certain; a
// retried plain write or UNMAP has the effect it would have had, which is
// what an initiator that retries ABORTED COMMAND (Linux does) relies on
// as well. COMPARE AND WRITE, persistent reservations, EXTENDED COPY and
// the like keep their sense data: run twice, they could answer
// differently. Standby and unavailable states keep NOT READY too: they
// do not end by themselves within a failover.

// SinglePathFunc reports whether an initiator port (name, and ISID in
// hex as RedirectFunc gets it) has no path to the LU other than through
// this site: no session at another site, live or just ended, other than
// this very port redirected. Config.SinglePath.
type SinglePathFunc func(initiator, isid string) bool

// retryBusy returns BUSY in place of res when the rule above applies,
// else res.
func (lu *LU) retryBusy(n *Nexus, o *opInfo, res *scsiResult) *scsiResult {
	if lu.singlePath == nil || n == nil || o == nil || o.flags&fRetrySafe == 0 || !transientSense(res) {
		return res
	}
	if !lu.singlePath(n.Initiator, hex6(n.ISID)) {
		return res
	}
	if lu.onBusy != nil {
		lu.onBusy()
	}
	return &scsiResult{status: statusBusy, release: res.release}
}

// transientSense: res is a transition's NOT READY, or ABORTED COMMAND for
// an outcome the volume does not know.
func transientSense(res *scsiResult) bool {
	if res == nil || res.status != statusCheckCondition || len(res.sense) < 14 {
		return false
	}
	key := res.sense[2] & 0x0f
	asc := uint16(res.sense[12])<<8 | uint16(res.sense[13])
	switch {
	case key == senseNotReady && asc == ascNotReadyTransition:
		return true
	case key == senseAbortedCommand && res.volErr != nil && errors.Is(res.volErr, ErrOutcomeUnknown):
		return true
	}
	return false
}
