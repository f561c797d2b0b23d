package replica

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// imageBook is the cluster's record of image identities, with raftlog's
// rule (raftlog/image.go) cut down to what these tests need.
type imageBook struct {
	mu     sync.Mutex
	rec    map[string]ImageID
	marked map[string]string
}

// imageControl is a fakeControl that keeps image identities.
type imageControl struct {
	fakeControl
	book *imageBook
}

func (c imageControl) ImageDistrust(name string, id ImageID) string {
	c.book.mu.Lock()
	defer c.book.mu.Unlock()
	rec, ok := c.book.rec[name]
	switch {
	case c.book.marked[name] != "":
		return "marked untrusted: " + c.book.marked[name]
	case ok && rec.UUID != id.UUID:
		return "not the recorded image"
	case ok && id.Gen < rec.Gen:
		return "an older copy"
	}
	return ""
}

func (c imageControl) MarkImage(name, why string) error {
	c.book.mu.Lock()
	defer c.book.mu.Unlock()
	if c.book.marked[name] == "" {
		c.book.marked[name] = why
	}
	return nil
}

func (c imageControl) RecordImage(name string, epoch uint64, id ImageID) error {
	if c.ImageDistrust(name, id) != "" || !c.c.inSync(name) {
		return errors.New("refused: record of an untrusted or out-of-sync image")
	}
	c.book.mu.Lock()
	defer c.book.mu.Unlock()
	c.book.rec[name] = id
	return nil
}

func (c imageControl) ImageRecorded(name string, id ImageID) bool {
	rec, marked := c.book.get(name)
	return marked == "" && rec.UUID != "" && rec.UUID == id.UUID && id.Gen >= rec.Gen
}

func (c imageControl) AddInSyncImage(name string, epoch uint64, id ImageID) error {
	if err := c.AddInSync(name, epoch); err != nil {
		return err
	}
	c.book.mu.Lock()
	defer c.book.mu.Unlock()
	c.book.rec[name] = id
	delete(c.book.marked, name)
	return nil
}

func (b *imageBook) get(name string) (ImageID, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rec[name], b.marked[name]
}

