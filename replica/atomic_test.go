package replica

import (
	"bytes"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLocalFileBlockAtomic: a read that overlaps writes in flight returns,
// for each logical block, either what was there before or what one write
// put there, never a mix, as a disk does for a sector. ext4 gives no such
// guarantee between buffered reads and writes (a read copies the page
// while a write is copying into it), so LocalFile must.
func TestLocalFileBlockAtomic(t *testing.T) {
	v, err := OpenLocal(filepath.Join(t.TempDir(), "lun.img"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	const bs = 4096
	patterns := make([][]byte, 4)
	for i := range patterns {
		patterns[i] = bytes.Repeat([]byte{byte(0x11 * (i + 1))}, bs)
	}
	if err := v.WriteAt(patterns[0], 8*bs, false); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				if err := v.WriteAt(patterns[(i+w)%len(patterns)], 8*bs, false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	deadline := time.Now().Add(2 * time.Second)
	buf := make([]byte, bs)
	torn := 0
	reads := 0
	for ; reads < 300000 && time.Now().Before(deadline) && torn == 0; reads++ {
		if err := v.ReadAt(buf, 8*bs); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, bytes.Repeat(buf[:1], bs)) {
			torn++
		}
	}
	stop.Store(true)
	wg.Wait()
	if torn > 0 {
		t.Fatalf("a read of one block returned a mix of two writes (after %d reads)", reads)
	}
	t.Logf("%d reads, none torn", reads)
}

// TestBlockLocksOrder: the locks a range takes are ascending and distinct,
// wrapped ranges included, so two ranges cannot deadlock.
func TestBlockLocksOrder(t *testing.T) {
	var b blockLocks
	for _, c := range []struct{ off, n int64 }{
		{0, 1}, {65535, 2}, {60 << 16, 8 << 16}, {63<<16 + 100, 1 << 16}, {5 << 16, 64 << 16}, {0, 1 << 30}, {7, 0},
	} {
		var got []int
		b.each(c.off, c.n, func(m *sync.RWMutex) {
			for i := range b.mu {
				if &b.mu[i] == m {
					got = append(got, i)
				}
			}
		})
		want := map[int]bool{}
		if c.n > 0 {
			for s := c.off >> lockStripeShift; s <= (c.off+c.n-1)>>lockStripeShift; s++ {
				want[int(s%lockStripes)] = true
			}
		}
		if len(got) != len(want) {
			t.Fatalf("range %+v: locks %v, want the set %v", c, got, want)
		}
		for i, g := range got {
			if !want[g] || i > 0 && got[i-1] >= g {
				t.Fatalf("range %+v: locks %v not ascending or not the range's", c, got)
			}
		}
	}
}
