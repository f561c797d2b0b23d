package replica

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/proxy"
	"github.com/metrolun/metrolun/target"
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

// TestForwardedWriteToLostWriterEnds: the same move, but the former writer
// never answers (cut off): the forwarded write ends with an unknown
// outcome once b gave up on a's answer, not at the end of the whole hold
// time.
func TestForwardedWriteToLostWriterEnds(t *testing.T) {
	tc, px, a, b := forwardCluster(t)
	px.Partition(true, true)
	done := moveWriterToB(t, tc, a, b, block(2, 4096))
	err := <-done
	if !errors.Is(err, target.ErrOutcomeUnknown) {
		t.Fatalf("write forwarded to a lost writer: %v, want an unknown outcome", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write forwarded to a lost writer waited the whole hold time: %v", err)
	}
}
