package target

import (
	"encoding/binary"
	"slices"
	"sort"
)

// Persistent reservation types (SPC-4 section 6.15.3.4).
const (
	prWriteExclusive      = 1
	prExclusiveAccess     = 3
	prWriteExclusiveRegs  = 5
	prExclusiveAccessRegs = 6
	prWriteExclusiveAll   = 7
	prExclusiveAccessAll  = 8
	ascInvalidReleasePR   = 0x2604
)

// itNexus names an I_T nexus in a way every site understands: the
// initiator port (SPC-4 "name,i,0xISID") and the relative target port
// it came in through, which differs from site to site.
type itNexus struct {
	port string
	rel  uint16
}

func (x itNexus) none() bool { return x.port == "" }

// itn is n's I_T nexus through this LU's target port.
func (lu *LU) itn(n *Nexus) itNexus { return itNexus{n.id, lu.relPort} }

// registration is one registered reservation key. metrolun registers an
// initiator port with every target port (ALL_TG_PT, SPC-4 section
// 5.13.7), so a registration is known by the initiator port alone; rel
// is the target port it was made through, for READ FULL STATUS.
type registration struct {
	port string
	rel  uint16
	key  uint64
}

// prEvent records the unit attentions one change established: asc for
// every I_T nexus of the initiator ports listed, except by, the nexus
// whose command made the change. Sites that did not run the command
// establish them for their own nexuses from the record.
type prEvent struct {
	version uint64 // the record version the change produced
	by      itNexus
	asc     uint16
	ports   []string
}

// prState is the state of one LU that must be the same at every site
// serving it: persistent reservations (SPC-4 section 5.13), the RESERVE(6)
// reservation (SPC-2) and a count of logical unit resets. Values of this
// type are copied and replaced whole (see LU.change), never edited in
// place once installed; the LU's lock guards the installed one.
type prState struct {
	generation uint32
	regs       []registration // in registration order
	// holder established the reservation. For all-registrants types
	// every registrant holds it (SPC-4 section 5.13.10).
	holder itNexus
	rtype  byte
	aptpl  bool // APTPL is refused for now, so always false
	res6   itNexus
	resets uint64
	// events lists every change made after version since that set a
	// unit attention, oldest first; the record keeps the last few.
	since  uint64
	events []prEvent
	// pending is the event of a change being computed; not recorded.
	pending *prEvent
	// san is the sanitize in progress or failed (sanitize.go).
	san sanMark
}

func (p *prState) clone() *prState {
	c := *p
	c.regs = slices.Clone(p.regs)
	c.events = slices.Clone(p.events)
	c.pending = nil
	return &c
}

func (p *prState) active() bool { return len(p.regs) > 0 || p.rtype != 0 }

func (p *prState) reg(port string) *registration {
	for i := range p.regs {
		if p.regs[i].port == port {
			return &p.regs[i]
		}
	}
	return nil
}

// registeredVia reports whether port registered through target port rel.
func (p *prState) registeredVia(port string, rel uint16) bool {
	r := p.reg(port)
	return r != nil && r.rel == rel
}

func (p *prState) regPorts() []string {
	out := make([]string, len(p.regs))
	for i, r := range p.regs {
		out[i] = r.port
	}
	return out
}

// notify records that asc is due to the nexuses of ports, except by's.
func (p *prState) notify(asc uint16, by itNexus, ports []string) {
	if len(ports) > 0 {
		p.pending = &prEvent{by: by, asc: asc, ports: ports}
	}
}

func allRegistrants(t byte) bool { return t == prWriteExclusiveAll || t == prExclusiveAccessAll }
func regsOnly(t byte) bool       { return t == prWriteExclusiveRegs || t == prExclusiveAccessRegs }

