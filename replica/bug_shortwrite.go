//go:build metrolun_bug_shortwrite

package replica

// bugShortWrite: this build is broken on purpose (see
// bug_shortwrite_none.go). Its store takes a short write count for the
// whole write, as the code of issue 12 item 1 did: part of an
// acknowledged write is not on disk.
const bugShortWrite = true
