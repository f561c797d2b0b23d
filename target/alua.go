package target

import (
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/metrolun/metrolun/internal/grid"
)

// PortGroup is one target port group: the ports through which one site
// serves the target. metrolun gives every group exactly one target port,
// so a group has one relative target port identifier.
type PortGroup struct {
	// ID is the target port group identifier (SPC-4 section 7.8.6.7),
	// which is also the target portal group tag of the group's portals
	// (RFC 7143 section 13.9). 0 is not a valid ID.
	ID uint16
	// RelPort is the relative target port identifier of the group's one
	// port (SPC-4 section 7.8.6.6); 0 means the same as ID.
	RelPort uint16
	// Portals are the host:port addresses SendTargets lists for the group.
	// A group without portals is still reported by REPORT TARGET PORT
	// GROUPS but cannot be discovered.
	Portals []string
	// State is the group's access state as the provider knows it:
	// PathActiveOptimized for the group whose site orders writes,
	// PathActiveNonOptimized for one that can serve I/O, otherwise
	// PathUnavailable, PathStandby or PathTransitioning. The server's own
	// group ignores it: its Volume says.
	State PathState
	// Preferred marks a group the initiator prefers (by configuration).
	// While it can serve I/O it is reported active/optimized and every
	// other group that can serve is active/non-optimized.
	Preferred bool
}

// PortGroupsFunc returns every target port group, the server's own one
// included, as the initiator named initiator should see them. It runs on
// each REPORT TARGET PORT GROUPS and SendTargets, so it must be cheap and
// must not block. The slice is the caller's to modify.
type PortGroupsFunc func(initiator string) []PortGroup

// serving reports whether a group in state s can serve I/O.
func serving(s PathState) bool {
	return s == PathActiveOptimized || s == PathActiveNonOptimized
}

// resolvePortGroups returns the groups an initiator sees, sorted by ID,
// with their access states settled. own is this server's group: its
// state is local (the volume's own view, which is better informed than
// any cluster view), its relative port ownRel and, if the provider gave
// it no portals, ownPortals. With no provider (a single site) the only
// group is own, exactly as the volume reports it.
//
// The rule: a preferred group that can serve is active/optimized and the
// other groups that can serve are active/non-optimized. Without a
// preference, or when no preferred group can serve, the states stand as
// given (the writer's group active/optimized). Groups that cannot serve
// always keep their state.
func resolvePortGroups(fn PortGroupsFunc, initiator string, own, ownRel uint16, local PathState, ownPortals []string) []PortGroup {
	var in []PortGroup
	if fn != nil {
		in = fn(initiator)
	}
	out := make([]PortGroup, 0, len(in)+1)
	seen := map[uint16]bool{}
	for _, g := range in {
		if g.ID == 0 || seen[g.ID] {
			continue
		}
		seen[g.ID] = true
		out = append(out, g)
	}
	if !seen[own] {
		out = append(out, PortGroup{ID: own})
	}
	preferred := false
	for i := range out {
		g := &out[i]
		if g.ID == own {
			g.State, g.RelPort = local, ownRel
			if len(g.Portals) == 0 {
				g.Portals = ownPortals
			}
		}
		if g.RelPort == 0 {
			g.RelPort = g.ID
		}
		if g.Preferred && serving(g.State) {
			preferred = true
		}
	}
	if preferred {
		for i := range out {
			g := &out[i]
			switch {
			case !serving(g.State):
			case g.Preferred:
				g.State = PathActiveOptimized
			default:
				g.State = PathActiveNonOptimized
			}
		}
	}
	slices.SortFunc(out, func(a, b PortGroup) int { return int(a.ID) - int(b.ID) })
	return out
}

