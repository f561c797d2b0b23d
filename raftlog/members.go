package raftlog

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"
)

// Membership changes while I/O runs (DESIGN.md: a new site fills by
// resync, then joins the in-sync set).
//
// Adding. AddMember, at the leader, records the member with its addresses
// (add-member: a data site joins out of sync) and then makes it a Raft
// voter. Every member learns its addresses from the state, so the writer
// resyncs a new data site and puts it in the in-sync set through its own
// rules (AddInSync once the copy cursor reached the end). The new member
// runs with Config.Join: it waits to be added instead of bootstrapping a
// cluster of its own.
//
// Removing keeps I2 and I3 by leaving the in-sync change to the writer,
// the only member that may make one:
//
//  1. retire-member marks the member leaving. The writer is refused
//     (promote another data site first), and so is the last in-sync data
//     site that is not fenced or leaving. A leaving member cannot become
//     writer nor rejoin the in-sync set, whatever writer comes next.
//  2. The writer's site sees the member gone from its peers. If it is in
//     sync, the writer drops it exactly as a lost replica: drop-insync
//     committed in its epoch, then its read lease waited out before any
//     write is acknowledged without it. Then the writer forgets it (closes
//     its stream, deletes its dirty bitmap).
//  3. RemoveMember waits until the member is out of the in-sync set,
//     removes it from the Raft configuration, and commits remove-member,
//     which the state machine refuses for a member still in sync or not
//     leaving.
//
// Each step is idempotent, so a removal cut short (a leader change, a
// timeout) is finished by running it again. Or it is called off: adding a
// leaving member commits keep-member, and it is a member like any other
// again (a leaving site cannot become writer, so this is the way out when
// the writer dies while the only other in-sync site is leaving).

// Command kinds for membership changes (AddMember uses CmdAddMember).
const (
	CmdRetireMember = "retire-member" // Name is leaving
	CmdKeepMember   = "keep-member"   // Name is not leaving any more
	CmdRemoveMember = "remove-member" // Name, leaving and out of sync, is gone
)

// IsLeaving reports whether name is being removed.
func (s State) IsLeaving(name string) bool { return slices.Contains(s.Leaving, name) }

// checkAddrs refuses a new member whose addresses or portal group another
// member already has.
func (s State) checkAddrs(m Member) error {
	for _, e := range s.Members {
		for _, pair := range [][2]string{
			{m.Addrs.Raft, e.Addrs.Raft}, {m.Addrs.Replication, e.Addrs.Replication}, {m.Addrs.Admin, e.Addrs.Admin},
		} {
			if pair[0] != "" && pair[0] == pair[1] {
				return refuse("member %s: address %s is member %s's", m.Name, pair[0], e.Name)
			}
		}
		if m.Role == RoleData && e.Role == RoleData && m.Addrs.PortalGroup != 0 && m.Addrs.PortalGroup == e.Addrs.PortalGroup {
			return refuse("member %s: portal group %d is member %s's", m.Name, m.Addrs.PortalGroup, e.Name)
		}
	}
	return nil
}

// applyMembership applies retire-member or remove-member to n (a copy).
func (n *State) applyMembership(c Command) error {
	if _, ok := n.member(c.Name); !ok {
		return refuse("%s: no member %s", c.Kind, c.Name)
	}
	leaving := n.IsLeaving(c.Name)
	if c.Kind == CmdKeepMember {
		if !leaving {
			return refuse("keep %s: it is not being removed", c.Name)
		}
		n.Leaving = slices.DeleteFunc(n.Leaving, func(x string) bool { return x == c.Name })
		return nil
	}
	if c.Kind == CmdRetireMember {
		switch {
		case leaving:
			return refuse("%s is already being removed", c.Name)
		case c.Name == n.Writer:
			return refuse("%s is the writer; promote another data site first", c.Name)
		}
		other := false
		for _, x := range n.InSync {
			if m, ok := n.member(x); ok && m.Role == RoleData && x != c.Name && !n.IsFenced(x) && !n.IsLeaving(x) {
				other = true
			}
		}
		if !other {
			return refuse("removing %s would leave no in-sync data site", c.Name)
		}
		n.Leaving = append(n.Leaving, c.Name)
		return nil
	}
	switch {
	case !leaving:
		return refuse("remove %s: it is not being removed (retire it first)", c.Name)
	case n.IsInSync(c.Name):
		return refuse("remove %s: still in sync; the writer drops it first", c.Name)
	case c.Name == n.Writer:
		return refuse("remove %s: it is the writer", c.Name)
	}
	not := func(x string) bool { return x == c.Name }
	n.Members = slices.DeleteFunc(n.Members, func(m Member) bool { return m.Name == c.Name })
	n.Leaving = slices.DeleteFunc(n.Leaving, not)
	n.Fenced = slices.DeleteFunc(n.Fenced, func(f Fence) bool { return f.Name == c.Name })
	n.Images = slices.DeleteFunc(n.Images, func(im Image) bool { return im.Name == c.Name })
	return nil
}