// isHolder: for all-registrants types every registrant holds the
// reservation, otherwise the one I_T nexus that established it does
// (SPC-4 section 5.13.10).
func (p *prState) isHolder(n itNexus) bool {
	if p.rtype == 0 {
		return false
	}
	if allRegistrants(p.rtype) {
		return p.reg(n.port) != nil
	}
	return p.holder == n
}

// conflicts applies SPC-4 table 43 to a media command from n.
func (p *prState) conflicts(n itNexus, readish bool) bool {
	if p.rtype == 0 || p.isHolder(n) {
		return false
	}
	registered := p.reg(n.port) != nil
	switch p.rtype {
	case prWriteExclusive:
		return !readish
	case prExclusiveAccess:
		return true
	case prWriteExclusiveRegs, prWriteExclusiveAll:
		return !registered && !readish
	case prExclusiveAccessRegs, prExclusiveAccessAll:
		return !registered
	}
	return true
}

// remove drops port's registration and the reservations that go with it.
func (p *prState) remove(port string) {
	p.regs = slices.DeleteFunc(p.regs, func(r registration) bool { return r.port == port })
	if p.holder.port == port && !allRegistrants(p.rtype) {
		p.holder, p.rtype = itNexus{}, 0
	}
	if allRegistrants(p.rtype) && len(p.regs) == 0 {
		p.holder, p.rtype = itNexus{}, 0
	}
}

// conflicts reports a reservation conflict for a command from n (SPC-4
// section 5.13.1 table 43, and SPC-2 for RESERVE(6)). Caller holds lu.mu.
func (lu *LU) conflicts(n *Nexus, o *opInfo) bool {
	me := lu.itn(n)
	if !lu.pr.res6.none() && lu.pr.res6 != me && o.flags&fRes6Allowed == 0 {
		return true
	}
	if o.flags&fPRAllowed != 0 {
		return false
	}
	return lu.pr.conflicts(me, o.flags&fPRRead != 0)
}

// transportID returns the iSCSI TransportID (SPC-4 section 7.6.4.6) of an
// initiator port, format 01b: name,i,0xISID.
func transportID(port string) []byte {
	l := len(port) + 1
	l = (l + 3) &^ 3
	if l < 20 {
		l = 20
	}
	b := make([]byte, 4+l)
	b[0] = 0x40 | 0x05 // format 01b, protocol iSCSI
	binary.BigEndian.PutUint16(b[2:4], uint16(l))
	copy(b[4:], port)
	return b
}

// PERSISTENT RESERVE IN (SPC-4 section 6.15).
func parsePRIn(c *scsiCmd) *scsiResult {
	if c.cdb[1]&0x1f > 3 {
		return invalidCDB(1, 4)
	}
	c.allocIn(int(be16(c.cdb[7:])))
	return nil
}

func execPRIn(c *scsiCmd, _ []byte) *scsiResult {
	lu := c.lu
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if err := lu.syncShared(); err != nil {
		return sharedStateFailure()
	}
	p := &lu.pr
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, p.generation)
	switch c.cdb[1] & 0x1f {
	case 0: // READ KEYS
		for _, r := range p.regs {
			b = binary.BigEndian.AppendUint64(b, r.key)
		}
		binary.BigEndian.PutUint32(b[4:], uint32(len(b)-8))
	case 1: // READ RESERVATION
		if p.rtype != 0 {
			d := make([]byte, 16)
			if !allRegistrants(p.rtype) {
				if r := p.reg(p.holder.port); r != nil {
					binary.BigEndian.PutUint64(d, r.key)
				}
			}
			d[13] = p.rtype
			b = append(b, d...)
		}
		binary.BigEndian.PutUint32(b[4:], uint32(len(b)-8))
	case 2: // REPORT CAPABILITIES
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b, 8)
		b[2] = 0x10 | 0x04 // CRH, ATP_C
		b[3] = 0x80 | 0x10 // TMV, ALLOW COMMANDS 001b
		b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02
		b[5] = 0x01
	case 3: // READ FULL STATUS
		for _, r := range p.regs {
			d := make([]byte, 24)
			binary.BigEndian.PutUint64(d, r.key)
			d[12] = 0x02 // ALL_TG_PT: registrations cover every port
			if p.rtype != 0 && (allRegistrants(p.rtype) || p.holder.port == r.port) {
				d[12] |= 0x01
				d[13] = p.rtype
			}
			tid := transportID(r.port)
			binary.BigEndian.PutUint16(d[18:], r.rel)
			binary.BigEndian.PutUint32(d[20:], uint32(len(tid)))
			b = append(append(b, d...), tid...)
		}
		binary.BigEndian.PutUint32(b[4:], uint32(len(b)-8))
	}
	return c.trim(b)
}