// checkALUA establishes ASYMMETRIC ACCESS STATE CHANGED (2A/06) for
// the nexuses of the LU when a port group's access state changed since
// the last check (SPC-4 section 5.15.2.3), so initiators read REPORT
// TARGET PORT GROUPS again at once (the writer moved, a site went away or
// came back) instead of at their next poll. The first check only records.
// Besides the states every initiator sees, each initiator with a nexus
// here is checked on its own (at most maxALUAInitiators of them): a
// preference that follows its round trips may move its optimized group
// alone, and only its nexuses hear of that.
func (lu *LU) checkALUA() {
	// One sample of this site's own state serves every view below, so
	// that a check compares like with like: a state that changes between
	// two reads must not look like one initiator's groups changing.
	local := lu.vol.State()
	groups := func(initiator string) []PortGroup {
		return resolvePortGroups(lu.groups, initiator, lu.portGroup, lu.relPort, local, nil)
	}
	d := groupsDigest(groups(""))
	lu.mu.Lock()
	var inits []string
	for _, n := range lu.nexuses {
		if k := strings.ToLower(n.Initiator); !slices.Contains(inits, k) {
			inits = append(inits, k)
		}
	}
	lu.mu.Unlock()
	slices.Sort(inits)
	if len(inits) > maxALUAInitiators {
		inits = inits[:maxALUAInitiators]
	}
	per := make(map[string]string, len(inits))
	for _, in := range inits {
		per[in] = groupsDigest(groups(in))
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	// A cluster that is coming up (no group active/optimized yet: no
	// writer) gets its first states without a unit attention. From the
	// first writer on, every change is reported, those into and out of
	// a moment without an active/optimized group included: a writer
	// that moves passes through one at each site (the old writer's own
	// group drops before the cluster names the new one; the new
	// writer's is named before it takes over). An initiator that read
	// REPORT TARGET PORT GROUPS in that moment saw no group optimized,
	// and Linux's ALUA handler keeps that until the next unit attention:
	// with none for the way out, both paths stayed at priority 10.
	settled := lu.aluaSettled
	if lu.aluaSeen != d && lu.aluaSeen != "" && lu.log != nil {
		lu.log.Info("port group states changed", "from", lu.aluaSeen, "to", d, "unit_attention", settled)
	}
	if settled && lu.aluaSeen != d {
		lu.queueUA(ascAsymAccessStateChanged, nil)
	}
	lu.aluaSeen = d
	if strings.Contains(d, fmt.Sprintf(":%d;", PathActiveOptimized)) {
		lu.aluaSettled = true
	}
	for in, pd := range per {
		if old, ok := lu.aluaSeenBy[in]; settled && ok && old != pd {
			for id, n := range lu.nexuses {
				if strings.EqualFold(n.Initiator, in) {
					lu.addUA(id, ascAsymAccessStateChanged)
				}
			}
		}
	}
	lu.aluaSeenBy = per
}

// maxALUAInitiators bounds the initiators checkALUA looks at one by one.
const maxALUAInitiators = 256

func groupsDigest(gs []PortGroup) string {
	var b strings.Builder
	for _, g := range gs {
		fmt.Fprintf(&b, "%d:%d;", g.ID, g.State)
	}
	return b.String()
}

// watchALUA runs checkALUA on every LU until stop.
func (s *Server) watchALUA(stop <-chan struct{}, every time.Duration) {
	// On the process's grid (internal/grid), with the cluster's other
	// periodic work: an idle member pays per wake-up, not per tick.
	t := grid.NewTicker(every)
	defer t.Stop()
	for {
		s.mu.Lock()
		var lus []*LU
		for _, tg := range s.targets {
			for _, lu := range tg.lus {
				lus = append(lus, lu)
			}
		}
		s.mu.Unlock()
		for _, lu := range lus {
			lu.checkALUA()
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// portGroups is resolvePortGroups for an LU of this server.
func (lu *LU) portGroups(initiator string) []PortGroup {
	return resolvePortGroups(lu.groups, initiator, lu.portGroup, lu.relPort, lu.vol.State(), nil)
}

// reportTPG encodes REPORT TARGET PORT GROUPS parameter data (SPC-4
// section 6.36.2): one descriptor per group with its one target port.
func reportTPG(groups []PortGroup, extended bool) []byte {
	var b []byte
	if extended {
		b = make([]byte, 8)
		b[4] = 0x10 // format 001b; implicit transition time 0: unspecified
	} else {
		b = make([]byte, 4)
	}
	for _, g := range groups {
		d := make([]byte, 12)
		d[0] = byte(g.State) & 0x0f
		if g.State == PathActiveOptimized {
			d[0] |= 0x80 // PREF: a preferred group for this LU
		}
		d[1] = 0x80 | 0x08 | 0x04 | 0x02 | 0x01 // T, U, S, AN, AO supported
		binary.BigEndian.PutUint16(d[2:], g.ID)
		d[5] = 0x02 // status: altered by implicit ALUA behaviour
		d[7] = 1    // target port count
		binary.BigEndian.PutUint16(d[10:], g.RelPort)
		b = append(b, d...)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// targetAddresses lists the TargetAddress values of SendTargets (RFC 7143
// section 13.3 and appendix C) for groups: every portal of every group
// with the group's tag. Groups that can serve come first, the
// active/optimized one(s) first of all, so that an initiator without
// multipath that takes the first address lands where I/O is best served;
// within a rank the order is by ID, the same at every site. A portal
// whose host is a wildcard (a listen address such as 0.0.0.0:3260) is
// given the address the initiator reached, which it can dial.
func targetAddresses(groups []PortGroup, local net.Addr) []string {
	rank := func(s PathState) int {
		switch s {
		case PathActiveOptimized:
			return 0
		case PathActiveNonOptimized:
			return 1
		}
		return 2
	}
	gs := slices.Clone(groups)
	slices.SortStableFunc(gs, func(a, b PortGroup) int {
		if ra, rb := rank(a.State), rank(b.State); ra != rb {
			return ra - rb
		}
		return int(a.ID) - int(b.ID)
	})
	var out []string
	for _, g := range gs {
		for _, p := range g.Portals {
			out = append(out, reachablePortal(p, local)+","+strconv.Itoa(int(g.ID)))
		}
	}
	return out
}

// reachablePortal replaces a wildcard host in p with the host of local.
func reachablePortal(p string, local net.Addr) string {
	host, port, err := net.SplitHostPort(p)
	if err != nil || local == nil {
		return p
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return p
	}
	lh, _, err := net.SplitHostPort(local.String())
	if err != nil {
		return p
	}
	return net.JoinHostPort(lh, port)
}
