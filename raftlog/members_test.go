package raftlog

import (
	"crypto/tls"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestApplyMembership: the state machine's rules for adding and removing
// members (members.go).
func TestApplyMembership(t *testing.T) {
	s := cluster(t) // a writer, b in sync, w witness
	addC := Command{Kind: CmdAddMember, Name: "c", Role: RoleData, Addrs: &Addrs{Raft: "h:1", Replication: "h:2", ISCSI: []string{"h:3260"}, PortalGroup: 3}}
	s = mustApply(t, s, addC)
	if m, _ := s.Member("c"); m.Addrs.Raft != "h:1" || m.Addrs.PortalGroup != 3 || s.IsInSync("c") {
		t.Fatalf("c after add: %+v, in sync %v", m, s.IsInSync("c"))
	}
	// Apply must not share memory with its input.
	s2 := mustApply(t, s, Command{Kind: CmdAddInSync, Name: "c", ByEpoch: 1})
	m2, _ := s2.Member("c")
	m2.Addrs.ISCSI[0] = "changed"
	if m, _ := s.Member("c"); m.Addrs.ISCSI[0] != "h:3260" {
		t.Fatal("states share a member's portal list")
	}

	refused := map[string]Command{
		"same raft address":  {Kind: CmdAddMember, Name: "d", Role: RoleData, Addrs: &Addrs{Raft: "h:1", Replication: "h:9"}},
		"same portal group":  {Kind: CmdAddMember, Name: "d", Role: RoleData, Addrs: &Addrs{Raft: "h:5", Replication: "h:6", PortalGroup: 3}},
		"retire the writer":  {Kind: CmdRetireMember, Name: "a"},
		"retire a stranger":  {Kind: CmdRetireMember, Name: "zz"},
		"remove unretired":   {Kind: CmdRemoveMember, Name: "c"},
		"remove a stranger":  {Kind: CmdRemoveMember, Name: "zz"},
		"retire then retire": {Kind: CmdRetireMember, Name: "w"},
		"keep a staying one": {Kind: CmdKeepMember, Name: "c"},
	}
	sw := mustApply(t, s, Command{Kind: CmdRetireMember, Name: "w"})
	for name, c := range refused {
		from := s
		if name == "retire then retire" {
			from = sw
		}
		if _, err := from.Apply(c); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: err=%v, want a refusal", name, err)
		}
	}

	// b leaves: while it is in sync it cannot go, and being left it
	// cannot come back in sync nor become writer.
	s = mustApply(t, s, Command{Kind: CmdRetireMember, Name: "b"})
	for name, c := range map[string]Command{
		"remove while in sync": {Kind: CmdRemoveMember, Name: "b"},
		"leaving as writer":    {Kind: CmdSetWriter, Name: "b", Epoch: 2},
	} {
		if _, err := s.Apply(c); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: err=%v, want a refusal", name, err)
		}
	}
	s = mustApply(t, s, Command{Kind: CmdDropInSync, Name: "b", ByEpoch: 1})
	if _, err := s.Apply(Command{Kind: CmdAddInSync, Name: "b", ByEpoch: 1}); !errors.Is(err, ErrRefused) {
		t.Errorf("a leaving site rejoined the in-sync set: %v", err)
	}
	s = mustApply(t, s, Command{Kind: CmdRemoveMember, Name: "b"})
	if _, ok := s.Member("b"); ok || s.IsLeaving("b") || s.IsInSync("b") {
		t.Fatalf("b still there: %+v", s)
	}

	// With no writer yet, the last in-sync data site cannot leave.
	n := mustApply(t, State{},
		Command{Kind: CmdAddMember, Name: "a", Role: RoleData},
		Command{Kind: CmdAddMember, Name: "b", Role: RoleData},
		Command{Kind: CmdRetireMember, Name: "a"})
	if _, err := n.Apply(Command{Kind: CmdRetireMember, Name: "b"}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "no in-sync data site") {
		t.Fatalf("retiring the last in-sync data site: %v", err)
	}
	if got := nextPortalGroup(n); got != 3 {
		t.Fatalf("next portal group %d, want 3", got)
	}
}