// PERSISTENT RESERVE OUT (SPC-4 section 6.16).
func parsePROut(c *scsiCmd) *scsiResult {
	sa := c.cdb[1] & 0x1f
	if sa > 6 {
		return invalidCDB(1, 4) // REGISTER AND MOVE, REPLACE LOST RESERVATION
	}
	n := int(be32(c.cdb[5:]))
	if n != 24 {
		return checkCondition(senseIllegalRequest, ascParamListLength)
	}
	switch sa {
	case 1, 2, 4, 5:
		if c.cdb[2]>>4 != 0 {
			return invalidCDB(2, 7) // scope: only LU_SCOPE
		}
		switch c.cdb[2] & 0x0f {
		case prWriteExclusive, prExclusiveAccess, prWriteExclusiveRegs,
			prExclusiveAccessRegs, prWriteExclusiveAll, prExclusiveAccessAll:
		default:
			return invalidCDB(2, 3)
		}
	}
	c.dataOut = n
	return nil
}

func execPROut(c *scsiCmd, data []byte) *scsiResult {
	sa := c.cdb[1] & 0x1f
	rtype := c.cdb[2] & 0x0f
	key := be64(data[0:])
	saKey := be64(data[8:])
	flags := data[20]
	if flags&0x08 != 0 {
		return invalidParam(20, 3) // SPEC_I_PT is not supported
	}
	if flags&0x01 != 0 {
		return invalidParam(20, 0) // APTPL: nothing here persists power loss
	}
	n := c.lu.itn(c.nexus)
	var preempted []string
	res := c.lu.change(func(p *prState) (*scsiResult, bool) {
		// change may run this more than once: only the last run counts.
		preempted = nil
		res, changed := p.out(n, sa, rtype, key, saKey)
		if changed && sa == 5 && p.pending != nil && p.pending.asc == ascRegistrationsPreempted {
			preempted = slices.Clone(p.pending.ports)
		}
		return res, changed
	})
	if res.status == statusGood {
		// The tasks of the preempted I_T nexuses at this site are aborted
		// by the connection, which knows them; each site aborts its own.
		c.abortPorts = preempted
	}
	return res
}

