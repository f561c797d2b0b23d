package target

import "encoding/binary"

// Mode pages (SPC-4 section 7.5, SBC-3 section 6.4). Each page is built
// for a page control value: current, changeable, default.
const (
	pcCurrent    = 0
	pcChangeable = 1
	pcDefault    = 2
	pcSaved      = 3
)

type modePage struct {
	code byte
	// build returns the page (with its 2-byte header) for a page control.
	build func(lu *LU, pc byte) []byte
	// apply takes a page from MODE SELECT; it returns the byte offset of
	// an invalid field, or -1.
	apply func(lu *LU, p []byte) int
}

var modePages = []modePage{
	{0x01, buildRWErrorRecovery, applyFixed(buildRWErrorRecovery)},
	{0x08, buildCaching, applyCaching},
	{0x0a, buildControl, applyControl},
	{0x1c, buildInfoExceptions, applyFixed(buildInfoExceptions)},
}

func buildRWErrorRecovery(lu *LU, pc byte) []byte {
	b := make([]byte, 12)
	b[0], b[1] = 0x01, 10
	return b
}

func buildCaching(lu *LU, pc byte) []byte {
	b := make([]byte, 20)
	b[0], b[1] = 0x08, 18
	switch pc {
	case pcChangeable:
		b[2] = 0x04 // WCE
	case pcDefault:
		b[2] = 0x04
	default:
		if lu.wce {
			b[2] = 0x04
		}
	}
	return b
}

func buildControl(lu *LU, pc byte) []byte {
	b := make([]byte, 12)
	b[0], b[1] = 0x0a, 10
	switch pc {
	case pcChangeable:
		b[2] = 0x04 // D_SENSE
		b[4] = 0x08 // SWP
	case pcCurrent:
		if lu.dsense {
			b[2] |= 0x04
		}
		b[3] = 0x10 // queue algorithm modifier 1: unrestricted reordering
		if lu.swp {
			b[4] |= 0x08
		}
		b[5] = 0x40 // TAS: aborted tasks of other nexuses get TASK ABORTED
	default:
		b[3] = 0x10
		b[5] = 0x40
	}
	binary.BigEndian.PutUint16(b[8:], 0xffff) // busy timeout: unlimited
	if pc == pcChangeable {
		binary.BigEndian.PutUint16(b[8:], 0)
	}
	return b
}

func buildInfoExceptions(lu *LU, pc byte) []byte {
	b := make([]byte, 12)
	b[0], b[1] = 0x1c, 10
	if pc != pcChangeable {
		b[2] = 0x08 // DEXCPT: no informational exceptions reported
	}
	return b
}

// applyFixed accepts a page only if it equals the current one.
func applyFixed(build func(*LU, byte) []byte) func(*LU, []byte) int {
	return func(lu *LU, p []byte) int {
		cur := build(lu, pcCurrent)
		for i := 2; i < len(cur) && i < len(p); i++ {
			if p[i] != cur[i] {
				return i
			}
		}
		return -1
	}
}

func applyCaching(lu *LU, p []byte) int {
	cur := buildCaching(lu, pcCurrent)
	for i := 2; i < len(cur); i++ {
		mask := byte(0)
		if i == 2 {
			mask = 0x04
		}
		if p[i]&^mask != cur[i]&^mask {
			return i
		}
	}
	lu.wce = p[2]&0x04 != 0
	return -1
}

func applyControl(lu *LU, p []byte) int {
	cur := buildControl(lu, pcCurrent)
	for i := 2; i < len(cur); i++ {
		var mask byte
		switch i {
		case 2:
			mask = 0x04
		case 4:
			mask = 0x08
		}
		if p[i]&^mask != cur[i]&^mask {
			return i
		}
	}
	lu.dsense = p[2]&0x04 != 0
	lu.swp = p[4]&0x08 != 0
	return -1
}

func parseModeSense(c *scsiCmd) *scsiResult {
	if c.cdb[0] == 0x1a {
		c.allocIn(int(c.cdb[4]))
	} else {
		c.allocIn(int(be16(c.cdb[7:])))
	}
	if c.cdb[2]>>6 == pcSaved {
		return checkCondition(senseIllegalRequest, ascSavingParamsNotSupported)
	}
	return nil
}

