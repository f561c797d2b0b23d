package target

import (
	"encoding/binary"
)

// maxTransferBytes bounds one command's data (reported in the Block Limits
// VPD page); with the CmdSN window it bounds a connection's memory.
const maxTransferBytes = 32 << 20

type opFlags uint16

const (
	// fNoUA: INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor
	// clear a unit attention (SAM-5 section 5.14).
	fNoUA opFlags = 1 << iota
	// fWrite: modifies the medium; refused on a read-only LU.
	fWrite
	// fMedia: needs the medium (refused while the unit is stopped or the
	// path cannot serve).
	fMedia
	// fPRAllowed: allowed whatever the persistent reservation (SPC-4 table 43).
	fPRAllowed
	// fPRRead: allowed under Write Exclusive reservations, conflicts under
	// Exclusive Access ones.
	fPRRead
	// fRes6Allowed: allowed while another nexus holds a RESERVE(6).
	fRes6Allowed
	// fNoLUN: works on a LUN that does not exist (INQUIRY, REPORT LUNS,
	// REQUEST SENSE).
	fNoLUN
	// fRetrySafe: running the command twice has the effect of running it
	// once (plain reads and writes, WRITE SAME, UNMAP, VERIFY,
	// SYNCHRONIZE CACHE), so a single-path initiator may be told BUSY
	// where its outcome is unknown (retrybusy.go).
	fRetrySafe
)

// opInfo describes one command: how to parse its CDB and how to execute it.
// The table below (sbcOps) shows the whole command set at a glance.
type opInfo struct {
	name   string
	cdbLen int
	flags  opFlags
	// parse validates the CDB and fills the command's LBA range and data
	// lengths; nil means the command may proceed.
	parse func(c *scsiCmd) *scsiResult
	exec  func(c *scsiCmd, data []byte) *scsiResult
	// usage is the CDB usage data for REPORT SUPPORTED OPERATION CODES:
	// which bits of each CDB byte the command looks at.
	usage []byte
	sa    uint16 // service action, when part of a service action group
	// sas lists the service actions of a command that decodes its own
	// service action field (PERSISTENT RESERVE IN/OUT), for RSOC.
	sas []uint16
	// partialOK: with a short expected transfer length the command acts
	// on the whole blocks it received (WRITE, WRITE AND VERIFY).
	partialOK bool
	// exactData: the expected transfer length must equal what the CDB
	// implies (WRITE SAME's one block, COMPARE AND WRITE's two halves).
	exactData bool
}

// scsiCmd is a parsed CDB: everything execution needs, checked once.
type scsiCmd struct {
	lu     *LU
	target *Target
	nexus  *Nexus
	cdb    []byte
	op     *opInfo
	attr   byte

	lba     uint64
	blocks  uint64
	fua     bool
	dataOut int  // bytes of Data-Out the command needs
	dataIn  bool // the command returns data
	edtl    int  // the initiator's expected data transfer length
	alloc   int  // allocation length for Data-In commands
	// abortPorts: PREEMPT AND ABORT preempted these initiator ports; the
	// connection aborts their tasks on the LU (SPC-4 section 5.13.11.2.5).
	abortPorts []string
	// aborted reports the task's abort (task.go), for commands that run
	// long (SANITIZE, EXTENDED COPY); nil when no task runs the command.
	aborted func() bool
	// try: the command runs on the connection's reader and reads only
	// through TryReadAt (task.go); nil: it may wait.
	try InlineReader
}

// saGroups lists the opcodes whose commands are told apart by a service
// action in CDB byte 1, bits 4-0.
var saGroups = map[byte]map[uint16]*opInfo{}

var sbcOps [256]*opInfo

// opList is commandTable in table order, for REPORT SUPPORTED OPERATION CODES.
var opList []*opInfo

func init() {
	opList = commandTable
	for _, o := range commandTable {
		op := o.usage[0]
		if o.sa != 0 || saOpcode(op) {
			if saGroups[op] == nil {
				saGroups[op] = map[uint16]*opInfo{}
			}
			saGroups[op][o.sa] = o
			continue
		}
		sbcOps[op] = o
	}
}

func saOpcode(op byte) bool {
	switch op {
	case 0x9e, 0xa3:
		return true
	}
	return false
}

// lookup finds the command for a CDB.
func lookup(cdb []byte) (*opInfo, *scsiResult) {
	op := cdb[0]
	if g := saGroups[op]; g != nil {
		if len(cdb) < 2 {
			return nil, invalidOpcode()
		}
		if o := g[uint16(cdb[1]&0x1f)]; o != nil {
			return o, nil
		}
		return nil, invalidCDB(1, 4)
	}
	if o := sbcOps[op]; o != nil {
		return o, nil
	}
	return nil, invalidOpcode()
}

// opReportLUNs is REPORT LUNS, which a lost LU still answers (DeviceLoss).
const opReportLUNs = 0xa0

// prepare parses a CDB and applies the checks that come before any data
// moves, in SAM-5 order: LUN, opcode, unit attention, reservations, CDB
// fields, access state.
func prepare(t *Target, lu *LU, n *Nexus, cdb []byte, attr byte, edtl int) (*scsiCmd, *scsiResult) {
	c, res := prepareFixed(t, lu, n, cdb, attr, edtl)
	if res != nil && lu != nil && lu.singlePath != nil {
		o, _ := lookup(cdb)
		res = lu.retryBusy(n, o, res)
	}
	return c, lu.senseFormat(res)
}

// senseFormat converts sense data to descriptor format when the control
// mode page asks for it (D_SENSE).
func (lu *LU) senseFormat(res *scsiResult) *scsiResult {
	if lu == nil || res == nil || len(res.sense) == 0 || !lu.descriptorSense() {
		return res
	}
	out := *res
	out.sense = descriptorSense(res.sense)
	return &out
}

