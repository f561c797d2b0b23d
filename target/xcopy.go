package target

import (
	"bytes"
	"encoding/binary"
	"sync"
)

// The copy manager: EXTENDED COPY(LID1) and the RECEIVE COPY RESULTS
// service actions that go with it (SPC-4 sections 5.17 and 6.5, 6.21 to
// 6.23, 6.25). This is the offload VMware's VAAI "XCOPY" uses: the
// initiator names a source and a destination LU of this target and the
// target moves the blocks itself. Every block goes through the LUs'
// Volumes, so in a cluster a copy is mirrored like any write.
//
// Supported descriptors: the identification CSCD descriptor (E4h, an NAA
// designator from VPD page 83h), block device to block device segments
// (02h) and verify CSCD segments (07h). A copy moves at most
// xcopyChunk bytes at a time and stops between chunks when its task is
// aborted (ABORT TASK, LUN RESET, PREEMPT AND ABORT, connection loss).

const (
	senseCopyAborted = 0x0a

	ascXcopyListIDInUse         = 0x0016 // OPERATION IN PROGRESS
	ascUnreachableCopyTarget    = 0x0804
	ascThirdPartyDeviceFailure  = 0x0d01
	ascCopyTargetNotReachable   = 0x0d02
	ascIncorrectCopyTargetType  = 0x0d03
	ascTooManyTargetDescs       = 0x2606
	ascUnsupportedTargetDesc    = 0x2607
	ascTooManySegmentDescs      = 0x2608
	ascUnsupportedSegmentDesc   = 0x2609
	ascUnexpectedInexactSegment = 0x260a
)

// Copy manager limits, reported by RECEIVE COPY OPERATING PARAMETERS and
// the Third-party Copy VPD page.
const (
	xcopyMaxCSCDs       = 8
	xcopyMaxSegments    = 64
	xcopyMaxDescListLen = xcopyMaxCSCDs*32 + xcopyMaxSegments*28
	xcopyMaxParamList   = 16 + xcopyMaxDescListLen // no inline data
	// xcopyChunk bounds a running copy's memory, whatever its segments ask.
	xcopyChunk = 1 << 20
	// xcopyMaxRunning bounds the copies running at once on one LU (a
	// command over it is answered BUSY), xcopyMaxHeld the finished ones
	// whose results are kept for RECEIVE COPY RESULTS.
	xcopyMaxRunning = 8
	xcopyMaxHeld    = 32
)

// Descriptor type codes (SPC-4 tables 130, 146).
const (
	segBlockToBlock = 0x02
	segVerifyCSCD   = 0x07
	cscdIdentDesc   = 0xe4
)

// Segment descriptor CSCD IDs with a meaning of their own (SPC-4 table 148).
const (
	cscdIDNullBlock = 0xc000
	cscdIDSelf      = 0xffff
)

// copyManager tracks one LU's copy operations: those running, for the
// duplicate list identifier check and COPY STATUS, and the finished ones
// whose results are held.
type copyManager struct {
	mu  sync.Mutex
	ops []*copyOp // oldest first
}

// copyOp is one EXTENDED COPY command with a list identifier. Its fields
// after the first block change under copyManager.mu.
type copyOp struct {
	nexus  *Nexus // the session's nexus: a new login is a new I_T nexus
	listID byte
	hold   bool   // LIST ID USAGE 00b: results are held once it ends
	resets uint64 // LU resets before it began; a later reset discards it
	named  bool   // LIST ID USAGE 00b or 10b (11b copies only count)

	done        bool
	segments    int    // segments processed, the current one included
	written     uint64 // bytes written to copy destinations
	status      byte   // the command's SCSI status, once done
	sense       []byte // its sense data, for FAILED SEGMENT DETAILS
	statusTaken bool   // COPY STATUS reported it finished
	detailsGone bool   // FAILED SEGMENT DETAILS transferred
}