// checkNewMember says what is wrong with a member given to AddMember.
func checkNewMember(m Member) error {
	bad := func(format string, args ...any) error {
		return refuse("add %s: "+format, append([]any{m.Name}, args...)...)
	}
	switch {
	case m.Name == "":
		return refuse("add: a member without a name")
	case m.Role != RoleData && m.Role != RoleWitness:
		return bad("role %q, want %q or %q", m.Role, RoleData, RoleWitness)
	case m.Addrs.Raft == "":
		return bad("no Raft address")
	case m.Role == RoleData && m.Addrs.Replication == "":
		return bad("a data site needs a replication address")
	case m.Role == RoleWitness && (m.Addrs.Replication != "" || len(m.Addrs.ISCSI) > 0 || m.Addrs.PortalGroup != 0):
		return bad("a witness has no replication address, iSCSI portals or portal group")
	case m.Addrs.PortalGroup < 0 || m.Addrs.PortalGroup > 65535:
		return bad("portal group %d is not in 1..65535", m.Addrs.PortalGroup)
	}
	return nil
}

// nextPortalGroup is one above every data site's portal group, counting
// members recorded without one at their position among the data sites
// (the config's default).
func nextPortalGroup(s State) int {
	pg, data := 0, 0
	for _, m := range s.Members {
		if m.Role == RoleData {
			data++
			pg = max(pg, m.Addrs.PortalGroup, data)
		}
	}
	return pg + 1
}

// AddMember adds m to the running cluster: it records m with its
// addresses (a data site joins out of sync; the writer resyncs it and puts
// it in sync) and makes it a Raft voter. m must be running already, with
// Config.Join, and reachable at m.Addrs.Raft. A data site without a portal
// group gets the next free one. Only the leader serves it; others return
// a *NotLeaderError. Adding a member that is there already finishes an
// earlier call that was cut short, and calls off its removal if one was
// under way. lun, when given, is the LU a new data site serves: one that
// differs from the cluster's is refused (lun.go).
func (c *Cluster) AddMember(m Member, lun *LUN, timeout time.Duration) error {
	if !c.isLeader() {
		return c.notLeader()
	}
	if err := checkNewMember(m); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	s := c.State()
	if old, ok := s.Member(m.Name); ok {
		if old.Role != m.Role {
			return refuse("add %s: it is a member already, as a %s", m.Name, old.Role)
		}
		if s.IsLeaving(m.Name) {
			if _, err := c.propose(Command{Kind: CmdKeepMember, Name: m.Name}); err != nil {
				return err
			}
			c.log.Info("member removal called off", "member", m.Name)
		}
	} else {
		if err := s.checkLUN(Command{Kind: CmdAddMember, Name: m.Name, LUN: lun}); err != nil {
			return err
		}
		if m.Role == RoleData && m.Addrs.PortalGroup == 0 {
			m.Addrs.PortalGroup = nextPortalGroup(s)
		}
		if err := s.checkAddrs(m); err != nil {
			return err
		}
		// A voter that cannot be reached costs the cluster a vote at
		// once: check before it counts.
		conn, err := c.stream.dial(m.Name, m.Addrs.Raft, max(c.cfg.RPCTimeout, time.Second))
		if err != nil {
			return fmt.Errorf("raftlog: add %s: %w (start it first, with join = true)", m.Name, err)
		}
		conn.Close()
		a := m.Addrs
		if _, err := c.propose(Command{Kind: CmdAddMember, Name: m.Name, Role: m.Role, Addrs: &a, LUN: lun}); err != nil {
			return err
		}
	}
	err := c.raft.AddVoter(raft.ServerID(m.Name), raft.ServerAddress(m.Name), 0, max(time.Until(deadline), time.Millisecond)).Error()
	if err != nil {
		return c.raftErr("add "+m.Name+" as a voter", err)
	}
	c.log.Info("member added", "member", m.Name, "role", m.Role, "raft", m.Addrs.Raft)
	return nil
}