func prepareFixed(t *Target, lu *LU, n *Nexus, cdb []byte, attr byte, edtl int) (*scsiCmd, *scsiResult) {
	o, res := lookup(cdb)
	if lu != nil && lu.loss != nil && len(cdb) > 0 && cdb[0] != opReportLUNs && lu.loss.Lost() {
		// First, as for a LUN that does not exist (DeviceLoss).
		return nil, checkCondition(senseIllegalRequest, ascLUNotSupported)
	}
	if lu == nil {
		if o == nil || o.flags&fNoLUN == 0 {
			return nil, checkCondition(senseIllegalRequest, ascLUNotSupported)
		}
	} else if res != nil {
		return nil, res
	}
	c := &scsiCmd{lu: lu, target: t, nexus: n, cdb: cdb, op: o, attr: attr, edtl: edtl}
	if len(cdb) < o.cdbLen {
		return nil, invalidOpcode()
	}
	if lu != nil {
		lu.mu.Lock()
		// The reservation state first (other sites may have changed it),
		// and before n is known here: what happened before a nexus
		// appeared sets it no unit attention.
		if err := lu.syncShared(); err != nil && o.flags&fNoLUN == 0 {
			lu.mu.Unlock()
			return nil, sharedStateFailure()
		}
		if _, ok := lu.nexuses[n.id]; !ok {
			lu.nexuses[n.id] = n
		}
		if o.flags&fNoUA == 0 {
			if asc, ok := lu.takeUA(n); ok {
				lu.mu.Unlock()
				return nil, checkCondition(senseUnitAttention, asc)
			}
		}
		if conflict := lu.conflicts(n, o); conflict {
			lu.mu.Unlock()
			return nil, reservationConflict()
		}
		if res := lu.sanitizeGate(o); res != nil {
			lu.mu.Unlock()
			return nil, res
		}
		stopped := lu.stopped
		lu.mu.Unlock()
		if res := o.parse(c); res != nil {
			return nil, res
		}
		if o.exactData && c.edtl != c.dataOut {
			return nil, checkSense(senseData{key: senseIllegalRequest, asc: ascInvalidFieldInCDB})
		}
		if o.flags&fWrite != 0 && (lu.readOnly || lu.swp) {
			return nil, checkCondition(senseDataProtect, ascWriteProtected)
		}
		if o.flags&fMedia != 0 {
			if stopped {
				return nil, checkCondition(senseNotReady, ascNotReadyInitCmdRequired)
			}
			switch lu.vol.State() {
			case PathTransitioning:
				return nil, checkCondition(senseNotReady, ascNotReadyTransition)
			case PathStandby:
				return nil, checkCondition(senseNotReady, ascNotReadyStandby)
			case PathUnavailable:
				return nil, checkCondition(senseNotReady, ascNotReadyUnavailable)
			}
		}
		return c, nil
	}
	if res := o.parse(c); res != nil {
		return nil, res
	}
	return c, nil
}

func (c *scsiCmd) exec(data []byte) *scsiResult {
	res := c.execFixed(data)
	if res == resultWouldWait {
		return res
	}
	if res != nil && res.volErr != nil {
		c.lu.reportVolumeError(c, res)
		res = c.lu.retryBusy(c.nexus, c.op, res)
	}
	return c.lu.senseFormat(res)
}

func (c *scsiCmd) execFixed(data []byte) *scsiResult {
	if c.dataOut > 0 && len(data) < c.dataOut {
		// The initiator declared less than the CDB asks for. A plain write
		// writes the whole blocks it got, as libiscsi's residual tests and
		// other targets expect; anything else needs all of its data.
		if c.op.partialOK {
			c.blocks = uint64(len(data) >> c.lu.blockShift)
			c.dataOut = c.bytesOf(c.blocks)
		} else {
			return checkSense(senseData{key: senseIllegalRequest, asc: ascInvalidFieldInIU})
		}
	}
	return c.op.exec(c, data)
}

// Helpers for parse functions.

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// checkRange validates an LBA range against the capacity (SBC-3 section 4.5).
func (c *scsiCmd) checkRange() *scsiResult {
	c.lu.mu.Lock()
	n := c.lu.nblocks
	c.lu.mu.Unlock()
	if c.lba > n || c.blocks > n-c.lba {
		return lbaOutOfRange()
	}
	return nil
}

// allocIn sets up a Data-In command with the given allocation length.
func (c *scsiCmd) allocIn(n int) {
	c.dataIn = true
	c.alloc = n
}

// trim cuts generated data to the allocation length.
func (c *scsiCmd) trim(b []byte) *scsiResult {
	if len(b) > c.alloc {
		b = b[:c.alloc]
	}
	return good(b)
}

func parseNone(c *scsiCmd) *scsiResult { return nil }

// decodeLUN decodes a SAM-5 single-level LUN (peripheral or flat space
// addressing); anything else maps to noLUN.
func decodeLUN(b [8]byte) uint64 {
	for _, x := range b[2:] {
		if x != 0 {
			return noLUN
		}
	}
	switch b[0] >> 6 {
	case 0:
		if b[0]&0x3f != 0 {
			return noLUN
		}
		return uint64(b[1])
	case 1:
		return uint64(b[0]&0x3f)<<8 | uint64(b[1])
	}
	return noLUN
}

// encodeLUN is decodeLUN's inverse, used by REPORT LUNS.
func encodeLUN(l uint64) [8]byte {
	var b [8]byte
	if l < 256 {
		b[1] = byte(l)
	} else {
		b[0] = 0x40 | byte(l>>8)&0x3f
		b[1] = byte(l)
	}
	return b
}