// PARAMETER LIST LENGTH (SPC-4 section 6.5): zero moves nothing; a list
// that cannot hold the header, or exceeds what the copy manager accepts,
// is refused before any of it is transferred.
func parseExtendedCopy(c *scsiCmd) *scsiResult {
	if c.cdb[1]&0x1f != 0 {
		return invalidCDB(1, 4) // EXTENDED COPY(LID4) is not supported
	}
	n := int(be32(c.cdb[10:]))
	if n == 0 {
		return nil
	}
	if n < 16 || n > xcopyMaxParamList {
		return checkCondition(senseIllegalRequest, ascParamListLength)
	}
	c.dataOut = n
	return nil
}

// cscd is a CSCD descriptor after resolution: the LU it names or why it
// cannot be used, reported when a segment refers to it (SPC-4 5.17.7.2).
type cscd struct {
	off  int // offset in the parameter list
	lu   *LU
	fail *copyFailure
}

type segment struct {
	off      int // offset in the parameter list
	typ      byte
	dc       bool
	src, dst uint16
	blocks   uint64
	srcLBA   uint64
	dstLBA   uint64
	tur      bool
}

// copyList is a parsed EXTENDED COPY parameter list.
type copyList struct {
	listID byte
	usage  byte
	cscds  []cscd
	segs   []segment
}

func paramError(asc uint16, field int) *scsiResult {
	return checkSense(senseData{key: senseIllegalRequest, asc: asc, fieldValid: true, field: uint16(field)})
}

// parseCopyList checks the parameter list before any data moves; its
// errors are reported with the sense key that describes them, not COPY
// ABORTED (SPC-4 section 5.17.7.3).
func (c *scsiCmd) parseCopyList(p []byte) (*copyList, *scsiResult) {
	l := &copyList{listID: p[0], usage: p[1] >> 3 & 3}
	tdl := int(be16(p[2:]))
	sdl := int(be32(p[8:]))
	idl := int(be32(p[12:]))
	switch {
	case l.usage == 1:
		return nil, invalidParam(1, 4) // LIST ID USAGE 01b is reserved
	case l.usage == 3 && l.listID != 0:
		return nil, invalidParam(0, -1) // 11b: no list identifier
	case tdl+sdl > xcopyMaxDescListLen:
		return nil, checkCondition(senseIllegalRequest, ascParamListLength)
	case 16+tdl+sdl+idl > len(p):
		// The list is shorter than its header says: a descriptor or the
		// inline data would be truncated.
		return nil, checkCondition(senseIllegalRequest, ascParamListLength)
	case idl != 0:
		return nil, invalidParam(12, -1) // MAXIMUM INLINE DATA LENGTH is 0
	case tdl%32 != 0:
		return nil, invalidParam(2, -1)
	case tdl/32 > xcopyMaxCSCDs:
		return nil, paramError(ascTooManyTargetDescs, 2)
	}
	for off := 16; off < 16+tdl; off += 32 {
		if p[off] != cscdIdentDesc {
			return nil, paramError(ascUnsupportedTargetDesc, off)
		}
		l.cscds = append(l.cscds, c.resolveCSCD(p[off:off+32], off))
	}
	end := 16 + tdl + sdl
	for off := 16 + tdl; off < end; {
		if end-off < 8 {
			return nil, invalidParam(8, -1) // SEGMENT DESCRIPTOR LIST LENGTH
		}
		dl := int(be16(p[off+2:]))
		if off+4+dl > end {
			return nil, invalidParam(off+2, -1)
		}
		if len(l.segs) == xcopyMaxSegments {
			return nil, paramError(ascTooManySegmentDescs, 8)
		}
		d := p[off : off+4+dl]
		s := segment{off: off, typ: d[0]}
		// Every segment type here has its source and destination indexes
		// at bytes 4-7; the length is checked per type before any field
		// past the header is read.
		switch s.typ {
		case segBlockToBlock, segVerifyCSCD:
			if dl < 4 {
				return nil, invalidParam(off+2, -1)
			}
			s.src, s.dst = be16(d[4:]), be16(d[6:])
		}
		switch s.typ {
		case segBlockToBlock:
			if dl != 0x18 {
				return nil, invalidParam(off+2, -1)
			}
			s.dc = d[1]&0x02 != 0
			s.blocks = uint64(be16(d[10:]))
			s.srcLBA = be64(d[12:])
			s.dstLBA = be64(d[20:])
		case segVerifyCSCD:
			if dl != 0x08 {
				return nil, invalidParam(off+2, -1)
			}
			s.tur = d[8]&0x01 != 0
		default:
			return nil, paramError(ascUnsupportedSegmentDesc, off)
		}
		l.segs = append(l.segs, s)
		off += 4 + dl
	}
	return l, nil
}

