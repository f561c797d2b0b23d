package replica

import (
	"os"
	"syscall"
)

// storeEmpty reports whether st is a regular file that was never written
// to: every byte a hole, so it reads as zeros, the same as any other such
// image. Anything it cannot tell is not empty.
func storeEmpty(st Store) bool {
	lf, ok := st.(*LocalFile)
	if !ok || lf.block {
		return false
	}
	fi, err := os.Stat(lf.path)
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	return ok && sys.Blocks == 0
}
