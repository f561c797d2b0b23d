package target

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strconv"
	"strings"
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

// PERSISTENT RESERVE OUT service actions (SPC-4 section 6.16.2).
//
// REPLACE LOST RESERVATION (08h, SPC-5) is not among them: it is refused
// as a reserved service action is (INVALID FIELD IN CDB) and REPORT
// SUPPORTED OPERATION CODES does not list it, which SPC-5 allows a device
// server that does not support it. It exists for device servers that can
// lose their reservation information and then accept a reservation
// re-established by an initiator; metrolun never enters that state. In a
// cluster the state is the shared record, which every site keeps on
// disk; at a single site a state with APTPL set is synced to its file
// before the command that made it completes, and one without APTPL is
// cleared by a restart, which SPC-4 requires of a power loss (APTPL,
// section 6.16.3) and which is not a loss of information. A record that
// cannot be read is answered with HARDWARE ERROR, never with a guess.
// Supporting the action would mean accepting it only in a state that
// cannot occur.
const (
	prsaRegister       = 0
	prsaReserve        = 1
	prsaRelease        = 2
	prsaClear          = 3
	prsaPreempt        = 4
	prsaPreemptAbort   = 5
	prsaRegisterIgnore = 6
	prsaRegisterMove   = 7
	prsaReplaceLost    = 8 // SPC-5; refused, see above
)

// maxPROutParams bounds a PERSISTENT RESERVE OUT parameter list: a
// SPEC_I_PT list or a REGISTER AND MOVE TransportID longer than the
// record that would have to hold the registrations cannot succeed.
const maxPROutParams = 64 << 10

// Initiator ports and initiator devices. A registration or a reservation
// holder is normally an initiator port, SPC-4 "name,i,0xISID". A
// TransportID of format 00b (SPEC_I_PT, REGISTER AND MOVE) names an iSCSI
// initiator device instead, without an ISID (SPC-4 section 7.6.4.6); the
// registration made for it covers every initiator port of that device,
// whatever its ISID. Registrations never overlap: a device is not
// registered while one of its ports is, nor the other way round.
const isidSeparator = ",i,0x"

// isDevice reports whether who names an initiator device, not a port.
func isDevice(who string) bool { return !strings.Contains(who, isidSeparator) }

// covers reports whether a registration or reservation held by who (a
// port or a device) applies to initiator port port.
func covers(who, port string) bool {
	if who == port {
		return true
	}
	rest, ok := strings.CutPrefix(port, who)
	return ok && strings.HasPrefix(rest, isidSeparator) && isDevice(who)
}

// overlaps reports whether two registrations would apply to a common
// initiator port.
func overlaps(a, b string) bool { return covers(a, b) || covers(b, a) }

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
	// aptpl is the last APTPL bit a REGISTER, REGISTER AND IGNORE
	// EXISTING KEY or REGISTER AND MOVE set (SPC-4 section 6.16.3): the
	// state must survive a power loss. PTPL_A in REPORT CAPABILITIES.
	aptpl  bool
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

