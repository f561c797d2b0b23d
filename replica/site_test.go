package replica

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/metrolun/metrolun/integration/proxy"
	"github.com/metrolun/metrolun/target"
)

// fakeCluster stands in for raftlog: it holds the view and hands out
// writer leases, and applies in-sync changes with raftlog's rules.
type fakeCluster struct {
	mu      sync.Mutex
	view    View
	leases  map[string]time.Time
	changed chan struct{}
	drops   []string
	adds    []string
	refuse  bool // refuse in-sync changes (a writer without quorum)
}

func newFakeCluster(inSync ...string) *fakeCluster {
	return &fakeCluster{view: View{InSync: inSync}, leases: map[string]time.Time{}, changed: make(chan struct{})}
}

func (c *fakeCluster) bump() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// setWriter starts a new epoch with name as writer; the old writer's
// lease is left alone (a frozen old writer may still believe in it).
func (c *fakeCluster) setWriter(name string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.view.Epoch++
	c.view.Writer = name
	c.leases[name] = time.Now().Add(time.Hour)
	c.bump()
	return c.view.Epoch
}

func (c *fakeCluster) revoke(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.leases, name)
	c.bump()
}

type fakeControl struct {
	c    *fakeCluster
	name string
}

func (f fakeControl) View() View {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	v := f.c.view
	v.InSync = slices.Clone(v.InSync)
	v.Peers = maps.Clone(v.Peers)
	return v
}

func (f fakeControl) Changed() <-chan struct{} {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	return f.c.changed
}

func (f fakeControl) WriterLease() (uint64, time.Time) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	until, ok := f.c.leases[f.name]
	if !ok {
		return 0, time.Time{}
	}
	if f.c.view.Writer != f.name {
		// A deposed writer that has not noticed: it still has the
		// lease for the epoch it had. Tests that model this keep its
		// epoch in the lease map key; here it is simply the old one.
		return f.c.view.Epoch - 1, until
	}
	return f.c.view.Epoch, until
}

func (f fakeControl) DropInSync(name string, epoch uint64) error {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	if f.c.refuse || epoch != f.c.view.Epoch || f.c.view.Writer != f.name {
		return errors.New("refused: not the writer of the current epoch")
	}
	if !slices.Contains(f.c.view.InSync, name) {
		return fmt.Errorf("refused: %s: %w", name, ErrNotInSync)
	}
	f.c.view.InSync = slices.DeleteFunc(slices.Clone(f.c.view.InSync), func(x string) bool { return x == name })
	f.c.drops = append(f.c.drops, name)
	f.c.bump()
	return nil
}

func (f fakeControl) AddInSync(name string, epoch uint64) error {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	if f.c.refuse || epoch != f.c.view.Epoch || f.c.view.Writer != f.name {
		return errors.New("refused: not the writer of the current epoch")
	}
	if slices.Contains(f.c.view.InSync, name) {
		return fmt.Errorf("refused: %s: %w", name, ErrAlreadyInSync)
	}
	if _, ok := f.c.view.Peers[name]; f.c.view.Peers != nil && !ok {
		return errors.New("refused: " + name + " is being removed")
	}
	f.c.view.InSync = append(slices.Clone(f.c.view.InSync), name)
	f.c.adds = append(f.c.adds, name)
	f.c.bump()
	return nil
}

func (c *fakeCluster) inSync(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.view.InSync, name)
}

// testSite is one site of a test cluster.
type testSite struct {
	name, dir, img string
	laddr          string // the listener's address, kept for restarts
	ln             net.Listener
	site           *Site
}

type testCluster struct {
	t     *testing.T
	c     *fakeCluster
	size  int64
	sites map[string]*testSite
	addrs map[string]string // what peers dial (a proxy, or the listener)
	opts  func(*SiteConfig)
	sizes map[string]int64 // a site's LU size when not size
	// images: stores keep an image identity (OpenImage, identity.go).
	images bool
}

func newTestCluster(t *testing.T, size int64, names ...string) *testCluster {
	tc := &testCluster{t: t, c: newFakeCluster(names...), size: size, sites: map[string]*testSite{}, addrs: map[string]string{}}
	for _, n := range names {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), n)
		tc.sites[n] = &testSite{name: n, dir: dir, img: filepath.Join(dir, "lun.img"), ln: ln, laddr: ln.Addr().String()}
		tc.addrs[n] = ln.Addr().String()
	}
	return tc
}

