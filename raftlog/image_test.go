package raftlog

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	uuidA  = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	uuidB  = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	uuidB2 = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2"
)

// imaged is cluster(t) with identities: a became writer of epoch 1 with
// its image, b joined with its image, then b became writer of epoch 2 and
// a's image was recorded in epoch 2.
func imaged(t *testing.T) State {
	t.Helper()
	return mustApply(t, State{},
		Command{Kind: CmdAddMember, Name: "a", Role: RoleData},
		Command{Kind: CmdAddMember, Name: "w", Role: RoleWitness},
		Command{Kind: CmdSetWriter, Name: "a", Epoch: 1, Image: &ImageID{UUID: uuidA, Gen: 1}},
		Command{Kind: CmdAddMember, Name: "b", Role: RoleData},
		Command{Kind: CmdAddInSync, Name: "b", ByEpoch: 1, Image: &ImageID{UUID: uuidB, Gen: 1}},
		Command{Kind: CmdSetWriter, Name: "b", Epoch: 2, Image: &ImageID{UUID: uuidB, Gen: 2}},
		Command{Kind: CmdImage, Name: "a", ByEpoch: 2, Image: &ImageID{UUID: uuidA, Gen: 2}},
	)
}

func TestImageRecords(t *testing.T) {
	s := imaged(t)
	for name, want := range map[string]Image{"a": {Name: "a", UUID: uuidA, Gen: 2}, "b": {Name: "b", UUID: uuidB, Gen: 2}} {
		if got, ok := s.Image(name); !ok || got != want {
			t.Errorf("record of %s: %+v, want %+v", name, got, want)
		}
	}
	if _, ok := s.Image("w"); ok {
		t.Error("a witness has an image record")
	}
	// After removal, no record is left to mistake a new member of that
	// name for the old one.
	r := mustApply(t, s,
		Command{Kind: CmdRetireMember, Name: "a"},
		Command{Kind: CmdDropInSync, Name: "a", ByEpoch: 2},
		Command{Kind: CmdRemoveMember, Name: "a"})
	if _, ok := r.Image("a"); ok {
		t.Error("a removed member keeps its image record")
	}
	if _, ok := s.Image("a"); !ok {
		t.Error("Apply changed its input")
	}
}

