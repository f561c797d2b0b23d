package raftlog

import (
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// TestConfirmed: the writer lease rests on the latest time a majority of
// the voters accepted an AppendEntries of the term sent no earlier:
// answers of another term, of non-voters, and missing answers do not
// count, and this member counts only when it is a voter.
func TestConfirmed(t *testing.T) {
	now := time.Now()
	at := func(ms int) time.Time { return now.Add(-time.Duration(ms) * time.Millisecond) }
	ids := func(names ...string) []raft.ServerID {
		var out []raft.ServerID
		for _, n := range names {
			out = append(out, raft.ServerID(n))
		}
		return out
	}
	for _, k := range []struct {
		name     string
		contacts map[raft.ServerID]contact
		voters   []raft.ServerID
		want     time.Time
		ok       bool
	}{
		{"alone", nil, ids("a"), now, true},
		{"three, both answered", map[raft.ServerID]contact{"b": {7, at(80)}, "c": {7, at(20)}}, ids("a", "b", "c"), at(20), true},
		{"three, one answered", map[raft.ServerID]contact{"b": {7, at(80)}}, ids("a", "b", "c"), at(80), true},
		{"three, only an older term", map[raft.ServerID]contact{"b": {6, at(10)}, "c": {6, at(10)}}, ids("a", "b", "c"), time.Time{}, false},
		{"three, a later term", map[raft.ServerID]contact{"b": {8, at(10)}, "c": {7, at(90)}}, ids("a", "b", "c"), at(90), true},
		{"five, need two others", map[raft.ServerID]contact{"b": {7, at(10)}, "c": {7, at(50)}, "d": {7, at(30)}, "e": {7, at(200)}}, ids("a", "b", "c", "d", "e"), at(30), true},
		{"five, one other", map[raft.ServerID]contact{"b": {7, at(10)}}, ids("a", "b", "c", "d", "e"), time.Time{}, false},
		{"a non-voter's answer", map[raft.ServerID]contact{"x": {7, at(10)}}, ids("a", "b", "c"), time.Time{}, false},
		{"self not a voter", map[raft.ServerID]contact{"b": {7, at(10)}, "c": {7, at(40)}}, ids("b", "c", "d"), at(40), true},
	} {
		g := &termGuard{contacts: k.contacts}
		if g.contacts == nil {
			g.contacts = map[raft.ServerID]contact{}
		}
		got, ok := g.confirmed("a", k.voters, 7, now)
		if ok != k.ok || !got.Equal(k.want) {
			t.Errorf("%s: %v %v, want %v %v", k.name, got.Sub(now), ok, k.want.Sub(now), k.ok)
		}
	}
}

// TestAppendEntriesContact: the transport records a peer's contact only
// for an AppendEntries it accepted in the request's term, at a time no
// later than the request left.
func TestAppendEntriesContact(t *testing.T) {
	peer, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	answers := make(chan raft.AppendEntriesResponse, 1)
	go func() {
		for rpc := range peer.Consumer() {
			select {
			case a := <-answers:
				rpc.Respond(&a, nil)
			default:
				rpc.Respond(nil, raft.ErrTransportShutdown)
			}
		}
	}()
	nt, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	g := newTermGuard(nt, raft.NewInmemStore())
	defer g.Close()
	send := func(term uint64, ans raft.AppendEntriesResponse) (time.Time, error) {
		answers <- ans
		before := time.Now()
		var resp raft.AppendEntriesResponse
		err := g.AppendEntries("b", peer.LocalAddr(), &raft.AppendEntriesRequest{Term: term}, &resp)
		return before, err
	}
	contactOf := func() contact {
		g.cmu.Lock()
		defer g.cmu.Unlock()
		return g.contacts["b"]
	}
	before, err := send(5, raft.AppendEntriesResponse{Term: 5, Success: true})
	if err != nil {
		t.Fatal(err)
	}
	c := contactOf()
	if c.term != 5 || c.sent.Before(before) || c.sent.After(time.Now()) {
		t.Fatalf("accepted heartbeat: contact %+v, sent at or after %v", c, before)
	}
	for _, ans := range []raft.AppendEntriesResponse{
		{Term: 6, Success: false}, // the peer moved on to a later term
		{Term: 5, Success: false}, // refused
	} {
		if _, err := send(5, ans); err != nil {
			t.Fatal(err)
		}
		if got := contactOf(); got != c {
			t.Fatalf("answer %+v moved the contact from %+v to %+v", ans, c, got)
		}
	}
	// An RPC that failed leaves it too.
	var resp raft.AppendEntriesResponse
	if err := g.AppendEntries("b", peer.LocalAddr(), &raft.AppendEntriesRequest{Term: 5}, &resp); err == nil {
		t.Fatal("an unanswered RPC succeeded")
	}
	if got := contactOf(); got != c {
		t.Fatalf("a failed RPC moved the contact from %+v to %+v", c, got)
	}
}

// TestHoldOnGrid: a heartbeat waits for the next grid instant when that
// comes within beatEvery of the previous heartbeat to the peer, so the
// process's wake-ups coincide; so does a commit index, always, but for
// hurriedHold at most while hurried. Entries, heartbeats while hurried
// (a proposal or a VerifyLeader round), a first heartbeat and one that
// would come too late go at once.
func TestHoldOnGrid(t *testing.T) {
	g := &termGuard{beats: map[raft.ServerID]time.Time{}}
	g.beatEvery.Store(int64(100 * time.Millisecond))
	grid0 := time.Unix(1_800_000_000, 0) // on the grid
	at := func(ms int) time.Time { return grid0.Add(time.Duration(ms) * time.Millisecond) }
	beat := &raft.AppendEntriesRequest{Term: 3}
	entries := &raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 9, PrevLogTerm: 3, LeaderCommitIndex: 9, Entries: []*raft.Log{{Index: 10}}}
	commit := &raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 9, PrevLogTerm: 3, LeaderCommitIndex: 9}

	if d := g.hold("b", beat, at(70)); d != 0 {
		t.Errorf("first heartbeat to b held %v", d)
	}
	g.beats["b"] = at(0)
	if d := g.hold("b", beat, at(70)); d != 30*time.Millisecond {
		t.Errorf("heartbeat 70 ms after the last held %v, want 30ms (to the grid instant)", d)
	}
	if d := g.hold("b", beat, at(110)); d != 0 {
		t.Errorf("heartbeat 110 ms after the last held %v, want 0 (the next instant is past beatEvery)", d)
	}
	if d := g.hold("b", entries, at(70)); d != 0 {
		t.Errorf("entries held %v", d)
	}
	if d := g.hold("b", commit, at(70)); d != 30*time.Millisecond {
		t.Errorf("commit index held %v, want 30ms", d)
	}
	g.kick = make(chan struct{})
	kick := g.kick
	g.hurryUntil.Store(at(500).UnixNano())
	if d := g.hold("b", beat, at(70)); d != 0 {
		t.Errorf("heartbeat held %v while hurried", d)
	}
	if d := g.hold("b", commit, at(70)); d != hurriedHold {
		t.Errorf("commit index held %v while hurried, want %v", d, hurriedHold)
	}
	if d := g.hold("b", commit, at(95)); d != 5*time.Millisecond {
		t.Errorf("commit index held %v while hurried 5 ms before the grid, want 5ms", d)
	}
	g.hurryUntil.Store(0)
	g.hurry(time.Hour)
	select {
	case <-kick:
	default:
		t.Error("hurry did not release the requests held")
	}
	if d := g.hold("b", beat, time.Now()); d != 0 {
		t.Errorf("heartbeat held %v after hurry", d)
	}
	g.hurryUntil.Store(0)
	g.beatEvery.Store(0)
	if d := g.hold("b", beat, at(70)); d != 0 {
		t.Errorf("heartbeat held %v with beatEvery 0", d)
	}
}