// join lays out and starts a new member that waits to be added: its
// config lists everyone, the others' configs do not list it (they keep
// the lists they had).
func (tc *sites) join(name, role string) *member {
	tc.t.Helper()
	var names []string
	for _, m := range tc.members {
		names = append(names, m.name)
	}
	nm := &member{name: name, role: role, dir: tc.t.TempDir(), listen: freeAddr(tc.t),
		addrs: map[string]string{}, logs: &syncBuf{}, join: true, peers: append(slices.Clone(names), name)}
	for _, m := range tc.members {
		nm.addrs[m.name] = m.listen
		if m.peers == nil {
			m.peers = slices.Clone(names)
		}
	}
	tc.mu.Lock()
	tc.members = append(tc.members, nm)
	tc.mu.Unlock()
	nm.start(tc.t, tc)
	return nm
}

// dropLeaving runs as the writer's site would: it drops every leaving
// member that is in sync, through the writer, until stopped.
func dropLeaving(t *testing.T, x *member, epoch uint64) (stop func()) {
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			ch := x.c.Changed()
			s := x.c.State()
			for _, n := range s.Leaving {
				if s.IsInSync(n) {
					if err := x.c.DropInSync(n, epoch); err != nil {
						t.Logf("drop %s: %v", n, err)
					}
				}
			}
			select {
			case <-ch:
			case <-quit:
				return
			}
		}
	}()
	return func() { close(quit); <-done }
}

func voters(m *member) []string {
	var ids []string
	for _, s := range m.c.raft.GetConfiguration().Configuration().Servers {
		ids = append(ids, string(s.ID))
	}
	slices.Sort(ids)
	return ids
}

