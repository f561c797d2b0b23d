package target

import (
	"encoding/binary"
	"fmt"
)

const (
	vendorID = "METROLUN"
	revision = "0001"
)

// commandTable is the command set of a metrolun LU. One line per command:
// name, CDB length, flags, parse, execute, CDB usage data (byte 0 is the
// opcode; for service-action commands byte 1 holds the service action).
var commandTable = []*opInfo{
	{name: "TEST UNIT READY", cdbLen: 6, flags: fMedia | fPRAllowed, parse: parseNone, exec: execTUR, usage: []byte{0x00, 0, 0, 0, 0, 0}},
	{name: "REQUEST SENSE", cdbLen: 6, flags: fNoUA | fPRAllowed | fRes6Allowed | fNoLUN, parse: parseRequestSense, exec: execRequestSense, usage: []byte{0x03, 0x01, 0, 0, 0xff, 0}},
	{name: "READ(6)", cdbLen: 6, flags: fMedia | fPRRead | fRetrySafe, parse: parseRead, exec: execRead, usage: []byte{0x08, 0x1f, 0xff, 0xff, 0xff, 0}},
	{name: "WRITE(6)", partialOK: true, cdbLen: 6, flags: fMedia | fWrite | fRetrySafe, parse: parseWrite, exec: execWrite, usage: []byte{0x0a, 0x1f, 0xff, 0xff, 0xff, 0}},
	{name: "INQUIRY", cdbLen: 6, flags: fNoUA | fPRAllowed | fRes6Allowed | fNoLUN, parse: parseInquiry, exec: execInquiry, usage: []byte{0x12, 0x01, 0xff, 0xff, 0xff, 0}},
	{name: "MODE SELECT(6)", cdbLen: 6, flags: 0, parse: parseModeSelect, exec: execModeSelect, usage: []byte{0x15, 0x11, 0, 0, 0xff, 0}},
	{name: "RESERVE(6)", cdbLen: 6, flags: fPRAllowed, parse: parseNone, exec: execReserve6, usage: []byte{0x16, 0, 0, 0, 0, 0}},
	{name: "RELEASE(6)", cdbLen: 6, flags: fPRAllowed | fRes6Allowed, parse: parseNone, exec: execRelease6, usage: []byte{0x17, 0, 0, 0, 0, 0}},
	{name: "MODE SENSE(6)", cdbLen: 6, flags: fPRRead, parse: parseModeSense, exec: execModeSense, usage: []byte{0x1a, 0x08, 0xff, 0xff, 0xff, 0}},
	{name: "START STOP UNIT", cdbLen: 6, flags: 0, parse: parseStartStop, exec: execStartStop, usage: []byte{0x1b, 0x01, 0, 0x0f, 0xf7, 0}},
	{name: "PREVENT ALLOW MEDIUM REMOVAL", cdbLen: 6, flags: fPRRead, parse: parseNone, exec: execPreventAllow, usage: []byte{0x1e, 0, 0, 0, 0x03, 0}},
	{name: "READ CAPACITY(10)", cdbLen: 10, flags: fMedia | fPRAllowed, parse: parseReadCapacity10, exec: execReadCapacity10, usage: []byte{0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0}},
	{name: "READ(10)", cdbLen: 10, flags: fMedia | fPRRead | fRetrySafe, parse: parseRead, exec: execRead, usage: []byte{0x28, 0xfe, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{name: "WRITE(10)", partialOK: true, cdbLen: 10, flags: fMedia | fWrite | fRetrySafe, parse: parseWrite, exec: execWrite, usage: []byte{0x2a, 0xfa, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{name: "WRITE AND VERIFY(10)", partialOK: true, cdbLen: 10, flags: fMedia | fWrite | fRetrySafe, parse: parseWriteVerify, exec: execWriteVerify, usage: []byte{0x2e, 0xf2, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{name: "VERIFY(10)", cdbLen: 10, flags: fMedia | fPRRead | fRetrySafe, parse: parseVerify, exec: execVerify, usage: []byte{0x2f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{name: "PRE-FETCH(10)", cdbLen: 10, flags: fMedia | fPRRead, parse: parsePrefetch, exec: execPrefetch, usage: []byte{0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{name: "SYNCHRONIZE CACHE(10)", cdbLen: 10, flags: fMedia | fRetrySafe, parse: parseSync, exec: execSync, usage: []byte{0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{name: "WRITE SAME(10)", exactData: true, cdbLen: 10, flags: fMedia | fWrite | fRetrySafe, parse: parseWriteSame, exec: execWriteSame, usage: []byte{0x41, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, 0}},
	{name: "SANITIZE", cdbLen: 10, flags: fMedia | fWrite, sas: []uint16{sanOverwrite, sanBlockErase, sanExitFailure}, parse: parseSanitize, exec: execSanitize, usage: []byte{0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},
	{name: "UNMAP", cdbLen: 10, flags: fMedia | fWrite | fRetrySafe, parse: parseUnmap, exec: execUnmap, usage: []byte{0x42, 0x01, 0, 0, 0, 0, 0x3f, 0xff, 0xff, 0}},
	{name: "MODE SELECT(10)", cdbLen: 10, flags: 0, parse: parseModeSelect, exec: execModeSelect, usage: []byte{0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},
	{name: "MODE SENSE(10)", cdbLen: 10, flags: fPRRead, parse: parseModeSense, exec: execModeSense, usage: []byte{0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0}},
	{name: "PERSISTENT RESERVE IN", cdbLen: 10, flags: fPRAllowed, sas: []uint16{0, 1, 2, 3}, parse: parsePRIn, exec: execPRIn, usage: []byte{0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},
	{name: "PERSISTENT RESERVE OUT", cdbLen: 10, flags: fPRAllowed, sas: []uint16{0, 1, 2, 3, 4, 5, 6, 7}, parse: parsePROut, exec: execPROut, usage: []byte{0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{name: "READ(16)", cdbLen: 16, flags: fMedia | fPRRead | fRetrySafe, parse: parseRead, exec: execRead, usage: []byte{0x88, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "COMPARE AND WRITE", exactData: true, cdbLen: 16, flags: fMedia | fWrite, parse: parseCompareAndWrite, exec: execCompareAndWrite, usage: []byte{0x89, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x3f, 0}},
	{name: "WRITE(16)", partialOK: true, cdbLen: 16, flags: fMedia | fWrite | fRetrySafe, parse: parseWrite, exec: execWrite, usage: []byte{0x8a, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "WRITE AND VERIFY(16)", partialOK: true, cdbLen: 16, flags: fMedia | fWrite | fRetrySafe, parse: parseWriteVerify, exec: execWriteVerify, usage: []byte{0x8e, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "VERIFY(16)", cdbLen: 16, flags: fMedia | fPRRead | fRetrySafe, parse: parseVerify, exec: execVerify, usage: []byte{0x8f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "PRE-FETCH(16)", cdbLen: 16, flags: fMedia | fPRRead, parse: parsePrefetch, exec: execPrefetch, usage: []byte{0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "SYNCHRONIZE CACHE(16)", cdbLen: 16, flags: fMedia | fRetrySafe, parse: parseSync, exec: execSync, usage: []byte{0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "WRITE SAME(16)", exactData: true, cdbLen: 16, flags: fMedia | fWrite | fRetrySafe, parse: parseWriteSame, exec: execWriteSame, usage: []byte{0x93, 0xf9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "READ CAPACITY(16)", cdbLen: 16, flags: fMedia | fPRAllowed, sa: 0x10, parse: parseAlloc10, exec: execReadCapacity16, usage: []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{name: "GET LBA STATUS", cdbLen: 16, flags: fMedia | fPRRead, sa: 0x12, parse: parseGetLBAStatus, exec: execGetLBAStatus, usage: []byte{0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{name: "REPORT LUNS", cdbLen: 12, flags: fNoUA | fPRAllowed | fRes6Allowed | fNoLUN, parse: parseReportLUNs, exec: execReportLUNs, usage: []byte{0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{name: "REPORT TARGET PORT GROUPS", cdbLen: 12, flags: fPRAllowed | fRes6Allowed, sa: 0x0a, parse: parseAlloc6, exec: execReportTPG, usage: []byte{0xa3, 0xea, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{name: "REPORT SUPPORTED OPERATION CODES", cdbLen: 12, flags: fPRAllowed | fRes6Allowed, sa: 0x0c, parse: parseRSOC, exec: execRSOC, usage: []byte{0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{name: "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", cdbLen: 12, flags: fPRAllowed | fRes6Allowed, sa: 0x0d, parse: parseRSTMF, exec: execRSTMF, usage: []byte{0xa3, 0x0d, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{name: "ORWRITE(16)", cdbLen: 16, flags: fMedia | fWrite, parse: parseOrWrite, exec: execOrWrite, usage: []byte{0x8b, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "WRITE ATOMIC(16)", cdbLen: 16, flags: fMedia | fWrite, parse: parseWriteAtomic, exec: execWriteAtomic, usage: []byte{0x9c, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0x3f, 0}},
	{name: "READ DEFECT DATA(10)", cdbLen: 10, flags: fMedia | fPRRead, parse: parseReadDefect, exec: execReadDefect, usage: []byte{0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0}},
	{name: "READ DEFECT DATA(12)", cdbLen: 12, flags: fMedia | fPRRead, parse: parseReadDefect, exec: execReadDefect, usage: []byte{0xb7, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{name: "READ(12)", cdbLen: 12, flags: fMedia | fPRRead | fRetrySafe, parse: parseRead, exec: execRead, usage: []byte{0xa8, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "WRITE(12)", partialOK: true, cdbLen: 12, flags: fMedia | fWrite | fRetrySafe, parse: parseWrite, exec: execWrite, usage: []byte{0xaa, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "WRITE AND VERIFY(12)", partialOK: true, cdbLen: 12, flags: fMedia | fWrite | fRetrySafe, parse: parseWriteVerify, exec: execWriteVerify, usage: []byte{0xae, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
	{name: "EXTENDED COPY", cdbLen: 16, flags: fMedia, sas: []uint16{0x00}, parse: parseExtendedCopy, exec: execExtendedCopy, usage: []byte{0x83, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{name: "RECEIVE COPY RESULTS", cdbLen: 16, flags: fPRAllowed, sas: []uint16{0x00, 0x01, 0x03, 0x04}, parse: parseReceiveCopyResults, exec: execReceiveCopyResults, usage: []byte{0x84, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},
	{name: "VERIFY(12)", cdbLen: 12, flags: fMedia | fPRRead | fRetrySafe, parse: parseVerify, exec: execVerify, usage: []byte{0xaf, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, 0}},
}

func execTUR(c *scsiCmd, _ []byte) *scsiResult { return resultGood }

func execPreventAllow(c *scsiCmd, _ []byte) *scsiResult { return resultGood }

func parseAlloc6(c *scsiCmd) *scsiResult {
	c.allocIn(int(be32(c.cdb[6:])))
	return nil
}

// INQUIRY (SPC-4 section 6.6).
func parseInquiry(c *scsiCmd) *scsiResult {
	if c.cdb[1]&0xfe != 0 {
		return invalidCDB(1, 1) // CMDDT is obsolete
	}
	if c.cdb[1]&1 == 0 && c.cdb[2] != 0 {
		return invalidCDB(2, -1)
	}
	c.allocIn(int(be16(c.cdb[3:])))
	return nil
}

func execInquiry(c *scsiCmd, _ []byte) *scsiResult {
	if c.cdb[1]&1 == 0 {
		return c.trim(c.standardInquiry())
	}
	if c.lu == nil {
		return invalidCDB(1, 0)
	}
	page, ok := c.lu.vpd(c.cdb[2], c.nexus)
	if !ok {
		return invalidCDB(2, -1)
	}
	return c.trim(page)
}

func (c *scsiCmd) standardInquiry() []byte {
	b := make([]byte, 96)
	if c.lu == nil {
		b[0] = 0x7f // peripheral qualifier 011b: no LU here
	}
	b[2] = 0x06 // SPC-4
	b[3] = 0x12 // HISUP, response data format 2
	b[4] = byte(len(b) - 5)
	b[5] = 0x10 | 0x08 // TPGS: implicit ALUA; 3PC: EXTENDED COPY (xcopy.go)
	b[6] = 0x10        // MULTIP: the device is reachable through several ports
	b[7] = 0x02        // CMDQUE
	copy(b[8:16], pad(vendorID, 8))
	product := "metrolun"
	if c.lu != nil {
		product = c.lu.product
	}
	copy(b[16:32], pad(product, 16))
	copy(b[32:36], pad(revision, 4))
	// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
	for i, v := range []uint16{0x00a0, 0x0960, 0x0460, 0x04c0} {
		binary.BigEndian.PutUint16(b[58+2*i:], v)
	}
	return b
}

func pad(s string, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = ' '
	}
	copy(b, s)
	return b
}

var supportedVPD = []byte{0x00, 0x80, 0x83, 0x86, 0x8f, 0xb0, 0xb1, 0xb2}

// vpd builds a VPD page (SPC-4 section 7.8, SBC-3 section 6.5).
func (lu *LU) vpd(code byte, n *Nexus) ([]byte, bool) {
	hdr := func(body []byte) []byte {
		b := make([]byte, 4, 4+len(body))
		b[1] = code
		binary.BigEndian.PutUint16(b[2:], uint16(len(body)))
		return append(b, body...)
	}
	switch code {
	case 0x00:
		return hdr(supportedVPD), true
	case 0x80:
		return hdr([]byte(lu.serial)), true
	case 0x83:
		return hdr(lu.deviceIdentification()), true
	case 0x8f:
		return hdr(lu.thirdPartyCopyVPD()), true
	case 0x86:
		body := make([]byte, 60)
		body[1] = 0x07 // HEADSUP, ORDSUP, SIMPSUP
		body[2] = 0x01 // V_SUP: a volatile cache exists
		return hdr(body), true
	case 0xb0:
		body := make([]byte, 60)
		body[0] = 0x01 // WSNZ
		body[1] = maxCompareAndWriteBlocks
		// OPTIMAL TRANSFER LENGTH GRANULARITY: a physical block (SBC-3
		// section 6.5.3).
		binary.BigEndian.PutUint16(body[2:], uint16(min(lu.physBlockSize/lu.blockSize, 0xffff)))
		binary.BigEndian.PutUint32(body[4:], uint32(maxTransferBytes/lu.blockSize))
		binary.BigEndian.PutUint32(body[8:], uint32(min(1<<20/lu.blockSize, maxTransferBytes/lu.blockSize)))
		binary.BigEndian.PutUint32(body[12:], uint32(maxTransferBytes/lu.blockSize))
		if lu.thin {
			binary.BigEndian.PutUint32(body[16:], maxUnmapBlocks)
			binary.BigEndian.PutUint32(body[20:], maxUnmapDescriptors)
			binary.BigEndian.PutUint32(body[24:], uint32(lu.physBlockSize/lu.blockSize))
		}
		binary.BigEndian.PutUint64(body[32:], maxWriteSameBlocks)
		binary.BigEndian.PutUint32(body[40:], uint32(maxAtomicBytes/lu.blockSize)) // MAXIMUM ATOMIC TRANSFER LENGTH
		binary.BigEndian.PutUint32(body[44:], 1)                                   // ATOMIC ALIGNMENT
		binary.BigEndian.PutUint32(body[48:], 1)                                   // ATOMIC TRANSFER LENGTH GRANULARITY
		return hdr(body), true
	case 0xb1:
		body := make([]byte, 60)
		binary.BigEndian.PutUint16(body[0:], 1) // non-rotating medium
		// WABEREQ 01b: a read of a block that BLOCK ERASE sanitized
		// completes with GOOD (SBC-4 section 6.6.2; it reads zeros).
		body[3] = 0x40
		return hdr(body), true
	case 0xb2:
		body := make([]byte, 4)
		if lu.thin {
			body[1] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU, LBPWS, LBPWS10, LBPRZ
			body[2] = 0x02                      // thin provisioned
		}
		return hdr(body), true
	}
	return nil, false
}

// deviceIdentification is VPD page 83h: the LU's NAA and T10 vendor IDs,
// and the relative target port, target port group and target name
// designators that multipath uses to group paths (SPC-4 section 7.8.6).
func (lu *LU) deviceIdentification() []byte {
	var b []byte
	desig := func(proto, codeSet, assocType byte, piv bool, v []byte) {
		d := []byte{proto<<4 | codeSet, assocType, 0, byte(len(v))}
		if piv {
			d[1] |= 0x80
		}
		b = append(append(b, d...), v...)
	}
	const iscsi = 0x5
	desig(0, 1, 0x03, false, lu.naa[:])                                      // NAA, LU
	desig(0, 2, 0x01, false, append(pad(vendorID, 8), []byte(lu.serial)...)) // T10 vendor ID, LU
	var rel [4]byte
	binary.BigEndian.PutUint16(rel[2:], lu.relPort)
	desig(iscsi, 1, 0x10|0x04, true, rel[:]) // relative target port, port
	var tpg [4]byte
	binary.BigEndian.PutUint16(tpg[2:], lu.portGroup)
	desig(iscsi, 1, 0x10|0x05, true, tpg[:]) // target port group, port
	name := []byte(lu.target.Name)
	name = append(name, 0)
	for len(name)%4 != 0 {
		name = append(name, 0)
	}
	desig(iscsi, 3, 0x20|0x08, true, name) // SCSI name string, target device
	port := []byte(fmt.Sprintf("%s,t,0x%04x", lu.target.Name, lu.portGroup))
	port = append(port, 0)
	for len(port)%4 != 0 {
		port = append(port, 0)
	}
	desig(iscsi, 3, 0x10|0x08, true, port) // SCSI name string, target port
	return b
}

// REPORT LUNS (SPC-4 section 6.33).
func parseReportLUNs(c *scsiCmd) *scsiResult {
	switch c.cdb[2] {
	case 0, 1, 2:
	default:
		return invalidCDB(2, -1)
	}
	n := int(be32(c.cdb[6:]))
	if n < 16 {
		return invalidCDB(6, -1)
	}
	c.allocIn(n)
	return nil
}

func execReportLUNs(c *scsiCmd, _ []byte) *scsiResult {
	var luns []uint64
	if c.cdb[2] != 1 { // 1: well-known LUs only, of which we have none
		luns = c.target.lunList
	}
	b := make([]byte, 8+8*len(luns))
	binary.BigEndian.PutUint32(b, uint32(8*len(luns)))
	for i, l := range luns {
		e := encodeLUN(l)
		copy(b[8+8*i:], e[:])
	}
	return c.trim(b)
}

// REQUEST SENSE (SPC-4 section 6.39).
func parseRequestSense(c *scsiCmd) *scsiResult {
	c.allocIn(int(c.cdb[4]))
	return nil
}

func execRequestSense(c *scsiCmd, _ []byte) *scsiResult {
	s := senseData{key: senseNoSense}
	if c.lu == nil {
		s = senseData{key: senseIllegalRequest, asc: ascLUNotSupported}
	} else {
		c.lu.mu.Lock()
		if asc, ok := c.lu.takeUA(c.nexus); ok {
			s = senseData{key: senseUnitAttention, asc: asc}
		} else if ss, ok := c.lu.sanitizeSense(); ok {
			s = ss
		} else if c.lu.stopped {
			s = senseData{key: senseNotReady, asc: ascNotReadyInitCmdRequired}
		}
		c.lu.mu.Unlock()
	}
	if c.cdb[1]&1 != 0 {
		// Descriptor format (SPC-4 section 4.5.2).
		return c.trim(descriptorSense(s.bytes()))
	}
	return c.trim(s.bytes())
}

// REPORT TARGET PORT GROUPS (SPC-4 section 6.36): one group per site,
// every site's, with the access states this initiator should see (see
// resolvePortGroups).
func execReportTPG(c *scsiCmd, _ []byte) *scsiResult {
	extended := c.cdb[1]>>5 == 1
	return c.trim(reportTPG(c.lu.portGroups(c.nexus.Initiator), extended))
}

// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 section 6.40).
func parseRSTMF(c *scsiCmd) *scsiResult {
	n := int(be32(c.cdb[6:]))
	if n < 4 {
		return invalidCDB(6, -1)
	}
	c.allocIn(n)
	return nil
}

func execRSTMF(c *scsiCmd, _ []byte) *scsiResult {
	b := make([]byte, 4)
	b[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x02 // ATS, ATSS, CTSS, LURS, TRS
	if c.cdb[2]&0x80 != 0 {
		// REPD: the extended 16-byte format.
		b = make([]byte, 16)
		b[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x02
		b[3] = 0x0c
	}
	return c.trim(b)
}

// REPORT SUPPORTED OPERATION CODES (SPC-4 section 6.35).
func parseRSOC(c *scsiCmd) *scsiResult {
	if c.cdb[2]&0x07 > 3 {
		return invalidCDB(2, 2)
	}
	c.allocIn(int(be32(c.cdb[6:])))
	return nil
}

func execRSOC(c *scsiCmd, _ []byte) *scsiResult {
	rctd := c.cdb[2]&0x80 != 0
	opt := c.cdb[2] & 0x07
	timeouts := func() []byte {
		t := make([]byte, 12)
		binary.BigEndian.PutUint16(t, 10)
		binary.BigEndian.PutUint32(t[4:], 30) // nominal, seconds
		binary.BigEndian.PutUint32(t[8:], 60) // recommended
		return t
	}
	if opt == 0 {
		b := make([]byte, 4)
		for _, o := range opList {
			sas := o.sas
			if saOpcode(o.usage[0]) {
				sas = []uint16{o.sa}
			}
			for i := 0; i < max(len(sas), 1); i++ {
				d := make([]byte, 8)
				d[0] = o.usage[0]
				if len(sas) > 0 {
					binary.BigEndian.PutUint16(d[2:], sas[i])
					d[5] = 0x01 // SERVACTV
				}
				binary.BigEndian.PutUint16(d[6:], uint16(o.cdbLen))
				if rctd {
					d[5] |= 0x02 // CTDP
					d = append(d, timeouts()...)
				}
				b = append(b, d...)
			}
		}
		binary.BigEndian.PutUint32(b, uint32(len(b)-4))
		return c.trim(b)
	}
	opcode := c.cdb[3]
	sa := be16(c.cdb[4:])
	var o *opInfo
	own := sbcOps[opcode] != nil && len(sbcOps[opcode].sas) > 0
	hasSA := saOpcode(opcode) || own
	find := func() *opInfo {
		if own {
			for _, x := range sbcOps[opcode].sas {
				if x == sa {
					return sbcOps[opcode]
				}
			}
			return nil
		}
		if saOpcode(opcode) {
			return saGroups[opcode][sa]
		}
		return sbcOps[opcode]
	}
	switch opt {
	case 1:
		if hasSA {
			return invalidCDB(2, 2)
		}
		o = sbcOps[opcode]
	case 2:
		if !hasSA {
			return invalidCDB(2, 2)
		}
		o = find()
	case 3:
		o = find()
	}
	b := make([]byte, 4)
	if o == nil {
		b[1] = 0x01 // not supported
		return c.trim(b)
	}
	b[1] = 0x03 // supported, per the standard
	if rctd {
		b[1] |= 0x80
	}
	binary.BigEndian.PutUint16(b[2:], uint16(len(o.usage)))
	b = append(b, o.usage...)
	if rctd {
		b = append(b, timeouts()...)
	}
	return c.trim(b)
}