// ImageDistrust is the one rule every check uses (the writer's choice of
// a full copy, the leader's look at its own image, set-writer).
func TestImageDistrust(t *testing.T) {
	s := imaged(t)
	cases := []struct {
		name, site string
		id         ImageID
		want       string // "" trusted, else a word of the reason
	}{
		{"as recorded", "a", ImageID{UUID: uuidA, Gen: 2}, ""},
		{"generation ahead", "a", ImageID{UUID: uuidA, Gen: 3}, ""},
		{"replaced", "a", ImageID{UUID: uuidB2, Gen: 0, Empty: true}, "replaced"},
		{"foreign", "a", ImageID{UUID: uuidB, Gen: 2}, "not the recorded"},
		{"older copy", "a", ImageID{UUID: uuidA, Gen: 1}, "older"},
		{"no record, empty", "c", ImageID{UUID: uuidB2, Empty: true}, "empty"},
		{"no record", "c", ImageID{UUID: uuidB2, Gen: 1}, "no identity"},
	}
	s = mustApply(t, s, Command{Kind: CmdAddMember, Name: "c", Role: RoleData})
	for _, c := range cases {
		got := s.ImageDistrust(c.site, c.id)
		if (got == "") != (c.want == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	// A new cluster (its first writer compares every image) and one from
	// before identities take images without a record as they are.
	if why := cluster(t).ImageDistrust("b", ImageID{UUID: uuidB2, Empty: true}); why != "" {
		t.Errorf("first epoch: %q", why)
	}
	legacy := mustApply(t, cluster(t), Command{Kind: CmdSetWriter, Name: "b", Epoch: 2})
	if why := legacy.ImageDistrust("a", ImageID{UUID: uuidB2}); why != "" {
		t.Errorf("before identities: %q", why)
	}
	if why := legacy.ImageDistrust("a", ImageID{UUID: uuidB2, Empty: true}); why == "" {
		t.Error("before identities, an empty image was trusted")
	}
}

// A site whose image is not its record's never becomes writer (I8).
func TestSetWriterRefusesUntrustedImage(t *testing.T) {
	s := imaged(t)
	cases := map[string]Command{
		"replaced image":        {Kind: CmdSetWriter, Name: "a", Epoch: 3, Image: &ImageID{UUID: uuidB2, Gen: 3}},
		"older copy":            {Kind: CmdSetWriter, Name: "a", Epoch: 3, Image: &ImageID{UUID: uuidA, Gen: 1}},
		"generation not raised": {Kind: CmdSetWriter, Name: "a", Epoch: 3, Image: &ImageID{UUID: uuidA, Gen: 2}},
	}
	for name, c := range cases {
		if n, err := s.Apply(c); !errors.Is(err, ErrRefused) || n.Writer != "b" {
			t.Errorf("%s: err=%v writer %s", name, err, n.Writer)
		}
	}
	n := mustApply(t, s, Command{Kind: CmdSetWriter, Name: "a", Epoch: 3, Image: &ImageID{UUID: uuidA, Gen: 3}})
	if im, _ := n.Image("a"); im.Gen != 3 {
		t.Errorf("the new writer's record: %+v", im)
	}
}

// A mark takes trust away at once, from any leader; the marked site
// cannot become writer (with or without an identity in the command) nor
// rejoin without a new identity, which then clears the mark.
func TestUntrustedMark(t *testing.T) {
	s := mustApply(t, imaged(t), Command{Kind: CmdImage, Name: "a", Reason: "a new, empty image"})
	if why := s.ImageUntrusted("a"); why != "a new, empty image" {
		t.Fatalf("mark: %q", why)
	}
	if !s.IsInSync("a") {
		t.Fatal("a mark changed the in-sync set: only the writer does, by its own rules")
	}
	if why := s.ImageDistrust("a", ImageID{UUID: uuidA, Gen: 2}); !strings.Contains(why, "empty") {
		t.Errorf("a marked image with its old identity: %q", why)
	}
	for _, c := range []Command{
		{Kind: CmdSetWriter, Name: "a", Epoch: 3},
		{Kind: CmdSetWriter, Name: "a", Epoch: 3, Image: &ImageID{UUID: uuidA, Gen: 3}},
		{Kind: CmdImage, Name: "a", ByEpoch: 2, Image: &ImageID{UUID: uuidA, Gen: 2}},
	} {
		if _, err := s.Apply(c); !errors.Is(err, ErrRefused) {
			t.Errorf("%+v on a marked image: %v", c, err)
		}
	}
	s = mustApply(t, s, Command{Kind: CmdDropInSync, Name: "a", ByEpoch: 2})
	if _, err := s.Apply(Command{Kind: CmdAddInSync, Name: "a", ByEpoch: 2}); !errors.Is(err, ErrRefused) {
		t.Errorf("a marked image rejoined without a new identity: %v", err)
	}
	s = mustApply(t, s,
		Command{Kind: CmdAddInSync, Name: "a", ByEpoch: 2, Image: &ImageID{UUID: uuidB2, Gen: 2}},
		Command{Kind: CmdSetWriter, Name: "a", Epoch: 3, Image: &ImageID{UUID: uuidB2, Gen: 3}})
	if im, _ := s.Image("a"); im != (Image{Name: "a", UUID: uuidB2, Gen: 3}) || s.Writer != "a" {
		t.Fatalf("after a full copy and a new epoch: %+v, writer %s", im, s.Writer)
	}
}

func TestImageCommandRefusals(t *testing.T) {
	s := mustApply(t, imaged(t), Command{Kind: CmdDropInSync, Name: "a", ByEpoch: 2})
	id := func(u string, g uint64) *ImageID { return &ImageID{UUID: u, Gen: g} }
	cases := map[string]Command{
		"witness":           {Kind: CmdImage, Name: "w", ByEpoch: 2, Image: id(uuidA, 2)},
		"witness marked":    {Kind: CmdImage, Name: "w", Reason: "x"},
		"unknown member":    {Kind: CmdImage, Name: "zz", Reason: "x"},
		"out of sync":       {Kind: CmdImage, Name: "a", ByEpoch: 2, Image: id(uuidA, 2)},
		"stale writer":      {Kind: CmdImage, Name: "b", ByEpoch: 1, Image: id(uuidB, 1)},
		"no identity":       {Kind: CmdImage, Name: "b", ByEpoch: 2},
		"beyond the epoch":  {Kind: CmdImage, Name: "b", ByEpoch: 2, Image: id(uuidB, 3)},
		"another image":     {Kind: CmdImage, Name: "b", ByEpoch: 2, Image: id(uuidB2, 2)},
		"join beyond epoch": {Kind: CmdAddInSync, Name: "a", ByEpoch: 2, Image: id(uuidA, 3)},
	}
	for name, c := range cases {
		n, err := s.Apply(c)
		if !errors.Is(err, ErrRefused) {
			t.Errorf("%s: err=%v, want a refusal", name, err)
		}
		if len(n.Images) != len(s.Images) || n.IsInSync("a") {
			t.Errorf("%s: state changed on refusal", name)
		}
	}
}

// memImage is an ImageStore in memory.
type memImage struct {
	mu sync.Mutex
	id ImageID
}

func (m *memImage) Image() ImageID {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.id
}

func (m *memImage) RaiseGeneration(gen uint64) (ImageID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.id.Gen, m.id.Empty = max(m.id.Gen, gen), false
	return m.id, nil
}

func (m *memImage) replace(uuid string) {
	m.mu.Lock()
	m.id = ImageID{UUID: uuid, Empty: true}
	m.mu.Unlock()
}

// TestLostImageNeverWriter: b's image is replaced (an empty disk) while
// it is in sync, then the writer a dies. b must not become writer on its
// empty image: leading, it marks its own image untrusted and waits. The
// writer's own record rose with its epoch. Once a is back, a writes.
func TestLostImageNeverWriter(t *testing.T) {
	tc := newMembers(t)
	imgs := map[string]*memImage{"a": {id: ImageID{UUID: uuidA}}, "b": {id: ImageID{UUID: uuidB}}}
	tc.get("a").image, tc.get("b").image = imgs["a"], imgs["b"]
	// a is the first data member, so the first writer.
	tc.startAll()
	x, epoch := tc.writer(0)
	if x.name != "a" {
		t.Fatalf("first writer %s", x.name)
	}
	if im, _ := x.c.State().Image("a"); im.UUID != uuidA || im.Gen != epoch || imgs["a"].Image().Gen != epoch {
		t.Fatalf("the writer's record %+v, its image %+v, epoch %d", im, imgs["a"].Image(), epoch)
	}
	// The writer records b's image as it finds it (replica does this
	// after raising b's generation).
	if _, err := imgs["b"].RaiseGeneration(epoch); err != nil {
		t.Fatal(err)
	}
	if err := x.c.RecordImage("b", epoch, imgs["b"].Image()); err != nil {
		t.Fatal(err)
	}
	b, w := tc.get("b"), tc.get("w")
	tc.waitFor("b knows its record", func() bool { im, _ := b.c.State().Image("b"); return im.UUID == uuidB })
	imgs["b"].replace(uuidB2)
	x.stop(t)
	tc.waitFor("b's image marked untrusted", func() bool {
		return strings.Contains(b.c.State().ImageUntrusted("b"), "not the recorded")
	})
	// Leaders come and go between b and w; none of them may write.
	deadline := time.Now().Add(4 * testElection)
	for time.Now().Before(deadline) {
		for _, m := range []*member{b, w} {
			if e, _ := m.c.WriterLease(); e != 0 {
				t.Fatalf("%s became writer of epoch %d with b's image replaced", m.name, e)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := b.c.Promote("b", testElection); !errors.Is(err, ErrRefused) && !errors.Is(err, ErrNotLeader) {
		t.Fatalf("promote b: %v", err)
	}
	x.start(t, tc)
	if y, _ := tc.writer(epoch); y.name != "a" {
		t.Fatalf("writer %s after a came back", y.name)
	}
}