// TestMembershipStory: a data site c joins a running cluster (it waits
// with Join, is added out of sync, is put in sync by the writer), the
// members whose configs do not list c reach it through the state, c
// restarts with its state, the other original data site leaves while c
// stays, and when the writer dies c takes over; the removed member does
// not come back, and a restarted member that does not list c finds it in
// its log.
func TestMembershipStory(t *testing.T) {
	tc := startCluster(t)
	mon := tc.monitor()
	x, epoch := tc.writer(0)
	y, w := tc.other(x), tc.get("w")
	tc.waitFor("every member applies the writer", func() bool {
		return y.c.State().Epoch == epoch && w.c.State().Epoch == epoch
	})

	c := tc.join("c", RoleData)
	if s := c.c.State(); len(s.Members) != 0 || c.c.Leader() != "" {
		t.Fatalf("a joining member has state before it is added: %+v, leader %q", s, c.c.Leader())
	}
	var nl *NotLeaderError
	if err := y.c.AddMember(Member{Name: "c", Role: RoleData, Addrs: Addrs{Raft: c.listen, Replication: "127.0.0.1:9"}}, nil, time.Second); !errors.As(err, &nl) || nl.Leader != x.name {
		t.Fatalf("add at a follower: %v", err)
	}
	start := time.Now()
	if err := x.c.AddMember(Member{Name: "c", Role: RoleData, Addrs: Addrs{Raft: c.listen, Replication: "127.0.0.1:9"}}, nil, 5*time.Second); err != nil {
		t.Fatalf("add c: %v", err)
	}
	t.Logf("add c took %v", time.Since(start).Round(time.Millisecond))
	tc.waitFor("c applies the state", func() bool {
		s := c.c.State()
		_, ok := s.Member("c")
		return ok && s.Epoch == epoch && c.c.Leader() == x.name
	})
	s := x.c.State()
	if m, _ := s.Member("c"); m.Role != RoleData || m.Addrs.Raft != c.listen || m.Addrs.PortalGroup != 3 || s.IsInSync("c") {
		t.Fatalf("c in the state: %+v, in sync %v", m, s.IsInSync("c"))
	}
	if got := voters(x); !slices.Equal(got, []string{"a", "b", "c", "w"}) {
		t.Fatalf("voters %v", got)
	}
	tc.waitFor("every member applies c's addition", func() bool {
		_, oy := y.c.State().Member("c")
		_, ow := w.c.State().Member("c")
		return oy && ow
	})
	for _, m := range []*member{y, w} {
		if a, ok := m.c.stream.resolve("c"); !ok || a != c.listen {
			t.Fatalf("%s resolves c to %q, %v; want %s from the state", m.name, a, ok, c.listen)
		}
	}
	// Once more: it finishes nothing and changes nothing.
	if err := x.c.AddMember(Member{Name: "c", Role: RoleData, Addrs: Addrs{Raft: c.listen, Replication: "127.0.0.1:9"}}, nil, 5*time.Second); err != nil {
		t.Fatalf("add c again: %v", err)
	}
	// The writer's site resyncs c and puts it in sync.
	if err := x.c.AddInSync("c", epoch); err != nil {
		t.Fatal(err)
	}

	// c restarts: it has its state at once and follows again.
	tc.waitFor("c applies everything", func() bool { return c.c.raft.AppliedIndex() == x.c.raft.AppliedIndex() })
	if err := c.c.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	c.stop(t)
	c.start(t, tc)
	if s := c.c.State(); !s.IsInSync("c") {
		t.Fatalf("restarted c lost its state: %+v", s)
	}
	if err := x.c.DropInSync(y.name, epoch); err != nil {
		t.Fatal(err)
	}
	if err := x.c.AddInSync(y.name, epoch); err != nil {
		t.Fatal(err)
	}
	tc.waitFor("c catches up", func() bool {
		return c.c.Leader() == x.name && c.c.raft.AppliedIndex() == x.c.raft.AppliedIndex()
	})

	// y leaves while it is in sync: the writer drops it first.
	stopDrops := dropLeaving(t, x, epoch)
	start = time.Now()
	err := x.c.RemoveMember(y.name, 10*time.Second)
	stopDrops()
	if err != nil {
		t.Fatalf("remove %s: %v", y.name, err)
	}
	t.Logf("remove %s took %v", y.name, time.Since(start).Round(time.Millisecond))
	s = x.c.State()
	if _, ok := s.Member(y.name); ok || s.IsInSync(y.name) || len(s.Leaving) != 0 {
		t.Fatalf("state after removing %s: %+v", y.name, s)
	}
	if got := voters(x); slices.Contains(got, y.name) || len(got) != 3 {
		t.Fatalf("voters after removing %s: %v", y.name, got)
	}
	y.stop(t)

	// The writer dies: c (in sync) takes over with w's vote, and the
	// removed y, still in the configs of x and w, stays removed.
	x.stop(t)
	nw, epoch2 := tc.writer(epoch)
	if nw != c {
		t.Fatalf("writer %s after %s died, want c", nw.name, x.name)
	}
	// x comes back with a config that lists y and not c: its log tells
	// it where c is before it has applied anything.
	x.start(t, tc)
	if a := x.c.hints["c"]; a != c.listen {
		t.Fatalf("restarted %s: c's address from the log is %q, want %s", x.name, a, c.listen)
	}
	if _, ok := x.c.hints[y.name]; ok {
		t.Fatalf("restarted %s still has removed %s among its hints", x.name, y.name)
	}
	tc.waitFor(x.name+" follows c", func() bool {
		return x.c.Leader() == "c" && x.c.State().Epoch == epoch2
	})
	for _, m := range []*member{x, w, c} {
		if s := m.c.State(); slices.ContainsFunc(s.Members, func(mm Member) bool { return mm.Name == y.name }) {
			t.Fatalf("%s: removed %s is back: %+v", m.name, y.name, s.Members)
		}
	}
	mon.check(t)
}