// resolveCSCD finds the LU an identification CSCD descriptor (SPC-4
// section 6.4.5.6) designates: an LU of this target whose NAA designator
// (VPD page 83h) it carries. The LU ID TYPE field does not apply to this
// descriptor and NUL is obsolete, so both are ignored.
func (c *scsiCmd) resolveCSCD(d []byte, off int) cscd {
	r := cscd{off: off}
	codeSet, assoc, typ, n := d[4]&0x0f, d[5]>>4&3, d[5]&0x0f, int(d[7])
	if codeSet == 1 && assoc == 0 && typ == 3 && n == 8 {
		for _, lu := range c.target.lus {
			if bytes.Equal(lu.naa[:], d[8:16]) {
				r.lu = lu
			}
		}
	}
	if r.lu == nil {
		r.fail = &copyFailure{asc: ascCopyTargetNotReachable, field: off, residual: -1}
		return r
	}
	// A block device whose DISK BLOCK LENGTH is the LU's (SPC-4 6.4.5.3).
	blockLen := int(d[29])<<16 | int(d[30])<<8 | int(d[31])
	if d[1]&0x1f != 0 || blockLen != r.lu.blockSize {
		r.lu, r.fail = nil, &copyFailure{asc: ascIncorrectCopyTargetType, field: off, residual: -1}
	}
	return r
}

// copyFailure is an exception during segment processing, reported as
// COPY ABORTED (SPC-4 section 5.17.7.4).
type copyFailure struct {
	asc   uint16
	sd    bool // field is relative to the segment descriptor
	field int  // sense-key specific field pointer; -1: none
	// residual is the count of destination blocks the segment did not
	// write; -1 when nothing was written (the INFORMATION field is then
	// not valid).
	residual int64
	// The status and sense data of the command that failed at a copy
	// source (fromSrc) or copy destination, returned with the sense data.
	fromSrc   bool
	fwdStatus byte
	fwdSense  []byte
}

func unreachable(field int) *copyFailure {
	return &copyFailure{asc: ascUnreachableCopyTarget, sd: true, field: field, residual: -1}
}

// sense builds fixed-format COPY ABORTED sense data: the segment number
// in the COMMAND-SPECIFIC INFORMATION field, the segment pointer in the
// sense-key specific field (SPC-4 section 4.5.2.4.5) and, after the
// standard 18 bytes, the failed command's status and sense data, located
// by the first (copy source) or second (copy destination) byte of the
// COMMAND-SPECIFIC INFORMATION field.
func (f *copyFailure) sense(seg int) []byte {
	b := make([]byte, 18, 18+1+len(f.fwdSense))
	b[0] = 0x70
	b[2] = senseCopyAborted
	if f.residual >= 0 {
		b[0] |= 0x80
		binary.BigEndian.PutUint32(b[3:], uint32(min(f.residual, 0xffffffff)))
	}
	binary.BigEndian.PutUint16(b[10:], uint16(seg))
	b[12], b[13] = byte(f.asc>>8), byte(f.asc)
	if f.field >= 0 {
		b[15] = 0x80
		if f.sd {
			b[15] |= 0x20
		}
		binary.BigEndian.PutUint16(b[16:], uint16(f.field))
	}
	if f.fwdSense != nil {
		if f.fromSrc {
			b[8] = 18
		} else {
			b[9] = 18
		}
		b = append(append(b, f.fwdStatus), f.fwdSense...)
	}
	b[7] = byte(len(b) - 8)
	return b
}

