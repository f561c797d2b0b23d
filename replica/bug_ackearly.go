//go:build metrolun_bug_ackearly

package replica

// bugAckEarly: this build is broken on purpose (see bug_none.go). Its
// writer acknowledges writes that no replica has yet, so a writer crash
// loses acknowledged data (I1) and a replica may serve reads older than
// an acknowledged write (I3).
const bugAckEarly = true
