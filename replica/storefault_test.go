package replica

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/metrolun/metrolun/target"
)

// MoveWriter lets the fake cluster hand the writer role over as
// raftlog's planned move does: the old writer's lease ends, the new
// writer takes the next epoch.
func (f fakeControl) MoveWriter(epoch uint64, to string) error {
	f.c.mu.Lock()
	if epoch != f.c.view.Epoch || f.c.view.Writer != f.name {
		f.c.mu.Unlock()
		return errors.New("refused: not the writer of the current epoch")
	}
	delete(f.c.leases, f.name)
	f.c.mu.Unlock()
	f.c.setWriter(to)
	return nil
}

// faultCluster is a two-site test cluster whose stores inject faults.
type faultCluster struct {
	*testCluster
	fs map[string]*FaultStore
}

func newFaultCluster(t *testing.T, size int64, names ...string) *faultCluster {
	fc := &faultCluster{testCluster: newTestCluster(t, size, names...), fs: map[string]*FaultStore{}}
	fc.opts = func(c *SiteConfig) { fc.fs[c.Name] = NewFaultStore(c.Store) }
	return fc
}

func (fc *faultCluster) dirty(s *Site, peer string) int {
	fc.t.Helper()
	b, err := s.bitmap(peer)
	if err != nil {
		fc.t.Fatal(err)
	}
	return b.Dirty()
}

// TestSiteStoreFaults: a write that did not fully reach a site is never
// answered GOOD while that site stays in sync with other bytes
// (DESIGN.md Failures, "Storage fails"). Each case injects one storage
// fault at one site of a two-site cluster (a writer, b replica), checks
// the answer and the in-sync set, lets the fault go, and then checks
// that the sites are byte-identical again and hold every acknowledged
// write.
func TestSiteStoreFaults(t *testing.T) {
	const size = 4 << 20
	data := block(42, 256<<10)
	const off = 1 << 20
	cases := []struct {
		name string
		// at is the site the fault is injected at; via the site the
		// initiator writes through.
		at, via string
		f       Faults
		fua     bool
		flush   bool  // a SYNCHRONIZE CACHE after the write
		wantErr error // what the initiator hears (nil: GOOD)
		// out: the site that must leave the in-sync set before the
		// answer, with off's region dirty for it at the writer.
		out string
		// newWriter: the writer after the fault.
		newWriter string
		// kept: the acknowledged data must read back everywhere.
		kept bool
	}{
		{name: "replica short writes are completed", at: "b", via: "a", f: Faults{ShortWrite: true}, fua: true, kept: true, newWriter: "a"},
		{name: "replica out of space leaves the in-sync set", at: "b", via: "a", f: Faults{NoSpace: true, SpaceLeft: 64 << 10}, fua: true, out: "b", kept: true, newWriter: "a"},
		{name: "replica write EIO leaves the in-sync set", at: "b", via: "a", f: Faults{WriteEIO: true}, out: "b", kept: true, newWriter: "a"},
		{name: "replica flush EIO leaves the in-sync set", at: "b", via: "a", f: Faults{FlushEIO: 1}, flush: true, out: "b", kept: true, newWriter: "a"},
		{name: "forwarding site out of space refuses its write", at: "b", via: "b", f: Faults{NoSpace: true, SpaceLeft: 64 << 10}, fua: true, wantErr: target.ErrNoSpace, out: "b", newWriter: "a"},
		{name: "forwarding site write EIO refuses its write", at: "b", via: "b", f: Faults{WriteEIO: true}, wantErr: target.ErrMedium, out: "b", newWriter: "a"},
		{name: "writer out of space refuses and hands over", at: "a", via: "a", f: Faults{NoSpace: true, SpaceLeft: 64 << 10}, fua: true, wantErr: target.ErrNoSpace, newWriter: "b"},
		{name: "writer write EIO refuses and hands over", at: "a", via: "a", f: Faults{WriteEIO: true}, wantErr: target.ErrMedium, newWriter: "b"},
		{name: "writer flush EIO refuses and hands over", at: "a", via: "a", f: Faults{FlushEIO: 1}, flush: true, wantErr: target.ErrMedium, newWriter: "b", kept: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fc := newFaultCluster(t, size, "a", "b")
			sites := map[string]*Site{"a": fc.start("a"), "b": fc.start("b")}
			a, b := sites["a"], sites["b"]
			fc.c.setWriter("a")
			waitWriter(t, a)
			until(t, "b holds a read lease", 5*time.Second, func() bool { ok, _ := b.recv.leaseValid(time.Now()); return ok })
			// Something acknowledged before the fault, durable everywhere.
			before := block(7, size)
			if err := a.WriteAt(before, 0, true); err != nil {
				t.Fatal(err)
			}

			fc.fs[c.at].Set(c.f)
			err := sites[c.via].WriteAt(data, off, c.fua)
			if err == nil && c.flush {
				err = sites[c.via].Flush()
			}
			switch {
			case c.wantErr == nil && err != nil:
				t.Fatalf("answer %v, want GOOD", err)
			case c.wantErr != nil && !errors.Is(err, c.wantErr):
				t.Fatalf("answer %v, want %v", err, c.wantErr)
			}
			if c.out != "" {
				if c.wantErr == nil && fc.c.inSync(c.out) {
					// Answered GOOD: the site without the write must be
					// out before the answer.
					t.Fatalf("%s still in sync after its store failed", c.out)
				}
				// Refused: it leaves soon after (the writer and other
				// sites hold the write).
				until(t, c.out+" out of the in-sync set", 10*time.Second, func() bool { return !fc.c.inSync(c.out) })
				if d := fc.dirty(a, c.out); d == 0 {
					t.Fatalf("no region dirty for %s at the writer", c.out)
				}
			}
			fc.fs[c.at].Set(Faults{})
			w := sites[c.newWriter]
			until(t, c.newWriter+" is the writer", 10*time.Second, func() bool { return w.activeWriter() != nil })
			if c.newWriter != "a" {
				// The old writer's image may differ: it is dropped and
				// compared in full before it is in sync again.
				until(t, "a dropped", 10*time.Second, func() bool {
					fc.c.mu.Lock()
					defer fc.c.mu.Unlock()
					return slices.Contains(fc.c.drops, "a")
				})
				until(t, "a no longer diverged", 15*time.Second, func() bool { return !a.Status().Stale })
			}
			until(t, "both sites in sync", 15*time.Second, func() bool { return fc.c.inSync("a") && fc.c.inSync("b") })
			if err := w.Flush(); err != nil {
				t.Fatalf("flush at the writer once the fault is gone: %v", err)
			}
			sameFiles(t, fc.sites["a"].img, fc.sites["b"].img)
			want := slices.Clone(before)
			if c.kept {
				copy(want[off:], data)
			}
			for _, n := range []string{"a", "b"} {
				got := make([]byte, len(data))
				if err := sites[n].ReadAt(got, off); err != nil {
					t.Fatalf("read at %s: %v", n, err)
				}
				if c.kept && !bytes.Equal(got, data) {
					t.Fatalf("the acknowledged write is not readable at %s", n)
				}
			}
			if c.kept {
				img := make([]byte, size)
				if err := fc.fs["a"].LocalFile.ReadAt(img, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(img, want) {
					t.Fatal("the image differs from what was acknowledged")
				}
			}
		})
	}
}