// forward records the result of a command a copy source or destination
// failed (or would fail) with.
func (f *copyFailure) forward(res *scsiResult, fromSrc bool) *copyFailure {
	f.fromSrc, f.fwdStatus, f.fwdSense = fromSrc, res.status, res.sense
	return f
}

func execExtendedCopy(c *scsiCmd, data []byte) *scsiResult {
	if c.dataOut == 0 {
		return resultGood
	}
	l, res := c.parseCopyList(data[:c.dataOut])
	if res != nil {
		return res
	}
	if res := c.checkCopyAccess(l); res != nil {
		return res
	}
	op, res := c.lu.xcopy.begin(c, l)
	if res != nil {
		return res
	}
	run := &copyRun{c: c, l: l, op: op}
	seg, f := run.run()
	switch {
	case f != nil:
		res = &scsiResult{status: statusCheckCondition, sense: f.sense(seg)}
	case c.isAborted():
		res = &scsiResult{status: statusTaskAborted}
	default:
		res = resultGood
	}
	c.lu.xcopy.end(op, res)
	return res
}

func (c *scsiCmd) isAborted() bool { return c.aborted != nil && c.aborted() }

// checkCopyAccess applies, before any data moves, the checks that the LUs
// a copy reads and writes would apply to the initiator itself: the copy
// manager acts for it. A write-protected destination is refused with DATA
// PROTECT, a reservation that excludes the initiator with RESERVATION
// CONFLICT (SPC-4 section 5.17.7.3: not COPY ABORTED).
func (c *scsiCmd) checkCopyAccess(l *copyList) *scsiResult {
	reader := &opInfo{flags: fMedia | fPRRead}
	writer := &opInfo{flags: fMedia | fWrite}
	for _, s := range l.segs {
		if s.typ != segBlockToBlock || s.blocks == 0 {
			continue
		}
		for _, end := range []struct {
			id uint16
			o  *opInfo
		}{{s.src, reader}, {s.dst, writer}} {
			lu := l.lookup(c, end.id)
			if lu == nil {
				continue // reported when the segment is processed
			}
			lu.mu.Lock()
			err := lu.syncShared()
			conflict := err == nil && lu.conflicts(c.nexus, end.o)
			swp := lu.swp
			lu.mu.Unlock()
			switch {
			case err != nil:
				return sharedStateFailure()
			case conflict:
				return reservationConflict()
			case end.o == writer && (lu.readOnly || swp):
				return checkCondition(senseDataProtect, ascWriteProtected)
			}
		}
	}
	return nil
}

// lookup returns the LU a segment's CSCD ID designates, or nil.
func (l *copyList) lookup(c *scsiCmd, id uint16) *LU {
	if id == cscdIDSelf {
		return c.lu
	}
	if int(id) < len(l.cscds) {
		return l.cscds[id].lu
	}
	return nil
}

// copyRun processes the segment descriptors in order (SPC-4 5.17.7.2).
type copyRun struct {
	c   *scsiCmd
	l   *copyList
	op  *copyOp
	buf []byte
}

// run returns the index of the segment that failed and why, or a nil
// failure.
func (r *copyRun) run() (int, *copyFailure) {
	defer func() {
		if r.buf != nil {
			putBuf(r.buf)
		}
	}()
	for i, s := range r.l.segs {
		if r.c.isAborted() {
			return i, nil
		}
		r.c.lu.xcopy.progress(r.op, i+1, 0)
		var f *copyFailure
		switch s.typ {
		case segBlockToBlock:
			f = r.blockToBlock(s)
		case segVerifyCSCD:
			f = r.verify(s)
		}
		if f != nil {
			return i, f
		}
	}
	return 0, nil
}