func execModeSense(c *scsiCmd, _ []byte) *scsiResult {
	six := c.cdb[0] == 0x1a
	dbd := c.cdb[1]&0x08 != 0
	pc := c.cdb[2] >> 6
	code := c.cdb[2] & 0x3f
	sub := c.cdb[3]
	lu := c.lu
	lu.mu.Lock()
	var pages []byte
	found := false
	if sub != 0 && !(sub == 0xff && code == 0x3f) {
		lu.mu.Unlock()
		return invalidCDB(3, -1) // no subpages
	}
	for _, mp := range modePages {
		if code == 0x3f || code == mp.code {
			pages = append(pages, mp.build(lu, pc)...)
			found = true
		}
	}
	nblocks := lu.nblocks
	wp := lu.readOnly || lu.swp
	lu.mu.Unlock()
	if !found {
		return invalidCDB(2, 5)
	}
	var bd []byte
	if !dbd {
		bd = make([]byte, 8)
		n := nblocks
		if n > 0xffffffff {
			n = 0xffffffff
		}
		binary.BigEndian.PutUint32(bd, uint32(n))
		bd[5], bd[6], bd[7] = byte(c.lu.blockSize>>16), byte(c.lu.blockSize>>8), byte(c.lu.blockSize)
	}
	dsp := byte(0x10) // DPOFUA
	if wp {
		dsp |= 0x80
	}
	var b []byte
	if six {
		b = []byte{0, 0, dsp, byte(len(bd))}
		b = append(append(b, bd...), pages...)
		if len(b)-1 > 255 {
			b = b[:256]
		}
		b[0] = byte(len(b) - 1)
	} else {
		b = make([]byte, 8)
		b[3] = dsp
		binary.BigEndian.PutUint16(b[6:], uint16(len(bd)))
		b = append(append(b, bd...), pages...)
		binary.BigEndian.PutUint16(b, uint16(len(b)-2))
	}
	return c.trim(b)
}

func parseModeSelect(c *scsiCmd) *scsiResult {
	if c.cdb[1]&0x01 != 0 {
		return invalidCDB(1, 0) // SP: pages cannot be saved
	}
	if c.cdb[1]&0x10 == 0 {
		return invalidCDB(1, 4) // only the page format is supported
	}
	if c.cdb[0] == 0x15 {
		c.dataOut = int(c.cdb[4])
	} else {
		c.dataOut = int(be16(c.cdb[7:]))
	}
	return nil
}

func execModeSelect(c *scsiCmd, data []byte) *scsiResult {
	data = data[:c.dataOut]
	six := c.cdb[0] == 0x15
	hdr := 8
	if six {
		hdr = 4
	}
	if len(data) == 0 {
		return resultGood
	}
	if len(data) < hdr {
		return checkCondition(senseIllegalRequest, ascParamListLength)
	}
	var bdl int
	if six {
		bdl = int(data[3])
	} else {
		bdl = int(be16(data[6:]))
	}
	if hdr+bdl > len(data) {
		return checkCondition(senseIllegalRequest, ascParamListLength)
	}
	if bdl == 8 {
		bl := int(data[hdr+5])<<16 | int(data[hdr+6])<<8 | int(data[hdr+7])
		if bl != c.lu.blockSize {
			return invalidParam(hdr+5, -1)
		}
	} else if bdl != 0 {
		return invalidParam(hdr-1, -1)
	}
	p := data[hdr+bdl:]
	lu := c.lu
	lu.mu.Lock()
	defer lu.mu.Unlock()
	changed := false
	for off := hdr + bdl; len(p) > 0; {
		if len(p) < 2 {
			return checkCondition(senseIllegalRequest, ascParamListLength)
		}
		if p[0]&0x40 != 0 {
			return invalidParam(off, 6) // SPF: no subpages
		}
		code := p[0] & 0x3f
		plen := int(p[1]) + 2
		if plen > len(p) {
			return checkCondition(senseIllegalRequest, ascParamListLength)
		}
		var mp *modePage
		for i := range modePages {
			if modePages[i].code == code {
				mp = &modePages[i]
			}
		}
		if mp == nil {
			return invalidParam(off, -1)
		}
		if want := len(mp.build(lu, pcCurrent)); plen != want {
			return invalidParam(off+1, -1)
		}
		before := mp.build(lu, pcCurrent)
		if bad := mp.apply(lu, p[:plen]); bad >= 0 {
			return invalidParam(off+bad, -1)
		}
		if string(before) != string(mp.build(lu, pcCurrent)) {
			changed = true
		}
		p = p[plen:]
		off += plen
	}
	if changed {
		// Other nexuses learn about the change (SPC-4 section 6.11).
		lu.queueUA(ascModeParamsChanged, c.nexus)
	}
	return resultGood
}
