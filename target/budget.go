package target

// The server's memory budget (Config.MemoryBudget) is admission control:
// every connection reserves, at login, the most buffer memory it can come
// to hold, and a login whose reservation would take the total over the
// budget is refused with Target Error "out of resources" (RFC 7143
// section 11.13.5, status 0x0302) rather than queued: the initiator
// retries, possibly at another site, and a connection that is in never
// waits for memory it was promised.

// statusOutOfResources is the login status of a refused reservation.
func statusOutOfResources(m string) *loginStatus { return &loginStatus{0x03, 0x02, m} }

// connMemory is what one connection with parameters p can hold at once:
// its budget for solicited write data and large reads (connBudget), plus
// unsolicited data (immediate or not), at most FirstBurstLength for each
// command the CmdSN window of queueDepth lets in. A discovery session
// holds at most one text answer.
func connMemory(p Params, queueDepth int) int64 {
	if p.SessionType == "Discovery" {
		return maxTextAnswer
	}
	n := int64(connBudget)
	if p.ImmediateData || !p.InitialR2T {
		n += int64(max(queueDepth, 1)) * int64(p.FirstBurstLength)
	}
	return n
}

// reserveMemory reserves n bytes of the budget and returns the function
// that gives them back (once, however often it is called).
func (s *Server) reserveMemory(n int64) (release func(), st *loginStatus) {
	if s.cfg.MemoryBudget <= 0 {
		return func() {}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.memHeld+n > s.cfg.MemoryBudget {
		s.log.Warn("login refused: memory budget exhausted", "held", s.memHeld, "need", n, "budget", s.cfg.MemoryBudget)
		return nil, statusOutOfResources("out of resources")
	}
	s.memHeld += n
	done := false
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !done {
			done = true
			s.memHeld -= n
		}
	}, nil
}

// MemoryHeld reports the memory the logged-in connections have reserved.
func (s *Server) MemoryHeld() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.memHeld
}