// endpoint resolves a segment's source or destination CSCD ID; field is
// the offset of that ID in the segment descriptor.
func (r *copyRun) endpoint(id uint16, field int) (*LU, *copyFailure) {
	switch {
	case id == cscdIDSelf:
		return r.c.lu, nil
	case int(id) < len(r.l.cscds):
		d := r.l.cscds[id]
		if d.fail != nil {
			return nil, d.fail
		}
		return d.lu, nil
	}
	// Any other ID is unreachable, the null LU C000h included: it takes
	// no commands (SPC-4 table 148).
	return nil, unreachable(field)
}

// notReady is the NOT READY result an LU would give a read or write now,
// or nil.
func (lu *LU) notReady() *scsiResult {
	lu.mu.Lock()
	stopped := lu.stopped
	lu.mu.Unlock()
	if stopped {
		return checkCondition(senseNotReady, ascNotReadyInitCmdRequired)
	}
	switch lu.vol.State() {
	case PathTransitioning:
		return checkCondition(senseNotReady, ascNotReadyTransition)
	case PathStandby:
		return checkCondition(senseNotReady, ascNotReadyStandby)
	case PathUnavailable:
		return checkCondition(senseNotReady, ascNotReadyUnavailable)
	}
	return nil
}

// verify is the verify CSCD function (SPC-4 section 6.4.6.9): with TUR
// set, the CSCD must be ready as TEST UNIT READY would say.
func (r *copyRun) verify(s segment) *copyFailure {
	lu, f := r.endpoint(s.src, 4)
	if f != nil {
		return f
	}
	if s.tur {
		if res := lu.notReady(); res != nil {
			return (&copyFailure{asc: ascThirdPartyDeviceFailure, field: r.l.cscdOff(s.src), residual: -1}).forward(res, true)
		}
	}
	return nil
}

// cscdOff is the parameter list offset of the CSCD descriptor an ID
// names, for the field pointer of a failure at that CSCD (SPC-4
// 5.17.7.4 f); -1 when it is not a descriptor of the list.
func (l *copyList) cscdOff(id uint16) int {
	if int(id) < len(l.cscds) {
		return l.cscds[id].off
	}
	return -1
}

// blockToBlock copies logical blocks (SPC-4 section 6.4.6.4). The number
// of blocks counts source blocks, or destination blocks with DC set; the
// byte count must be whole blocks at both ends, as residual data is not
// carried between segments.
func (r *copyRun) blockToBlock(s segment) *copyFailure {
	src, f := r.endpoint(s.src, 4)
	if f != nil {
		return f
	}
	dst, f := r.endpoint(s.dst, 6)
	if f != nil {
		return f
	}
	unit := src.blockSize
	if s.dc {
		unit = dst.blockSize
	}
	n := s.blocks * uint64(unit)
	if n == 0 {
		return nil
	}
	if n%uint64(src.blockSize) != 0 || n%uint64(dst.blockSize) != 0 {
		return &copyFailure{asc: ascUnexpectedInexactSegment, sd: true, field: 10, residual: -1}
	}
	// The copy manager reads and writes as the initiator would; what the
	// LUs would answer it is returned with the COPY ABORTED sense data.
	// An out-of-range segment is an error in the segment descriptor
	// (SPC-4 5.17.7.4 g): the field pointer shows which LBA.
	//
	// The additional sense code of an out-of-range segment is NO
	// ADDITIONAL SENSE INFORMATION: SPC-4 leaves it open, the LBA OUT OF
	// RANGE that the LU would have answered is in the returned sense data,
	// and libiscsi's ValidSegDescr test accepts only 00/00, 08/04 or 0D/02.
	for _, e := range []struct {
		lu    *LU
		id    uint16
		lba   uint64
		field int
		src   bool
	}{{src, s.src, s.srcLBA, 12, true}, {dst, s.dst, s.dstLBA, 20, false}} {
		e.lu.mu.Lock()
		nb := e.lu.nblocks
		e.lu.mu.Unlock()
		if count := n >> e.lu.blockShift; e.lba > nb || count > nb-e.lba {
			return (&copyFailure{sd: true, field: e.field, residual: -1}).forward(lbaOutOfRange(), e.src)
		}
		if res := e.lu.notReady(); res != nil {
			return (&copyFailure{asc: ascThirdPartyDeviceFailure, field: r.l.cscdOff(e.id), residual: -1}).forward(res, e.src)
		}
	}
	return r.move(src, dst, int64(s.srcLBA)<<src.blockShift, int64(s.dstLBA)<<dst.blockShift, int64(n))
}

