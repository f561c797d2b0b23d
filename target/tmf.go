package target

import (
	"slices"
	"time"
)

// Task management functions (RFC 7143 section 11.5, SAM-5 section 7).
const (
	tmfAbortTask    = 1
	tmfAbortTaskSet = 2
	tmfClearACA     = 3
	tmfClearTaskSet = 4
	tmfLUNReset     = 5
	tmfWarmReset    = 6
	tmfColdReset    = 7
	tmfReassign     = 8
)

// TMF responses (section 11.6.1).
const (
	tmfComplete     = 0
	tmfNoTask       = 1
	tmfNoLUN        = 2
	tmfNotSupported = 5
	tmfRejected     = 255
)

func (c *conn) taskMgmt(p *PDU) {
	if c.sess.target == nil {
		// A discovery session has no LUs and no tasks (RFC 7143 section 4.3).
		c.reject(p, rejectProtocol)
		return
	}
	if !c.sess.admit(p.CmdSN(), p.Immediate()) {
		return
	}
	fn := p.Flags() & 0x7f
	var lunRaw [8]byte
	copy(lunRaw[:], p.BHS[8:16])
	lun := decodeLUN(lunRaw)
	lu := c.sess.target.lus[lun]

	var victims []*task
	resp := byte(tmfComplete)
	var after func()
	switch fn {
	case tmfAbortTask:
		rtt := p.u32(20)
		c.mu.Lock()
		t := c.tasks[rtt]
		c.mu.Unlock()
		if t == nil || decodeLUN(t.lunRaw) != lun {
			// Not found: if its CmdSN has not arrived yet the abort is a
			// no-op that succeeds (section 11.5.1), otherwise it is gone.
			exp, _ := c.sess.window()
			if int32(p.u32(32)-exp) < 0 {
				resp = tmfNoTask
			}
		} else {
			victims = []*task{t}
		}
	case tmfAbortTaskSet:
		if lu == nil {
			resp = tmfNoLUN
			break
		}
		// The issuing I_T nexus's tasks only (SAM-5 section 7.3).
		victims = c.tasksOn(lun)
	case tmfClearTaskSet, tmfLUNReset:
		if lu == nil {
			resp = tmfNoLUN
			break
		}
		// Every nexus's tasks on the LU (SAM-5 sections 7.4, 7.7).
		victims = c.srv.tasksOn(c.sess.target, lun)
		if fn == tmfLUNReset {
			after = func() { lu.reset(c.sess.nexus) }
		}
	case tmfWarmReset, tmfColdReset:
		victims = c.srv.tasksOn(c.sess.target, noLUN)
		after = func() {
			for _, l := range c.sess.target.lus {
				l.reset(c.sess.nexus)
			}
		}
	case tmfClearACA:
		// NACA is never set, so there is no ACA to clear.
	case tmfReassign:
		resp = tmfNotSupported // needs ErrorRecoveryLevel 2
	default:
		resp = tmfRejected
	}
	c.abortTasks(victims)
	go func() {
		defer c.sess.done()
		// The response goes out only after every affected task is gone
		// (RFC 7143 section 4.2.3.5).
		if !c.waitTasks(victims) {
			return
		}
		if after != nil {
			after()
		}
		r := &PDU{}
		r.BHS[0] = opTaskMgmtRsp
		r.BHS[1] = 0x80
		r.BHS[2] = resp
		r.put32(16, p.ITT())
		c.send(r, txStatus, nil)
		if fn == tmfColdReset && resp == tmfComplete {
			c.close("target cold reset")
		}
	}()
}

// tasksOn returns the connection's tasks on one LUN, or all for noLUN.
func (c *conn) tasksOn(lun uint64) []*task {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*task
	for _, t := range c.tasks {
		if lun == noLUN || decodeLUN(t.lunRaw) == lun {
			out = append(out, t)
		}
	}
	return out
}

// tasksOn returns the tasks on one LUN (or all LUNs, for noLUN) of every
// connection of every session logged in to target t.
func (s *Server) tasksOn(t *Target, lun uint64) []*task {
	s.mu.Lock()
	var conns []*conn
	for _, sess := range s.sessions {
		if sess.target != t {
			continue
		}
		sess.mu.Lock()
		for _, c := range sess.conns {
			conns = append(conns, c)
		}
		sess.mu.Unlock()
	}
	s.mu.Unlock()
	var out []*task
	for _, c := range conns {
		out = append(out, c.tasksOn(lun)...)
	}
	return out
}

// abortTasks aborts victims on behalf of c's nexus.
func (c *conn) abortTasks(victims []*task) {
	for _, t := range victims {
		if t.c != c {
			// Another nexus's task: with TAS=1 in the control mode page its
			// initiator hears TASK ABORTED (SAM-5 section 5.6).
			t.tas.Store(true)
		}
		t.aborted.Store(true)
	}
	// Tasks still waiting for Data-Out would wait forever: end them now,
	// on their own connection.
	for _, t := range victims {
		tc := t.c
		tc.mu.Lock()
		waiting := !t.started && t.need > 0
		if waiting {
			t.started = true
		}
		tc.mu.Unlock()
		if waiting {
			tc.finish(t, nil)
		}
	}
}

// abortWait bounds how long an abort waits for a task that is executing
// (a volume call in progress cannot be interrupted).
const abortWait = 30 * time.Second

// waitTasks waits until victims are gone, or abortWait has passed; false
// means c is closing.
func (c *conn) waitTasks(victims []*task) bool {
	deadline := time.NewTimer(abortWait)
	defer deadline.Stop()
	for _, t := range victims {
		select {
		case <-t.done:
		case <-deadline.C:
			return true
		case <-c.closing:
			return false
		}
	}
	return true
}

// abortPreempted carries out the abort of PREEMPT AND ABORT (SPC-4
// section 5.13.11.2.5) at this site: the tasks on self's LU of this
// site's nexuses of the preempted initiator ports, except self (the PR
// OUT command), are aborted, and self completes after they are gone.
// Other sites abort their own nexuses' tasks.
func (c *conn) abortPreempted(self *task, ports []string) {
	var victims []*task
	for _, t := range c.srv.tasksOn(c.sess.target, decodeLUN(self.lunRaw)) {
		if t != self && slices.Contains(ports, t.c.sess.nexus.id) {
			victims = append(victims, t)
		}
	}
	c.abortTasks(victims)
	c.waitTasks(victims)
}
