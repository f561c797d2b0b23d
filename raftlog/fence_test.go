package raftlog

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"
)

// TestFenceApply: the state machine's rules for fence and unfence, and
// what a fence forbids.
func TestFenceApply(t *testing.T) {
	s := cluster(t) // writer a (epoch 1), b in sync, witness w
	const until = 1_900_000_000_000

	refusals := map[string]Command{
		"unknown member":      {Kind: CmdFence, Name: "zz", Until: until},
		"witness":             {Kind: CmdFence, Name: "w", Until: until},
		"no deadline":         {Kind: CmdFence, Name: "b"},
		"unfence, not fenced": {Kind: CmdUnfence, Name: "b"},
	}
	for name, c := range refusals {
		if _, err := s.Apply(c); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: err=%v, want a refusal", name, err)
		}
	}

	f := mustApply(t, s, Command{Kind: CmdFence, Name: "b", Until: until})
	if !f.IsFenced("b") || f.IsFenced("a") || !slices.Equal(f.FencedNames(), []string{"b"}) {
		t.Fatalf("fenced %v after fencing b", f.Fenced)
	}
	if s.IsFenced("b") {
		t.Fatal("Apply changed its input state")
	}
	// The other in-sync data site is fenced: a is the last one that can
	// be writer, so it cannot be fenced too.
	if _, err := f.Apply(Command{Kind: CmdFence, Name: "a", Until: until}); !errors.Is(err, ErrRefused) {
		t.Fatalf("fencing the only unfenced in-sync data site: %v", err)
	}
	if _, err := f.Apply(Command{Kind: CmdSetWriter, Name: "b", Epoch: 2}); !errors.Is(err, ErrRefused) {
		t.Fatalf("a fenced site became writer: %v", err)
	}
	// Fencing again moves the deadline; an expiry of the old one is then
	// refused, a plain unfence is not.
	f2 := mustApply(t, f, Command{Kind: CmdFence, Name: "b", Until: until + 5000})
	if fe, _ := f2.fence("b"); fe.Until != until+5000 || len(f2.Fenced) != 1 {
		t.Fatalf("fence after renewal: %+v", f2.Fenced)
	}
	if _, err := f2.Apply(Command{Kind: CmdUnfence, Name: "b", Until: until}); !errors.Is(err, ErrRefused) {
		t.Fatalf("expiry of a renewed fence: %v", err)
	}
	u := mustApply(t, f2, Command{Kind: CmdUnfence, Name: "b", Until: until + 5000})
	if u.IsFenced("b") || len(u.Fenced) != 0 {
		t.Fatalf("still fenced after unfence: %v", u.Fenced)
	}

	// A fenced site that was dropped cannot rejoin until it is unfenced.
	d := mustApply(t, f, Command{Kind: CmdDropInSync, Name: "b", ByEpoch: 1})
	if _, err := d.Apply(Command{Kind: CmdAddInSync, Name: "b", ByEpoch: 1}); !errors.Is(err, ErrRefused) {
		t.Fatalf("a fenced site rejoined the in-sync set: %v", err)
	}
	// a is now the only in-sync data site: fencing it is refused.
	if _, err := d.Apply(Command{Kind: CmdFence, Name: "a", Until: until}); !errors.Is(err, ErrRefused) {
		t.Fatalf("fencing the only in-sync data site: %v", err)
	}
	mustApply(t, d, Command{Kind: CmdUnfence, Name: "b"}, Command{Kind: CmdAddInSync, Name: "b", ByEpoch: 1})

	// A fenced writer changes nothing in the in-sync set.
	fa := mustApply(t, s, Command{Kind: CmdFence, Name: "a", Until: until})
	if _, err := fa.Apply(Command{Kind: CmdDropInSync, Name: "b", ByEpoch: 1}); !errors.Is(err, ErrRefused) {
		t.Fatalf("a fenced writer dropped a replica: %v", err)
	}
	// The next writer is not fenced and takes the next epoch.
	mustApply(t, fa, Command{Kind: CmdSetWriter, Name: "b", Epoch: 2}, Command{Kind: CmdDropInSync, Name: "a", ByEpoch: 2})
}

// TestFenceSnapshot: fences survive a snapshot and restore, and through
// the FSM's log entry decoding.
func TestFenceSnapshot(t *testing.T) {
	var fsm FSM
	for i, c := range []Command{
		{Kind: CmdAddMember, Name: "a", Role: RoleData},
		{Kind: CmdAddMember, Name: "b", Role: RoleData},
		{Kind: CmdFence, Name: "b", Until: 42},
	} {
		b, err := msgpack.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if r := fsm.Apply(&raft.Log{Index: uint64(i + 1), Data: b}); r != nil {
			t.Fatalf("%+v: %v", c, r)
		}
	}
	snap, err := fsm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	var g FSM
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if fe, ok := g.State().fence("b"); !ok || fe.Until != 42 {
		t.Fatalf("restored fences %+v", g.State().Fenced)
	}
}