// move copies n bytes in chunks of at most xcopyChunk. When the
// destination overlaps the source further on, it copies from the end so
// that no source byte is overwritten before it is read.
func (r *copyRun) move(src, dst *LU, from, to, n int64) *copyFailure {
	if r.buf == nil {
		r.buf = getBuf(xcopyChunk)
	}
	backward := src.vol == dst.vol && to > from && to < from+n
	fua := !dst.writeCache()
	var done int64 // bytes written, from the start of the range when forward
	for done < n {
		if r.c.isAborted() {
			return nil
		}
		m := min(n-done, xcopyChunk)
		at := done
		if backward {
			at = n - done - m
		}
		buf := r.buf[:m]
		if err := src.vol.ReadAt(buf, from+at); err != nil {
			return r.volumeFailure(err, true, dst, done, n, backward)
		}
		if err := dst.vol.WriteAt(buf, to+at, fua); err != nil {
			return r.volumeFailure(err, false, dst, done, n, backward)
		}
		done += m
		r.c.lu.xcopy.progress(r.op, 0, uint64(m))
	}
	return nil
}

// volumeFailure reports a read or write that failed: a command failure at
// a copy source or destination (SPC-4 5.17.7.4), with the residual count
// of destination blocks when part of the segment was written in order.
func (r *copyRun) volumeFailure(err error, read bool, dst *LU, done, n int64, backward bool) *copyFailure {
	f := (&copyFailure{asc: ascThirdPartyDeviceFailure, field: -1, residual: -1}).forward(volumeError(err, read), read)
	if done > 0 && !backward {
		f.residual = (n - done) >> dst.blockShift
	}
	return f
}

// begin registers a copy operation: a list identifier still in use on
// the nexus is refused, and one held from an earlier copy is replaced
// (SPC-4 sections 5.17.4.2, 6.25).
func (m *copyManager) begin(c *scsiCmd, l *copyList) (*copyOp, *scsiResult) {
	c.lu.mu.Lock()
	resets := c.lu.pr.resets
	c.lu.mu.Unlock()
	op := &copyOp{nexus: c.nexus, listID: l.listID, hold: l.usage == 0, named: l.usage != 3, resets: resets}
	m.mu.Lock()
	defer m.mu.Unlock()
	running, held := 0, 0
	keep := m.ops[:0]
	for _, o := range m.ops {
		if op.named && o.nexus == op.nexus && o.listID == op.listID {
			if !o.done {
				return nil, checkCondition(senseIllegalRequest, ascXcopyListIDInUse)
			}
			continue // replaced
		}
		if o.done {
			held++
		} else {
			running++
		}
		keep = append(keep, o)
	}
	clear(m.ops[len(keep):])
	m.ops = keep
	if running >= xcopyMaxRunning {
		return nil, &scsiResult{status: statusBusy}
	}
	if held >= xcopyMaxHeld {
		for i, o := range m.ops {
			if o.done {
				m.ops = append(m.ops[:i], m.ops[i+1:]...)
				break
			}
		}
	}
	m.ops = append(m.ops, op)
	return op, nil
}

