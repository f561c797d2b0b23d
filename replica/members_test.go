package replica

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// addSite lays out a site that is not in the cluster yet: the sites
// started before it do not list it in their configs.
func (tc *testCluster) addSite(n string) {
	tc.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tc.t.Fatal(err)
	}
	dir := filepath.Join(tc.t.TempDir(), n)
	tc.sites[n] = &testSite{name: n, dir: dir, img: filepath.Join(dir, "lun.img"), ln: ln, laddr: ln.Addr().String()}
	tc.addrs[n] = ln.Addr().String()
}

// setPeers makes names the cluster's data sites, as raftlog's view does
// after a member is added or marked leaving.
func (tc *testCluster) setPeers(names ...string) {
	tc.c.mu.Lock()
	defer tc.c.mu.Unlock()
	p := map[string]string{}
	for _, n := range names {
		p[n] = tc.addrs[n]
	}
	tc.c.view.Peers = p
	tc.c.bump()
}

func peerState(s *Site, name string) (PeerStatus, bool) {
	for _, p := range s.Status().Peers {
		if p.Name == name {
			return p, true
		}
	}
	return PeerStatus{}, false
}

// TestSitePeerJoinsAndLeaves: a data site the writer did not know at
// start appears in the view (its address only there); the writer resyncs
// it with a full compare while writes go on, and it joins the in-sync set
// and serves. Then an in-sync site leaves the view while writes go on: the
// writer drops it through the cluster, lets its read lease run out before
// it forgets it (I3), closes its link and deletes its bitmap. Added back,
// it is resynced in full, since no record of it survives.
func TestSitePeerJoinsAndLeaves(t *testing.T) {
	tc := newTestCluster(t, 8<<20, "a", "b")
	tc.setPeers("a", "b")
	a, b := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	for i := range 32 {
		if err := a.WriteAt(block(uint64(i), 64<<10), int64(i)*(256<<10), false); err != nil {
			t.Fatal(err)
		}
	}

	// A steady stream of writes through the writer, all through the test.
	var acked atomic.Int64
	var wg sync.WaitGroup
	stopW := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stopW:
				return
			default:
			}
			if err := a.WriteAt(block(uint64(1000+i), 4096), int64(i%2048)*4096, false); err != nil {
				t.Errorf("write %d during membership changes: %v", i, err)
				return
			}
			acked.Add(1)
		}
	}()
	stopWrites := func() {
		select {
		case <-stopW:
		default:
			close(stopW)
		}
		wg.Wait()
	}
	defer stopWrites()

	// c joins.
	tc.addSite("c")
	c := tc.start("c")
	if _, known := a.cfg.Peers["c"]; known {
		t.Fatal("the writer's config lists c; the test needs it to learn c from the view")
	}
	tc.setPeers("a", "b", "c")
	start := time.Now()
	until(t, "c in sync", 20*time.Second, func() bool { return tc.c.inSync("c") })
	t.Logf("c joined in %v while %d writes were acknowledged", time.Since(start).Round(time.Millisecond), acked.Load())
	w := a.activeWriter()
	w.mu.Lock()
	var pc *peer
	for _, p := range w.peers {
		if p.name == "c" {
			pc = p
		}
	}
	w.mu.Unlock()
	if pc == nil || pc.resync.Total == 0 || pc.resync.Done != pc.resync.Total {
		t.Fatalf("c's resync: %+v", pc)
	}
	until(t, "c holds a read lease", 5*time.Second, func() bool { ok, _ := c.recv.leaseValid(time.Now()); return ok })
	// c serves: a forwarded write, and a read of what a wrote.
	if err := c.WriteAt(block(7777, 8192), 5<<20, true); err != nil {
		t.Fatalf("write through c: %v", err)
	}
	for _, s := range []*Site{a, b, c} {
		got := make([]byte, 8192)
		if err := s.ReadAt(got, 5<<20); err != nil || !bytes.Equal(got, block(7777, 8192)) {
			t.Fatalf("read at %s after the write through c: %v", s.cfg.Name, err)
		}
	}

	// b leaves while it is in sync.
	bmPath := filepath.Join(tc.sites["a"].dir, "dirty-b.bitmap")
	if _, err := os.Stat(bmPath); err != nil {
		t.Fatalf("the writer keeps no bitmap for b: %v", err)
	}
	before := acked.Load()
	tc.setPeers("a", "c")
	until(t, "the writer forgets b", 10*time.Second, func() bool {
		_, ok := peerState(a, "b")
		_, err := os.Stat(bmPath)
		return !ok && errors.Is(err, os.ErrNotExist)
	})
	// Forgotten only after the drop committed and b's lease ran out.
	if ok, end := b.recv.leaseValid(time.Now()); ok {
		t.Fatalf("b was forgotten while its read lease runs until %v", end)
	}
	if tc.c.inSync("b") || !slices.Contains(tc.c.drops, "b") {
		t.Fatalf("b left without a drop: in sync %v, drops %v", tc.c.inSync("b"), tc.c.drops)
	}
	until(t, "writes go on without b", 10*time.Second, func() bool { return acked.Load() > before+20 })
	if err := b.WriteAt(block(1, 4096), 0, false); err == nil {
		t.Fatal("a write through the removed site b succeeded")
	}
	if p, ok := peerState(a, "c"); !ok || p.State != peerInSync {
		t.Fatalf("c after b left: %+v", p)
	}

	// b comes back. A stale record for b at the writer (one of this very
	// epoch, saying b misses nothing) must not be trusted: b joined while
	// this writer ran, so its first resync compares everything. Damage at
	// b shows whether it did.
	stopWrites()
	stale, err := OpenBitmap(bmPath, 8<<20, 64<<10, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := stale.SetEpoch(w.epoch); err != nil {
		t.Fatal(err)
	}
	stale.Close()
	f, err := os.OpenFile(tc.sites["b"].img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("damage while b was out"), 6<<20+100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	tc.setPeers("a", "b", "c")
	until(t, "b in sync again", 20*time.Second, func() bool { return tc.c.inSync("b") })
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, tc.sites["a"].img, tc.sites["b"].img)
	sameFiles(t, tc.sites["a"].img, tc.sites["c"].img)
	t.Logf("%d writes acknowledged during the changes", acked.Load())
}