// start opens (or reopens) site n.
func (tc *testCluster) start(n string) *Site {
	tc.t.Helper()
	ts := tc.sites[n]
	if ts.ln == nil {
		ln, err := net.Listen("tcp", ts.laddr)
		if err != nil {
			tc.t.Fatal(err)
		}
		ts.ln = ln
	}
	if err := os.MkdirAll(ts.dir, 0o755); err != nil {
		tc.t.Fatal(err)
	}
	size := tc.size
	if n, ok := tc.sizes[n]; ok {
		size = n
	}
	open := OpenLocal
	if tc.images {
		open = func(p string, n int64) (*LocalFile, error) { return OpenImage(p, n, ImageOptions{Create: true}) }
	}
	store, err := open(ts.img, size)
	if err != nil {
		tc.t.Fatal(err)
	}
	peers := map[string]string{}
	for m := range tc.sites {
		if m != n {
			peers[m] = tc.addrs[m]
		}
	}
	cfg := SiteConfig{
		Name: n, Store: store, Dir: ts.dir, Peers: peers, Control: fakeControl{tc.c, n},
		Lease: 300 * time.Millisecond, ReplicaTimeout: 2 * time.Second, RegionSize: 64 << 10,
	}
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: n, Level: hclog.Debug, Output: tlog{tc.t}})
	if tc.opts != nil {
		tc.opts(&cfg)
	}
	s, err := NewSite(cfg)
	if err != nil {
		tc.t.Fatal(err)
	}
	ts.site = s
	ln := ts.ln
	go s.Serve(ln)
	tc.t.Cleanup(func() { s.Close() })
	return s
}

// writerAndReplica starts sites a and b, makes a the writer and waits
// until b holds a read lease from it.
func (tc *testCluster) writerAndReplica() (a, b *Site) {
	tc.t.Helper()
	a, b = tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(tc.t, a)
	until(tc.t, "b lease", 5*time.Second, func() bool { ok, _ := b.recv.leaseValid(time.Now()); return ok })
	return a, b
}

// stop closes site n (its listener too) as a crash would, minus the
// unclean marker handling that Close does.
func (tc *testCluster) stop(n string) {
	ts := tc.sites[n]
	ts.site.Close()
	ts.site, ts.ln = nil, nil
}

type tlog struct{ t *testing.T }

