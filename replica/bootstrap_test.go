package replica

import (
	"os"
	"slices"
	"testing"
	"time"
)

// TestFirstEpochComparesWrittenImages: in a new cluster every data site
// starts in sync, which holds only for images never written. Two empty
// images stay in sync without a compare; a replica whose image holds data
// is compared and gets the writer's image (I4), before or while writes go
// on.
func TestFirstEpochComparesWrittenImages(t *testing.T) {
	for _, prefilled := range []bool{false, true} {
		tc := newTestCluster(t, 2<<20, "a", "b")
		if prefilled {
			if err := os.MkdirAll(tc.sites["b"].dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(tc.sites["b"].img, block(3, 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		a, b := tc.start("a"), tc.start("b")
		tc.c.setWriter("a")
		waitWriter(t, a)
		if err := a.WriteAt(block(4, 4096), 8192, false); err != nil {
			t.Fatal(err)
		}
		until(t, "b in sync", 10*time.Second, func() bool {
			ok, _ := b.recv.leaseValid(time.Now())
			tc.c.mu.Lock()
			readded := slices.Contains(tc.c.adds, "b")
			tc.c.mu.Unlock()
			return ok && tc.c.inSync("b") && (readded || !prefilled)
		})
		if err := a.Flush(); err != nil {
			t.Fatal(err)
		}
		tc.c.mu.Lock()
		dropped := slices.Contains(tc.c.drops, "b")
		tc.c.mu.Unlock()
		if dropped != prefilled {
			t.Fatalf("prefilled %v: b dropped for a compare: %v", prefilled, dropped)
		}
		sameFiles(t, tc.sites["a"].img, tc.sites["b"].img)
	}
}
