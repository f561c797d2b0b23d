// Package paths decides how an initiator's paths to the cluster's sites
// are used: the ALUA access state each site's port group reports to it
// (Groups), whether a login at a site that cannot serve is sent to one
// that can (Redirect), and the cluster-wide view of the hosts (Hosts).
// Each is a pure function of a Cluster, the view one site has when it
// decides, so that a table of cases tests it; cmd/metrolun builds the
// view from the Raft state, the config and the session lists the sites
// serve each other (GET /v1/sessions).
package paths

import (
	"strings"
	"time"

	"github.com/metrolun/metrolun/target"
)

// Site is one data site as the committed cluster state has it.
type Site struct {
	Name        string
	PortalGroup uint16
	Portals     []string
	InSync      bool
	Fenced      bool
	Leaving     bool
}

// Session is one session of an initiator at a site, live or recently
// ended. It is also the admin API's form (GET /v1/sessions).
type Session struct {
	Site      string `json:"site"`
	Initiator string `json:"initiator"`
	ISID      string `json:"isid"`
	TSIH      uint16 `json:"tsih"`
	Remote    string `json:"remote,omitempty"`
	// Since is when the session logged in; Ended when it was last seen
	// alive, for a session that has ended (zero while live).
	Since time.Time `json:"since"`
	Ended time.Time `json:"ended,omitzero"`
	// RTT is the smoothed round trip of the target's NOP-In pings on the
	// session (0: not measured yet); RTTLast the latest.
	RTT     time.Duration `json:"rtt_ns,omitempty"`
	RTTLast time.Duration `json:"rtt_last_ns,omitempty"`
	Pings   uint64        `json:"pings,omitempty"`
	Answers uint64        `json:"answers,omitempty"`
	// State is the ALUA access state the site reports of its own port
	// group to this initiator: the state of this path.
	State string `json:"state"`
}

// Live reports whether the session had not ended when it was listed.
func (s Session) Live() bool { return s.Ended.IsZero() }

// Recent is how long an ended session still counts as a path the
// initiator "just had": open-iscsi keeps trying to restore a session's
// lost connection for replacement_timeout, 120 s by default, before it
// gives the path up, and its login may reach a site at any time in
// between.
const Recent = 2 * time.Minute

// Cluster is what one site (Self) knows when it decides.
type Cluster struct {
	Self string
	// Committed: this site has applied a committed cluster state. Before
	// that Writer and the sites' InSync say nothing.
	Committed bool
	Writer    string
	Sites     []Site
	// Prefer maps an initiator name in lower case to the site it prefers
	// (prefer blocks); the key Everyone applies to initiators without
	// their own; the value Auto prefers the site of its paths with the
	// lowest round trip (Preferred).
	Prefer map[string]string
	// Sessions are every session known in the cluster: this site's own
	// (live and recently ended) and those the other data sites reported.
	Sessions []Session
	// Unheard are the other data sites whose session lists this site
	// has not had since it started.
	Unheard []string
	Now     time.Time
}

// Auto as a preferred site: the site of the initiator's lowest-RTT path.
const Auto = "auto"

// Everyone as an initiator in Prefer: every initiator without a prefer
// block of its own.
const Everyone = "*"

func (c Cluster) site(name string) (Site, bool) {
	for _, s := range c.Sites {
		if s.Name == name {
			return s, true
		}
	}
	return Site{}, false
}

// serving reports whether the committed state lets site serve I/O.
func (c Cluster) serving(name string) bool {
	s, ok := c.site(name)
	return ok && s.InSync && !s.Fenced && !s.Leaving
}

func sameName(a, b string) bool { return strings.EqualFold(a, b) }

// counts reports whether s is a path the initiator has or just had.
func (c Cluster) counts(s Session) bool {
	return s.Live() || c.Now.Sub(s.Ended) <= Recent
}

