package replica

import (
	"bytes"
	"slices"
	"testing"
	"time"
)

// TryReadAt (target.InlineReader) serves a read on the iSCSI connection's
// reader only when ReadAt would serve it at once: the site is in sync,
// not fenced, holds its lease, and no write to the range is unsettled.
// Anything else is refused with nothing read, and the target calls
// ReadAt where it may wait.

// wantTry checks what TryReadAt of n bytes at off answers.
func wantTry(t *testing.T, s *Site, what string, off int64, n int, ok bool, want []byte) {
	t.Helper()
	got := make([]byte, n)
	done, err := s.TryReadAt(got, off)
	if err != nil {
		t.Fatalf("%s: TryReadAt: %v", what, err)
	}
	if done != ok {
		t.Fatalf("%s: TryReadAt said %v, want %v", what, done, ok)
	}
	if !done && !bytes.Equal(got, make([]byte, n)) {
		t.Fatalf("%s: refused, yet it read", what)
	}
	if done && want != nil && !bytes.Equal(got, want) {
		t.Fatalf("%s: read other data", what)
	}
}

// setInSync replaces the fake cluster's in-sync set and waits until s
// has seen it.
func setInSync(t *testing.T, tc *testCluster, s *Site, names ...string) {
	t.Helper()
	tc.c.mu.Lock()
	tc.c.view.InSync = names
	tc.c.bump()
	tc.c.mu.Unlock()
	until(t, "the site sees the in-sync set", 5*time.Second, func() bool { return slices.Equal(s.currentView().InSync, names) })
}

// TestTryReadAtReplica: at a replica (no writer here; its receiver's
// lease and uncommitted ranges set by hand), a read is served inline
// only with a valid read lease, only in sync and not fenced, and only
// when no applied but uncommitted write overlaps it.
func TestTryReadAtReplica(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	b := tc.start("b")
	data := block(1, 8192)
	if err := b.cfg.Store.WriteAt(data, 0, false); err != nil {
		t.Fatal(err)
	}
	wantTry(t, b, "in sync, no lease", 0, 4096, false, nil)

	r := b.recv
	r.mu.Lock()
	r.leaseEnd, r.leaseEp = time.Now().Add(time.Hour), r.epoch
	r.mu.Unlock()
	wantTry(t, b, "in sync with a lease", 0, 8192, true, data)

	r.mu.Lock()
	r.uncommitted = append(r.uncommitted, appliedRange{seq: 5, off: 4096, n: 4096})
	r.mu.Unlock()
	wantTry(t, b, "the uncommitted range itself", 4096, 4096, false, nil)
	wantTry(t, b, "overlapping an uncommitted range by one block", 512, 4096, false, nil)
	wantTry(t, b, "overlapping the end of an uncommitted range", 7680, 1024, false, nil)
	wantTry(t, b, "just before an uncommitted range", 0, 4096, true, data[:4096])
	wantTry(t, b, "just after an uncommitted range", 8192, 4096, true, nil)
	r.committed(nil, &Frame{Epoch: r.epoch, Seq: 5}) // r.cur is nil: the current (no) stream
	wantTry(t, b, "once committed", 4096, 4096, true, data[4096:])

	setInSync(t, tc, b, "a")
	wantTry(t, b, "a lease but not in sync", 0, 4096, false, nil)
	setInSync(t, tc, b, "a", "b")
	wantTry(t, b, "in sync again", 0, 4096, true, data[:4096])

	tc.c.setFenced("b")
	until(t, "b fenced", 5*time.Second, b.fenced)
	wantTry(t, b, "fenced", 0, 4096, false, nil)
	tc.c.setFenced()
	until(t, "b unfenced", 5*time.Second, func() bool { return !b.fenced() })

	r.mu.Lock()
	r.leaseEnd = time.Now().Add(-time.Millisecond)
	r.mu.Unlock()
	wantTry(t, b, "the lease ran out", 0, 4096, false, nil)
	r.mu.Lock()
	r.leaseEnd, r.leaseEp = time.Now().Add(time.Hour), r.epoch+1
	r.mu.Unlock()
	wantTry(t, b, "a lease of another epoch", 0, 4096, false, nil)
}

// TestTryReadAtWriter: at the writer a read overlapping a write not yet
// on every in-sync site is refused (the replica's acks are slow), others
// are served; once the write is acknowledged the read is served inline
// and sees it. A replica with its lease serves reads inline too.
func TestTryReadAtWriter(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	slowLink(t, tc, "b", 150*time.Millisecond)
	a, b := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	wantTry(t, a, "writer, nothing in flight", 0, 4096, true, make([]byte, 4096))
	until(t, "b lease", 5*time.Second, func() bool { ok, _ := b.recv.leaseValid(time.Now()); return ok })

	data := block(2, 4096)
	done := make(chan error, 1)
	go func() { done <- a.WriteAt(data, 8192, false) }()
	w := a.activeWriter()
	until(t, "the write applied at a", 5*time.Second, func() bool {
		w.rmu.RLock()
		defer w.rmu.RUnlock()
		return len(w.busy) > 0
	})
	wantTry(t, a, "overlapping an unsettled write", 8192+2048, 4096, false, nil)
	wantTry(t, a, "beside an unsettled write", 0, 8192, true, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	wantTry(t, a, "once the write settled", 8192, 4096, true, data)
	// b has it (acknowledged) and, once it is committed there, serves it inline.
	until(t, "b serves the write inline", 5*time.Second, func() bool {
		got := make([]byte, 4096)
		ok, err := b.TryReadAt(got, 8192)
		if err != nil {
			t.Fatal(err)
		}
		if ok && !bytes.Equal(got, data) {
			t.Fatal("b served an acknowledged write's range inline with old data")
		}
		return ok
	})
}