func (m *copyManager) progress(op *copyOp, segments int, written uint64) {
	m.mu.Lock()
	if segments > 0 {
		op.segments = segments
	}
	op.written += written
	m.mu.Unlock()
}

// end records the outcome; the results of a copy that does not hold
// them are dropped.
func (m *copyManager) end(op *copyOp, res *scsiResult) {
	m.mu.Lock()
	defer m.mu.Unlock()
	op.done, op.status, op.sense = true, res.status, res.sense
	if !op.hold {
		m.remove(op)
	}
}

func (m *copyManager) remove(op *copyOp) {
	for i, o := range m.ops {
		if o == op {
			m.ops = append(m.ops[:i], m.ops[i+1:]...)
			return
		}
	}
}

// find returns the nexus's copy operation with a list identifier; a LU
// reset since it began discards it (SPC-4 section 6.25 c). Caller holds
// m.mu.
func (m *copyManager) find(n *Nexus, id byte, resets uint64) *copyOp {
	for _, o := range m.ops {
		if o.nexus == n && o.listID == id && o.named {
			if o.resets != resets {
				m.remove(o)
				return nil
			}
			return o
		}
	}
	return nil
}

// RECEIVE COPY RESULTS (SPC-4 sections 6.21 to 6.23, 6.25).
func parseReceiveCopyResults(c *scsiCmd) *scsiResult {
	switch c.cdb[1] & 0x1f {
	case 0x00, 0x01, 0x03, 0x04:
	default:
		return invalidCDB(1, 4)
	}
	c.allocIn(int(be32(c.cdb[10:])))
	return nil
}

func execReceiveCopyResults(c *scsiCmd, _ []byte) *scsiResult {
	sa := c.cdb[1] & 0x1f
	if sa == 0x03 {
		return c.trim(c.lu.copyOperatingParameters())
	}
	c.lu.mu.Lock()
	resets := c.lu.pr.resets
	c.lu.mu.Unlock()
	m := &c.lu.xcopy
	m.mu.Lock()
	defer m.mu.Unlock()
	op := m.find(c.nexus, c.cdb[2], resets)
	// Unknown, still running (but for COPY STATUS), or a finished status
	// already reported: COPY STATUS data is discarded once returned
	// (SPC-4 section 6.25 a).
	if op == nil || sa != 0x00 && !op.done || sa == 0x00 && op.statusTaken {
		return invalidCDB(2, -1)
	}
	var b []byte
	switch sa {
	case 0x00: // COPY STATUS
		b = make([]byte, 12)
		binary.BigEndian.PutUint32(b, 8)
		if op.done {
			b[4] = 0x01 // completed without errors
			if op.status != statusGood {
				b[4] = 0x02
			}
			op.statusTaken = true
		}
		binary.BigEndian.PutUint16(b[5:], uint16(op.segments))
		units, count := transferCount(op.written)
		b[7] = units
		binary.BigEndian.PutUint32(b[8:], count)
	case 0x01: // RECEIVE DATA: no segment type this copy manager supports holds data
		b = make([]byte, 4)
	case 0x04: // FAILED SEGMENT DETAILS
		b = make([]byte, 4)
		if op.status != statusGood && !op.detailsGone {
			b = make([]byte, 60, 60+len(op.sense))
			b[56] = op.status
			binary.BigEndian.PutUint16(b[58:], uint16(len(op.sense)))
			b = append(b, op.sense...)
			binary.BigEndian.PutUint32(b, uint32(len(b)-4))
			// Discarded once transferred, or when asked with an
			// allocation length of zero (SPC-4 section 6.23).
			op.detailsGone = c.alloc == 0 || c.alloc >= len(b)
		}
	}
	if op.done && op.statusTaken && (op.status == statusGood || op.detailsGone) {
		m.remove(op)
	}
	return c.trim(b)
}

