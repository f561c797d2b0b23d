package target

import (
	"encoding/binary"
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

type registration struct {
	nexusID string
	tid     []byte // TransportID of the initiator port
	key     uint64
	relPort uint16
}

// prState is the persistent reservation state of one LU (SPC-4 section
// 5.13). All methods assume the LU's lock is held. It is plain data so
// that a cluster can keep it in replicated state.
type prState struct {
	generation uint32
	regs       []*registration // in registration order
	holder     string          // nexus id of the holder; "" for none
	rtype      byte
}

func (p *prState) active() bool { return len(p.regs) > 0 || p.rtype != 0 }

func (p *prState) reg(id string) *registration {
	for _, r := range p.regs {
		if r.nexusID == id {
			return r
		}
	}
	return nil
}

func allRegistrants(t byte) bool { return t == prWriteExclusiveAll || t == prExclusiveAccessAll }
func regsOnly(t byte) bool       { return t == prWriteExclusiveRegs || t == prExclusiveAccessRegs }

// isHolder: for all-registrants types every registrant holds the
// reservation (SPC-4 section 5.13.10).
func (p *prState) isHolder(id string) bool {
	if p.rtype == 0 {
		return false
	}
	if allRegistrants(p.rtype) {
		return p.reg(id) != nil
	}
	return p.holder == id
}

// conflicts applies SPC-4 table 43 to a media command from n.
func (p *prState) conflicts(n *Nexus, readish bool) bool {
	if p.rtype == 0 || p.isHolder(n.id) {
		return false
	}
	registered := p.reg(n.id) != nil
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

func (p *prState) remove(id string) {
	for i, r := range p.regs {
		if r.nexusID == id {
			p.regs = append(p.regs[:i], p.regs[i+1:]...)
			break
		}
	}
	if p.holder == id && !allRegistrants(p.rtype) {
		p.holder, p.rtype = "", 0
	}
	if allRegistrants(p.rtype) && len(p.regs) == 0 {
		p.holder, p.rtype = "", 0
	}
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
				if r := p.reg(p.holder); r != nil {
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
			if p.isHolder(r.nexusID) {
				d[12] |= 0x01
				d[13] = p.rtype
			}
			binary.BigEndian.PutUint16(d[18:], r.relPort)
			binary.BigEndian.PutUint32(d[20:], uint32(len(r.tid)))
			b = append(append(b, d...), r.tid...)
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
	lu := c.lu
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if lu.reserved != nil && lu.reserved.id != c.nexus.id {
		return reservationConflict()
	}
	p := &lu.pr
	n := c.nexus
	me := p.reg(n.id)
	if sa != 6 && (me == nil && (sa != 0 || key != 0) || me != nil && me.key != key) {
		return reservationConflict()
	}
	switch sa {
	case 0, 6: // REGISTER, REGISTER AND IGNORE EXISTING KEY
		switch {
		case saKey == 0 && me != nil:
			wasHolder := p.isHolder(n.id) && regsOnly(p.rtype)
			p.remove(n.id)
			if wasHolder {
				lu.uaToRegistrants(ascReservationsReleased, n.id)
			}
		case saKey == 0:
		case me != nil:
			me.key = saKey
		default:
			p.regs = append(p.regs, &registration{nexusID: n.id, tid: n.TransportID(), key: saKey, relPort: lu.relPort})
		}
		p.generation++
	case 1: // RESERVE
		if p.rtype != 0 {
			if p.isHolder(n.id) && p.rtype == rtype {
				return resultGood
			}
			return reservationConflict()
		}
		p.holder, p.rtype = n.id, rtype
	case 2: // RELEASE
		if p.rtype == 0 || !p.isHolder(n.id) {
			return resultGood
		}
		if p.rtype != rtype {
			return checkCondition(senseIllegalRequest, ascInvalidReleasePR)
		}
		old := p.rtype
		p.holder, p.rtype = "", 0
		if regsOnly(old) || allRegistrants(old) {
			lu.uaToRegistrants(ascReservationsReleased, n.id)
		}
	case 3: // CLEAR
		for _, r := range p.regs {
			if r.nexusID != n.id {
				lu.addUA(r.nexusID, ascReservationsPreempted)
			}
		}
		p.regs, p.holder, p.rtype = nil, "", 0
		p.generation++
	case 4, 5: // PREEMPT, PREEMPT AND ABORT
		return lu.preempt(n, saKey, rtype)
	}
	return resultGood
}

// preempt implements SPC-4 section 5.13.11.4. Caller holds lu.mu.
func (lu *LU) preempt(n *Nexus, saKey uint64, rtype byte) *scsiResult {
	p := &lu.pr
	var victims []string
	collect := func(match func(r *registration) bool) {
		for _, r := range p.regs {
			if r.nexusID != n.id && match(r) {
				victims = append(victims, r.nexusID)
			}
		}
	}
	switch {
	case p.rtype != 0 && allRegistrants(p.rtype) && saKey == 0:
		// Every other registration goes; the preempting nexus holds a new
		// reservation of the requested type.
		collect(func(*registration) bool { return true })
		p.holder, p.rtype = n.id, rtype
	case saKey == 0:
		return invalidParam(8, -1)
	case p.rtype != 0 && !allRegistrants(p.rtype) && p.reg(p.holder) != nil && p.reg(p.holder).key == saKey:
		collect(func(r *registration) bool { return r.key == saKey })
		p.holder, p.rtype = n.id, rtype
	default:
		found := false
		for _, r := range p.regs {
			if r.key == saKey {
				found = true
			}
		}
		if !found {
			return reservationConflict()
		}
		collect(func(r *registration) bool { return r.key == saKey })
	}
	sort.Strings(victims)
	for _, id := range victims {
		for i, r := range p.regs {
			if r.nexusID == id {
				p.regs = append(p.regs[:i], p.regs[i+1:]...)
				break
			}
		}
		lu.addUA(id, ascRegistrationsPreempted)
	}
	p.generation++
	return resultGood
}

// uaToRegistrants queues asc for every registrant but skip.
func (lu *LU) uaToRegistrants(asc uint16, skip string) {
	for _, r := range lu.pr.regs {
		if r.nexusID != skip {
			lu.addUA(r.nexusID, asc)
		}
	}
}
