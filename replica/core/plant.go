package core

// plant holds known bugs that the tests switch on, one at a time, to prove
// that the scenario tests and the explorer catch them (as the torture test
// catches the metrolun_bug_ackearly build). Every field is false outside
// those tests; nothing else sets them.
var plant struct {
	// ackEarly answers a write without waiting for any replica
	// (bug_ackearly.go's writer): I1, I3.
	ackEarly bool
	// noMarkAhead does not mark a write ahead of a resyncing replica's
	// cursor: the cursor may pass a clean region without copying it (I4,
	// the race fixed in 964e6e3).
	noMarkAhead bool
	// noWaitDropping lets a write go on without a replica that is being
	// dropped: the drop may not commit (I2) and its lease may still let
	// it serve reads older than the write (I3).
	noWaitDropping bool
	// answerBeforeMark answers before the marks of the replicas that miss
	// the write are recorded: a crash between the two forgets them (I4).
	answerBeforeMark bool
	// commitPastUnsettled lets the commit point pass writes that are not
	// on every in-sync site yet (I3: a replica shows them).
	commitPastUnsettled bool
	// dropIgnoresLease resolves a drop as soon as it commits, while the
	// replica may still serve reads under its last lease (I3).
	dropIgnoresLease bool
	// noHandover forgets, after a planned move, the read leases the
	// previous writer granted (1c60b9f): a drop early in the epoch
	// resolves while the replica may still serve reads (I3).
	noHandover bool
	// noLeaseCheck answers without checking the writer lease (8fdb32d):
	// an epoch that ended may still acknowledge (I2).
	noLeaseCheck bool
	// settleBeforeOrigin makes a forwarded write visible before its
	// origin applied it.
	settleBeforeOrigin bool
	// noPiggyback sends no commit point on data frames (a performance
	// bug: only the idle fallback carries it; the tests count frames).
	noPiggyback bool
}
