package replica

import (
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// TestSiteReplicaPowerLossResync: a replica acknowledges writes from its
// page cache (no FUA, no SYNCHRONIZE CACHE), then loses power, which
// takes them. The writer drops it and keeps writing; when the replica is
// back, the resync must copy what the power loss took as well as what it
// missed while away, or it rejoins in sync with other bytes (I4), and a
// later loss of the writer would lose acknowledged data (I1).
func TestSiteReplicaPowerLossResync(t *testing.T) {
	const region = 64 << 10
	fc := newFaultCluster(t, 4<<20, "a", "b")
	a, b := fc.start("a"), fc.start("b")
	fc.c.setWriter("a")
	waitWriter(t, a)
	until(t, "b holds a read lease", 5*time.Second, func() bool { ok, _ := b.recv.leaseValid(time.Now()); return ok })
	holdBackgroundFlush(a)

	// Made durable by a SYNCHRONIZE CACHE: not for the resync to copy.
	for i := range 16 {
		if err := a.WriteAt(block(uint64(i), region), int64(i)*region, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	// Acknowledged by both sites, durable at neither.
	for i := 16; i < 20; i++ {
		if err := a.WriteAt(block(uint64(i), region), int64(i)*region, false); err != nil {
			t.Fatal(err)
		}
	}
	// Durable by itself (FUA): not for the resync to copy either.
	if err := a.WriteAt(block(20, region), 20*region, true); err != nil {
		t.Fatal(err)
	}
	fc.stop("b")
	lost, err := fc.fs["b"].PowerLoss()
	if err != nil {
		t.Fatal(err)
	}
	if lost == 0 {
		t.Fatal("the power loss took nothing at b: the test proves nothing")
	}
	t.Logf("b's power loss took %d pages", lost)

	// The writer drops b and goes on; these it records as missed.
	for i := range 8 {
		if err := a.WriteAt(block(uint64(100+i), region), int64(32+i)*region, false); err != nil {
			t.Fatal(err)
		}
	}
	if fc.c.inSync("b") {
		t.Fatal("b still in sync after a write without it")
	}
	dirty := fc.dirty(a, "b")

	fc.start("b")
	until(t, "b back in sync", 20*time.Second, func() bool {
		p, ok := peerState(a, "b")
		return ok && p.State == peerInSync && fc.c.inSync("b")
	})
	sameFiles(t, fc.sites["a"].img, fc.sites["b"].img)
	if dirty != 4+8 {
		t.Fatalf("the writer recorded %d regions for b, want the 4 it had not flushed and the 8 it missed", dirty)
	}
}

// holdBackgroundFlush keeps s's writer from flushing its replicas by
// itself, so that what they hold unflushed is the test's to decide.
func holdBackgroundFlush(s *Site) {
	w := s.activeWriter()
	w.mu.Lock()
	w.flushEvery = time.Hour
	w.mu.Unlock()
}

// TestUnflushedSet: a flush the peer acknowledged takes out the regions
// written before it was sent and only those; a set that cannot track a
// flush keeps its regions (never fewer than the peer may lack).
func TestUnflushedSet(t *testing.T) {
	const region = 1 << 20
	u := newUnflushed(200*region, region)
	want := func(what string, rs ...int64) {
		t.Helper()
		if got := u.regions(); got != len(rs) {
			t.Fatalf("%s: %d regions, want %v", what, got, rs)
		}
		c := &unflushed{region: u.region, cur: slices.Clone(u.cur), old: slices.Clone(u.old),
			curLo: u.curLo, curHi: u.curHi, oldLo: u.oldLo, oldHi: u.oldHi}
		if got, _ := c.take(); !slices.Equal(got, rs) {
			t.Fatalf("%s: regions %v, want %v", what, got, rs)
		}
	}
	u.add(0, 4096)
	u.add(region-1, 2) // straddles regions 0 and 1
	u.flushSent(10)
	u.add(5*region, 1) // after the flush: not covered by it
	want("flush in flight", 0, 1, 5)
	u.flushed(9) // an older, untracked flush
	want("older flush answered", 0, 1, 5)
	u.flushed(10)
	want("flush answered", 5)

	// Overlapping flushes: the second is not tracked, so what was
	// written between them waits for the next one.
	u.flushSent(11)
	u.add(7*region, 1)
	u.flushSent(12)
	u.add(130*region, 1)
	u.flushed(11)
	want("first of two answered", 7, 130)
	u.flushed(12)
	want("untracked answered", 7, 130)
	u.flushSent(13)
	u.add(9*region, 1)
	u.flushed(14) // a later flush covers the tracked one's regions too
	want("later flush answered", 9)

	// Out of range writes are ignored, not a panic.
	u.add(199*region, 2*region)
	want("tail", 9, 199)

	rs, unknown := u.take()
	if !slices.Equal(rs, []int64{9, 199}) || unknown || u.regions() != 0 {
		t.Fatalf("take: %v %v, then %d regions", rs, unknown, u.regions())
	}
	u.unknown = true
	u.putBack(rs, false)
	if rs, unknown := u.take(); !slices.Equal(rs, []int64{9, 199}) || !unknown {
		t.Fatalf("put back: %v %v", rs, unknown)
	}
	u.unknown = true
	u.flushSent(20)
	u.flushed(20)
	if u.unknown {
		t.Fatal("an acknowledged flush left the peer's state unknown")
	}
}

// TestWriterBackgroundFlush: while writes go on the writer has its
// replicas flush by themselves, so what a power loss there could take
// stays small; once writes stop, one more flush leaves nothing
// unflushed, and an idle writer neither flushes nor wakes up.
func TestWriterBackgroundFlush(t *testing.T) {
	const period = 100 * time.Millisecond
	fc := newFaultCluster(t, 4<<20, "a", "b")
	a, b := fc.start("a"), fc.start("b")
	fc.c.setWriter("a")
	waitWriter(t, a)
	until(t, "b holds a read lease", 5*time.Second, func() bool { ok, _ := b.recv.leaseValid(time.Now()); return ok })
	w := a.activeWriter()
	w.mu.Lock()
	w.flushEvery = period
	w.mu.Unlock()
	counts := func() (wakes, rounds int) {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.flushWakes, w.bgFlushes
	}
	idle := func(what string) {
		t.Helper()
		w0, r0 := counts()
		// An observation window, not a synchronisation: nothing may
		// happen in it.
		for end := time.Now().Add(5 * period); time.Now().Before(end); time.Sleep(period / 4) {
			if w1, r1 := counts(); w1 != w0 || r1 != r0 {
				t.Fatalf("%s: the flusher woke %d times and flushed %d times", what, w1-w0, r1-r0)
			}
		}
	}
	idle("idle writer")

	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if err := a.WriteAt(block(uint64(i), 4096), int64(i%512)*4096, false); err != nil {
				done <- err
				return
			}
		}
	}()
	until(t, "three background flushes under load", 10*time.Second, func() bool {
		_, r := counts()
		return r >= 3
	})
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	until(t, "b flushed everything once writes stopped", 10*time.Second, func() bool {
		p, _ := peerState(a, "b")
		if p.UnflushedRegions != 0 || fc.fs["b"].Unflushed() != 0 {
			return false
		}
		// A write that raced with the last round may have woken the
		// flusher once more; it goes back to sleep finding nothing.
		w.mu.Lock()
		defer w.mu.Unlock()
		return !w.flushDue && len(w.flushSig) == 0
	})
	idle("writer idle again")
	if !fc.c.inSync("b") {
		t.Fatal("b left the in-sync set")
	}
}

// TestSiteReplicaPowerLossUnderLoad: as TestSiteReplicaPowerLossResync,
// with writes (some FUA) and unmaps going on throughout and background
// flushes answered and in flight when the power goes. Until then they go
// to the first half of the LU, afterwards to the second, so that only
// the unflushed record can bring back what the power loss took.
func TestSiteReplicaPowerLossUnderLoad(t *testing.T) {
	const size = 4 << 20
	fc := newFaultCluster(t, size, "a", "b")
	a, b := fc.start("a"), fc.start("b")
	fc.c.setWriter("a")
	waitWriter(t, a)
	until(t, "b holds a read lease", 5*time.Second, func() bool { ok, _ := b.recv.leaseValid(time.Now()); return ok })
	w := a.activeWriter()
	w.mu.Lock()
	w.flushEvery = 100 * time.Millisecond
	w.mu.Unlock()

	stop := make(chan struct{})
	done := make(chan error, 1)
	var ops atomic.Int64
	var half atomic.Int64 // the half the writes go to
	go func() {
		r := rand.New(rand.NewPCG(3, 3))
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			off := half.Load()*size/2 + int64(r.IntN(size/2/4096-4))*4096
			var err error
			if i%16 == 15 {
				err = a.Unmap(off, 8192)
			} else {
				err = a.WriteAt(block(uint64(i), 4096*(1+r.IntN(4))), off, i%8 == 7)
			}
			if err != nil {
				done <- err
				return
			}
			ops.Add(1)
		}
	}()
	until(t, "writes and background flushes", 10*time.Second, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.bgFlushes >= 3
	})
	// The flusher now sleeps: otherwise a round landing between seeing
	// unflushed data at b and its power loss (a loaded machine) leaves
	// nothing to lose. flushWakes moves once the flusher has finished its
	// last round and taken the new period.
	w.mu.Lock()
	w.flushEvery = time.Hour
	wakes := w.flushWakes
	w.mu.Unlock()
	until(t, "the flusher asleep and unflushed data at b", 10*time.Second, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.flushWakes > wakes && fc.fs["b"].Unflushed() >= 8
	})
	fc.stop("b")
	lost, err := fc.fs["b"].PowerLoss()
	if err != nil {
		t.Fatal(err)
	}
	if lost == 0 {
		t.Fatal("the power loss took nothing at b: the test proves nothing")
	}
	t.Logf("b's power loss took %d pages after %d operations", lost, ops.Load())
	until(t, "b dropped", 10*time.Second, func() bool { return !fc.c.inSync("b") })
	half.Store(1)
	n := ops.Load()
	until(t, "writes going on without b", 10*time.Second, func() bool { return ops.Load() > n+100 })
	fc.start("b")
	until(t, "b back in sync", 20*time.Second, func() bool {
		p, ok := peerState(a, "b")
		return ok && p.State == peerInSync && fc.c.inSync("b")
	})
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	sameFiles(t, fc.sites["a"].img, fc.sites["b"].img)
}
