//go:build !metrolun_bug_shortwrite

package replica

// bugShortWrite makes LocalFile ignore a short write count (what the
// kernel stored of a write is taken for all of it). It is true only in a
// build with the metrolun_bug_shortwrite tag (bug_shortwrite.go), which
// the torture test uses, with storage faults, to prove that it catches
// swallowed storage errors; never in a real build.
const bugShortWrite = false