// reg returns the registration that applies to port (an initiator port,
// or a device for its own registration), or nil.
func (p *prState) reg(port string) *registration {
	for i := range p.regs {
		if covers(p.regs[i].port, port) {
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
	return p.holder.rel == n.rel && covers(p.holder.port, n.port)
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

// remove drops the registration made for who and the reservation that
// goes with it: the holder's, or an all-registrants one that has no
// registrant left.
func (p *prState) remove(who string) {
	p.regs = slices.DeleteFunc(p.regs, func(r registration) bool { return r.port == who })
	switch {
	case p.rtype == 0:
	case allRegistrants(p.rtype) && len(p.regs) == 0,
		!allRegistrants(p.rtype) && p.reg(p.holder.port) == nil:
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
// initiator port, format 01b (name,i,0xISID), or of an initiator device,
// format 00b (the name alone).
func transportID(who string) []byte {
	l := len(who) + 1
	l = (l + 3) &^ 3
	if l < 20 {
		l = 20
	}
	b := make([]byte, 4+l)
	b[0] = 0x05 // protocol iSCSI
	if !isDevice(who) {
		b[0] |= 0x40 // format 01b
	}
	binary.BigEndian.PutUint16(b[2:4], uint16(l))
	copy(b[4:], who)
	return b
}

// fieldAt locates a bad field for sense data: byte off of the parameter
// list and, unless bit is -1, the field's most significant bit.
type fieldAt struct{ off, bit int }

// parseTransportID decodes the iSCSI TransportID at the start of b
// (SPC-4 section 7.6.4.6) into the initiator port (format 01b) or device
// (format 00b) it names and its length. Only iSCSI TransportIDs are
// accepted: metrolun has no other transport. A bad one is located
// relative to b.
func parseTransportID(b []byte) (who string, n int, bad *fieldAt) {
	if len(b) < 4 {
		return "", 0, &fieldAt{0, -1}
	}
	if b[0]&0x0f != 0x05 {
		return "", 0, &fieldAt{0, 3} // PROTOCOL IDENTIFIER
	}
	format := b[0] >> 6
	if format > 1 {
		return "", 0, &fieldAt{0, 7} // FORMAT CODE
	}
	// ADDITIONAL LENGTH: at least 20 and a multiple of 4.
	al := int(binary.BigEndian.Uint16(b[2:]))
	if al < 20 || al%4 != 0 || 4+al > len(b) {
		return "", 0, &fieldAt{2, -1}
	}
	name := b[4 : 4+al]
	end := slices.Index(name, 0)
	if end <= 0 || slices.ContainsFunc(name[end:], func(c byte) bool { return c != 0 }) {
		return "", 0, &fieldAt{4, -1} // not NUL terminated and padded
	}
	who = string(name[:end])
	if format == 0 {
		if strings.ContainsRune(who, ',') || len(who) > maxValueLen {
			return "", 0, &fieldAt{4, -1}
		}
		return who, 4 + al, nil
	}
	sep := separatorIndex(who)
	if sep <= 0 || strings.ContainsRune(who[:sep], ',') || sep > maxValueLen {
		return "", 0, &fieldAt{4, -1}
	}
	// The ISID in hexadecimal; the port is named as a login names it
	// (session.go): twelve lower case digits.
	digits := who[sep+len(isidSeparator):]
	isid, err := strconv.ParseUint(digits, 16, 48)
	if err != nil || digits == "" || len(digits) > 12 {
		return "", 0, &fieldAt{4 + sep + len(isidSeparator), -1}
	}
	return fmt.Sprintf("%s%s%012x", who[:sep], isidSeparator, isid), 4 + al, nil
}

// separatorIndex finds ",i,0x" in a TransportID's name, in either case
// (SPC-4 spells it in lower case; hexadecimal has no case), or -1.
func separatorIndex(s string) int {
	for i := 0; i+len(isidSeparator) <= len(s); i++ {
		if s[i] == ',' && s[i+1]|0x20 == 'i' && s[i+2] == ',' && s[i+3] == '0' && s[i+4]|0x20 == 'x' {
			return i
		}
	}
	return -1
}

// ptplCapable reports whether the LU can keep its reservations through a
// power loss (PTPL_C): a cluster's record is on disk at every site, a
// single site needs its state file.
func (lu *LU) ptplCapable() bool { return lu.shared.ss != nil || lu.shared.file != "" }

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
	case 1: // READ RESERVATION (no APTPL here: SPC-4 reports it only as PTPL_A)
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
	case 2: // REPORT CAPABILITIES (SPC-4 section 6.15.4)
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b, 8)
		b[2] = 0x10 | 0x08 | 0x04 // CRH, SIP_C, ATP_C
		b[3] = 0x80 | 0x10        // TMV, ALLOW COMMANDS 001b
		if lu.ptplCapable() {
			b[2] |= 0x01 // PTPL_C
			if p.aptpl {
				b[3] |= 0x01 // PTPL_A
			}
		}
		b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02
		b[5] = 0x01
	case 3: // READ FULL STATUS
		var holder string
		if h := p.reg(p.holder.port); h != nil {
			holder = h.port
		}
		for _, r := range p.regs {
			d := make([]byte, 24)
			binary.BigEndian.PutUint64(d, r.key)
			d[12] = 0x02 // ALL_TG_PT: registrations cover every port
			if p.rtype != 0 && (allRegistrants(p.rtype) || holder == r.port) {
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
	if sa > prsaRegisterMove {
		return invalidCDB(1, 4) // REPLACE LOST RESERVATION and reserved ones
	}
	// The list is 24 bytes, more only with SPEC_I_PT (REGISTER) or for
	// REGISTER AND MOVE, which the list itself says: checked with it.
	n := int(be32(c.cdb[5:]))
	if n < 24 || n > maxPROutParams {
		return checkCondition(senseIllegalRequest, ascParamListLength)
	}
	switch sa {
	case prsaReserve, prsaRelease, prsaPreempt, prsaPreemptAbort:
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

// prOut is a decoded PERSISTENT RESERVE OUT command.
type prOut struct {
	sa, rtype  byte
	key, saKey uint64
	aptpl      bool // REGISTER, REGISTER AND IGNORE EXISTING KEY, REGISTER AND MOVE
	// specIPT: SPEC_I_PT, with the initiator ports (or devices) listed
	// and where each TransportID starts in the parameter list.
	specIPT   bool
	specified []string
	specAt    []int
	// dest: REGISTER AND MOVE's I_T nexus, its TransportID at offset 24.
	dest  itNexus
	unreg bool
}

// decodePROut checks the parameter list of a PERSISTENT RESERVE OUT
// against what its service action allows (SPC-4 sections 6.16.3 and
// 6.16.4); what depends on the reservation state is left to out.
func (lu *LU) decodePROut(cdb, data []byte, n int) (*prOut, *scsiResult) {
	plle := checkCondition(senseIllegalRequest, ascParamListLength)
	if len(data) < n {
		return nil, plle
	}
	data = data[:n]
	o := &prOut{sa: cdb[1] & 0x1f, rtype: cdb[2] & 0x0f, key: be64(data[0:]), saKey: be64(data[8:])}
	if o.sa == prsaRegisterMove {
		// SCOPE and TYPE are ignored: the reservation moves as it is.
		o.unreg, o.aptpl = data[17]&0x02 != 0, data[17]&0x01 != 0
		if o.aptpl && !lu.ptplCapable() {
			return nil, invalidParam(17, 0)
		}
		l := int64(be32(data[20:]))
		if 24+l != int64(n) {
			return nil, plle
		}
		who, size, bad := parseTransportID(data[24:])
		if bad != nil {
			return nil, invalidParam(24+bad.off, bad.bit)
		}
		if int64(size) != l {
			return nil, invalidParam(20, -1) // more than one TransportID
		}
		rel := be16(data[18:])
		if !slices.ContainsFunc(lu.portGroups(""), func(g PortGroup) bool { return g.RelPort == rel }) {
			return nil, invalidParam(18, -1) // no such target port
		}
		o.dest = itNexus{who, rel}
		return o, nil
	}
	flags := data[20]
	o.specIPT = flags&0x08 != 0
	register := o.sa == prsaRegister || o.sa == prsaRegisterIgnore
	if o.specIPT && o.sa != prsaRegister {
		return nil, invalidParam(20, 3) // SPEC_I_PT is for REGISTER only
	}
	if !o.specIPT && n != 24 {
		return nil, plle
	}
	if register {
		// Other service actions ignore APTPL (SPC-4 section 6.16.3).
		o.aptpl = flags&0x01 != 0
		if o.aptpl && !lu.ptplCapable() {
			return nil, invalidParam(20, 0)
		}
	}
	if !o.specIPT {
		return o, nil
	}
	if n < 28 || 28+int64(be32(data[24:])) != int64(n) {
		return nil, plle
	}
	for at := 28; at < n; {
		who, size, bad := parseTransportID(data[at:])
		if bad != nil {
			return nil, invalidParam(at+bad.off, bad.bit)
		}
		o.specified, o.specAt = append(o.specified, who), append(o.specAt, at)
		at += size
	}
	return o, nil
}

func execPROut(c *scsiCmd, data []byte) *scsiResult {
	lu := c.lu
	o, bad := lu.decodePROut(c.cdb, data, c.dataOut)
	if bad != nil {
		return bad
	}
	n := lu.itn(c.nexus)
	var preempted []string
	res := lu.change(func(p *prState) (*scsiResult, bool) {
		// change may run this more than once: only the last run counts.
		preempted = nil
		res, changed := p.out(n, o)
		if changed && o.sa == prsaPreemptAbort && p.pending != nil && p.pending.asc == ascRegistrationsPreempted {
			preempted = slices.Clone(p.pending.ports)
		}
		return res, changed
	})
	if res.status == statusGood && len(preempted) > 0 {
		// The tasks of the preempted I_T nexuses at this site are aborted
		// by the connection, which knows them; each site aborts its own.
		lu.mu.Lock()
		c.abortPorts = lu.localPorts(preempted)
		lu.mu.Unlock()
	}
	return res
}

// localPorts turns registrations into the initiator ports they stand
// for at this site: a port as it is, a device as its ports that have
// nexuses here. Caller holds lu.mu.
func (lu *LU) localPorts(whos []string) []string {
	var out []string
	for _, who := range whos {
		if !isDevice(who) {
			out = append(out, who)
			continue
		}
		for id := range lu.nexuses {
			if covers(who, id) {
				out = append(out, id)
			}
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// out applies one PERSISTENT RESERVE OUT command from n to p and reports
// the command's result and whether p changed.
func (p *prState) out(n itNexus, o *prOut) (*scsiResult, bool) {
	if !p.res6.none() && p.res6 != n {
		return reservationConflict(), false
	}
	sa := o.sa
	me := p.reg(n.port)
	if sa != prsaRegisterIgnore && (me == nil && (sa != prsaRegister || o.key != 0) || me != nil && me.key != o.key) {
		return reservationConflict(), false
	}
	switch sa {
	case prsaRegister, prsaRegisterIgnore:
		if o.specIPT {
			return p.registerSpecified(n, o, me)
		}
		switch {
		case o.saKey == 0 && me != nil:
			// Unregistering the holder of a registrants-only reservation
			// releases it (SPC-4 section 5.13.11.2.2).
			regsOnlyHeld := regsOnly(p.rtype)
			p.remove(me.port)
			if regsOnlyHeld && p.rtype == 0 {
				p.notify(ascReservationsReleased, n, p.regPorts())
			}
		case o.saKey == 0:
			p.generation++
			return resultGood, true
		case me != nil:
			me.key = o.saKey
		default:
			p.regs = append(p.regs, registration{port: n.port, rel: n.rel, key: o.saKey})
		}
		p.aptpl = o.aptpl
		p.generation++
	case prsaReserve:
		if p.rtype != 0 {
			if p.isHolder(n) && p.rtype == o.rtype {
				return resultGood, false
			}
			return reservationConflict(), false
		}
		p.holder, p.rtype = n, o.rtype
	case prsaRelease:
		if p.rtype == 0 || !p.isHolder(n) {
			return resultGood, false
		}
		if p.rtype != o.rtype {
			return checkCondition(senseIllegalRequest, ascInvalidReleasePR), false
		}
		old := p.rtype
		p.holder, p.rtype = itNexus{}, 0
		if regsOnly(old) || allRegistrants(old) {
			p.notify(ascReservationsReleased, n, p.regPorts())
		}
	case prsaClear:
		p.notify(ascReservationsPreempted, n, p.regPorts())
		p.regs, p.holder, p.rtype = nil, itNexus{}, 0
		p.generation++
	case prsaPreempt, prsaPreemptAbort:
		return p.preempt(n, me.port, o.saKey, o.rtype)
	case prsaRegisterMove:
		return p.registerMove(n, o, me)
	}
	return resultGood, true
}

// registerSpecified is REGISTER with SPEC_I_PT (SPC-4 sections 5.13.7 and
// 6.16.3): the nexus registers, and so does every initiator port (or
// device) its TransportIDs name, with the same key, or none does. Each
// registration covers every target port (ALL_TG_PT), so a port listed
// here is registered at every site, whichever it logs in at.
func (p *prState) registerSpecified(n itNexus, o *prOut, me *registration) (*scsiResult, bool) {
	if me != nil {
		// A registered nexus may not name others (SPC-4 section 5.13.7).
		return invalidParam(20, 3), false
	}
	if o.saKey == 0 {
		p.generation++
		return resultGood, true
	}
	added := []string{n.port}
	for i, who := range o.specified {
		if slices.Contains(added, who) {
			continue // the nexus itself, or listed twice
		}
		// A port already registered, or a device and one of its ports.
		if slices.ContainsFunc(p.regs, func(r registration) bool { return overlaps(r.port, who) }) ||
			slices.ContainsFunc(added, func(a string) bool { return overlaps(a, who) }) {
			return invalidParam(o.specAt[i], -1), false
		}
		added = append(added, who)
	}
	for _, who := range added {
		p.regs = append(p.regs, registration{port: who, rel: n.rel, key: o.saKey})
	}
	p.aptpl = o.aptpl
	p.generation++
	return resultGood, true
}

// registerMove is REGISTER AND MOVE (SPC-4 section 5.13.8): the holder
// registers another I_T nexus, which may be at another site (its
// relative target port), with the service action reservation key, hands
// it the reservation as it is, and with UNREG unregisters itself.
func (p *prState) registerMove(n itNexus, o *prOut, me *registration) (*scsiResult, bool) {
	if o.saKey == 0 {
		return invalidParam(8, -1), false
	}
	// Only the holder of a reservation that has one holder can move it.
	if p.rtype == 0 || allRegistrants(p.rtype) || !p.isHolder(n) {
		return reservationConflict(), false
	}
	// Not to the initiator port that sends the command (nor to its
	// device, nor to a port the same registration covers).
	dest := p.reg(o.dest.port)
	if overlaps(o.dest.port, n.port) || dest != nil && dest.port == me.port {
		return invalidParam(24, -1), false
	}
	from := me.port
	switch {
	case dest != nil:
		// Not an error: the destination takes the new key.
		dest.key = o.saKey
	case slices.ContainsFunc(p.regs, func(r registration) bool { return covers(o.dest.port, r.port) }):
		// A device whose ports are registered one by one.
		return invalidParam(24, -1), false
	default:
		p.regs = append(p.regs, registration{port: o.dest.port, rel: o.dest.rel, key: o.saKey})
	}
	p.holder = o.dest
	if o.unreg {
		p.remove(from)
	}
	p.aptpl = o.aptpl
	p.generation++
	return resultGood, true
}

// preempt implements SPC-4 section 5.13.11.4 for n, whose registration
// is mine.
func (p *prState) preempt(n itNexus, mine string, saKey uint64, rtype byte) (*scsiResult, bool) {
	var victims []string
	collect := func(match func(r registration) bool) {
		for _, r := range p.regs {
			if r.port != mine && match(r) {
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

// PRStateFileName is the name, within a data directory, of the file in
// which a single-site server keeps the persistent reservations of LUN lun
// of target targetName (LUNConfig.PRStateFile). Characters unsafe in a
// file name become '_'; a hash of the exact name keeps names that differ
// only in those apart.
func PRStateFileName(targetName string, lun uint64) string {
	safe := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		}
		return '_'
	}, targetName)
	h := fnv.New32a()
	h.Write([]byte(targetName))
	return fmt.Sprintf("pr-%s-%08x-lun%d.state", safe, h.Sum32(), lun)
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
