package target

import "time"

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
	case tmfAbortTaskSet, tmfClearTaskSet, tmfLUNReset:
		if lu == nil {
			resp = tmfNoLUN
			break
		}
		victims = c.tasksOn(lun)
		if fn == tmfLUNReset {
			after = func() { lu.reset(c.sess.nexus) }
		}
	case tmfWarmReset, tmfColdReset:
		victims = c.tasksOn(noLUN)
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
	for _, t := range victims {
		t.aborted.Store(true)
	}
	// Tasks still waiting for Data-Out would wait forever: end them now.
	for _, t := range victims {
		c.mu.Lock()
		waiting := !t.started && t.buf != nil
		if waiting {
			t.started = true
		}
		c.mu.Unlock()
		if waiting {
			c.finish(t, nil)
		}
	}
	go func() {
		defer c.sess.done()
		// The response goes out only after every affected task is gone
		// (RFC 7143 section 4.2.3.5).
		deadline := time.After(30 * time.Second)
		for _, t := range victims {
			select {
			case <-t.done:
			case <-deadline:
			case <-c.closing:
				return
			}
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