// TestMembershipRefusals: what AddMember and RemoveMember refuse, and a
// removal cut short (no writer drops the member) that a second call
// finishes.
func TestMembershipRefusals(t *testing.T) {
	tc := startCluster(t)
	x, epoch := tc.writer(0)
	y := tc.other(x)
	tc.waitFor(y.name+" applies the writer", func() bool { return y.c.State().Epoch == epoch })
	var nl *NotLeaderError
	if err := y.c.RemoveMember("w", time.Second); !errors.As(err, &nl) {
		t.Fatalf("remove at a follower: %v", err)
	}
	closedPort := freeAddr(t) // nothing listens there any more
	for name, m := range map[string]Member{
		"no name":            {Role: RoleData, Addrs: Addrs{Raft: closedPort, Replication: "h:1"}},
		"bad role":           {Name: "c", Role: "boss", Addrs: Addrs{Raft: closedPort}},
		"no raft address":    {Name: "c", Role: RoleData, Addrs: Addrs{Replication: "h:1"}},
		"data, no repl":      {Name: "c", Role: RoleData, Addrs: Addrs{Raft: closedPort}},
		"witness with repl":  {Name: "c", Role: RoleWitness, Addrs: Addrs{Raft: closedPort, Replication: "h:1"}},
		"existing, new role": {Name: y.name, Role: RoleWitness, Addrs: Addrs{Raft: closedPort}},
		"someone's address":  {Name: "c", Role: RoleData, Addrs: Addrs{Raft: y.listen, Replication: "h:1"}},
	} {
		if err := x.c.AddMember(m, nil, time.Second); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: err=%v, want a refusal", name, err)
		}
	}
	if err := x.c.AddMember(Member{Name: "c", Role: RoleData, Addrs: Addrs{Raft: closedPort, Replication: "h:1"}}, nil, time.Second); err == nil {
		t.Fatal("a member nobody can reach was added")
	} else if _, ok := x.c.State().Member("c"); ok || slices.Contains(voters(x), "c") {
		t.Fatalf("unreachable c half added: %v", err)
	} else {
		t.Logf("unreachable member: %v", err)
	}
	for name, n := range map[string]string{"the writer": x.name, "a stranger": "zz"} {
		if err := x.c.RemoveMember(n, time.Second); !errors.Is(err, ErrRefused) {
			t.Errorf("remove %s: err=%v, want a refusal", name, err)
		}
	}

	// No site drops y: the removal stops, y is left leaving.
	if err := x.c.RemoveMember(y.name, 300*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("remove without a drop: %v", err)
	}
	s := x.c.State()
	if !s.IsLeaving(y.name) || !s.IsInSync(y.name) || !slices.Contains(voters(x), y.name) {
		t.Fatalf("after a removal cut short: %+v, voters %v", s, voters(x))
	}
	if err := x.c.Promote(y.name, time.Second); !errors.Is(err, ErrRefused) {
		t.Fatalf("promote a leaving site: %v", err)
	}
	// Adding it calls the removal off; removing it again starts over.
	if err := x.c.AddMember(Member{Name: y.name, Role: RoleData, Addrs: Addrs{Raft: y.listen, Replication: "h:1"}}, nil, time.Second); err != nil {
		t.Fatalf("add a leaving site: %v", err)
	}
	if s := x.c.State(); s.IsLeaving(y.name) || !s.IsInSync(y.name) {
		t.Fatalf("removal not called off: %+v", s)
	}
	if err := x.c.RemoveMember(y.name, 300*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("remove without a drop, again: %v", err)
	}
	// Three voters: the witness cannot go (it would leave two).
	if err := x.c.RemoveMember("w", time.Second); !errors.Is(err, ErrRefused) {
		t.Fatalf("remove the witness of two data sites: %v", err)
	}
	// The writer drops y (late); a second call finishes its removal; then
	// the witness may go (one voter left).
	if err := x.c.DropInSync(y.name, epoch); err != nil {
		t.Fatal(err)
	}
	if err := x.c.RemoveMember(y.name, 5*time.Second); err != nil {
		t.Fatalf("finish removing %s: %v", y.name, err)
	}
	if err := x.c.RemoveMember("w", 5*time.Second); err != nil {
		t.Fatalf("remove the witness: %v", err)
	}
	if got := voters(x); !slices.Equal(got, []string{x.name}) {
		t.Fatalf("voters %v, want only %s", got, x.name)
	}
	if e, _ := x.c.WriterLease(); e != epoch {
		t.Fatalf("writer lease %d after the removals, want %d", e, epoch)
	}
}

