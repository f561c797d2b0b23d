package raftlog

import (
	"bytes"
	"errors"
	"io"
	"reflect"
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

// release: only the writer of the current epoch gives it up, once; the
// next set-writer starts an epoch that is not released.
func TestRelease(t *testing.T) {
	s := cluster(t)
	cases := map[string]Command{
		"stale epoch":    {Kind: CmdRelease, Name: "a", ByEpoch: 0},
		"future epoch":   {Kind: CmdRelease, Name: "a", ByEpoch: 2},
		"not the writer": {Kind: CmdRelease, Name: "b", ByEpoch: 1},
		"no name":        {Kind: CmdRelease, ByEpoch: 1},
	}
	for name, c := range cases {
		n, err := s.Apply(c)
		if !errors.Is(err, ErrRefused) {
			t.Errorf("%s: err=%v, want a refusal", name, err)
		}
		if n.Released != 0 {
			t.Errorf("%s: released %d on refusal", name, n.Released)
		}
	}
	if _, err := (State{}).Apply(Command{Kind: CmdRelease, ByEpoch: 0}); !errors.Is(err, ErrRefused) {
		t.Errorf("release before any writer: %v", err)
	}

	r := mustApply(t, s, Command{Kind: CmdRelease, Name: "a", ByEpoch: 1})
	if r.Released != 1 || r.Writer != "a" || r.Epoch != 1 {
		t.Fatalf("after release: %+v", r)
	}
	if s.Released != 0 {
		t.Fatal("Apply changed its input")
	}
	if _, err := r.Apply(Command{Kind: CmdRelease, Name: "a", ByEpoch: 1}); !errors.Is(err, ErrRefused) {
		t.Errorf("release twice: %v", err)
	}
	n := mustApply(t, r, Command{Kind: CmdSetWriter, Name: "b", Epoch: 2})
	if n.Released == n.Epoch {
		t.Fatalf("new epoch born released: %+v", n)
	}
	// The old epoch can no longer release anything.
	if _, err := n.Apply(Command{Kind: CmdRelease, Name: "a", ByEpoch: 1}); !errors.Is(err, ErrRefused) {
		t.Errorf("release of an old epoch: %v", err)
	}
}

// The snapshot carries every field, Released and Images included.
func TestSnapshotRoundTrip(t *testing.T) {
	f := &FSM{state: mustApply(t, imaged(t), Command{Kind: CmdRelease, Name: "b", ByEpoch: 2},
		Command{Kind: CmdImage, Name: "a", Reason: "a new, empty image"})}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := &FSM{}
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.State(), g.State()) {
		t.Fatalf("restored %+v, want %+v", g.State(), f.State())
	}
}

type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

// The in-sync refusals a writer acts on have names of their own, and are
// refusals too.
func TestInSyncRefusalsAreTyped(t *testing.T) {
	s := mustApply(t, cluster(t), Command{Kind: CmdDropInSync, Name: "b", ByEpoch: 1})
	if _, err := s.Apply(Command{Kind: CmdDropInSync, Name: "b", ByEpoch: 1}); !errors.Is(err, ErrNotInSync) || !errors.Is(err, ErrRefused) {
		t.Errorf("drop of a site already out: %v", err)
	}
	if _, err := cluster(t).Apply(Command{Kind: CmdAddInSync, Name: "b", ByEpoch: 1}); !errors.Is(err, ErrAlreadyInSync) || !errors.Is(err, ErrRefused) {
		t.Errorf("add of a site already in: %v", err)
	}
	if _, err := cluster(t).Apply(Command{Kind: CmdDropInSync, Name: "a", ByEpoch: 1}); errors.Is(err, ErrNotInSync) || errors.Is(err, ErrAlreadyInSync) {
		t.Errorf("the writer dropping itself is another refusal: %v", err)
	}
}
