package replica

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/metrolun/metrolun/integration/proxy"
)

// forwardCluster is a and b with a the writer and b's forwarding
// connection to a (b dials a) through the returned proxy; one forwarded
// write has opened that connection.
func forwardCluster(t *testing.T) (*testCluster, *proxy.Proxy, *Site, *Site) {
	t.Helper()
	tc := newTestCluster(t, 1<<20, "a", "b")
	// A lease well above a loaded machine's scheduling delays: it is how
	// long b waits for a former writer's answers (retireLocked).
	tc.opts = func(c *SiteConfig) { c.Lease, c.ReplicaTimeout = time.Second, 3*time.Second }
	px, err := proxy.New("127.0.0.1:0", tc.addrs["a"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	tc.addrs["a"] = px.Addr()
	a, b := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	if err := b.WriteAt(block(1, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	return tc, px, a, b
}

// forwardsPending is how many of s's forwarded operations wait for the
// writer's answer.
func forwardsPending(s *Site) int {
	s.fwd.mu.Lock()
	defer s.fwd.mu.Unlock()
	return len(s.fwd.ops)
}

// moveWriterToB is a planned move from a to b (as raftlog's handOver: a's
// lease ends, the epoch is released, b becomes the writer) while a write
// that b forwarded to a is on its way; it returns once b's view names b
// as the writer, with the write's outcome to come on done.
func moveWriterToB(t *testing.T, tc *testCluster, a, b *Site, data []byte) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	err := a.Handover(5*time.Second, func() error {
		go func() { done <- b.WriteAt(data, 4096, false) }()
		until(t, "b's write forwarded to a", 5*time.Second, func() bool { return forwardsPending(b) > 0 })
		tc.c.revoke("a")
		tc.c.mu.Lock()
		tc.c.view.Handover = true
		tc.c.mu.Unlock()
		tc.c.setWriter("b")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// b's reconcile sets its view right after it retargets forwarding.
	until(t, "b sees itself as the writer", 5*time.Second, func() bool { return b.currentView().Writer == "b" })
	return done
}

// TestForwardedWriteSurvivesPlannedMove: a write b forwarded to the writer
// a just before a planned move to b is refused by a (paused, then not the
// writer), and that refusal reaches b only after b learnt it is the new
// writer. The write must then be retried at b and succeed: a planned move
// fails no I/O. It failed with ABORTED COMMAND (an unknown outcome) when
// b closed its connection to a the moment the writer changed, before a's
// answer was in (TestDrill: one ABORTED COMMAND at the forwarding site
// during `promote`).
func TestForwardedWriteSurvivesPlannedMove(t *testing.T) {
	tc, px, a, b := forwardCluster(t)
	// a's answers to b wait in the proxy until b knows of the move.
	px.Partition(false, true)
	data := block(2, 4096)
	done := moveWriterToB(t, tc, a, b, data)
	px.Partition(false, false)
	if err := <-done; err != nil {
		t.Fatalf("write forwarded across a planned move: %v", err)
	}
	waitWriter(t, b)
	for _, s := range []*Site{a, b} {
		got := make([]byte, len(data))
		if err := s.cfg.Store.ReadAt(got, 4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s does not hold the acknowledged write", s.cfg.Name)
		}
	}
}

// TestForwardedWriteToLostWriterSettled: the same move, but the former
// writer never answers (cut off, its connection given up after a lease):
// the write never reached it, so b, the new writer, runs it itself and
// answers GOOD (lostfwd.go). It ended with ABORTED COMMAND (an unknown
// outcome) before, which QEMU's initiator turns into a failed write.
func TestForwardedWriteToLostWriterSettled(t *testing.T) {
	tc, px, a, b := forwardCluster(t)
	px.Partition(true, true)
	data := block(2, 4096)
	done := moveWriterToB(t, tc, a, b, data)
	if err := <-done; err != nil {
		t.Fatalf("write forwarded to a lost writer, b the writer since: %v, want it run at b", err)
	}
	if n := b.lostSettled.Load(); n != 1 {
		t.Fatalf("b settled %d lost forwards, want 1", n)
	}
	got := make([]byte, len(data))
	if err := b.cfg.Store.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("b does not hold the write it acknowledged")
	}
}

// TestSettleLost: the decision for a forwarded operation whose writer
// went away, once this site is the writer. Applied here through the old
// writer's reference: GOOD once the carried ranges are released, without
// running it again (the old write may have been read). Not applied: run
// now. A flush runs again either way; a store failure here is the answer.
func TestSettleLost(t *testing.T) {
	s := &Site{log: hclog.NewNullLogger()}
	w := &writer{s: s}
	runs := 0
	local := func(*writer) (int, error) { runs++; return -1, nil }
	unknown := &indeterminate{err: errFwdLost}
	lost := func(kind uint8, applied bool, localErr error) *lostForward {
		op := &fwdOp{kind: kind, isApplied: applied, localErr: localErr}
		return &lostForward{op: op, writer: "a", epoch: 1, err: unknown}
	}

	if _, err, ok := s.settleLost(w, lost(FrameFwdWrite, true, nil), local); ok || runs != 0 {
		t.Fatalf("applied here, carried ranges not released: ok=%v err=%v runs=%d, want to wait", ok, err, runs)
	}
	w.carriedOut = true
	if at, err, ok := s.settleLost(w, lost(FrameFwdWrite, true, nil), local); !ok || err != nil || at != -1 || runs != 0 {
		t.Fatalf("applied here, carried ranges released: at=%d ok=%v err=%v runs=%d, want GOOD without a second run", at, ok, err, runs)
	}
	w.carriedOut = false
	if _, err, ok := s.settleLost(w, lost(FrameFwdWrite, false, nil), local); !ok || err != nil || runs != 1 {
		t.Fatalf("not applied here: ok=%v err=%v runs=%d, want it run once now", ok, err, runs)
	}
	if _, err, ok := s.settleLost(w, lost(FrameFwdFlush, true, nil), local); !ok || err != nil || runs != 2 {
		t.Fatalf("a flush applied here: ok=%v err=%v runs=%d, want it run again", ok, err, runs)
	}
	failed := errors.New("store full")
	if _, err, ok := s.settleLost(w, lost(FrameFwdWrite, true, failed), local); !ok || !errors.Is(err, failed) || runs != 2 {
		t.Fatalf("failed here: ok=%v err=%v runs=%d, want the store's error", ok, err, runs)
	}
	notWriter := func(*writer) (int, error) { return -1, errNotWriter }
	if _, _, ok := s.settleLost(w, lost(FrameFwdUnmap, false, nil), notWriter); ok {
		t.Fatal("a writer that refuses (not the writer any more): want to wait")
	}
	for _, k := range []uint8{FrameFwdCAW, FrameFwdMeta} {
		if settleable(k) {
			t.Errorf("frame kind %d settled at the new writer: its payload may be stale", k)
		}
	}
}

// TestForwardedWritesReuseGoroutines: sequential forwarded writes run on
// one worker of the forwarding connection, and their origin's
// acknowledgements are handed over by one goroutine, not one of each per
// write (both were started per write before).
func TestForwardedWritesReuseGoroutines(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	a, b := tc.writerAndReplica()
	workers, acks := fwdWorkersStarted.Load(), originAckStarts.Load()
	const n = 50
	buf := make([]byte, 4096)
	for i := range n {
		buf[0] = byte(i)
		if err := b.WriteAt(buf, int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	// A worker or goroutine that ended after its idle time may be
	// started again once; a new one per write is what this rules out.
	if got := fwdWorkersStarted.Load() - workers; got > 2 {
		t.Errorf("%d forwarding workers started for %d sequential writes", got, n)
	}
	if got := originAckStarts.Load() - acks; got > 2 {
		t.Errorf("%d acknowledgement goroutines started for %d sequential writes", got, n)
	}
	got := make([]byte, 4096)
	if err := a.ReadAt(got, (n-1)*4096); err != nil || got[0] != n-1 {
		t.Fatalf("read at the writer: %v, first byte %d", err, got[0])
	}
}

// TestRefAcksRideAlong: the forwarding site's acknowledgement of the
// reference to its own forwarded write is not what answers it, so it
// waits for another answer to carry it (up to refAckLinger): the
// forwarded writes are answered, stay unsettled at the writer meanwhile,
// and settle with the acknowledgement of the writer's next frame (or a
// lease request, whichever comes first; not the timer).
func TestRefAcksRideAlong(t *testing.T) {
	defer func(d time.Duration) { refAckLinger = d }(refAckLinger)
	refAckLinger = time.Hour
	tc := newTestCluster(t, 1<<20, "a", "b")
	a, b := tc.writerAndReplica()
	buf := make([]byte, 4096)
	held := refAcksHeld.Load()
	for i := range 5 {
		if err := b.WriteAt(buf, int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	w := a.activeWriter()
	unsettled := func() int {
		w.rmu.RLock()
		defer w.rmu.RUnlock()
		return len(w.busy)
	}
	if got := refAcksHeld.Load() - held; got != 5 {
		t.Fatalf("%d of 5 acknowledgements of references held", got)
	}
	if err := a.WriteAt(buf, 100*4096, false); err != nil {
		t.Fatal(err)
	}
	until(t, "forwarded writes settled with the next acknowledgement", 5*time.Second, func() bool { return unsettled() == 0 })
}

// TestConcurrentForwardedWritesKeepTheirData: forwarded writes in flight
// together, each ordered from the pooled body it was read into at the
// writer (fwdHoldMax), land with their own bytes at both sites: a body
// given back before its operation was done would be read into by the
// next frame.
func TestConcurrentForwardedWritesKeepTheirData(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	a, b := tc.writerAndReplica()
	const writers, each, size = 8, 16, 8192
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				n := g*each + i
				if err := b.WriteAt(bytes.Repeat([]byte{byte(n + 1)}, size), int64(n)*size, false); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := make([]byte, size)
	for n := range writers * each {
		want := bytes.Repeat([]byte{byte(n + 1)}, size)
		for _, s := range []*Site{a, b} {
			if err := s.ReadAt(got, int64(n)*size); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s: block %d holds %d..., want %d", s.cfg.Name, n, got[0], want[0])
			}
		}
	}
}
