package main

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/cmd/paths"
	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/internal/grid"
	"github.com/metrolun/metrolun/target"
)

// The cluster's sessions (cmd/paths): every data site lists its own
// iSCSI sessions, live and recently ended, on its admin endpoint (GET
// /v1/sessions, which a member's certificate may read), and every member
// polls the other data sites' lists once a second. A data site that
// cannot serve decides a login's redirect from that (paths.Redirect), and
// `metrolun hosts` shows it.
const (
	sessionPoll = time.Second
	// sessionFirstWait bounds how long a member that has just started
	// waits for the other data sites' lists before it decides a redirect
	// without them (it then keeps logins: paths.Redirect).
	sessionFirstWait = 5 * time.Second
	// sessionStale: a site whose list has not come for this long is
	// taken as having lost its sessions when it was last heard (they
	// still count as recent paths for paths.Recent).
	sessionStale = 3 * sessionPoll
)

// sessionBook is one member's knowledge of the cluster's sessions.
type sessionBook struct {
	m   *member
	srv atomic.Pointer[target.Server] // nil until iSCSI serves (and at a witness)

	mu      sync.Mutex
	journal paths.Journal
	peers   map[string]*peerSessions
	// merged is every session known, for the ALUA policy (auto
	// preference), which runs often and must not ask the server.
	merged atomic.Pointer[[]paths.Session]

	start     time.Time
	ready     chan struct{} // closed once every other data site was heard, or sessionFirstWait passed
	readyOnce sync.Once
}

type peerSessions struct {
	sessions []paths.Session
	heard    time.Time
	etag     string // the site's name for this list (admin.SessionsETag)
}

func newSessionBook(m *member) *sessionBook {
	return &sessionBook{m: m, peers: map[string]*peerSessions{}, start: time.Now(), ready: make(chan struct{})}
}

// run polls until the member stops.
func (b *sessionBook) run() {
	t := grid.NewTicker(sessionPoll)
	defer t.Stop()
	first := time.NewTimer(sessionFirstWait)
	defer first.Stop()
	for {
		b.poll()
		select {
		case <-b.m.done:
			return
		case <-first.C:
			b.readyOnce.Do(func() { close(b.ready) })
		case <-t.C:
		}
	}
}

// waitReady waits until the other data sites were heard once, or
// sessionFirstWait after the start, whichever comes first.
func (b *sessionBook) waitReady() {
	select {
	case <-b.ready:
	case <-time.After(time.Until(b.start.Add(sessionFirstWait))):
	}
}

// peerEndpoints are the other data sites' admin endpoints.
func (b *sessionBook) peerEndpoints() []admin.Endpoint {
	m := b.m
	var eps []admin.Endpoint
	for _, dm := range m.dataMembers(m.cluster.State()) {
		if dm.Name != m.cfg.Name && dm.Admin != "" {
			eps = append(eps, admin.Endpoint{Name: dm.Name, Role: conf.RoleData, Admin: dm.Admin})
		}
	}
	return eps
}

// poll asks every other data site for its list at once, each for at most
// one poll interval, and refreshes this site's own.
func (b *sessionBook) poll() {
	eps := b.peerEndpoints()
	client := b.m.adminClient()
	ctx, cancel := context.WithTimeout(context.Background(), sessionPoll)
	defer cancel()
	var wg sync.WaitGroup
	for _, ep := range eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, tag, same, err := client.SessionsIfChanged(ctx, ep, b.etag(ep.Name))
			if err != nil {
				b.m.log.Trace("asking for another site's sessions", "site", ep.Name, "error", err)
				return
			}
			if same {
				b.heardSame(ep.Name, time.Now())
				return
			}
			b.heard(ep.Name, l, time.Now())
			b.mu.Lock()
			b.peers[ep.Name].etag = tag
			b.mu.Unlock()
		}()
	}
	wg.Wait()
	b.refreshOwn()
	b.mu.Lock()
	all := true
	for _, ep := range eps {
		if b.peers[ep.Name] == nil {
			all = false
		}
	}
	b.mu.Unlock()
	if all {
		b.readyOnce.Do(func() { close(b.ready) })
	}
}

// etag names the list held for site ("" for none).
func (b *sessionBook) etag(site string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p := b.peers[site]; p != nil {
		return p.etag
	}
	return ""
}

// heardSame records that site's list, asked at at, is the one held.
func (b *sessionBook) heardSame(site string, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p := b.peers[site]; p != nil {
		p.heard = at
	}
}

// heard takes a site's list, received at at; the site speaks for itself
// only, at most admin.MaxSessions entries are kept, and its times are
// moved to this member's clock (the list's Now is taken as at), so that
// "ended within paths.Recent" does not depend on the sites' clocks
// agreeing.
func (b *sessionBook) heard(site string, l admin.SessionList, at time.Time) {
	list := l.Sessions
	if len(list) > admin.MaxSessions {
		list = list[:admin.MaxSessions]
	}
	skew := time.Duration(0)
	if !l.Now.IsZero() {
		skew = at.Sub(l.Now)
	}
	for i := range list {
		list[i].Site = site
		if !list[i].Ended.IsZero() {
			list[i].Ended = list[i].Ended.Add(skew)
		}
		if !list[i].Since.IsZero() {
			list[i].Since = list[i].Since.Add(skew)
		}
	}
	b.mu.Lock()
	b.peers[site] = &peerSessions{sessions: list, heard: at}
	b.mu.Unlock()
}

