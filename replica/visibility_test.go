package replica

import (
	"bytes"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/proxy"
)

// visibilityRun writes through site `via` while a reader polls `first`
// until it sees the new data, then reads at `then` at once: a value one
// site has shown must be shown by every site from then on (I3), even
// when the stream to `then` is slow. Found by the torture run: with
// forwarding the writer showed a write before its origin had applied it,
// and with three sites one replica showed a write another did not have.
func visibilityRun(t *testing.T, tc *testCluster, via, first, then *Site, rounds int) {
	t.Helper()
	for i := range rounds {
		off := int64(i%16) * 4096
		want := block(uint64(1000+i), 4096)
		done := make(chan error, 1)
		go func() { done <- via.WriteAt(want, off, false) }()
		got := make([]byte, 4096)
		deadline := time.Now().Add(5 * time.Second)
		for {
			if err := first.ReadAt(got, off); err != nil {
				t.Fatalf("round %d: read at %s: %v", i, first.cfg.Name, err)
			}
			if bytes.Equal(got, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %s never showed the write", i, first.cfg.Name)
			}
		}
		if err := then.ReadAt(got, off); err != nil {
			t.Fatalf("round %d: read at %s: %v", i, then.cfg.Name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: %s showed the write, then %s returned older data", i, first.cfg.Name, then.cfg.Name)
		}
		if err := <-done; err != nil {
			t.Fatalf("round %d: write at %s: %v", i, via.cfg.Name, err)
		}
	}
}

// slowLink puts a proxy with the given one-way latency in front of site
// n's listener: the writer's stream to n is slow.
func slowLink(t *testing.T, tc *testCluster, n string, d time.Duration) {
	t.Helper()
	px, err := proxy.New("127.0.0.1:0", tc.addrs[n])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	px.Set(proxy.Shape{Latency: d}, proxy.Shape{})
	tc.addrs[n] = px.Addr()
}

func TestForwardedWriteVisibleEverywhereOnceShown(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	slowLink(t, tc, "b", 30*time.Millisecond)
	a, b := tc.writerAndReplica()
	// Written at b (forwarded), shown at the writer a, then read at b.
	visibilityRun(t, tc, b, a, b, 8)
}

func TestThreeSitesWriteVisibleEverywhereOnceShown(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b", "c")
	slowLink(t, tc, "b", 30*time.Millisecond)
	a, b, c := tc.start("a"), tc.start("b"), tc.start("c")
	tc.c.setWriter("a")
	waitWriter(t, a)
	for _, s := range []*Site{b, c} {
		until(t, s.cfg.Name+" lease", 5*time.Second, func() bool { ok, _ := s.recv.leaseValid(time.Now()); return ok })
	}
	// Written at the writer, shown by the fast replica c, then read at
	// the slow replica b.
	visibilityRun(t, tc, a, c, b, 8)
	// Forwarded from c.
	visibilityRun(t, tc, c, c, b, 8)
}