// out applies one PERSISTENT RESERVE OUT service action from n to p and
// reports the command's result and whether p changed.
func (p *prState) out(n itNexus, sa, rtype byte, key, saKey uint64) (*scsiResult, bool) {
	if !p.res6.none() && p.res6 != n {
		return reservationConflict(), false
	}
	me := p.reg(n.port)
	if sa != 6 && (me == nil && (sa != 0 || key != 0) || me != nil && me.key != key) {
		return reservationConflict(), false
	}
	switch sa {
	case 0, 6: // REGISTER, REGISTER AND IGNORE EXISTING KEY
		switch {
		case saKey == 0 && me != nil:
			// Unregistering the holder of a registrants-only reservation
			// releases it (SPC-4 section 5.13.11.2.2).
			wasHolder := p.holder.port == n.port && regsOnly(p.rtype)
			p.remove(n.port)
			if wasHolder {
				p.notify(ascReservationsReleased, n, p.regPorts())
			}
		case saKey == 0:
		case me != nil:
			me.key = saKey
		default:
			p.regs = append(p.regs, registration{port: n.port, rel: n.rel, key: saKey})
		}
		p.generation++
	case 1: // RESERVE
		if p.rtype != 0 {
			if p.isHolder(n) && p.rtype == rtype {
				return resultGood, false
			}
			return reservationConflict(), false
		}
		p.holder, p.rtype = n, rtype
	case 2: // RELEASE
		if p.rtype == 0 || !p.isHolder(n) {
			return resultGood, false
		}
		if p.rtype != rtype {
			return checkCondition(senseIllegalRequest, ascInvalidReleasePR), false
		}
		old := p.rtype
		p.holder, p.rtype = itNexus{}, 0
		if regsOnly(old) || allRegistrants(old) {
			p.notify(ascReservationsReleased, n, p.regPorts())
		}
	case 3: // CLEAR
		p.notify(ascReservationsPreempted, n, p.regPorts())
		p.regs, p.holder, p.rtype = nil, itNexus{}, 0
		p.generation++
	case 4, 5: // PREEMPT, PREEMPT AND ABORT
		return p.preempt(n, saKey, rtype)
	}
	return resultGood, true
}

// preempt implements SPC-4 section 5.13.11.4.
func (p *prState) preempt(n itNexus, saKey uint64, rtype byte) (*scsiResult, bool) {
	var victims []string
	collect := func(match func(r registration) bool) {
		for _, r := range p.regs {
			if r.port != n.port && match(r) {
				victims = append(victims, r.port)
			}
		}
	}
	holder := p.reg(p.holder.port)
	switch {
	case p.rtype != 0 && allRegistrants(p.rtype) && saKey == 0:
		// Every other registration goes; the preempting nexus holds a new
		// reservation of the requested type.
		collect(func(registration) bool { return true })
		p.holder, p.rtype = n, rtype
	case saKey == 0:
		return invalidParam(8, -1), false
	case p.rtype != 0 && !allRegistrants(p.rtype) && holder != nil && holder.key == saKey:
		collect(func(r registration) bool { return r.key == saKey })
		p.holder, p.rtype = n, rtype
	default:
		if !slices.ContainsFunc(p.regs, func(r registration) bool { return r.key == saKey }) {
			return reservationConflict(), false
		}
		collect(func(r registration) bool { return r.key == saKey })
	}
	sort.Strings(victims)
	p.regs = slices.DeleteFunc(p.regs, func(r registration) bool { return slices.Contains(victims, r.port) })
	p.notify(ascRegistrationsPreempted, n, victims)
	p.generation++
	return resultGood, true
}

// RESERVE(6) and RELEASE(6) (SPC-2 sections 7.21, 7.17).
func execReserve6(c *scsiCmd, _ []byte) *scsiResult {
	n := c.lu.itn(c.nexus)
	return c.lu.change(func(p *prState) (*scsiResult, bool) {
		switch {
		case p.active(), !p.res6.none() && p.res6 != n:
			return reservationConflict(), false
		case p.res6 == n:
			return resultGood, false
		}
		p.res6 = n
		return resultGood, true
	})
}

// releaseRes6 releases n's RESERVE(6) reservation, if it holds one, as
// the nexus ends. A site releases only what its own nexuses hold.
func (lu *LU) releaseRes6(n *Nexus) {
	me := lu.itn(n)
	lu.change(func(p *prState) (*scsiResult, bool) {
		if p.res6 != me {
			return resultGood, false
		}
		p.res6 = itNexus{}
		return resultGood, true
	})
}

func execRelease6(c *scsiCmd, _ []byte) *scsiResult {
	n := c.lu.itn(c.nexus)
	return c.lu.change(func(p *prState) (*scsiResult, bool) {
		if p.active() {
			return reservationConflict(), false
		}
		if p.res6 != n {
			return resultGood, false
		}
		p.res6 = itNexus{}
		return resultGood, true
	})
}