// TestAddMemberTLS: with mutual TLS, the members whose configs do not list
// a member added at run time accept its certificate (it names a member of
// the state) and it theirs, and a stranger with a good certificate is
// still refused.
func TestAddMemberTLS(t *testing.T) {
	ca := newCA(t, "metrolun test CA")
	tc := newMembers(t)
	for _, m := range tc.members {
		m.tls = memberTLS(ca, ca.issue(t, m.name, true))
	}
	tc.startAll()
	x, epoch := tc.writer(0)
	// c is created by hand to give it a certificate before it starts.
	var names []string
	for _, m := range tc.members {
		names = append(names, m.name)
		m.peers = slices.Clone(names)
	}
	c := &member{name: "c", role: RoleData, dir: t.TempDir(), listen: freeAddr(t), addrs: map[string]string{},
		logs: &syncBuf{}, join: true, peers: append(slices.Clone(names), "c"), tls: memberTLS(ca, ca.issue(t, "c", false))}
	for _, m := range tc.members {
		c.addrs[m.name] = m.listen
	}
	tc.mu.Lock()
	tc.members = append(tc.members, c)
	tc.mu.Unlock()
	c.start(t, tc)
	if err := x.c.AddMember(Member{Name: "c", Role: RoleData, Addrs: Addrs{Raft: c.listen, Replication: "127.0.0.1:9"}}, nil, 5*time.Second); err != nil {
		t.Fatalf("add c: %v", err)
	}
	if err := x.c.AddInSync("c", epoch); err != nil {
		t.Fatal(err)
	}
	tc.waitFor("c follows over TLS", func() bool { return c.c.State().IsInSync("c") && c.c.Leader() == x.name })
	// c becomes the writer: it reaches the others, and they answer it.
	if err := x.c.Promote("c", 10*time.Second); err != nil {
		t.Fatalf("promote c: %v", err)
	}
	if w, _ := tc.writer(epoch); w != c {
		t.Fatalf("writer %s, want c", w.name)
	}
	for _, m := range tc.members[:3] {
		for _, l := range strings.Split(m.logs.String(), "\n") {
			if strings.Contains(l, "refused peer") && !transientHandshake(l) {
				t.Fatalf("%s refused a peer: %s", m.name, l)
			}
		}
	}
	// A certificate from the same CA for a name no member has is refused.
	mallory := memberTLS(ca, ca.issue(t, "mallory", true))
	cl := mallory.Clone()
	cl.InsecureSkipVerify = true
	conn, err := tls.Dial("tcp", x.listen, cl)
	if err == nil {
		// TLS 1.3: the server's verdict on the client arrives with the
		// first read.
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("mallory was not refused")
	}
	t.Logf("mallory: %v", err)
}

// transientHandshake reports whether a logged refusal is a handshake that
// ran out of time or lost its connection (a loaded machine: the handshake
// deadline is RPCTimeout), not one that judged the peer's certificate.
func transientHandshake(line string) bool {
	for _, e := range []string{"context deadline exceeded", "i/o timeout", "connection reset by peer", "broken pipe", "EOF"} {
		if strings.Contains(line, e) {
			return true
		}
	}
	return false
}
