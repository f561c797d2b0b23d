package replica

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/proxy"
)

// TestTakeoverResyncsUncommittedRanges: with three sites, the writer dies
// while a write has reached one replica (c) and not the other (b, cut
// off). Whichever replica takes over, the other must end with the same
// bytes (I4): the one holding the write lists it as uncommitted in its
// hello answer, or the new writer carries it, and that range is resynced.
func TestTakeoverResyncsUncommittedRanges(t *testing.T) {
	for _, next := range []string{"b", "c"} {
		t.Run("new writer "+next, func(t *testing.T) {
			tc := newTestCluster(t, 1<<20, "a", "b", "c")
			tc.opts = func(c *SiteConfig) { c.ReplicaTimeout = 5 * time.Second }
			px, err := proxy.New("127.0.0.1:0", tc.addrs["b"])
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { px.Close() })
			tc.addrs["b"] = px.Addr()
			a, b, c := tc.start("a"), tc.start("b"), tc.start("c")
			tc.c.setWriter("a")
			waitWriter(t, a)
			old := block(1, 4096)
			if err := a.WriteAt(old, 8192, false); err != nil {
				t.Fatal(err)
			}
			// Cut b off (the fake cluster refuses to drop it), then write:
			// c applies it, b never sees it, a cannot acknowledge.
			tc.c.mu.Lock()
			tc.c.refuse = true
			tc.c.mu.Unlock()
			px.Partition(true, true)
			done := make(chan error, 1)
			go func() { done <- a.WriteAt(block(2, 4096), 8192, false) }()
			until(t, "c applied the write", 5*time.Second, func() bool {
				got := make([]byte, 4096)
				c.cfg.Store.ReadAt(got, 8192)
				return bytes.Equal(got, block(2, 4096))
			})
			tc.stop("a")
			<-done
			// What a sent b is lost with the connection.
			px.Reset()
			px.Partition(false, false)
			tc.c.mu.Lock()
			tc.c.refuse = false
			tc.c.view.InSync = []string{"b", "c"}
			tc.c.mu.Unlock()
			tc.c.setWriter(next)
			w := map[string]*Site{"b": b, "c": c}[next]
			waitWriter(t, w)
			other := map[string]string{"b": "c", "c": "b"}[next]
			until(t, other+" resynced and back in sync", 10*time.Second, func() bool {
				tc.c.mu.Lock()
				readded := slices.Contains(tc.c.adds, other)
				tc.c.mu.Unlock()
				return readded && tc.c.inSync("b") && tc.c.inSync("c") && peersInSync(w)
			})
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			sameFiles(t, tc.sites["b"].img, tc.sites["c"].img)
		})
	}
}

func peersInSync(s *Site) bool {
	for _, p := range s.Status().Peers {
		if p.Name != "a" && p.State != peerInSync {
			return false
		}
	}
	return true
}
