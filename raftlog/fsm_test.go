package raftlog

import (
	"errors"
	"testing"
)

func mustApply(t *testing.T, s State, cs ...Command) State {
	t.Helper()
	for _, c := range cs {
		n, err := s.Apply(c)
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		s = n
	}
	return s
}

func cluster(t *testing.T) State {
	return mustApply(t, State{},
		Command{Kind: CmdAddMember, Name: "a", Role: RoleData},
		Command{Kind: CmdAddMember, Name: "w", Role: RoleWitness},
		Command{Kind: CmdSetWriter, Name: "a", Epoch: 1},
		Command{Kind: CmdAddMember, Name: "b", Role: RoleData},
		Command{Kind: CmdAddInSync, Name: "b", ByEpoch: 1},
	)
}

func TestApplyRefusals(t *testing.T) {
	s := cluster(t)
	cases := map[string]Command{
		"witness as writer":     {Kind: CmdSetWriter, Name: "w", Epoch: 2},
		"epoch not raised":      {Kind: CmdSetWriter, Name: "b", Epoch: 1},
		"unknown member writer": {Kind: CmdSetWriter, Name: "zz", Epoch: 5},
		"stale writer drops":    {Kind: CmdDropInSync, Name: "b", ByEpoch: 0},
		"writer drops itself":   {Kind: CmdDropInSync, Name: "a", ByEpoch: 1},
		"duplicate member":      {Kind: CmdAddMember, Name: "a", Role: RoleData},
		"bad role":              {Kind: CmdAddMember, Name: "c", Role: "boss"},
		"witness into in-sync":  {Kind: CmdAddInSync, Name: "w", ByEpoch: 1},
		"unknown command":       {Kind: "format-disk"},
		"add in-sync twice":     {Kind: CmdAddInSync, Name: "b", ByEpoch: 1},
	}
	for name, c := range cases {
		n, err := s.Apply(c)
		if !errors.Is(err, ErrRefused) {
			t.Errorf("%s: err=%v, want a refusal", name, err)
		}
		if n.Epoch != s.Epoch || n.Writer != s.Writer || len(n.InSync) != len(s.InSync) {
			t.Errorf("%s: state changed on refusal", name)
		}
	}
}

// A site that missed writes cannot become the writer until it is back in
// sync (I1): after the drop, set-writer for it is refused.
func TestOutOfSyncSiteCannotWrite(t *testing.T) {
	s := mustApply(t, cluster(t), Command{Kind: CmdDropInSync, Name: "b", ByEpoch: 1})
	if _, err := s.Apply(Command{Kind: CmdSetWriter, Name: "b", Epoch: 2}); !errors.Is(err, ErrRefused) {
		t.Fatalf("out-of-sync site became writer: %v", err)
	}
	s = mustApply(t, s,
		Command{Kind: CmdAddInSync, Name: "b", ByEpoch: 1},
		Command{Kind: CmdSetWriter, Name: "b", Epoch: 2})
	if s.Writer != "b" || s.Epoch != 2 {
		t.Fatalf("writer %s epoch %d", s.Writer, s.Epoch)
	}
	// The old writer's epoch can no longer change the in-sync set (I2).
	if _, err := s.Apply(Command{Kind: CmdDropInSync, Name: "a", ByEpoch: 1}); !errors.Is(err, ErrRefused) {
		t.Fatalf("epoch-1 writer dropped a replica in epoch 2: %v", err)
	}
}
