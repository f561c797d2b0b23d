package target

import (
	"encoding/binary"
	"sync"
)

// session is one iSCSI session: an I_T nexus between an initiator port
// (InitiatorName + ISID) and this target portal group. It owns the CmdSN
// window, which all its connections share.
type session struct {
	srv    *Server
	target *Target // nil for discovery
	params Params
	isid   [6]byte
	tsih   uint16
	nexus  *Nexus

	mu         sync.Mutex
	conns      map[uint16]*conn
	expCmdSN   uint32
	maxCmdSN   uint32
	inflight   int
	queueDepth int
	closed     bool
}

func newSession(s *Server, t *Target, p Params, isid [6]byte, tsih uint16, cmdSN uint32) *session {
	qd := s.cfg.Limits.QueueDepth
	if qd <= 0 {
		qd = 128
	}
	sess := &session{
		srv: s, target: t, params: p, isid: isid, tsih: tsih,
		conns:      map[uint16]*conn{},
		expCmdSN:   cmdSN,
		maxCmdSN:   cmdSN + uint32(qd) - 1,
		queueDepth: qd,
	}
	var isidKey [8]byte
	copy(isidKey[2:], isid[:])
	sess.nexus = &Nexus{
		Initiator: p.InitiatorName,
		ISID:      isid,
		TPGT:      s.cfg.PortalGroup,
		id:        p.InitiatorName + ",i,0x" + hex6(isid),
		isidVal:   binary.BigEndian.Uint64(isidKey[:]),
	}
	return sess
}

func hex6(b [6]byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 12)
	for i, c := range b {
		out[2*i] = digits[c>>4]
		out[2*i+1] = digits[c&15]
	}
	return string(out)
}

func (s *session) addConn(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.conns[c.cid]; old != nil {
		// Connection reinstatement (RFC 7143 section 6.3.4): the old
		// connection with this CID is logged out implicitly.
		go old.close("reinstated")
	} else if len(s.conns) >= s.params.MaxConnections {
		return false
	}
	s.conns[c.cid] = c
	return true
}

func (s *session) removeConn(c *conn) {
	s.mu.Lock()
	if s.conns[c.cid] == c {
		delete(s.conns, c.cid)
	}
	empty := len(s.conns) == 0
	s.mu.Unlock()
	if empty {
		s.srv.removeSession(s)
		if s.target != nil {
			for _, lu := range s.target.lus {
				lu.nexusGone(s.nexus)
			}
		}
	}
}

// loggingOut runs before the answer to a logout. A logout that ends the
// session (reason 0, or its last connection closing) ends the I_T nexus:
// its RESERVE(6) reservations are released now, not when the TCP
// connection goes, because the initiator may act on the release, at any
// site, as soon as it has the answer (SPC-2 section 5.5.1).
func (s *session) loggingOut(c *conn, reason byte) {
	s.mu.Lock()
	ends := reason == 0 || len(s.conns) == 1 && s.conns[c.cid] == c
	s.mu.Unlock()
	if !ends || s.target == nil {
		return
	}
	for _, lu := range s.target.lus {
		lu.releaseRes6(s.nexus)
	}
}

func (s *session) close(reason string) {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	s.closed = true
	s.mu.Unlock()
	for _, c := range conns {
		c.close(reason)
	}
}

// admit applies the CmdSN rules of RFC 7143 section 4.2.2.1 to a command
// that arrived. A non-immediate command must carry ExpCmdSN; anything
// outside the window is dropped silently. Commands ahead of ExpCmdSN (a
// gap on another connection) are not held: with one connection per session
// over TCP a gap cannot be filled, so they are dropped too.
func (s *session) admit(cmdSN uint32, immediate bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if immediate {
		s.inflight++
		return true
	}
	if cmdSN != s.expCmdSN || !s.inWindowLocked(cmdSN) {
		// Behind, ahead, or beyond a closed window (MaxCmdSN = ExpCmdSN-1).
		return false
	}
	s.expCmdSN++
	s.inflight++
	return true
}

// done releases a command's slot and opens the window by one.
func (s *session) done() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	s.updateMax()
}

func (s *session) updateMax() {
	free := s.queueDepth - s.inflight
	if free < 0 {
		free = 0
	}
	m := s.expCmdSN + uint32(free) - 1
	// MaxCmdSN never moves backwards (serial arithmetic, RFC 1982).
	if int32(m-s.maxCmdSN) > 0 {
		s.maxCmdSN = m
	}
}

// window returns ExpCmdSN and MaxCmdSN for an outgoing PDU.
func (s *session) window() (uint32, uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expCmdSN, s.maxCmdSN
}

// inWindow reports whether cmdSN lies in [ExpCmdSN, MaxCmdSN].
func (s *session) inWindow(cmdSN uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inWindowLocked(cmdSN)
}

// inWindowLocked is inWindow for a caller that holds s.mu.
func (s *session) inWindowLocked(cmdSN uint32) bool {
	return int32(cmdSN-s.expCmdSN) >= 0 && int32(s.maxCmdSN-cmdSN) >= 0
}