// refreshOwn reads this site's sessions from the target into the
// journal, and recomputes the merged list. It must not hold b.mu while
// it asks the server, whose answer runs the ALUA policy (portGroups).
func (b *sessionBook) refreshOwn() {
	var own []paths.Session
	if srv := b.srv.Load(); srv != nil {
		for _, s := range srv.Sessions() {
			own = append(own, paths.Session{
				Site: b.m.cfg.Name, Initiator: s.Initiator, ISID: s.ISID, TSIH: s.TSIH, Remote: s.Remote,
				Since: s.Since, RTT: s.RTT, RTTLast: s.RTTLast, Pings: s.Pings, Answers: s.Answers, State: s.State.String(),
			})
		}
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.journal.Update(now, own)
	all, _ := b.collectLocked(now)
	b.merged.Store(&all)
}

// own is this site's list for GET /v1/sessions, and the time it is of.
func (b *sessionBook) own() ([]paths.Session, time.Time) {
	b.refreshOwn()
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	return b.journal.List(now), now
}

// collectLocked returns every session known and the other data sites
// never heard from. A site not heard for sessionStale has lost its
// live sessions when it was last heard.
func (b *sessionBook) collectLocked(now time.Time) (all []paths.Session, unheard []string) {
	all = b.journal.List(now)
	for _, ep := range b.peerEndpoints() {
		p := b.peers[ep.Name]
		if p == nil {
			unheard = append(unheard, ep.Name)
			continue
		}
		stale := now.Sub(p.heard) > sessionStale
		for _, s := range p.sessions {
			if stale && s.Live() {
				s.Ended = p.heard
			}
			all = append(all, s)
		}
	}
	return all, unheard
}

// unheard lists the other data sites whose session list has never come.
func (b *sessionBook) unheard() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, ep := range b.peerEndpoints() {
		if b.peers[ep.Name] == nil {
			out = append(out, ep.Name)
		}
	}
	return out
}

// view is the cluster as this member sees it now: fresh sessions of its
// own and the latest lists of the others (for a redirect, or the hosts).
func (b *sessionBook) view() paths.Cluster {
	b.refreshOwn()
	b.mu.Lock()
	all, unheard := b.collectLocked(time.Now())
	b.mu.Unlock()
	c := b.m.clusterView()
	c.Sessions, c.Unheard = all, unheard
	return c
}

// cached is the cluster with the sessions of the last poll, for the
// ALUA policy: it never asks the server.
func (b *sessionBook) cached() paths.Cluster {
	c := b.m.clusterView()
	if p := b.merged.Load(); p != nil {
		c.Sessions = *p
	}
	return c
}

// clusterView is the committed state and the config as paths sees them,
// without sessions.
func (m *member) clusterView() paths.Cluster {
	st := m.cluster.State()
	c := paths.Cluster{Self: m.cfg.Name, Committed: len(st.Members) > 0, Writer: st.Writer, Now: time.Now()}
	for _, dm := range m.dataMembers(st) {
		c.Sites = append(c.Sites, paths.Site{Name: dm.Name, PortalGroup: uint16(dm.PortalGroup), Portals: dm.ISCSI,
			InSync: st.IsInSync(dm.Name), Fenced: st.IsFenced(dm.Name), Leaving: st.IsLeaving(dm.Name)})
	}
	if prefs := m.cfg.Cluster.Preferred; len(prefs) > 0 {
		c.Prefer = make(map[string]string, len(prefs))
		for _, p := range prefs {
			c.Prefer[strings.ToLower(p.Initiator)] = p.Site
		}
	}
	return c
}

// portGroups gives the target every data site's port group as the
// initiator should see it (paths.Groups).
func (m *member) portGroups(initiator string) []target.PortGroup {
	return paths.Groups(m.book.cached(), initiator)
}

// singlePath is the target's hook for BUSY at a transition
// (paths.SinglePath): it runs only for a command that met one, from the
// sessions of the last poll.
func (m *member) singlePath(initiator, isid string) bool {
	c := m.book.cached()
	c.Unheard = m.book.unheard()
	return paths.SinglePath(c, initiator, isid)
}

// redirect is the target's login redirect hook (paths.Redirect): asked
// only while this site cannot serve, after the other sites' session
// lists have come in (bounded by sessionFirstWait from the start).
func (m *member) redirect(initiator, _, isid string) (string, bool, bool) {
	if m.site == nil {
		return "", false, false
	}
	self := m.site.State()
	if self != target.PathUnavailable {
		return "", false, false // serving, or in sync between leases (paths.Redirect)
	}
	m.book.waitReady()
	d := paths.Redirect(m.book.view(), self, initiator, isid)
	if d.Here() {
		m.log.Info("login kept at this site, which cannot serve yet", "initiator", initiator, "isid", isid, "state", self.String(), "why", d.Why)
		return "", false, false
	}
	return d.Addr, false, true
}

// hosts answers GET /v1/hosts.
func (m *member) hosts() admin.HostsResponse {
	c := m.book.view()
	r := admin.HostsResponse{Member: m.cfg.Name, Unheard: c.Unheard, Hosts: paths.Hosts(c)}
	for _, s := range c.Sites {
		r.Sites = append(r.Sites, s.Name)
	}
	slices.Sort(r.Sites)
	return r
}