func (l tlog) Write(p []byte) (int, error) {
	l.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// until polls cond (bounded) and fails the test if it never holds.
func until(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sameFiles(t *testing.T, pa, pb string) {
	t.Helper()
	a, err := os.ReadFile(pa)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pb)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != len(b) {
		t.Fatalf("sizes differ: %d vs %d", len(a), len(b))
	}
	for i := 0; i < len(a); i += 512 {
		if !bytes.Equal(a[i:i+512], b[i:i+512]) {
			t.Fatalf("backing files differ at byte %d", i)
		}
	}
}

func block(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// waitWriter waits until site s serves writes as the writer.
func waitWriter(t *testing.T, s *Site) {
	t.Helper()
	until(t, "writer ready", 5*time.Second, func() bool {
		w := s.activeWriter()
		if w == nil {
			return false
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.ready()
	})
}

// TestSiteMirrorsAndForwards: concurrent overlapping writes, unmaps,
// flushes and compare-and-writes at the writer and at the other site (which
// forwards) leave both backing files identical, and every read at either
// site returns what was last written there by a sequential check.
func TestSiteMirrorsAndForwards(t *testing.T) {
	tc := newTestCluster(t, 4<<20, "a", "b")
	a, b := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	until(t, "b holds a read lease", 5*time.Second, func() bool { ok, _ := b.recv.leaseValid(time.Now()); return ok })

	// Sequential: each write is visible at both sites right after.
	for i := range 20 {
		site := []*Site{a, b}[i%2]
		data := block(uint64(i), 8192)
		off := int64(i%7) * 4096
		if err := site.WriteAt(data, off, i%3 == 0); err != nil {
			t.Fatalf("write %d at %s: %v", i, site.cfg.Name, err)
		}
		for _, r := range []*Site{a, b} {
			got := make([]byte, len(data))
			if err := r.ReadAt(got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("write %d: read at %s differs", i, r.cfg.Name)
			}
		}
	}
	// Compare-and-write at the non-writer is atomic at the writer.
	cur := make([]byte, 4096)
	if err := b.ReadAt(cur, 0); err != nil {
		t.Fatal(err)
	}
	if at, err := b.CompareAndWrite(0, cur, block(99, 4096)); err != nil || at != -1 {
		t.Fatalf("caw at b: at=%d err=%v", at, err)
	}
	if at, err := b.CompareAndWrite(0, cur, block(98, 4096)); err != nil || at < 0 {
		t.Fatalf("stale caw at b must miscompare: at=%d err=%v", at, err)
	}

	// Concurrent: overlapping writes from both sites.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			site := []*Site{a, b}[g%2]
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 60 {
				off := int64(r.IntN(64)) * 4096
				var err error
				switch i % 10 {
				case 8:
					err = site.Unmap(off, 8192)
				case 9:
					err = site.Flush()
				default:
					err = site.WriteAt(block(uint64(g*1000+i), 4096*(1+r.IntN(4))), off, false)
				}
				if err != nil {
					errs <- fmt.Errorf("%s op %d: %w", site.cfg.Name, i, err)
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
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, tc.sites["a"].img, tc.sites["b"].img)
}

// TestSiteOldEpochCannotAcknowledge: a writer that was deposed without
// noticing (frozen, lease still believed) cannot complete a write,
// because the in-sync replica that is now the writer refuses its epoch
// (I2).
func TestSiteOldEpochCannotAcknowledge(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	a, b := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	if err := a.WriteAt(block(1, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	wOld := a.activeWriter()
	tc.c.setWriter("b") // a keeps a lease for epoch 1 in the fake
	waitWriter(t, b)
	err := wOld.order(&Frame{Kind: FrameWrite, Offset: 0, Length: 4096, Data: block(2, 4096), CRC: Checksum(block(2, 4096))}, "",
		func() error { return nil })
	if err == nil {
		t.Fatal("a write of the old epoch was acknowledged after a new writer took over")
	}
	t.Logf("old writer's write refused: %v", err)
}

// TestSiteReplicaLossAndBitmapResync: the writer drops a replica that
// died, keeps writing, records what it missed, and resyncs it (bitmap
// mode, only dirty regions) while writes go on; then both files match.
func TestSiteReplicaLossAndBitmapResync(t *testing.T) {
	tc := newTestCluster(t, 8<<20, "a", "b")
	a, _ := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	for i := range 8 {
		if err := a.WriteAt(block(uint64(i), 65536), int64(i)*65536, false); err != nil {
			t.Fatal(err)
		}
	}
	// Flushed: b's bitmap is then what it missed while away, nothing
	// it acknowledged unflushed (TestSiteReplicaPowerLossResync).
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	tc.stop("b")
	// Writes continue once b is dropped (replica_timeout at most).
	start := time.Now()
	if err := a.WriteAt(block(100, 65536), 0, false); err != nil {
		t.Fatalf("write after losing b: %v", err)
	}
	t.Logf("write stalled %v while b was dropped", time.Since(start).Truncate(time.Millisecond))
	if tc.c.inSync("b") {
		t.Fatal("b still in sync after a write without it")
	}
	for i := range 10 {
		if err := a.WriteAt(block(uint64(200+i), 4096), int64(3<<20)+int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	bm, err := a.bitmap("b")
	if err != nil {
		t.Fatal(err)
	}
	if d := bm.Dirty(); d == 0 || d > 4 || bm.Full() {
		t.Fatalf("dirty regions %d (full %v), want 1..4", d, bm.Full())
	}
	// b comes back; writes keep going during the resync.
	stopW := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stopW:
				return
			default:
			}
			if err := a.WriteAt(block(uint64(500+i), 4096), int64(i%2000)*4096, false); err != nil {
				t.Errorf("write during resync: %v", err)
				return
			}
		}
	}()
	tc.start("b")
	until(t, "b back in sync", 10*time.Second, func() bool { return tc.c.inSync("b") })
	close(stopW)
	wg.Wait()
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, tc.sites["a"].img, tc.sites["b"].img)
	st := a.Status()
	for _, p := range st.Peers {
		if p.Name == "b" && (p.State != peerInSync || p.DirtyRegions != 0) {
			t.Fatalf("b after resync: %+v", p)
		}
	}
}

// TestSiteResyncWriteAsCursorReachesCleanRegion: a write into a region
// the bitmap does not mark, ordered just as the resync cursor reaches
// that region, reaches the replica (it is either copied or mirrored).
// The resync once tested the region before taking the writer's lock, so
// a write marked in between was neither: the cursor passed the region
// and the replica joined the in-sync set without it (I4; the occasional
// "backing files differ" of TestSiteReplicaLossAndBitmapResync).
func TestSiteResyncWriteAsCursorReachesCleanRegion(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	a, _ := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	tc.stop("b")
	// b misses region 0 only.
	if err := a.WriteAt(block(1, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	bm, err := a.bitmap("b")
	if err != nil {
		t.Fatal(err)
	}
	const clean = 5
	if bm.Full() || bm.Test(clean) || !bm.Test(0) {
		t.Fatalf("bitmap before resync: full %v, region 0 %v, region %d %v", bm.Full(), bm.Test(0), clean, bm.Test(clean))
	}
	region := bm.RegionSize()
	fired := make(chan error, 1)
	var once sync.Once
	h := func(peer string, r int) {
		if peer != "b" || r != clean {
			return
		}
		once.Do(func() { fired <- a.WriteAt(block(2, 4096), clean*region+8192, false) })
	}
	resyncRegionHook.Store(&h)
	t.Cleanup(func() { resyncRegionHook.Store(nil) })
	tc.start("b")
	until(t, "b back in sync", 10*time.Second, func() bool { return tc.c.inSync("b") })
	select {
	case err := <-fired:
		if err != nil {
			t.Fatalf("write as the cursor reached region %d: %v", clean, err)
		}
	default:
		t.Fatal("the resync never reached the clean region")
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, tc.sites["a"].img, tc.sites["b"].img)
}

// TestSiteFullResyncComparesDigests: with no bitmap (a new writer for the
// replica), resync compares digests and copies only regions that differ.
func TestSiteFullResyncComparesDigests(t *testing.T) {
	tc := newTestCluster(t, 4<<20, "a", "b")
	tc.c.view.InSync = []string{"a"}
	// Same content at both, then three regions of b damaged.
	for _, n := range []string{"a", "b"} {
		os.MkdirAll(tc.sites[n].dir, 0o755)
		os.WriteFile(tc.sites[n].img, block(1, 4<<20), 0o600)
	}
	f, err := os.OpenFile(tc.sites["b"].img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1 << 20, 3<<20 + 4096} {
		f.WriteAt([]byte("damage"), off)
	}
	f.Close()
	a := tc.start("a")
	tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	until(t, "b in sync", 10*time.Second, func() bool { return tc.c.inSync("b") })
	sameFiles(t, tc.sites["a"].img, tc.sites["b"].img)
	w := a.activeWriter()
	w.mu.Lock()
	copied := w.peers[0].resync.Copied
	w.mu.Unlock()
	if copied != 3 {
		t.Fatalf("copied %d regions, want exactly the 3 damaged ones", copied)
	}
}

// TestSiteVerifyFindsDifferences: online verify reports a region damaged
// behind the cluster's back, and none on equal replicas.
func TestSiteVerifyFindsDifferences(t *testing.T) {
	tc := newTestCluster(t, 2<<20, "a", "b")
	a, _ := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	if err := a.WriteAt(block(5, 1<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	rep, err := a.Verify(t.Context(), 0)
	if err != nil || len(rep.Differ) != 0 || rep.Done != rep.Total {
		t.Fatalf("verify of equal replicas: %+v %v", rep, err)
	}
	f, _ := os.OpenFile(tc.sites["b"].img, os.O_RDWR, 0)
	f.WriteAt([]byte("rot"), 70000)
	f.Close()
	rep, err = a.Verify(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Differ["b"]; len(got) != 1 || got[0] != 65536 {
		t.Fatalf("verify found %v, want [65536]", rep.Differ)
	}
}

// TestSitePartitionedReplicaStopsReading: a replica cut off from the
// writer stops serving reads when its lease ends, and the writer goes on
// without it only after that (I3): no read at the replica returns data
// older than a write the writer acknowledged.
func TestSitePartitionedReplicaStopsReading(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	// a reaches b through a proxy that can cut the link.
	px, err := proxy.New("127.0.0.1:0", tc.addrs["b"])
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	tc.addrs["b"] = px.Addr()
	a, b := tc.writerAndReplica()
	old := block(1, 4096)
	if err := a.WriteAt(old, 0, false); err != nil {
		t.Fatal(err)
	}
	px.Partition(true, true)
	newer := block(2, 4096)
	if err := a.WriteAt(newer, 0, false); err != nil {
		t.Fatalf("write at a after the partition: %v", err)
	}
	acked := time.Now()
	// From now on b must never return the old block.
	got := make([]byte, 4096)
	err = b.ReadAt(got, 0)
	var nr *target.NotReadyError
	switch {
	case err == nil && bytes.Equal(got, old):
		t.Fatalf("stale read at the partitioned replica after the write was acknowledged")
	case err == nil && !bytes.Equal(got, newer):
		t.Fatalf("read returned neither value")
	case err != nil && !errors.As(err, &nr):
		t.Fatalf("read failed with %v, want NOT READY", err)
	}
	_, end := b.recv.leaseValid(time.Now())
	if acked.Before(end) {
		t.Fatalf("the writer acknowledged at %v, before b's lease ended at %v", acked, end)
	}
}

// TestSiteWithoutLeaseReportsTransitioning: a site that cannot serve
// because it has held no lease for longer than it holds an operation
// says so in its ALUA state (so TEST UNIT READY and its own REPORT TARGET
// PORT GROUPS agree with the NOT READY its reads and writes get), instead
// of the state of a view it can no longer act on: a replica cut off from
// the writer, and a writer whose lease lapsed, report transitioning; a
// replica whose lease returns is active/non-optimized again.
func TestSiteWithoutLeaseReportsTransitioning(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	// b must still be in sync by its view when its hold runs out, so the
	// writer must not drop it first: here views come from the shared fake
	// cluster at once, where a real cut-off replica would not hear of the
	// drop. With the defaults the race was close (the writer drops after
	// replica_timeout without an answer, 2 s; b transitions a lease plus
	// the hold after its last lease, 2.9 s) and a loaded machine lost it
	// (a drop after 2.3 s, then b unavailable, not transitioning).
	tc.opts = func(c *SiteConfig) { c.ReplicaTimeout, c.Hold = 10*time.Second, time.Second }
	px, err := proxy.New("127.0.0.1:0", tc.addrs["b"])
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	tc.addrs["b"] = px.Addr() // a's stream to b, which carries b's lease, goes through px
	a, b := tc.writerAndReplica()
	if st := a.State(); st != target.PathActiveOptimized {
		t.Fatalf("writer: %v", st)
	}
	if st := b.State(); st != target.PathActiveNonOptimized {
		t.Fatalf("replica with a lease: %v", st)
	}
	px.Partition(true, true)
	until(t, "b transitioning once its lease is gone", 10*time.Second, func() bool { return b.State() == target.PathTransitioning })
	if !tc.c.inSync("b") {
		t.Fatal("b left the in-sync set: the test no longer shows a stale view")
	}
	px.Partition(false, false)
	until(t, "b active/non-optimized with its lease back", 10*time.Second, func() bool { return b.State() == target.PathActiveNonOptimized })
	if st := a.State(); st != target.PathActiveOptimized {
		t.Fatalf("writer: %v", st)
	}
	tc.c.revoke("a")
	// A gap shorter than the hold (a writer moving) keeps the state, so
	// that initiators get no unit attention for it; a longer one does not.
	if st := a.State(); st == target.PathTransitioning {
		t.Fatalf("writer just without its lease: %v, want no transition yet", st)
	}
	until(t, "a transitioning once it has been without a lease for the hold", 10*time.Second, func() bool { return a.State() == target.PathTransitioning })
}

// TestSiteDivergedWriterGetsFullResync: a site that stopped uncleanly as
// writer comes back, reports it may hold unacknowledged writes, and is
// compared in full before it is in sync again.
func TestSiteDivergedWriterGetsFullResync(t *testing.T) {
	tc := newTestCluster(t, 2<<20, "a", "b")
	tc.start("b")
	os.MkdirAll(tc.sites["a"].dir, 0o755)
	os.WriteFile(filepath.Join(tc.sites["a"].dir, "writer.marker"), nil, 0o600)
	a := tc.start("a")
	if !a.Status().Stale {
		t.Fatal("a restarted with a writer marker but does not say it may have diverged")
	}
	// An unacknowledged write that only a has.
	a.cfg.Store.WriteAt(block(9, 4096), 8192, false)
	b := tc.sites["b"].site
	tc.c.setWriter("b")
	waitWriter(t, b)
	until(t, "a dropped and back in sync", 10*time.Second, func() bool {
		tc.c.mu.Lock()
		defer tc.c.mu.Unlock()
		return slices.Contains(tc.c.drops, "a") && slices.Contains(tc.c.view.InSync, "a")
	})
	sameFiles(t, tc.sites["a"].img, tc.sites["b"].img)
	until(t, "a's marker cleared", 5*time.Second, func() bool { return !a.Status().Stale })
}

// TestSiteSizeMismatchRefused: a site whose LU has another size is never a
// copy: the writer's hello is refused, the writer drops it and says why
// in its status, and writes go on without it.
func TestSiteSizeMismatchRefused(t *testing.T) {
	tc := newTestCluster(t, 4<<20, "a", "b")
	tc.sizes = map[string]int64{"b": 8 << 20}
	a := tc.start("a")
	tc.start("b")
	tc.c.setWriter("a")
	until(t, "a drops b", 10*time.Second, func() bool {
		return !slices.Contains(fakeControl{tc.c, "a"}.View().InSync, "b")
	})
	waitWriter(t, a)
	if err := a.WriteAt(block(1, 4096), 0, true); err != nil {
		t.Fatalf("write without b: %v", err)
	}
	var st PeerStatus
	until(t, "a's status says why", 5*time.Second, func() bool {
		for _, p := range a.Status().Peers {
			if p.Name == "b" {
				st = p
			}
		}
		return strings.Contains(st.Error, "LU sizes differ")
	})
	t.Logf("b: %+v", st)
	if st.Connected || st.State == peerInSync {
		t.Fatalf("b with another size: %+v", st)
	}
}

// TestSiteRefusesUnsetTimings: conf is the only source of the timing
// defaults; a site handed a zero lease or replica timeout refuses to
// start instead of filling in values of its own.
func TestSiteRefusesUnsetTimings(t *testing.T) {
	dir := t.TempDir()
	store, err := OpenLocal(filepath.Join(dir, "lun.img"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	base := SiteConfig{Name: "a", Store: store, Dir: dir, Control: fakeControl{newFakeCluster("a"), "a"},
		Lease: 300 * time.Millisecond, ReplicaTimeout: 2 * time.Second}
	for name, mod := range map[string]func(*SiteConfig){
		"no lease":           func(c *SiteConfig) { c.Lease = 0 },
		"no replica timeout": func(c *SiteConfig) { c.ReplicaTimeout = 0 },
		"timeout under lease": func(c *SiteConfig) {
			c.ReplicaTimeout = 200 * time.Millisecond
		},
	} {
		cfg := base
		mod(&cfg)
		if s, err := NewSite(cfg); err == nil {
			s.Close()
			t.Errorf("%s: NewSite accepted %v / %v", name, cfg.Lease, cfg.ReplicaTimeout)
		}
	}
}

// TestSiteLostWithPDL: with PDL set, a site that has served and then
// lost the cluster (a replica cut off from the writer until its state
// says transitioning) reports itself lost (target.DeviceLoss), and not
// lost again once its lease is back. Without PDL, or before it has
// served since it started, the same site is transitioning and not lost.
func TestSiteLostWithPDL(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b")
	tc.opts = func(c *SiteConfig) { c.PDL = true }
	px, err := proxy.New("127.0.0.1:0", tc.addrs["b"])
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	tc.addrs["b"] = px.Addr()
	a, b := tc.start("a"), tc.start("b")
	var _ target.DeviceLoss = b
	tc.c.setWriter("a")
	waitWriter(t, a)
	until(t, "b lease", 5*time.Second, func() bool { ok, _ := b.recv.leaseValid(time.Now()); return ok })
	if b.State() != target.PathActiveNonOptimized || b.Lost() || a.Lost() {
		t.Fatalf("in sync with a lease: b %v, lost %v; a lost %v", b.State(), b.Lost(), a.Lost())
	}
	px.Partition(true, true)
	until(t, "b lost once it is transitioning", 10*time.Second, func() bool { return b.Lost() })
	if st := b.State(); st != target.PathTransitioning {
		t.Fatalf("b lost but %v", st)
	}
	// The same moment without PDL, and for a site that has not served
	// since it started (only the test goroutine reads these).
	b.cfg.PDL = false
	if b.Lost() {
		t.Fatal("b lost without PDL")
	}
	b.cfg.PDL = true
	b.served.Store(false)
	if b.Lost() {
		t.Fatal("b lost before it ever served")
	}
	b.served.Store(true)
	px.Partition(false, false)
	until(t, "b back with its lease", 10*time.Second, func() bool { return b.State() == target.PathActiveNonOptimized })
	if b.Lost() {
		t.Fatal("b still lost with its lease back")
	}
}