// RemoveMember removes the member name from the running cluster, while I/O
// goes on: it marks it leaving, waits (up to timeout) until the writer has
// dropped it from the in-sync set, which the writer does only after its
// read lease ran out, then removes it from Raft and from the state. The
// writer itself cannot be removed (promote another site first), nor the
// last in-sync data site, nor the leader (this member). Only the leader
// serves it; others return a *NotLeaderError. After it returns the
// removed member gets no updates any more; cmd/metrolun's member stops
// itself once another member's status no longer lists it.
func (c *Cluster) RemoveMember(name string, timeout time.Duration) error {
	if !c.isLeader() {
		return c.notLeader()
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	deadline := time.Now().Add(timeout)
	s := c.State()
	if _, ok := s.Member(name); !ok {
		if !c.isServer(name) {
			return refuse("remove: no member %s", name)
		}
		// A removal cut short after the Raft change: finish it.
		return c.removeServer(name, deadline)
	}
	switch {
	case name == s.Writer:
		return refuse("remove %s: it is the writer; promote another data site first", name)
	case name == c.cfg.Name:
		return refuse("remove %s: it is the Raft leader; promote another data site first", name)
	}
	if m, _ := s.Member(name); m.Role == RoleWitness {
		// A witness is there to make the voters odd: without it, an
		// even number of voters stops at the first failure of half.
		if n := c.voterCount() - 1; n > 1 && n%2 == 0 {
			return refuse("remove witness %s: it would leave %d voters, an even number, so losing half of them would stop the cluster; remove or add a data site first", name, n)
		}
	}
	if !s.IsLeaving(name) {
		if _, err := c.propose(Command{Kind: CmdRetireMember, Name: name}); err != nil {
			return err
		}
		c.log.Info("member leaving", "member", name)
	}
	for {
		ch := c.Changed()
		if !c.State().IsInSync(name) {
			break
		}
		select {
		case <-ch:
		case <-timer.C:
			return fmt.Errorf("%w: remove %s: still in sync after %v; the writer drops it once it sees it leaving (is there a writer?)", ErrTimeout, name, timeout)
		case <-c.stop:
			return ErrClosed
		}
	}
	if err := c.removeServer(name, deadline); err != nil {
		return err
	}
	if _, err := c.propose(Command{Kind: CmdRemoveMember, Name: name}); err != nil {
		return err
	}
	c.log.Info("member removed", "member", name)
	return nil
}

func (c *Cluster) removeServer(name string, deadline time.Time) error {
	if !c.isServer(name) {
		return nil
	}
	err := c.raft.RemoveServer(raft.ServerID(name), 0, max(time.Until(deadline), time.Millisecond)).Error()
	if err != nil {
		return c.raftErr("remove "+name+" from Raft", err)
	}
	return nil
}

// isServer reports whether name is in the latest Raft configuration.
// voterCount is the number of voters in the Raft configuration.
func (c *Cluster) voterCount() int {
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	n := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			n++
		}
	}
	return n
}

func (c *Cluster) isServer(name string) bool {
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	return slices.ContainsFunc(f.Configuration().Servers, func(s raft.Server) bool { return s.ID == raft.ServerID(name) })
}

// raftErr turns an error of a Raft configuration change into ours.
func (c *Cluster) raftErr(what string, err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: %s: %v", c.notLeader(), what, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrClosed
	}
	return fmt.Errorf("raftlog: %s: %w", what, err)
}

// ownAddr is this member's Raft address for the state when its config
// gives none for itself: the listen address, unless it binds a wildcard.
func (c *Cluster) ownAddr() string {
	host, _, err := net.SplitHostPort(c.cfg.Listen)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return ""
	}
	return c.cfg.Listen
}

// stateAddr resolves the Raft address of a member this member's config
// does not list: from the state, else from the log as it was at Open.
func (c *Cluster) stateAddr(name string) (string, bool) {
	if m, ok := c.fsm.State().Member(name); ok && m.Addrs.Raft != "" {
		return m.Addrs.Raft, true
	}
	a, ok := c.hints[name]
	return a, ok
}

// stateNames lists the members the state and the hints know.
func (c *Cluster) stateNames() []string {
	var names []string
	for _, m := range c.fsm.State().Members {
		names = append(names, m.Name)
	}
	for n := range c.hints {
		names = append(names, n)
	}
	return names
}

// logAddrs reads the Raft addresses that add-member entries in the log
// store give, less the members removed after: until a restarted member
// has applied its log again (which waits for a leader), its state may not
// know a member added at run time, and it may have to dial that member to
// elect one.
func logAddrs(logs raft.LogStore, log hclog.Logger) map[string]string {
	out := map[string]string{}
	first, err := logs.FirstIndex()
	if err != nil {
		return out
	}
	last, err := logs.LastIndex()
	if err != nil {
		return out
	}
	for i := first; i <= last && i != 0; i++ {
		var e raft.Log
		if err := logs.GetLog(i, &e); err != nil {
			log.Debug("reading the log for member addresses", "index", i, "error", err)
			continue
		}
		if e.Type != raft.LogCommand {
			continue
		}
		var cmd Command
		if msgpack.Unmarshal(e.Data, &cmd) != nil {
			continue
		}
		switch {
		case cmd.Kind == CmdAddMember && cmd.Addrs != nil && cmd.Addrs.Raft != "":
			out[cmd.Name] = cmd.Addrs.Raft
		case cmd.Kind == CmdRemoveMember:
			delete(out, cmd.Name)
		}
	}
	return out
}
