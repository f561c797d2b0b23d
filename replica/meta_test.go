package replica

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

func wantShared(t *testing.T, s *Site, version uint64, data string) {
	t.Helper()
	v, d := s.SharedState()
	if v != version || string(d) != data || s.SharedVersion() != version {
		t.Fatalf("%s: shared record version %d %q (SharedVersion %d), want %d %q", s.cfg.Name, v, d, s.SharedVersion(), version, data)
	}
}

// TestSharedStateCompareAndSet: the shared record changes by
// compare-and-set at the writer or at another site (forwarded); a change
// is at every in-sync site when it returns, a stale version changes
// nothing, and of two racing changes from the same version exactly one
// wins. It survives a restart, and a site that missed changes gets them
// by resync. With three sites, a write forwarded from one replica reaches
// the other with its data.
func TestSharedStateCompareAndSet(t *testing.T) {
	tc := newTestCluster(t, 4<<20, "a", "b", "c")
	a, b, c := tc.start("a"), tc.start("b"), tc.start("c")
	tc.c.setWriter("a")
	waitWriter(t, a)
	for _, s := range []*Site{b, c} {
		until(t, s.cfg.Name+" holds a read lease", 5*time.Second, func() bool { ok, _ := s.recv.leaseValid(time.Now()); return ok })
	}
	wantShared(t, b, 0, "")

	if ok, err := a.SetSharedState(0, []byte("one")); err != nil || !ok {
		t.Fatalf("set at the writer: ok=%v err=%v", ok, err)
	}
	for _, s := range []*Site{a, b, c} {
		wantShared(t, s, 1, "one")
	}
	if ok, err := b.SetSharedState(1, []byte("two")); err != nil || !ok {
		t.Fatalf("set forwarded from b: ok=%v err=%v", ok, err)
	}
	for _, s := range []*Site{a, b, c} {
		wantShared(t, s, 2, "two")
	}
	if ok, err := c.SetSharedState(1, []byte("stale")); err != nil || ok {
		t.Fatalf("stale set from c: ok=%v err=%v", ok, err)
	}
	for _, s := range []*Site{a, b, c} {
		wantShared(t, s, 2, "two")
	}

	// Races: every round, all three sites try from the same version.
	for round := range 10 {
		v := a.SharedVersion()
		var wg sync.WaitGroup
		wins := make(chan string, 3)
		for _, s := range []*Site{a, b, c} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				val := fmt.Sprintf("%s-%d", s.cfg.Name, round)
				ok, err := s.SetSharedState(v, []byte(val))
				if err != nil {
					t.Errorf("round %d at %s: %v", round, s.cfg.Name, err)
				}
				if ok {
					wins <- val
				}
			}()
		}
		wg.Wait()
		close(wins)
		var won []string
		for w := range wins {
			won = append(won, w)
		}
		if len(won) != 1 {
			t.Fatalf("round %d: %d winners %v", round, len(won), won)
		}
		for _, s := range []*Site{a, b, c} {
			wantShared(t, s, v+1, won[0])
		}
	}

	// A write forwarded from c reaches b with its data.
	data := block(7, 8192)
	if err := c.WriteAt(data, 65536, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := b.ReadAt(got, 65536); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("write forwarded from c, read at b: err=%v equal=%v", err, bytes.Equal(got, data))
	}
	tc.c.mu.Lock()
	drops := slices.Clone(tc.c.drops)
	tc.c.mu.Unlock()
	if len(drops) > 0 {
		t.Fatalf("sites dropped from the in-sync set with every site up: %v", drops)
	}

	// c misses two changes, comes back by resync with the latest.
	tc.stop("c")
	v := a.SharedVersion()
	for i := range 2 {
		if ok, err := b.SetSharedState(v+uint64(i), []byte(fmt.Sprintf("while c was away %d", i))); err != nil || !ok {
			t.Fatalf("set without c: ok=%v err=%v", ok, err)
		}
	}
	if tc.c.inSync("c") {
		t.Fatal("c still in sync")
	}
	c = tc.start("c")
	until(t, "c back in sync", 10*time.Second, func() bool { return tc.c.inSync("c") })
	wantShared(t, c, v+2, "while c was away 1")

	// Durable: a restarted site reads it back.
	tc.stop("b")
	m, err := openMeta(filepath.Join(tc.sites["b"].dir, "shared.meta"))
	if err != nil {
		t.Fatal(err)
	}
	if mv, md := m.get(); mv != v+2 || string(md) != "while c was away 1" {
		t.Fatalf("b's record on disk: %d %q", mv, md)
	}
}

func TestMetaDecodeRejectsDamage(t *testing.T) {
	good := encodeMeta(7, []byte("state"))
	if v, d, err := decodeMeta(good); err != nil || v != 7 || string(d) != "state" {
		t.Fatalf("round trip: %d %q %v", v, d, err)
	}
	for i, b := range [][]byte{nil, good[:10], append([]byte("XXMETA01"), good[8:]...), append(bytes.Clone(good), 'x')} {
		if _, _, err := decodeMeta(b); err == nil {
			t.Errorf("damaged record %d accepted", i)
		}
	}
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	if _, _, err := decodeMeta(bad); err == nil {
		t.Error("flipped bit accepted")
	}
}
