//go:build !metrolun_bug_ackearly

package replica

// bugAckEarly makes the writer answer a write before its replicas have
// acknowledged it. It is true only in a build with the
// metrolun_bug_ackearly tag (bug_ackearly.go), which the torture test
// uses to prove that it catches broken mirroring; never in a real build.
const bugAckEarly = false
