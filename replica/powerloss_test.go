package replica

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSiteWriterPowerLoss: a writer whose host lost power comes back
// without what it had not flushed, which the replica acknowledged. If it
// is elected writer again first, the replica's bytes must win: it hands
// the role to the replica, which compares it in full, and the write
// acknowledged before the power loss reads back everywhere. A writer
// whose process died in the same boot (its page cache intact) keeps the
// role, as before.
func TestSiteWriterPowerLoss(t *testing.T) {
	for _, c := range []struct {
		name      string
		reboot    bool
		lost      bool // a's write-back of the acknowledged write failed before it died
		newWriter string
	}{
		{"power lost", true, false, "b"},
		{"process died", false, false, "a"},
		{"process died with a lost region", false, true, "b"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tc := newTestCluster(t, 2<<20, "a", "b")
			boot := map[string]string{"a": "boot-1", "b": "boot-1"}
			tc.opts = func(cfg *SiteConfig) {
				name := cfg.Name
				cfg.BootID = func() string { return boot[name] }
			}
			a, b := tc.writerAndReplica()
			const off = 64 << 10
			old, acked := block(1, 4096), block(2, 4096)
			if err := a.WriteAt(old, off, true); err != nil {
				t.Fatal(err)
			}
			if err := a.WriteAt(acked, off, false); err != nil {
				t.Fatal(err)
			}
			// a stops uncleanly: its marker stays (Close would clear it).
			marker, err := os.ReadFile(filepath.Join(tc.sites["a"].dir, "writer.marker"))
			if err != nil {
				t.Fatal(err)
			}
			tc.stop("a")
			if err := os.WriteFile(filepath.Join(tc.sites["a"].dir, "writer.marker"), marker, 0o600); err != nil {
				t.Fatal(err)
			}
			if c.lost {
				// The kernel dropped the page it could not write back,
				// and a recorded the range as lost (LocalFile.PersistLost).
				// b, in sync, holds the acknowledged write: b's bytes must
				// win, not a's (nor must a's loss spread to b).
				if err := os.WriteFile(filepath.Join(tc.sites["a"].dir, "lost.ranges"), []byte("[[65536,131072]]"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if c.reboot || c.lost {
				// The host restarted, or the page's write-back failed:
				// the write a had not flushed is gone from its image.
				if c.reboot {
					boot["a"] = "boot-2"
				}
				f, err := os.OpenFile(tc.sites["a"].img, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteAt(old, off)
				f.Close()
			}
			a = tc.start("a")
			// a is elected first (raftlog may well do that).
			tc.c.setWriter("a")
			until(t, "writer "+c.newWriter+" with a back in sync", 15*time.Second, func() bool {
				tc.c.mu.Lock()
				defer tc.c.mu.Unlock()
				return tc.c.view.Writer == c.newWriter && len(tc.c.view.InSync) == 2
			})
			w := map[string]*Site{"a": a, "b": b}[c.newWriter]
			waitWriter(t, w)
			got := make([]byte, 4096)
			for _, s := range []*Site{a, b} {
				until(t, s.cfg.Name+" reads the acknowledged write", 10*time.Second, func() bool {
					return s.ReadAt(got, off) == nil && bytes.Equal(got, acked)
				})
			}
			until(t, "images equal", 10*time.Second, func() bool {
				x, _ := os.ReadFile(tc.sites["a"].img)
				y, _ := os.ReadFile(tc.sites["b"].img)
				return bytes.Equal(x, y)
			})
		})
	}
}
