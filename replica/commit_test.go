package replica

import (
	"bytes"
	"testing"
	"time"
)

// TestCommitRidesOnDataFrames: while writes follow each other, each data
// frame carries the commit point to its replica and the committer sends
// (almost) no commit frame of its own; once the writes stop, the last
// commit point still reaches the replica within commitIdle, so its
// readers see the last write (I3 with the fast path of issue 13).
func TestCommitRidesOnDataFrames(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	a, b := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	until(t, "b lease", 5*time.Second, func() bool { ok, _ := b.recv.leaseValid(time.Now()); return ok })
	w := a.activeWriter()
	w.mu.Lock()
	before := w.commitFrames
	w.mu.Unlock()
	const writes = 400
	var last []byte
	for i := range writes {
		last = block(uint64(5000+i), 4096)
		if err := a.WriteAt(last, int64(i%64)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	// The last write's commit point travels on its own, after commitIdle.
	got := make([]byte, 4096)
	off := int64((writes-1)%64) * 4096
	if err := b.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, last) {
		t.Fatal("the replica does not show the last acknowledged write")
	}
	w.mu.Lock()
	sent := w.commitFrames - before
	w.mu.Unlock()
	b.recv.mu.Lock()
	carried := b.recv.carriedCommits
	b.recv.mu.Unlock()
	t.Logf("%d sequential writes: %d commit points carried on data frames, %d commit frames (one per write before issue 13)", writes, carried, sent)
	if carried < writes/2 {
		t.Fatalf("only %d of %d writes carried the commit point", carried, writes)
	}
	// A write that waits for a busy machine longer than commitIdle lets
	// the fallback go; most must ride on the next frame.
	if sent > writes/4 {
		t.Fatalf("%d commit frames for %d writes: the commit point does not ride on data frames", sent, writes)
	}
}
