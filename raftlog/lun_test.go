package raftlog

import (
	"errors"
	"strings"
	"testing"
)

var lunA = LUN{Target: "iqn.2026-11.io.metrolun:demo", ID: 0, Size: 1 << 30, BlockSize: 512}

// TestApplyLUN: the first writer records the LU; a writer or a new data
// site with another LU is refused with the difference, and equal or
// unknown sizes pass.
func TestApplyLUN(t *testing.T) {
	s := mustApply(t, State{},
		Command{Kind: CmdAddMember, Name: "a", Role: RoleData},
		Command{Kind: CmdAddMember, Name: "b", Role: RoleData},
		Command{Kind: CmdSetWriter, Name: "a", Epoch: 1, LUN: &lunA},
	)
	if s.LUN == nil || *s.LUN != lunA {
		t.Fatalf("LUN after the first writer: %+v", s.LUN)
	}
	// Apply must not share the definition with its input.
	n := mustApply(t, s, Command{Kind: CmdSetWriter, Name: "a", Epoch: 2, LUN: &lunA})
	n.LUN.Size = 1
	if s.LUN.Size != lunA.Size {
		t.Fatal("states share the LUN definition")
	}

	bigger, other := lunA, lunA
	bigger.Size = 2 << 30
	other.BlockSize, other.Serial = 4096, "x1"
	for name, c := range map[string]Command{
		"writer with a bigger LU":  {Kind: CmdSetWriter, Name: "b", Epoch: 2, LUN: &bigger},
		"writer with other blocks": {Kind: CmdSetWriter, Name: "b", Epoch: 2, LUN: &other},
		"member with a bigger LU":  {Kind: CmdAddMember, Name: "c", Role: RoleData, LUN: &bigger},
	} {
		_, err := s.Apply(c)
		var me *LUNMismatchError
		if !errors.Is(err, ErrRefused) || !errors.As(err, &me) {
			t.Errorf("%s: err=%v, want a LUN mismatch refusal", name, err)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	if d := lunA.Diff(other); !strings.Contains(d, "block size 4096") || !strings.Contains(d, `serial "x1"`) {
		t.Errorf("diff %q", d)
	}
	unknown := lunA
	unknown.Size = 0
	mustApply(t, s,
		Command{Kind: CmdAddMember, Name: "c", Role: RoleData, LUN: &unknown},
		Command{Kind: CmdSetWriter, Name: "b", Epoch: 2, LUN: &lunA},
	)
	// A cluster from before LUN definitions records it at its next writer.
	old := cluster(t)
	if old.LUN != nil {
		t.Fatal("cluster() has a LUN")
	}
	if n := mustApply(t, old, Command{Kind: CmdSetWriter, Name: "a", Epoch: 2, LUN: &lunA}); n.LUN == nil {
		t.Fatal("the next writer did not record the LUN")
	}
}

// TestApplyFirstWriter: before the first writer an operator may choose
// which data site starts the cluster; never after, never a witness or a
// stranger.
func TestApplyFirstWriter(t *testing.T) {
	s := mustApply(t, State{},
		Command{Kind: CmdAddMember, Name: "a", Role: RoleData},
		Command{Kind: CmdAddMember, Name: "b", Role: RoleData},
		Command{Kind: CmdAddMember, Name: "w", Role: RoleWitness},
		Command{Kind: CmdFirstWriter, Name: "b"},
	)
	if s.First != "b" {
		t.Fatalf("first %q", s.First)
	}
	for name, c := range map[string]Command{
		"a witness":  {Kind: CmdFirstWriter, Name: "w"},
		"a stranger": {Kind: CmdFirstWriter, Name: "zz"},
	} {
		if _, err := s.Apply(c); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: err=%v, want a refusal", name, err)
		}
	}
	if _, err := cluster(t).Apply(Command{Kind: CmdFirstWriter, Name: "b"}); !errors.Is(err, ErrRefused) {
		t.Errorf("after a writer: err=%v, want a refusal", err)
	}
}

// TestFirstWriterChosen: a new cluster whose first data member never
// starts waits for it, and `promote` of another data site starts the
// cluster with that one as writer.
func TestFirstWriterChosen(t *testing.T) {
	tc := newMembers(t)
	b, w := tc.get("b"), tc.get("w")
	b.start(t, tc)
	w.start(t, tc)
	tc.waitFor("a leader with every member added", func() bool {
		return b.c.Leader() != "" && len(b.c.State().Members) == 3
	})
	if s := b.c.State(); s.Epoch != 0 || s.Writer != "" {
		t.Fatalf("a writer without the first data member: %+v", s)
	}
	// The leader serves promote once its duties started; until then it
	// answers not-leader, and so does a member that lost leadership.
	var err error
	for range 50 {
		leader := b
		if b.c.Leader() == "w" {
			leader = w
		}
		if err = leader.c.Promote("b", testDeadline); !errors.Is(err, ErrNotLeader) {
			break
		}
		tc.waitFor("a leader on duty", func() bool {
			for _, m := range []*member{b, w} {
				m.c.mu.Lock()
				on := m.c.lead != nil
				m.c.mu.Unlock()
				if on {
					return true
				}
			}
			return false
		})
	}
	if err != nil {
		t.Fatalf("promote b: %v", err)
	}
	got, epoch := tc.writer(0)
	if got != b || epoch != 1 {
		t.Fatalf("writer %s epoch %d, want b in epoch 1", got.name, epoch)
	}
	// a comes late: it joins as a follower, and the cluster keeps b.
	a := tc.get("a")
	a.start(t, tc)
	tc.waitFor("a sees the writer", func() bool { return a.c.State().Writer == "b" })
	if e, _ := b.c.WriterLease(); e != 1 {
		t.Fatalf("b's lease epoch %d after a started", e)
	}
}

// TestLUNMismatchWriter: a data site whose LU differs from the recorded
// one never becomes writer; it hands leadership to one that can.
func TestLUNMismatchWriter(t *testing.T) {
	tc := newMembers(t)
	tc.get("a").lun = &lunA
	bad := lunA
	bad.Size = 2 << 30
	tc.get("b").lun = &bad
	tc.startAll()
	w, epoch := tc.writer(0)
	if w.name != "a" {
		t.Fatalf("writer %s", w.name)
	}
	tc.waitFor("b sees the cluster's LUN", func() bool { return tc.get("b").c.LUNMismatch() != "" })
	if d := tc.get("b").c.LUNMismatch(); !strings.Contains(d, "size 2147483648") {
		t.Fatalf("b's mismatch %q", d)
	}
	// Leadership forced onto b: it must hand it back rather than write.
	if err := w.c.raft.LeadershipTransferToServer("b", "b").Error(); err != nil {
		t.Fatalf("transfer to b: %v", err)
	}
	tc.waitFor("b hands leadership on", func() bool { return tc.get("b").c.handoffs.Load() > 0 })
	w2, _ := tc.writer(epoch)
	if w2.name != "a" {
		t.Fatalf("writer after b led: %s", w2.name)
	}
	if !strings.Contains(tc.get("b").logs.String(), "this member's LU is not the cluster's") {
		t.Error("b did not log why it cannot be writer")
	}
}