// TestFencedWriterHandsOver: the writer is fenced through the cluster; it
// lets its lease run out and hands leadership on without releasing its
// epoch, so the other data site becomes writer only after the old lease
// ended plus the takeover wait, as after a real loss. The fenced site can
// be neither promoted nor writer until it is unfenced; then it can.
func TestFencedWriterHandsOver(t *testing.T) {
	tc := startCluster(t)
	mon := tc.monitor()
	x, epoch := tc.writer(0)
	y := tc.other(x)

	if _, err := y.c.Fence(x.name, time.Minute); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("fence on a follower: %v", err)
	}
	for _, bad := range []struct {
		name string
		d    time.Duration
	}{{"nobody", time.Minute}, {"w", time.Minute}, {y.name, 0}, {y.name, MaxFence + time.Second}} {
		if _, err := x.c.Fence(bad.name, bad.d); !errors.Is(err, ErrRefused) {
			t.Fatalf("fence %s for %v: %v", bad.name, bad.d, err)
		}
	}

	start := time.Now()
	if _, err := x.c.Fence(x.name, time.Minute); err != nil {
		t.Fatal(err)
	}
	w2, epoch2 := tc.writer(epoch)
	took := time.Since(start)
	if w2 != y {
		t.Fatalf("writer %s after fencing %s", w2.name, x.name)
	}
	if s := y.c.State(); s.Released == epoch || !s.IsFenced(x.name) || s.Writer != y.name || s.Epoch != epoch2 {
		t.Fatalf("state after the fence: %+v", s)
	}
	oldEnd := x.lastUntil()
	since := y.c.Status().WriterSince
	if since.Before(oldEnd.Add(y.c.cfg.Lease)) {
		// The new writer waited out a lease that was not released:
		// Lease + 10% + RPCTimeout from its election, which came after
		// the old lease ended.
		t.Fatalf("new writer began %v after the fenced writer's lease ended; want at least a lease (%v)",
			since.Sub(oldEnd), y.c.cfg.Lease)
	}
	t.Logf("fenced writer %s: %s writer of epoch %d after %v; its lease began %v after the old one ended",
		x.name, y.name, epoch2, took.Round(time.Millisecond), since.Sub(oldEnd).Round(time.Millisecond))
	if e, _ := x.c.WriterLease(); e != 0 {
		t.Fatalf("the fenced site holds a lease for epoch %d", e)
	}
	if err := y.c.Promote(x.name, time.Second); !errors.Is(err, ErrRefused) {
		t.Fatalf("promote a fenced site: %v", err)
	}
	// The fenced site, made leader, hands leadership straight back.
	if err := y.c.raft.LeadershipTransferToServer(raft.ServerID(x.name), raft.ServerAddress(x.name)).Error(); err != nil {
		t.Fatalf("transfer to the fenced site: %v", err)
	}
	tc.waitFor("the fenced site hands leadership on", func() bool { return x.c.handoffs.Load() > 0 })
	w3, epoch3 := tc.writer(epoch2)
	if w3 != y {
		t.Fatalf("writer %s (epoch %d) while %s is fenced", w3.name, epoch3, x.name)
	}

	was, err := y.c.Unfence(x.name)
	if err != nil || !was {
		t.Fatalf("unfence: %v (was fenced: %v)", err, was)
	}
	if was, err := y.c.Unfence(x.name); err != nil || was {
		t.Fatalf("second unfence: %v (was fenced: %v)", err, was)
	}
	if err := y.c.Promote(x.name, 5*time.Second); err != nil {
		t.Fatalf("promote after unfence: %v", err)
	}
	if w4, _ := tc.writer(epoch3); w4 != x {
		t.Fatalf("writer %s after promoting %s back", w4.name, x.name)
	}
	mon.check(t)
}

// TestFenceExpires: the leader lifts a fence once its deadline passed.
func TestFenceExpires(t *testing.T) {
	tc := startCluster(t)
	x, _ := tc.writer(0)
	y := tc.other(x)
	until, err := x.c.Fence(y.name, 600*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	tc.waitFor("every member sees the fence", func() bool {
		for _, m := range tc.members {
			if !m.c.State().IsFenced(y.name) {
				return false
			}
		}
		return true
	})
	tc.waitFor("the fence expires", func() bool { return !y.c.State().IsFenced(y.name) })
	if now := time.Now(); now.Before(until) {
		t.Fatalf("fence lifted %v before its deadline", until.Sub(now))
	}
	t.Logf("fence lifted %v after its deadline", time.Since(until).Round(time.Millisecond))
}
