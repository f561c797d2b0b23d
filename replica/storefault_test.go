package replica

import (
	"bytes"
	"context"
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

// TestSiteResyncCarriesLostRegions: the writer's store lost a region (a
// failed write) while the only other site was away, so no copy of that
// region's acknowledged bytes is left anywhere. The other site's resync
// must still end, with that region marked lost there too (reads fail at
// both sites alike, I4) and every other region copied; a write that
// covers the region makes it whole at both. The resync once failed on
// the region it could not read and started again every few seconds for
// good, leaving the site without redundancy even for the good regions.
func TestSiteResyncCarriesLostRegions(t *testing.T) {
	const size = 1 << 20
	const reg = 64 << 10
	const lostOff = 5 * reg
	fc := newFaultCluster(t, size, "a", "b")
	a, _ := fc.start("a"), fc.start("b")
	fc.c.setWriter("a")
	waitWriter(t, a)
	if err := a.WriteAt(block(1, size), 0, true); err != nil {
		t.Fatal(err)
	}
	fc.stop("b")
	// Acknowledged at a only (b is dropped): regions 2 and 5 are dirty
	// for b.
	if err := a.WriteAt(block(2, reg), 2*reg, true); err != nil {
		t.Fatalf("write with b away: %v", err)
	}
	until(t, "b out of the in-sync set", 10*time.Second, func() bool { return !fc.c.inSync("b") })
	if err := a.WriteAt(block(3, reg), lostOff, true); err != nil {
		t.Fatal(err)
	}
	// a's store fails a write into region 5: what it holds there is
	// unknown from now on, and nobody else has region 5's last bytes.
	fc.fs["a"].Set(Faults{WriteEIO: true})
	if err := a.WriteAt(block(4, 4096), lostOff+8192, true); !errors.Is(err, target.ErrMedium) {
		t.Fatalf("write on a failing store: %v, want a medium error", err)
	}
	fc.fs["a"].Set(Faults{})
	if err := a.ReadAt(make([]byte, 4096), lostOff); !errors.Is(err, target.ErrMedium) {
		t.Fatalf("read of the lost region at the writer: %v, want a medium error", err)
	}

	b := fc.start("b")
	until(t, "b back in sync", 15*time.Second, func() bool { return fc.c.inSync("b") })
	if n := a.activeWriter(); n == nil || n.lostSent.Load() == 0 {
		t.Fatal("the resync sent no lost mark")
	}
	for _, s := range []*Site{a, b} {
		if err := s.ReadAt(make([]byte, 4096), lostOff); !errors.Is(err, target.ErrMedium) {
			t.Fatalf("read of the lost region at %s: %v, want a medium error", s.cfg.Name, err)
		}
		got := make([]byte, reg)
		if err := s.ReadAt(got, 2*reg); err != nil || !bytes.Equal(got, block(2, reg)) {
			t.Fatalf("region 2 at %s: err %v, equal %v", s.cfg.Name, err, bytes.Equal(got, block(2, reg)))
		}
	}
	if rs, n := fc.fs["b"].LostRanges(8); n != 1 || len(rs) != 1 || rs[0] != [2]int64{lostOff, lostOff + reg} {
		t.Fatalf("lost at b: %v (%d regions), want region 5 only", rs, n)
	}
	// An online verify compares the rest and names the lost region.
	vs, err := a.Verify(context.Background(), 0)
	if err != nil || len(vs.Differ) != 0 || !slices.Equal(vs.Lost, []int64{lostOff}) {
		t.Fatalf("verify with a lost region: %v, differ %v, lost %v (want [%d])", err, vs.Differ, vs.Lost, lostOff)
	}
	// A restart does not make b forget: its older bytes there are not
	// what was acknowledged.
	fc.stop("b")
	b = fc.start("b")
	until(t, "b in sync with a lease after its restart", 15*time.Second, func() bool {
		ok, _ := b.recv.leaseValid(time.Now())
		return ok && fc.c.inSync("b")
	})
	if err := b.ReadAt(make([]byte, 4096), lostOff); !errors.Is(err, target.ErrMedium) {
		t.Fatalf("read of the lost region at b after its restart: %v, want a medium error", err)
	}
	// a's flushes fail while its own write-back error stands; that hands
	// the writer role to b, which compares a in full: region 5 is lost at
	// both, so that compare must end too.
	if err := a.Flush(); !errors.Is(err, target.ErrMedium) {
		t.Fatalf("flush at a with a lost region: %v, want a medium error", err)
	}
	until(t, "b is the writer", 10*time.Second, func() bool { return b.activeWriter() != nil })
	until(t, "a back in sync and no longer diverged", 15*time.Second, func() bool { return fc.c.inSync("a") && !a.Status().Stale })
	for _, s := range []*Site{a, b} {
		if err := s.ReadAt(make([]byte, 4096), lostOff); !errors.Is(err, target.ErrMedium) {
			t.Fatalf("read of the lost region at %s after the hand-over: %v, want a medium error", s.cfg.Name, err)
		}
	}
	// Rewritten whole: readable and equal everywhere.
	if err := b.WriteAt(block(5, reg), lostOff, true); err != nil {
		t.Fatalf("rewriting the lost region: %v", err)
	}
	for _, s := range []*Site{a, b} {
		got := make([]byte, reg)
		if err := s.ReadAt(got, lostOff); err != nil || !bytes.Equal(got, block(5, reg)) {
			t.Fatalf("rewritten region at %s: err %v, equal %v", s.cfg.Name, err, bytes.Equal(got, block(5, reg)))
		}
	}
	for _, s := range []*Site{a, b} {
		if err := s.Flush(); err != nil {
			t.Fatalf("flush at %s once the lost region is rewritten: %v", s.cfg.Name, err)
		}
	}
	if !fc.c.inSync("a") || !fc.c.inSync("b") {
		t.Fatal("a site left the in-sync set")
	}
	sameFiles(t, fc.sites["a"].img, fc.sites["b"].img)
}