// preference returns the initiator's prefer entry: its own, else
// Everyone's.
func (c Cluster) preference(initiator string) (string, bool) {
	if p, ok := c.Prefer[strings.ToLower(initiator)]; ok {
		return p, true
	}
	p, ok := c.Prefer[Everyone]
	return p, ok
}

// Preferred returns the site the initiator prefers and whether it has
// one: its prefer entry (or Everyone's), or with Auto the site of its
// live path with the lowest measured round trip, none before one is
// measured. Auto keeps the writer's site unless another is clearly
// nearer (ClearlyNearer): two sites in one room measure within noise of
// each other, and a preference that followed the noise would move the
// active/optimized group back and forth, each move a unit attention and
// a path group switch at the host.
func Preferred(c Cluster, initiator string) (string, bool) {
	p, ok := c.preference(initiator)
	if !ok {
		return "", false
	}
	if p != Auto {
		return p, true
	}
	near, ok := Nearest(c.Sessions, initiator)
	if !ok {
		return "", false
	}
	if near != c.Writer {
		if rw, ok := rttAt(c.Sessions, initiator, c.Writer); ok {
			rn, _ := rttAt(c.Sessions, initiator, near)
			if !ClearlyNearer(rn, rw) {
				return c.Writer, true
			}
		}
	}
	return near, true
}

// ClearlyNearer reports whether a round trip of a is shorter than one of
// b by more than noise: by at least a quarter of b and at least 1 ms.
func ClearlyNearer(a, b time.Duration) bool {
	return a < b-max(b/4, time.Millisecond)
}

// rttAt is the lowest measured round trip of the initiator's live paths
// to site.
func rttAt(sessions []Session, initiator, site string) (time.Duration, bool) {
	var best time.Duration
	for _, s := range sessions {
		if s.Live() && s.RTT > 0 && s.Site == site && sameName(s.Initiator, initiator) && (best == 0 || s.RTT < best) {
			best = s.RTT
		}
	}
	return best, best > 0
}

// Nearest returns the site of the initiator's live path with the lowest
// measured round trip; ties go to the first site in name order.
func Nearest(sessions []Session, initiator string) (string, bool) {
	best, bestRTT := "", time.Duration(0)
	for _, s := range sessions {
		if !s.Live() || s.RTT <= 0 || !sameName(s.Initiator, initiator) {
			continue
		}
		if best == "" || s.RTT < bestRTT || s.RTT == bestRTT && s.Site < best {
			best, bestRTT = s.Site, s.RTT
		}
	}
	return best, best != ""
}

// Groups returns every data site's port group as the initiator should
// see it (DESIGN.md "Initiators and paths"): the writer's site
// active/optimized, another in-sync site active/non-optimized, any other
// site unavailable (it has no lease to serve with; the same rule as
// replica.Site.State applies at each site to itself, so every site gives
// the same answer); the preferred site is marked, and target makes it
// active/optimized while it can serve. Before there is a committed state
// the other sites are reported active/non-optimized: a site that cannot
// be vouched for is neither claimed best nor hidden, and each site's own
// answer on its own path says how it really is. The asking site's own
// state comes from its volume (target does that).
func Groups(c Cluster, initiator string) []target.PortGroup {
	pref, hasPref := Preferred(c, initiator)
	gs := make([]target.PortGroup, 0, len(c.Sites))
	for _, s := range c.Sites {
		g := target.PortGroup{ID: s.PortalGroup, Portals: s.Portals, Preferred: hasPref && pref == s.Name}
		switch {
		case !c.Committed:
			g.State = target.PathActiveNonOptimized
		case c.Writer == s.Name:
			g.State = target.PathActiveOptimized
		case s.InSync:
			g.State = target.PathActiveNonOptimized
		default:
			g.State = target.PathUnavailable
		}
		gs = append(gs, g)
	}
	return gs
}

// Decision is where a login goes: Site "" is here.
type Decision struct {
	Site string
	Addr string // the portal of Site
	Why  string
}

