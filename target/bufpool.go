package target

import (
	"math/bits"
	"sync"
)

// Buffers for data segments and transfers come from power-of-two size
// classes so that a steady workload allocates nothing.
const (
	minBufShift = 9  // 512 B
	maxBufShift = 24 // 16 MiB
)

var bufPools [maxBufShift + 1]sync.Pool

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return minBufShift
	}
	return bits.Len(uint(n - 1))
}

// getBuf returns a buffer of length n; its contents are undefined.
func getBuf(n int) []byte {
	c := bufClass(n)
	if c > maxBufShift {
		return make([]byte, n)
	}
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<c)
}

// putBuf returns b to its pool; b must not be used afterwards.
func putBuf(b []byte) {
	c := cap(b)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	cl := bits.Len(uint(c)) - 1
	if cl < minBufShift || cl > maxBufShift {
		return
	}
	b = b[:0]
	bufPools[cl].Put(&b)
}