// TestStoreReleasesHeld: storing new entries releases the requests the
// transport holds, so that Raft's replicate goroutine, waiting there with
// a commit index, sends the entries at once and not at the grid instant.
func TestStoreReleasesHeld(t *testing.T) {
	g := &termGuard{kick: make(chan struct{})}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(t.TempDir(), "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ks := kickStore{store, g.release}
	for i, store := range []func() error{
		func() error { return ks.StoreLogs([]*raft.Log{{Index: 1, Term: 1}, {Index: 2, Term: 1}}) },
		func() error { return ks.StoreLog(&raft.Log{Index: 3, Term: 1}) },
	} {
		g.cmu.Lock()
		held := g.kick
		g.cmu.Unlock()
		if err := store(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-held:
		default:
			t.Fatalf("store %d did not release the requests held", i)
		}
	}
	if last, err := store.LastIndex(); err != nil || last != 3 {
		t.Fatalf("last index %d (%v), want 3", last, err)
	}
}

// TestSpare: a peer's commit-index requests go on the slower spareEvery
// grid only while the voters before it (data sites first, then by ID),
// with this member, make a majority that answered in the last two grid
// steps; never two peers that each make the majority with the other, and
// never a peer whose answers the majority needs.
func TestSpare(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	g := &termGuard{self: "c", contacts: map[raft.ServerID]contact{}}
	three := []raft.ServerID{"a", "c", "d"}
	wit := []raft.ServerID{"a"} // a witness, named first
	g.contacts["a"] = contact{term: 4, sent: now.Add(-50 * time.Millisecond)}
	g.contacts["d"] = contact{term: 4, sent: now.Add(-50 * time.Millisecond)}
	if g.spareAmong(three, wit, "d", 4, now) {
		t.Error("data site d spare: its answers make the majority")
	}
	if !g.spareAmong(three, wit, "a", 4, now) {
		t.Error("witness a not spare while data site d answers")
	}
	if g.spareAmong(three, wit, "a", 5, now) {
		t.Error("a spare on d's answers of another term")
	}
	// Without witnesses, by ID: d is the spare one.
	if g.spareAmong(three, nil, "a", 4, now) || !g.spareAmong(three, nil, "d", 4, now) {
		t.Error("without witnesses, want d spare and a not")
	}
	g.contacts["d"] = contact{term: 4, sent: now.Add(-250 * time.Millisecond)}
	if g.spareAmong(three, wit, "a", 4, now) {
		t.Error("a spare while d has not answered for 250 ms")
	}
	// A member that is no voter counts nobody in but its peers.
	g.self = "x"
	g.contacts["d"] = contact{term: 4, sent: now}
	if g.spareAmong(three, wit, "a", 4, now) {
		t.Error("a spare for a non-voter with only d answering")
	}
	// Five voters: two answering before it make the majority with self.
	g.self = "a"
	five := []raft.ServerID{"a", "b", "c", "d", "e"}
	g.contacts["b"] = contact{term: 4, sent: now}
	g.contacts["c"] = contact{term: 4, sent: now}
	for id, want := range map[raft.ServerID]bool{"b": false, "c": false, "d": true, "e": true} {
		if got := g.spareAmong(five, nil, id, 4, now); got != want {
			t.Errorf("five voters: %s spare %v, want %v", id, got, want)
		}
	}
}
