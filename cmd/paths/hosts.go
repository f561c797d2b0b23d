package paths

import (
	"net"
	"slices"
	"strings"
	"time"
)

// Host is one initiator logged in somewhere in the cluster, as
// `metrolun hosts` and GET /v1/hosts show it.
type Host struct {
	Initiator string `json:"initiator"`
	// Sites are the sites it has a live session at, in name order;
	// Paths those sessions, each with the ALUA state its site reports
	// (State) and its NOP-In round trip.
	Sites []string  `json:"sites"`
	Paths []Session `json:"paths"`
	// Preferred is the site whose group is active/optimized for it;
	// PreferredBy says why: "prefer" (a prefer block), "auto" (its
	// lowest round trip), or "writer" (no preference: the writer's).
	Preferred   string `json:"preferred,omitempty"`
	PreferredBy string `json:"preferred_by,omitempty"`
	// Nearest is the site of its lowest measured round trip, "" before
	// one is measured.
	Nearest string `json:"nearest,omitempty"`
	// OneSite: its paths go to one site only although the cluster has
	// more data sites; it loses I/O with that site.
	OneSite bool `json:"one_site"`
	// NotNearest: it has paths to several sites and the nearest is not
	// its preferred one (clearly nearer: ClearlyNearer); its optimized
	// path crosses a longer link than it needs to.
	NotNearest bool `json:"not_nearest"`
	// SharedName: two sessions at one site under this initiator name come
	// from different addresses, so it is most likely several hosts
	// sharing one name (QEMU's default, a cloned image). The cluster
	// takes them for one host with several paths: reservations, the
	// redirect rule and ALUA preferences treat them as one.
	SharedName bool `json:"shared_name,omitempty"`
}

// sharedName reports whether two of paths (one initiator's live
// sessions) at one site come from different IP addresses.
func sharedName(paths []Session) bool {
	from := map[string]string{} // site -> the first address seen there
	for _, p := range paths {
		ip := remoteIP(p.Remote)
		if ip == "" {
			continue
		}
		if first, ok := from[p.Site]; ok && first != ip {
			return true
		}
		from[p.Site] = ip
	}
	return false
}

// remoteIP is the address part of host:port ("" when there is none).
func remoteIP(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return ""
	}
	return host
}

// Hosts returns every initiator with a live session in the cluster, in
// name order (initiator names compare case-insensitively, RFC 3722).
func Hosts(c Cluster) []Host {
	by := map[string]*Host{}
	var order []string
	for _, s := range c.Sessions {
		if !s.Live() {
			continue
		}
		k := strings.ToLower(s.Initiator)
		h := by[k]
		if h == nil {
			h = &Host{Initiator: s.Initiator}
			by[k] = h
			order = append(order, k)
		}
		h.Paths = append(h.Paths, s)
		if !slices.Contains(h.Sites, s.Site) {
			h.Sites = append(h.Sites, s.Site)
		}
	}
	slices.Sort(order)
	out := make([]Host, 0, len(order))
	for _, k := range order {
		h := by[k]
		slices.Sort(h.Sites)
		slices.SortFunc(h.Paths, func(a, b Session) int {
			if c := strings.Compare(a.Site, b.Site); c != 0 {
				return c
			}
			return strings.Compare(a.ISID, b.ISID)
		})
		h.Nearest, _ = Nearest(c.Sessions, h.Initiator)
		entry, configured := c.preference(h.Initiator)
		switch p, ok := Preferred(c, h.Initiator); {
		case ok && configured && entry != Auto:
			h.Preferred, h.PreferredBy = p, "prefer"
		case ok:
			h.Preferred, h.PreferredBy = p, "auto"
		case c.Writer != "":
			// No preference, or auto before a round trip is measured.
			h.Preferred, h.PreferredBy = c.Writer, "writer"
		}
		h.OneSite = len(h.Sites) == 1 && len(c.Sites) > 1
		h.SharedName = sharedName(h.Paths)
		// With several sites: the nearest is clearly nearer than the
		// preferred one's path, or the preferred one has no measured
		// path at all.
		if len(h.Sites) > 1 && h.Nearest != "" && h.Preferred != "" && h.Nearest != h.Preferred {
			rn, _ := rttAt(c.Sessions, h.Initiator, h.Nearest)
			rp, ok := rttAt(c.Sessions, h.Initiator, h.Preferred)
			h.NotNearest = !ok || ClearlyNearer(rn, rp)
		}
		out = append(out, *h)
	}
	return out
}

// MaxEnded bounds the ended sessions a Journal keeps.
const MaxEnded = 1024

// Journal is one site's own sessions: those live at the last Update and
// those that ended within Recent (at most MaxEnded, the latest kept), so
// that the other sites can tell an initiator that just had a path here.
type Journal struct {
	live  map[sessionKey]Session
	ended []Session
}

type sessionKey struct {
	initiator, isid string
	tsih            uint16
}

func keyOf(s Session) sessionKey {
	return sessionKey{strings.ToLower(s.Initiator), strings.ToLower(s.ISID), s.TSIH}
}

// Update records the sessions live at now: those live before and not
// now have ended at now.
func (j *Journal) Update(now time.Time, live []Session) {
	next := make(map[sessionKey]Session, len(live))
	for _, s := range live {
		s.Ended = time.Time{}
		next[keyOf(s)] = s
	}
	for k, s := range j.live {
		if _, ok := next[k]; !ok {
			s.Ended = now
			j.ended = append(j.ended, s)
		}
	}
	j.live = next
	j.prune(now)
}

func (j *Journal) prune(now time.Time) {
	keep := j.ended[:0]
	for _, s := range j.ended {
		if now.Sub(s.Ended) <= Recent {
			keep = append(keep, s)
		}
	}
	if n := len(keep); n > MaxEnded {
		keep = keep[:copy(keep, keep[n-MaxEnded:])]
	}
	clear(j.ended[len(keep):])
	j.ended = keep
}

// List returns the live sessions, then the recently ended ones.
func (j *Journal) List(now time.Time) []Session {
	j.prune(now)
	out := make([]Session, 0, len(j.live)+len(j.ended))
	for _, s := range j.live {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b Session) int {
		if c := strings.Compare(a.Initiator, b.Initiator); c != 0 {
			return c
		}
		return strings.Compare(a.ISID, b.ISID)
	})
	return append(out, j.ended...)
}
