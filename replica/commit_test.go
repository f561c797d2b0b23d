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
// readers see the last write (I3 with the fast path of issue 13). The
// committer goroutine is not woken for a commit point that rides.
func TestCommitRidesOnDataFrames(t *testing.T) {
	// With the 1 ms of production, a loaded machine (-race, load 4 and
	// more) took longer than that between writes often enough to fail
	// the counts below: the committer then rightly sends the point on its
	// own. 50 ms keeps what is tested (a point rides on the next frame,
	// the committer is not woken for one that does, the last one still
	// goes on its own) while a write takes less. Restored after the
	// cluster's own cleanup (registered first, so it runs last).
	old := commitIdle
	commitIdle = 50 * time.Millisecond
	t.Cleanup(func() { commitIdle = old })
	tc := newTestCluster(t, 1<<20, "a", "b")
	a, b := tc.writerAndReplica()
	w := a.activeWriter()
	w.mu.Lock()
	before, wakesBefore := w.commitFrames, w.commitWakes
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
	sent, wakes := w.commitFrames-before, w.commitWakes-wakesBefore
	w.mu.Unlock()
	b.recv.mu.Lock()
	carried := b.recv.carriedCommits
	b.recv.mu.Unlock()
	t.Logf("%d sequential writes: %d commit points carried on data frames, %d commit frames (one per write before issue 13), the committer woke %d times (once per write before the commit timer)", writes, carried, sent, wakes)
	if carried < writes/2 {
		t.Fatalf("only %d of %d writes carried the commit point", carried, writes)
	}
	// A write that waits for a busy machine longer than commitIdle lets
	// the fallback go; most must ride on the next frame.
	if sent > writes/4 {
		t.Fatalf("%d commit frames for %d writes: the commit point does not ride on data frames", sent, writes)
	}
	// Nor does the committer wake for a commit point the next frame
	// carries (its ticks, every lease/4, and the fallbacks above aside).
	if wakes > writes/4 {
		t.Fatalf("the committer woke %d times for %d writes", wakes, writes)
	}
}
