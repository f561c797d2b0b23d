package target

// BUSY for single-path initiators at a transition.
//
// While the cluster moves its writer, a site holds operations for a while
// and then answers NOT READY, ASYMMETRIC ACCESS STATE TRANSITION (no
// lease yet). A multipath host wants exactly that: its ALUA handler
// retries the transition and fails a path over. An initiator with one
// path in the whole cluster has nowhere else to go, and some turn it into
// an I/O error at once: QEMU's own iSCSI driver (libiscsi) retries BUSY,
// TASK SET FULL and unit attentions with a backoff (from 8 ms, seven
// times, 43 s on average in all), but fails the request on NOT READY.
//
// So, for an initiator that SinglePath says has no other path, a command
// that met a transition is answered BUSY instead, when running it again
// is harmless: the opcodes marked fRetrySafe. Both answers say the command
// was not carried out, which holds for a transition (the target refused
// it before it touched the medium). ABORTED COMMAND for an unknown outcome
// is not turned into BUSY: BUSY would claim the write was not carried
// out. A site settles most of those itself instead (replica/lostfwd.go).
// COMPARE AND WRITE, persistent reservations, EXTENDED COPY and the like
// keep NOT READY, and so do standby and unavailable states for everyone:
// they do not end by themselves within a failover.

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

// transientSense: res is a transition's NOT READY.
func transientSense(res *scsiResult) bool {
	if res == nil || res.status != statusCheckCondition || len(res.sense) < 14 {
		return false
	}
	key := res.sense[2] & 0x0f
	asc := uint16(res.sense[12])<<8 | uint16(res.sense[13])
	return key == senseNotReady && asc == ascNotReadyTransition
}
