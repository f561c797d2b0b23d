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
	if ok && sys.Blocks == 0 {
		return true
	}
	// The identity block past the LU (identity.go) is allocated; the LU
	// may still be all holes.
	return lf.img != nil && !hasData(lf.f, lf.size)
}
