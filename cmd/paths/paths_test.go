package paths

import (
	"reflect"
	"testing"
	"time"

	"github.com/metrolun/metrolun/target"
)

var t0 = time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)

// twoSites is site-a resyncing after a restart, site-b the writer; the
// view of site-a.
func twoSites() Cluster {
	return Cluster{
		Self: "site-a", Committed: true, Writer: "site-b", Now: t0,
		Sites: []Site{
			{Name: "site-a", PortalGroup: 1, Portals: []string{"127.0.0.1:3260"}},
			{Name: "site-b", PortalGroup: 2, Portals: []string{"127.0.0.2:3260"}, InSync: true},
		},
	}
}

const host = "iqn.2026-11.io.example:host1"

func live(site, initiator, isid string) Session {
	return Session{Site: site, Initiator: initiator, ISID: isid, TSIH: 1, Since: t0.Add(-time.Hour)}
}

func ended(site, initiator, isid string, ago time.Duration) Session {
	s := live(site, initiator, isid)
	s.Ended = t0.Add(-ago)
	return s
}

func TestRedirect(t *testing.T) {
	here := func(why string) Decision { return Decision{Why: why} }
	toB := Decision{Site: "site-b", Addr: "127.0.0.2:3260", Why: "single-path client; site-b serves"}
	cases := []struct {
		name   string
		change func(*Cluster)
		self   target.PathState
		isid   string
		want   Decision
	}{
		{"a serving site takes every login", nil, target.PathActiveNonOptimized, "", here("this site serves")},
		{"the writer takes every login", nil, target.PathActiveOptimized, "", here("this site serves")},
		{"a single-path client goes to the writer", nil, target.PathUnavailable, "", toB},
		{"a site between leases keeps the login", nil, target.PathTransitioning, "", here("this site is in sync and waits for its lease")},
		{"a host with a live path elsewhere stays",
			func(c *Cluster) { c.Sessions = []Session{live("site-b", host, "800000000b01")} },
			target.PathUnavailable, "800000000a01", here("the initiator has a path to site-b (multipath)")},
		{"initiator names compare in any case",
			func(c *Cluster) {
				c.Sessions = []Session{live("site-b", "IQN.2026-11.io.example:HOST1", "800000000b01")}
			},
			target.PathUnavailable, "800000000a01", here("the initiator has a path to site-b (multipath)")},
		{"a host that just had a path elsewhere stays",
			func(c *Cluster) { c.Sessions = []Session{ended("site-b", host, "800000000b01", Recent)} },
			target.PathUnavailable, "800000000a01", here("the initiator has a path to site-b (multipath)")},
		{"a path elsewhere that ended long ago does not count",
			func(c *Cluster) { c.Sessions = []Session{ended("site-b", host, "800000000b01", Recent+time.Second)} },
			target.PathUnavailable, "800000000a01", toB},
		{"this path redirected before (same ISID elsewhere) is no second path",
			func(c *Cluster) { c.Sessions = []Session{live("site-b", host, "800000000a01")} },
			target.PathUnavailable, "800000000A01", toB},
		{"same ISID elsewhere, and another path elsewhere: stay",
			func(c *Cluster) {
				c.Sessions = []Session{live("site-b", host, "800000000a01"), ended("site-b", host, "800000000b01", time.Minute)}
			},
			target.PathUnavailable, "800000000a01", here("the initiator has a path to site-b (multipath)")},
		{"a reinstatement of a live session here stays",
			func(c *Cluster) { c.Sessions = []Session{live("site-a", host, "800000000a01")} },
			target.PathUnavailable, "800000000A01", here("the login reinstates a session here")},
		{"another session of the initiator here is no reason to stay",
			func(c *Cluster) { c.Sessions = []Session{live("site-a", host, "800000000a02")} },
			target.PathUnavailable, "800000000a01", toB},
		{"an ended session here is no reinstatement",
			func(c *Cluster) { c.Sessions = []Session{ended("site-a", host, "800000000a01", time.Second)} },
			target.PathUnavailable, "800000000a01", toB},
		{"other initiators' paths do not count",
			func(c *Cluster) {
				c.Sessions = []Session{live("site-b", "iqn.2026-11.io.example:host2", "800000000b01")}
			},
			target.PathUnavailable, "800000000a01", toB},
		{"sessions not known yet: stay",
			func(c *Cluster) { c.Unheard = []string{"site-b"} },
			target.PathUnavailable, "", here("the sessions at site-b are not known yet")},
		{"no committed state: stay",
			func(c *Cluster) { c.Committed = false },
			target.PathUnavailable, "", here("no committed cluster state")},
		{"no writer: stay",
			func(c *Cluster) { c.Writer = "" },
			target.PathUnavailable, "", here("no committed cluster state")},
		{"the writer out of sync: stay",
			func(c *Cluster) { c.Sites[1].InSync = false },
			target.PathUnavailable, "", here("no other site serves")},
		{"the writer fenced: stay",
			func(c *Cluster) { c.Sites[1].Fenced = true },
			target.PathUnavailable, "", here("no other site serves")},
		{"the writer leaving: stay",
			func(c *Cluster) { c.Sites[1].Leaving = true },
			target.PathUnavailable, "", here("no other site serves")},
		{"this site still named writer (stale view): stay",
			func(c *Cluster) { c.Writer = "site-a" },
			target.PathUnavailable, "", here("no other site serves")},
		{"the writer without a portal: stay",
			func(c *Cluster) { c.Sites[1].Portals = nil },
			target.PathUnavailable, "", here("no other site serves")},
		{"the preferred site when it serves",
			func(c *Cluster) {
				c.Sites = append(c.Sites, Site{Name: "site-c", PortalGroup: 3, Portals: []string{"127.0.0.4:3260"}, InSync: true})
				c.Prefer = map[string]string{host: "site-c"}
			},
			target.PathUnavailable, "", Decision{Site: "site-c", Addr: "127.0.0.4:3260", Why: "single-path client; site-c serves"}},
		{"the writer when the preferred site does not serve",
			func(c *Cluster) {
				c.Sites = append(c.Sites, Site{Name: "site-c", PortalGroup: 3, Portals: []string{"127.0.0.4:3260"}})
				c.Prefer = map[string]string{host: "site-c"}
			},
			target.PathUnavailable, "", toB},
		{"the writer when this site is the preferred one",
			func(c *Cluster) { c.Prefer = map[string]string{host: "site-a"} },
			target.PathUnavailable, "", toB},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := twoSites()
			if tc.change != nil {
				tc.change(&c)
			}
			if got := Redirect(c, tc.self, host, tc.isid); got != tc.want {
				t.Errorf("Redirect = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestGroups(t *testing.T) {
	type g struct {
		id    uint16
		state target.PathState
		pref  bool
	}
	cases := []struct {
		name   string
		change func(*Cluster)
		want   []g
	}{
		{"writer optimized, resyncing site unavailable", nil,
			[]g{{1, target.PathUnavailable, false}, {2, target.PathActiveOptimized, false}}},
		{"both in sync", func(c *Cluster) { c.Sites[0].InSync = true },
			[]g{{1, target.PathActiveNonOptimized, false}, {2, target.PathActiveOptimized, false}}},
		{"no committed state: every site non-optimized", func(c *Cluster) { c.Committed = false },
			[]g{{1, target.PathActiveNonOptimized, false}, {2, target.PathActiveNonOptimized, false}}},
		{"a prefer block marks its site", func(c *Cluster) { c.Sites[0].InSync = true; c.Prefer = map[string]string{host: "site-a"} },
			[]g{{1, target.PathActiveNonOptimized, true}, {2, target.PathActiveOptimized, false}}},
		{"auto prefers the lowest round trip", func(c *Cluster) {
			c.Sites[0].InSync = true
			c.Prefer = map[string]string{Everyone: Auto}
			a, b := live("site-a", host, "1"), live("site-b", host, "2")
			a.RTT, b.RTT = 200*time.Microsecond, 30*time.Millisecond
			c.Sessions = []Session{b, a}
		}, []g{{1, target.PathActiveNonOptimized, true}, {2, target.PathActiveOptimized, false}}},
		{"auto ignores ended and unmeasured paths", func(c *Cluster) {
			c.Prefer = map[string]string{host: Auto}
			a, b, b2 := ended("site-a", host, "1", time.Second), live("site-b", host, "2"), live("site-b", host, "3")
			a.RTT, b.RTT = time.Microsecond, 0
			c.Sessions = []Session{a, b, b2}
		}, []g{{1, target.PathUnavailable, false}, {2, target.PathActiveOptimized, false}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := twoSites()
			if tc.change != nil {
				tc.change(&c)
			}
			var got []g
			for _, pg := range Groups(c, host) {
				got = append(got, g{pg.ID, pg.State, pg.Preferred})
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Groups = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestHosts(t *testing.T) {
	c := twoSites()
	c.Sites[0].InSync = true
	const h2, h3 = "iqn.2026-11.io.example:host2", "iqn.2026-11.io.example:host3"
	a1, b1 := live("site-a", host, "1"), live("site-b", host, "2")
	a1.RTT, b1.RTT = 100*time.Microsecond, 20*time.Millisecond
	a1.State, b1.State = "active/non-optimized", "active/optimized"
	// h2's one path is not to the writer's site: with one site there is
	// no nearer one to flag.
	b2 := live("site-a", h2, "1")
	b2.RTT = time.Millisecond
	a3 := live("site-a", h3, "9")
	c.Sessions = []Session{b1, b2, a1, a3, ended("site-a", h2, "7", time.Second)}
	c.Prefer = map[string]string{h3: "site-a"}
	got := Hosts(c)
	want := []Host{
		{Initiator: host, Sites: []string{"site-a", "site-b"}, Paths: []Session{a1, b1},
			Preferred: "site-b", PreferredBy: "writer", Nearest: "site-a", NotNearest: true},
		{Initiator: h2, Sites: []string{"site-a"}, Paths: []Session{b2},
			Preferred: "site-b", PreferredBy: "writer", Nearest: "site-a", OneSite: true},
		{Initiator: h3, Sites: []string{"site-a"}, Paths: []Session{a3},
			Preferred: "site-a", PreferredBy: "prefer", OneSite: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Hosts:\n got %+v\nwant %+v", got, want)
	}
	// With auto, host prefers its nearest site: no longer flagged.
	c.Prefer[Everyone] = Auto
	got = Hosts(c)
	if got[0].Preferred != "site-a" || got[0].PreferredBy != "auto" || got[0].NotNearest {
		t.Fatalf("auto: %+v", got[0])
	}
	// Two sessions at one site from different addresses under one name:
	// most likely two hosts sharing it. One address with two sessions
	// there (two ISIDs from one host) is not.
	x1, x2, x3 := live("site-a", h2, "1"), live("site-a", h2, "2"), live("site-b", h2, "3")
	x1.Remote, x2.Remote, x3.Remote = "10.0.0.1:40001", "10.0.0.1:40002", "10.0.1.7:40003"
	c.Sessions = []Session{x1, x2, x3}
	if got := Hosts(c); len(got) != 1 || got[0].SharedName {
		t.Fatalf("one host, two sessions at site-a from one address, one at site-b from another: %+v", got)
	}
	x2.Remote = "10.0.0.2:40002"
	c.Sessions = []Session{x1, x2, x3}
	if got := Hosts(c); len(got) != 1 || !got[0].SharedName {
		t.Fatalf("two addresses at site-a under one name are not flagged: %+v", got)
	}
	// A single-site cluster flags nobody for having one site.
	c.Sites = c.Sites[:1]
	for _, h := range Hosts(c) {
		if h.OneSite {
			t.Fatalf("one data site, yet %s is flagged", h.Initiator)
		}
	}
}

func TestJournal(t *testing.T) {
	var j Journal
	s1, s2 := live("site-a", host, "1"), live("site-a", host, "2")
	j.Update(t0, []Session{s1, s2})
	if got := j.List(t0); len(got) != 2 || !got[0].Live() || !got[1].Live() {
		t.Fatalf("two live: %+v", got)
	}
	j.Update(t0.Add(time.Second), []Session{s2})
	got := j.List(t0.Add(time.Second))
	if len(got) != 2 || got[0].ISID != "2" || !got[0].Live() || got[1].ISID != "1" || !got[1].Ended.Equal(t0.Add(time.Second)) {
		t.Fatalf("one ended: %+v", got)
	}
	// Ended sessions are forgotten after Recent.
	if got := j.List(t0.Add(time.Second + Recent + time.Millisecond)); len(got) != 1 {
		t.Fatalf("after Recent: %+v", got)
	}
	// At most MaxEnded are kept, the latest.
	for i := range MaxEnded + 10 {
		s := live("site-a", host, "x")
		s.TSIH = uint16(i + 10)
		j.Update(t0.Add(2*time.Second), []Session{s})
	}
	j.Update(t0.Add(3*time.Second), nil)
	got = j.List(t0.Add(3 * time.Second))
	if len(got) != MaxEnded || got[len(got)-1].TSIH != MaxEnded+19 {
		t.Fatalf("%d ended kept, last TSIH %d", len(got), got[len(got)-1].TSIH)
	}
}

func TestAutoPreference(t *testing.T) {
	cases := []struct {
		name     string
		rtt      map[string]time.Duration // by site; 0: no measured path
		prefer   map[string]string
		want     string
		wantPref bool
	}{
		{"clearly nearer than the writer", map[string]time.Duration{"site-a": 300 * time.Microsecond, "site-b": 12 * time.Millisecond}, nil, "site-a", true},
		{"within noise of the writer: the writer", map[string]time.Duration{"site-a": 300 * time.Microsecond, "site-b": 900 * time.Microsecond}, nil, "site-b", true},
		{"less than a quarter nearer: the writer", map[string]time.Duration{"site-a": 40 * time.Millisecond, "site-b": 45 * time.Millisecond}, nil, "site-b", true},
		{"the writer nearest", map[string]time.Duration{"site-a": 20 * time.Millisecond, "site-b": 2 * time.Millisecond}, nil, "site-b", true},
		{"no path to the writer measured", map[string]time.Duration{"site-a": 20 * time.Millisecond}, nil, "site-a", true},
		{"nothing measured: no preference", map[string]time.Duration{}, nil, "", false},
		{"an initiator's own block wins over everyone's", map[string]time.Duration{"site-a": 300 * time.Microsecond, "site-b": 12 * time.Millisecond},
			map[string]string{host: "site-b"}, "site-b", true},
		{"an initiator's own auto", map[string]time.Duration{"site-a": 300 * time.Microsecond, "site-b": 12 * time.Millisecond},
			map[string]string{host: Auto, Everyone: "site-b"}, "site-a", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := twoSites()
			c.Prefer = map[string]string{Everyone: Auto}
			if tc.prefer != nil {
				c.Prefer = tc.prefer
			}
			for site, d := range tc.rtt {
				s := live(site, host, site)
				s.RTT = d
				c.Sessions = append(c.Sessions, s)
			}
			got, ok := Preferred(c, host)
			if got != tc.want || ok != tc.wantPref {
				t.Errorf("Preferred = %q, %v; want %q, %v", got, ok, tc.want, tc.wantPref)
			}
		})
	}
}

func TestSinglePath(t *testing.T) {
	const isid = "800000000a01"
	cases := []struct {
		name   string
		change func(*Cluster)
		want   bool
	}{
		{"no session elsewhere", func(c *Cluster) { c.Sessions = []Session{live("site-a", host, isid)} }, true},
		{"another initiator's path elsewhere does not count",
			func(c *Cluster) {
				c.Sessions = []Session{live("site-b", "iqn.2026-11.io.example:other", "800000000b01")}
			}, true},
		{"a live path elsewhere", func(c *Cluster) { c.Sessions = []Session{live("site-b", host, "800000000b01")} }, false},
		{"names compare in any case",
			func(c *Cluster) {
				c.Sessions = []Session{live("site-b", "IQN.2026-11.io.example:HOST1", "800000000b01")}
			}, false},
		{"a path elsewhere that just ended (the site died)",
			func(c *Cluster) { c.Sessions = []Session{ended("site-b", host, "800000000b01", Recent)} }, false},
		{"a path elsewhere that ended long ago",
			func(c *Cluster) { c.Sessions = []Session{ended("site-b", host, "800000000b01", Recent+time.Second)} }, true},
		{"this very port, redirected there before",
			func(c *Cluster) { c.Sessions = []Session{ended("site-b", host, "800000000A01", time.Second)} }, true},
		{"a second port at this site is not another site", func(c *Cluster) { c.Sessions = []Session{live("site-a", host, "800000000a02")} }, true},
		{"no committed state", func(c *Cluster) { c.Committed = false }, false},
		{"a site's sessions not known yet", func(c *Cluster) { c.Unheard = []string{"site-b"} }, false},
	}
	for _, tc := range cases {
		c := twoSites()
		if tc.change != nil {
			tc.change(&c)
		}
		if got := SinglePath(c, host, isid); got != tc.want {
			t.Errorf("%s: SinglePath = %v, want %v", tc.name, got, tc.want)
		}
	}
}