// Here reports whether the login stays at the site that asked.
func (d Decision) Here() bool { return d.Site == "" }

// Redirect decides where a new session's login at c.Self goes; self is
// the state of c.Self's own volume (RFC 7143 section 11.13.5 redirects).
//
// A site that can serve takes it, and so does one that is in sync but
// waits for its lease (transitioning). So does a site that cannot
// (fenced, resyncing, joining, being removed) when moving the login would break
// multipath: the initiator has, or just had (Recent), a session at
// another site under another ISID (under the same ISID it is this path,
// sent there by an earlier redirect), or this login reinstates a
// session live here (same initiator and ISID). dm-multipath holds one session per site and
// believes each path goes where it logged in; sent elsewhere, its path
// to this site would land on the other site beside its path there, and
// the host would have no path here until that connection dropped. The
// session stays, sees this site's group unavailable or transitioning
// until it is in sync (Groups, the volume's state), then active. A
// single-path client (QEMU given one site's URL) is redirected to its
// preferred site when that one serves, else to the writer's, so that it
// still gets I/O while this site catches up. Without a committed state,
// or while the session lists of a site are not known, the login stays:
// whom to move cannot be told.
func Redirect(c Cluster, self target.PathState, initiator, isid string) Decision {
	if self == target.PathActiveOptimized || self == target.PathActiveNonOptimized {
		return Decision{Why: "this site serves"}
	}
	if self == target.PathTransitioning {
		// In sync but between leases (a new writer, a burst of load, a
		// short cut): it serves again as soon as a lease comes, and a
		// redirected path would stay at the other site for good.
		return Decision{Why: "this site is in sync and waits for its lease"}
	}
	if !c.Committed || c.Writer == "" {
		return Decision{Why: "no committed cluster state"}
	}
	for _, s := range c.Sessions {
		if !sameName(s.Initiator, initiator) || !c.counts(s) {
			continue
		}
		sameISID := strings.EqualFold(s.ISID, isid)
		// A session elsewhere under this login's ISID is this very path
		// (the initiator port, RFC 7143 section 10.1.1), redirected there
		// before: not a second path.
		if s.Site != c.Self && !sameISID {
			return Decision{Why: "the initiator has a path to " + s.Site + " (multipath)"}
		}
		if s.Site == c.Self && s.Live() && sameISID {
			return Decision{Why: "the login reinstates a session here"}
		}
	}
	if len(c.Unheard) > 0 {
		return Decision{Why: "the sessions at " + strings.Join(c.Unheard, ", ") + " are not known yet"}
	}
	to := ""
	if pref, ok := Preferred(c, initiator); ok && pref != c.Self && c.serving(pref) {
		to = pref
	} else if c.Writer != c.Self && c.serving(c.Writer) {
		to = c.Writer
	}
	if s, ok := c.site(to); ok && len(s.Portals) > 0 {
		return Decision{Site: to, Addr: s.Portals[0], Why: "single-path client; " + to + " serves"}
	}
	return Decision{Why: "no other site serves"}
}

// SinglePath reports whether the initiator port (initiator, isid) has no
// path to the cluster other than through c.Self: the committed state is
// known, every other data site's session list has come in, and no
// session under that initiator name, live or just ended (Recent), is at
// another site, except this port itself redirected there before (same
// ISID, as in Redirect). A transition then answers its retry-safe
// commands BUSY rather than NOT READY (target/retrybusy.go). When in
// doubt it says no: a multipath host told BUSY would retry on the same
// path instead of failing over.
func SinglePath(c Cluster, initiator, isid string) bool {
	if !c.Committed || len(c.Unheard) > 0 {
		return false
	}
	for _, s := range c.Sessions {
		if s.Site == c.Self || !sameName(s.Initiator, initiator) || !c.counts(s) {
			continue
		}
		if !strings.EqualFold(s.ISID, isid) {
			return false
		}
	}
	return true
}