// transferCount expresses a byte count in the smallest TRANSFER COUNT
// UNITS (SPC-4 table 251) whose count fits in 32 bits.
func transferCount(n uint64) (units byte, count uint32) {
	for n > 0xffffffff {
		n >>= 10
		units++
	}
	return units, uint32(n)
}

// copyOperatingParameters is the RECEIVE COPY OPERATING PARAMETERS data
// (SPC-4 section 6.22).
func (lu *LU) copyOperatingParameters() []byte {
	codes := []byte{segBlockToBlock, segVerifyCSCD, cscdIdentDesc}
	b := make([]byte, 44, 44+len(codes))
	b[4] = 0x01 // SNLID: LIST ID USAGE 11b is supported
	binary.BigEndian.PutUint16(b[8:], xcopyMaxCSCDs)
	binary.BigEndian.PutUint16(b[10:], xcopyMaxSegments)
	binary.BigEndian.PutUint32(b[12:], xcopyMaxDescListLen)
	binary.BigEndian.PutUint32(b[16:], lu.maxCopySegmentBytes())
	binary.BigEndian.PutUint16(b[34:], xcopyMaxRunning) // TOTAL CONCURRENT COPIES
	b[36] = xcopyMaxRunning                             // MAXIMUM CONCURRENT COPIES
	b[37] = byte(lu.blockShift)                         // DATA SEGMENT GRANULARITY (log2)
	b[43] = byte(len(codes))
	b = append(b, codes...)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// maxCopySegmentBytes is the most a block to block segment writes: its
// NUMBER OF BLOCKS field has 16 bits.
func (lu *LU) maxCopySegmentBytes() uint32 { return 0xffff * uint32(lu.blockSize) }

// thirdPartyCopyVPD is the body of the Third-party Copy VPD page (SPC-4
// section 7.8.17): the commands, limits and descriptors of the copy
// manager, the same values RECEIVE COPY OPERATING PARAMETERS reports.
func (lu *LU) thirdPartyCopyVPD() []byte {
	var b []byte
	desc := func(typ uint16, body []byte) {
		for len(body)%4 != 0 {
			body = append(body, 0)
		}
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
		b = append(b, body...)
	}
	// Supported Commands: EXTENDED COPY(LID1); RECEIVE COPY STATUS(LID1),
	// DATA(LID1), OPERATING PARAMETERS, FAILURE DETAILS(LID1).
	cmds := []byte{0x83, 1, 0x00, 0x84, 4, 0x00, 0x01, 0x03, 0x04}
	desc(0x0001, append([]byte{byte(len(cmds))}, cmds...))
	// Parameter Data.
	pd := make([]byte, 28)
	binary.BigEndian.PutUint16(pd[4:], xcopyMaxCSCDs)
	binary.BigEndian.PutUint16(pd[6:], xcopyMaxSegments)
	binary.BigEndian.PutUint32(pd[8:], xcopyMaxDescListLen)
	desc(0x0004, pd)
	// Supported Descriptors.
	codes := []byte{segBlockToBlock, segVerifyCSCD, cscdIdentDesc}
	desc(0x0008, append([]byte{byte(len(codes))}, codes...))
	// Supported CSCD Descriptor IDs: the ones above 07FFh.
	ids := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, cscdIDNullBlock), cscdIDSelf)
	desc(0x000c, append([]byte{0, byte(len(ids))}, ids...))
	// General Copy Operations.
	g := make([]byte, 32)
	binary.BigEndian.PutUint32(g[0:], xcopyMaxRunning)
	binary.BigEndian.PutUint32(g[4:], xcopyMaxRunning)
	binary.BigEndian.PutUint32(g[8:], lu.maxCopySegmentBytes())
	g[12] = byte(lu.blockShift)
	desc(0x8001, g)
	return b
}
