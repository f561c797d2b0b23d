package target

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// SessionInfo is one normal session of this server as an operator sees
// it: who, from where, since when, how far away (the NOP-In round trip)
// and which ALUA access state this site's port group reports to it.
type SessionInfo struct {
	Initiator   string
	ISID        string // 12 hex digits
	TSIH        uint16
	Target      string
	PortalGroup uint16
	Remote      string // the initiator's address of the session's connection
	Since       time.Time
	// RTT is the smoothed round trip of NOP-In pings (pingClock), RTTLast
	// the latest one; both 0 before the first answer (or with
	// NOPInterval 0, when no pings are sent).
	RTT, RTTLast time.Duration
	// Pings were sent, Answers came back (an initiator may ignore them).
	Pings, Answers uint64
	// State is what REPORT TARGET PORT GROUPS at this site says of this
	// site's group to this initiator (the target's first LU).
	State PathState
}

// maxSessionList bounds what Sessions returns.
const maxSessionList = 4096

// Sessions lists the server's normal sessions (not discovery), sorted by
// initiator, ISID and TSIH, at most 4096 of them.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	sess := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		if ss.target != nil {
			sess = append(sess, ss)
		}
	}
	s.mu.Unlock()
	out := make([]SessionInfo, 0, len(sess))
	// The policy is asked once per initiator and LU, not per session.
	type stateKey struct {
		lu        *LU
		initiator string
	}
	states := map[stateKey]PathState{}
	for _, ss := range sess {
		ss.mu.Lock()
		var c *conn
		for _, cc := range ss.conns {
			if c == nil || cc.cid < c.cid {
				c = cc
			}
		}
		ss.mu.Unlock()
		if c == nil {
			continue
		}
		si := SessionInfo{
			Initiator: ss.params.InitiatorName, ISID: hex6(ss.isid), TSIH: ss.tsih,
			Target: ss.target.Name, PortalGroup: s.cfg.PortalGroup,
			Remote: c.nc.RemoteAddr().String(), Since: c.since, State: PathActiveOptimized,
		}
		si.RTT, si.RTTLast, si.Pings, si.Answers = c.rtt.read()
		if len(ss.target.lunList) > 0 {
			lu := ss.target.lus[ss.target.lunList[0]]
			k := stateKey{lu, si.Initiator}
			st, ok := states[k]
			if !ok {
				for _, g := range lu.portGroups(si.Initiator) {
					if g.ID == lu.portGroup {
						st = g.State
					}
				}
				states[k] = st
			}
			si.State = st
		}
		out = append(out, si)
	}
	slices.SortFunc(out, func(a, b SessionInfo) int {
		if c := strings.Compare(a.Initiator, b.Initiator); c != 0 {
			return c
		}
		if c := strings.Compare(a.ISID, b.ISID); c != 0 {
			return c
		}
		return int(a.TSIH) - int(b.TSIH)
	})
	if len(out) > maxSessionList {
		out = out[:maxSessionList]
	}
	return out
}

// pingClock measures the round trip of a connection's NOP-In pings: the
// time from queueing the ping to reading the NOP-Out that echoes its
// TTT. It includes the initiator's own delay in answering, which is
// small next to a WAN round trip. RTT is smoothed as TCP does (RFC 6298:
// 7/8 of the old value, 1/8 of the new sample).
type pingClock struct {
	mu       sync.Mutex
	ttt      uint32 // the ping outstanding, 0 if none
	at       time.Time
	smoothed time.Duration
	last     time.Duration
	pings    uint64
	answers  uint64
}

func (p *pingClock) sent(ttt uint32, at time.Time) {
	p.mu.Lock()
	p.ttt, p.at = ttt, at
	p.pings++
	p.mu.Unlock()
}

// answered takes a NOP-Out echoing ttt; a stray or late echo (of a ping
// that another one replaced) is not a sample.
func (p *pingClock) answered(ttt uint32, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ttt == 0 || ttt != p.ttt {
		return
	}
	d := at.Sub(p.at)
	p.ttt = 0
	p.answers++
	p.last = d
	if p.smoothed == 0 {
		p.smoothed = d
	} else {
		p.smoothed += (d - p.smoothed) / 8
	}
}

func (p *pingClock) read() (smoothed, last time.Duration, pings, answers uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.smoothed, p.last, p.pings, p.answers
}

// String names an access state as SPC-4 table 160 does.
func (s PathState) String() string {
	switch s {
	case PathActiveOptimized:
		return "active/optimized"
	case PathActiveNonOptimized:
		return "active/non-optimized"
	case PathStandby:
		return "standby"
	case PathUnavailable:
		return "unavailable"
	case PathTransitioning:
		return "transitioning"
	}
	return fmt.Sprintf("state 0x%x", int(s))
}