// sameLU compares the LUs of two sites' stores (each file ends with its
// own identity).
func sameLU(t *testing.T, a, b *Site) {
	t.Helper()
	n := a.cfg.Store.Size()
	if b.cfg.Store.Size() != n {
		t.Fatalf("LU sizes %d and %d", n, b.cfg.Store.Size())
	}
	x, y := make([]byte, n), make([]byte, n)
	if err := a.cfg.Store.ReadAt(x, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.cfg.Store.ReadAt(y, 0); err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < n; i += 4096 {
		if !bytes.Equal(x[i:i+4096], y[i:i+4096]) {
			t.Fatalf("the LUs differ at byte %d", i)
		}
	}
}

// TestSiteReplacedImageCopiedInFull (issue 12 item 4): b's backing file
// is replaced by an empty one while it is down. Its bitmap at the writer
// says it misses nothing, but its image is not the one recorded: the
// writer marks it, compares it in full, and b joins with its new
// identity recorded.
func TestSiteReplacedImageCopiedInFull(t *testing.T) {
	tc := newTestCluster(t, 2<<20, "a", "b")
	tc.images = true
	book := &imageBook{rec: map[string]ImageID{}, marked: map[string]string{}}
	tc.opts = func(cfg *SiteConfig) { cfg.Control = imageControl{fakeControl{tc.c, cfg.Name}, book} }
	a := tc.start("a")
	b := tc.start("b")
	epoch := tc.c.setWriter("a")
	waitWriter(t, a)
	old, _, _ := b.cfg.Store.Image()
	until(t, "b's image recorded in epoch "+fmt.Sprint(epoch), 10*time.Second, func() bool {
		rec, _ := book.get("b")
		return rec == ImageID{UUID: old.UUID, Gen: epoch}
	})
	if id, _, _ := b.cfg.Store.Image(); id.Gen != epoch || id.Empty {
		t.Fatalf("b's image %v: its generation was not raised to %d before the record", id, epoch)
	}
	for i := range 8 {
		if err := a.WriteAt(block(uint64(i+1), 64<<10), int64(i)*(256<<10), true); err != nil {
			t.Fatal(err)
		}
	}
	sameLU(t, a, b)

	tc.stop("b")
	until(t, "a drops b", 10*time.Second, func() bool { return !tc.c.inSync("b") })
	if err := os.WriteFile(tc.sites["b"].img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b = tc.start("b")
	neu, created, _ := b.cfg.Store.Image()
	if neu.UUID == old.UUID || created == "" {
		t.Fatalf("replaced image kept its identity: %v", neu)
	}
	until(t, "b back in sync", 10*time.Second, func() bool { return tc.c.inSync("b") })
	sameLU(t, a, b)
	if rec, marked := book.get("b"); rec != (ImageID{UUID: neu.UUID, Gen: epoch}) || marked != "" {
		t.Fatalf("b's record after its copy: %v, marked %q; want %s gen %d", rec, marked, neu.UUID, epoch)
	}
	tc.c.mu.Lock()
	adds := slices.Clone(tc.c.adds)
	tc.c.mu.Unlock()
	if !slices.Contains(adds, "b") {
		t.Fatal("b was not added back by the writer")
	}
}

// TestSiteFirstEpochRestartKeepsRecordedReplica: in the cluster's first
// epoch the writer compares every written replica image (the
// configuration only declared them in sync); once a replica is compared
// and recorded, a writer that restarts in the same epoch (its lease
// lapsed under load and came back) keeps it in sync instead of taking it
// out for another full copy (seen as failed I/O at that site in
// TestMembershipAddRemoveSite).
func TestSiteFirstEpochRestartKeepsRecordedReplica(t *testing.T) {
	tc := newTestCluster(t, 2<<20, "a", "b")
	tc.images = true
	book := &imageBook{rec: map[string]ImageID{}, marked: map[string]string{}}
	tc.opts = func(cfg *SiteConfig) { cfg.Control = imageControl{fakeControl{tc.c, cfg.Name}, book} }
	a := tc.start("a")
	b := tc.start("b")
	// Both images written before the cluster's first writer: the first
	// epoch compares them.
	if err := a.cfg.Store.WriteAt(block(1, 64<<10), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := b.cfg.Store.WriteAt(block(2, 64<<10), 0, true); err != nil {
		t.Fatal(err)
	}
	epoch := tc.c.setWriter("a")
	waitWriter(t, a)
	until(t, "b compared, copied and recorded", 10*time.Second, func() bool {
		rec, _ := book.get("b")
		return tc.c.inSync("b") && rec.UUID != ""
	})
	sameLU(t, a, b)
	tc.c.mu.Lock()
	drops := len(tc.c.drops)
	tc.c.mu.Unlock()
	if drops != 1 {
		t.Fatalf("the first epoch's compare dropped b %d times, want once", drops)
	}

	// The writer's lease lapses and comes back in the same epoch.
	tc.c.revoke("a")
	until(t, "a stops its writer", 5*time.Second, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.w == nil
	})
	tc.c.mu.Lock()
	tc.c.leases["a"] = time.Now().Add(time.Hour)
	tc.c.bump()
	tc.c.mu.Unlock()
	waitWriter(t, a)
	for i := range 4 {
		if err := a.WriteAt(block(uint64(10+i), 64<<10), int64(i)*(256<<10), true); err != nil {
			t.Fatal(err)
		}
	}
	until(t, "the restarted writer connected b", 10*time.Second, func() bool {
		for _, p := range a.Status().Peers {
			if p.Name == "b" && p.Connected {
				return true
			}
		}
		return false
	})
	tc.c.mu.Lock()
	drops = len(tc.c.drops)
	tc.c.mu.Unlock()
	if drops != 1 || !tc.c.inSync("b") {
		t.Fatalf("after a writer restart in epoch %d, b was dropped again (%d drops, in sync %v): a recorded replica was compared again", epoch, drops, tc.c.inSync("b"))
	}
	sameLU(t, a, b)
}
