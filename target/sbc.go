package target

import (
	"bytes"
	"encoding/binary"
	"errors"
)

// Block commands, SBC-3. Limits reported in the Block Limits VPD page.
const (
	maxCompareAndWriteBlocks = 255
	maxUnmapDescriptors      = 256
	maxWriteSameBlocks       = 1 << 22
	maxUnmapBlocks           = 1 << 20
)

// parseRW decodes the LBA and transfer length of READ, WRITE, VERIFY,
// WRITE AND VERIFY, PRE-FETCH and SYNCHRONIZE CACHE in their 6, 10, 12 and
// 16 byte forms.
func (c *scsiCmd) parseLBA() {
	cdb := c.cdb
	switch len16(cdb[0]) {
	case 6:
		c.lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		c.blocks = uint64(cdb[4])
		if c.blocks == 0 && (cdb[0] == 0x08 || cdb[0] == 0x0a) {
			c.blocks = 256 // SBC-3 section 5.11: zero means 256
		}
	case 10:
		c.lba = uint64(be32(cdb[2:]))
		c.blocks = uint64(be16(cdb[7:]))
	case 12:
		c.lba = uint64(be32(cdb[2:]))
		c.blocks = uint64(be32(cdb[6:]))
	case 16:
		c.lba = be64(cdb[2:])
		c.blocks = uint64(be32(cdb[10:]))
	}
}

// len16 gives the CDB length of an opcode from its group code (SPC-4
// section 4.2.5.1).
func len16(op byte) int {
	switch op >> 5 {
	case 0:
		return 6
	case 1, 2:
		return 10
	case 4:
		return 16
	case 5:
		return 12
	}
	return 0
}

func (c *scsiCmd) bytesOf(blocks uint64) int { return int(blocks) << c.lu.blockShift }
func (c *scsiCmd) off() int64                { return int64(c.lba) << c.lu.blockShift }

// checkTransfer bounds the transfer length and the LBA range.
func (c *scsiCmd) checkTransfer() *scsiResult {
	if c.blocks<<c.lu.blockShift > maxTransferBytes {
		return invalidCDB(lengthField(c.cdb), -1)
	}
	return c.checkRange()
}

// lengthField is the byte offset of the transfer length in a CDB, for
// sense-key specific field pointers.
func lengthField(cdb []byte) int {
	switch len16(cdb[0]) {
	case 6:
		return 4
	case 10:
		return 7
	case 12:
		return 6
	}
	return 10
}

func parseRead(c *scsiCmd) *scsiResult {
	c.parseLBA()
	if len16(c.cdb[0]) != 6 && c.cdb[1]&0xe0 != 0 {
		// RDPROTECT: the LU has no protection information.
		return invalidCDB(1, 7)
	}
	if res := c.checkTransfer(); res != nil {
		return res
	}
	c.allocIn(c.bytesOf(c.blocks))
	return nil
}

func execRead(c *scsiCmd, _ []byte) *scsiResult {
	n := c.bytesOf(c.blocks)
	if n == 0 {
		return resultGood
	}
	buf := getBuf(n)
	var err error
	if c.try != nil {
		var ok bool
		if ok, err = c.try.TryReadAt(buf, c.off()); !ok && err == nil {
			putBuf(buf)
			return resultWouldWait
		}
	} else {
		err = c.lu.vol.ReadAt(buf, c.off())
	}
	if err != nil {
		putBuf(buf)
		return volumeError(err, true)
	}
	return &scsiResult{status: statusGood, data: buf, release: func() { putBuf(buf) }}
}

// resultWouldWait is what a command run with scsiCmd.try answers when
// the volume would have to wait: nothing was done, run it again where
// it may wait.
var resultWouldWait = &scsiResult{}

func parseWrite(c *scsiCmd) *scsiResult {
	c.parseLBA()
	if len16(c.cdb[0]) != 6 {
		if c.cdb[1]&0xe0 != 0 {
			return invalidCDB(1, 7) // WRPROTECT
		}
		c.fua = c.cdb[1]&0x08 != 0
	}
	if res := c.checkTransfer(); res != nil {
		return res
	}
	c.dataOut = c.bytesOf(c.blocks)
	return nil
}

func execWrite(c *scsiCmd, data []byte) *scsiResult {
	if c.blocks == 0 {
		return resultGood
	}
	fua := c.fua || !c.lu.writeCache()
	if err := c.lu.vol.WriteAt(data[:c.dataOut], c.off(), fua); err != nil {
		return volumeError(err, false)
	}
	return resultGood
}

func (lu *LU) writeCache() bool {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	return lu.wce
}

// parseVerify handles VERIFY (BYTCHK 0: check the medium, 1: compare with
// Data-Out, 3: compare one block with every block; SBC-4 section 5.31).
func parseVerify(c *scsiCmd) *scsiResult {
	c.parseLBA()
	if c.cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7)
	}
	if res := c.checkTransfer(); res != nil {
		return res
	}
	switch (c.cdb[1] >> 1) & 3 {
	case 0:
	case 1:
		c.dataOut = c.bytesOf(c.blocks)
	case 3:
		if c.blocks > 0 {
			c.dataOut = c.bytesOf(1)
		}
	default:
		return invalidCDB(1, 2)
	}
	return nil
}

func execVerify(c *scsiCmd, data []byte) *scsiResult {
	if c.blocks == 0 {
		return resultGood
	}
	n := c.bytesOf(c.blocks)
	buf := getBuf(n)
	defer putBuf(buf)
	if err := c.lu.vol.ReadAt(buf, c.off()); err != nil {
		return volumeError(err, true)
	}
	bytchk := (c.cdb[1] >> 1) & 3
	if bytchk == 0 {
		return resultGood
	}
	bs := c.bytesOf(1)
	for i := 0; i < n; i += bs {
		want := data[:bs] // BYTCHK 3: one block for all
		if bytchk == 1 {
			want = data[i : i+bs]
		}
		if j := firstDiff(buf[i:i+bs], want); j >= 0 {
			return miscompare(uint64(i + j))
		}
	}
	return resultGood
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func miscompare(off uint64) *scsiResult {
	return checkSense(senseData{key: senseMiscompare, asc: ascMiscompareVerify, info: off, infoValid: true})
}

func parseWriteVerify(c *scsiCmd) *scsiResult {
	c.parseLBA()
	if c.cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7)
	}
	if res := c.checkTransfer(); res != nil {
		return res
	}
	c.dataOut = c.bytesOf(c.blocks)
	return nil
}

func execWriteVerify(c *scsiCmd, data []byte) *scsiResult {
	if c.blocks == 0 {
		return resultGood
	}
	// The write is durable before it is verified (SBC-3 section 5.40).
	if err := c.lu.vol.WriteAt(data[:c.dataOut], c.off(), true); err != nil {
		return volumeError(err, false)
	}
	return resultGood
}

func parsePrefetch(c *scsiCmd) *scsiResult {
	c.parseLBA()
	return c.checkRange()
}

func execPrefetch(c *scsiCmd, _ []byte) *scsiResult { return resultGood }

func parseSync(c *scsiCmd) *scsiResult {
	c.parseLBA()
	return c.checkRange()
}

func execSync(c *scsiCmd, _ []byte) *scsiResult {
	if err := c.lu.vol.Flush(); err != nil {
		return volumeError(err, false)
	}
	return resultGood
}

// WRITE SAME (SBC-3 section 5.42, 5.43).
func parseWriteSame(c *scsiCmd) *scsiResult {
	c.parseLBA()
	f := c.cdb[1]
	if f&0xe0 != 0 {
		return invalidCDB(1, 7)
	}
	if f&0x10 != 0 {
		return invalidCDB(1, 4) // ANCHOR: no anchored state
	}
	if f&0x06 != 0 {
		return invalidCDB(1, 2) // PBDATA/LBDATA (obsolete)
	}
	unmap := f&0x08 != 0
	ndob := c.cdb[0] == 0x93 && f&0x01 != 0
	if c.cdb[0] != 0x93 && f&0x01 != 0 {
		return invalidCDB(1, 0)
	}
	if unmap && !c.lu.thin {
		return invalidCDB(1, 3)
	}
	if c.blocks == 0 {
		// WSNZ=1 in the Block Limits page: zero is not accepted.
		return invalidCDB(lengthField(c.cdb), -1)
	}
	if c.blocks > maxWriteSameBlocks {
		return invalidCDB(lengthField(c.cdb), -1)
	}
	if res := c.checkRange(); res != nil {
		return res
	}
	if !ndob {
		c.dataOut = c.bytesOf(1)
	}
	return nil
}

func execWriteSame(c *scsiCmd, data []byte) *scsiResult {
	bs := c.bytesOf(1)
	var block []byte
	if c.dataOut > 0 {
		block = data[:bs]
	} else {
		block = make([]byte, bs)
	}
	unmap := c.cdb[1]&0x08 != 0
	if unmap && isZero(block) {
		// Deallocated blocks read back as zeros (LBPRZ), so the result is
		// the same as writing the zeros.
		if err := c.lu.vol.Unmap(c.off(), int64(c.bytesOf(c.blocks))); err != nil {
			return volumeError(err, false)
		}
		return resultGood
	}
	const chunk = 1 << 20
	total := c.bytesOf(c.blocks)
	n := min(total, chunk)
	buf := getBuf(n)
	defer putBuf(buf)
	for i := 0; i < n; i += bs {
		copy(buf[i:], block)
	}
	for off := 0; off < total; off += n {
		m := min(n, total-off)
		if err := c.lu.vol.WriteAt(buf[:m], c.off()+int64(off), false); err != nil {
			return volumeError(err, false)
		}
	}
	return resultGood
}

func bitsLen(x int) int {
	n := 0
	for ; x > 0; x >>= 1 {
		n++
	}
	return n
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// UNMAP (SBC-3 section 5.28).
func parseUnmap(c *scsiCmd) *scsiResult {
	if !c.lu.thin {
		return invalidOpcode()
	}
	if c.cdb[1]&0x01 != 0 {
		return invalidCDB(1, 0) // ANCHOR
	}
	n := int(be16(c.cdb[7:]))
	if n == 0 {
		return nil
	}
	if n < 8 {
		return checkCondition(senseIllegalRequest, ascParamListLength)
	}
	c.dataOut = n
	return nil
}

func execUnmap(c *scsiCmd, data []byte) *scsiResult {
	if c.dataOut == 0 {
		return resultGood
	}
	data = data[:c.dataOut]
	descLen := int(be16(data[2:]))
	if descLen%16 != 0 {
		return checkCondition(senseIllegalRequest, ascParamListLength)
	}
	if 8+descLen > len(data) {
		return checkCondition(senseIllegalRequest, ascParamListLength)
	}
	if descLen/16 > maxUnmapDescriptors {
		return invalidParam(2, -1)
	}
	c.lu.mu.Lock()
	nb := c.lu.nblocks
	c.lu.mu.Unlock()
	type ext struct{ lba, n uint64 }
	var exts []ext
	var total uint64
	for i := 8; i < 8+descLen; i += 16 {
		lba := be64(data[i:])
		cnt := uint64(be32(data[i+8:]))
		if lba > nb || cnt > nb-lba {
			return lbaOutOfRange()
		}
		// MAXIMUM UNMAP LBA COUNT bounds the whole list (SBC-3 section 5.28).
		total += cnt
		if total > maxUnmapBlocks {
			return invalidParam(i+8, -1)
		}
		exts = append(exts, ext{lba, cnt})
	}
	for _, e := range exts {
		if e.n == 0 {
			continue
		}
		if err := c.lu.vol.Unmap(int64(e.lba)<<c.lu.blockShift, int64(e.n)<<c.lu.blockShift); err != nil {
			return volumeError(err, false)
		}
	}
	return resultGood
}

// COMPARE AND WRITE (SBC-3 section 5.2).
func parseCompareAndWrite(c *scsiCmd) *scsiResult {
	if c.cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7)
	}
	c.fua = c.cdb[1]&0x08 != 0
	c.lba = be64(c.cdb[2:])
	c.blocks = uint64(c.cdb[13])
	if c.blocks > maxCompareAndWriteBlocks || c.blocks == 0 && c.edtl > 0 {
		// NUMBER OF LOGICAL BLOCKS 0 with data on the wire means the
		// initiator meant a length the byte cannot hold (256 and more).
		return invalidCDB(13, -1)
	}
	if res := c.checkRange(); res != nil {
		return res
	}
	c.dataOut = 2 * c.bytesOf(c.blocks)
	return nil
}

func execCompareAndWrite(c *scsiCmd, data []byte) *scsiResult {
	if c.blocks == 0 {
		return resultGood
	}
	n := c.bytesOf(c.blocks)
	// The volume makes the compare and the write one atomic step.
	at, err := c.lu.vol.CompareAndWrite(c.off(), data[:n], data[n:2*n])
	if err != nil {
		return volumeError(err, false)
	}
	if at >= 0 {
		return miscompare(uint64(at))
	}
	return c.durable()
}

// durable ends a write that went through CompareAndWrite: with FUA, or
// with the write cache off, it is flushed before GOOD.
func (c *scsiCmd) durable() *scsiResult {
	if c.fua || !c.lu.writeCache() {
		if err := c.lu.vol.Flush(); err != nil {
			return volumeError(err, false)
		}
	}
	return resultGood
}

// READ CAPACITY (SBC-3 sections 5.15, 5.16).
func parseReadCapacity10(c *scsiCmd) *scsiResult {
	if c.cdb[8]&1 == 0 && be32(c.cdb[2:]) != 0 {
		return invalidCDB(2, -1) // LBA without PMI
	}
	c.allocIn(8)
	return nil
}

func execReadCapacity10(c *scsiCmd, _ []byte) *scsiResult {
	c.lu.mu.Lock()
	last := c.lu.nblocks - 1
	c.lu.mu.Unlock()
	b := make([]byte, 8)
	if last > 0xffffffff {
		last = 0xffffffff // tells the initiator to use READ CAPACITY(16)
	}
	binary.BigEndian.PutUint32(b, uint32(last))
	binary.BigEndian.PutUint32(b[4:], uint32(c.lu.blockSize))
	return good(b)
}

func parseAlloc10(c *scsiCmd) *scsiResult {
	c.allocIn(int(be32(c.cdb[10:])))
	return nil
}

func execReadCapacity16(c *scsiCmd, _ []byte) *scsiResult {
	c.lu.mu.Lock()
	last := c.lu.nblocks - 1
	c.lu.mu.Unlock()
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b, last)
	binary.BigEndian.PutUint32(b[8:], uint32(c.lu.blockSize))
	// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT.
	if c.lu.physBlockSize > c.lu.blockSize {
		b[13] = byte(bitsLen(c.lu.physBlockSize/c.lu.blockSize) - 1)
	}
	if c.lu.thin {
		b[14] = 0xc0 // LBPME, LBPRZ
	}
	return c.trim(b)
}

// GET LBA STATUS (SBC-3 section 5.6).
func parseGetLBAStatus(c *scsiCmd) *scsiResult {
	c.lba = be64(c.cdb[2:])
	c.allocIn(int(be32(c.cdb[10:])))
	c.lu.mu.Lock()
	nb := c.lu.nblocks
	c.lu.mu.Unlock()
	if c.lba >= nb {
		return lbaOutOfRange()
	}
	return nil
}

func execGetLBAStatus(c *scsiCmd, _ []byte) *scsiResult {
	c.lu.mu.Lock()
	nb := c.lu.nblocks
	c.lu.mu.Unlock()
	// At least one descriptor is built so that a short allocation length
	// still returns the true header, truncated (SPC-4 section 4.2.5.6).
	maxDesc := min(max(c.alloc-8, 0)/16, 64)
	out := make([]byte, 8, 8+16*max(maxDesc, 1))
	lba := c.lba
	bs := int64(c.lu.blockSize)
	for i := 0; i < max(maxDesc, 1) && lba < nb; i++ {
		mapped, run, err := c.lu.vol.Mapped(int64(lba) * bs)
		if err != nil {
			return volumeError(err, true)
		}
		blocks := uint64((run + bs - 1) / bs)
		if blocks == 0 {
			blocks = 1
		}
		blocks = min(blocks, nb-lba, 0xffffffff)
		d := make([]byte, 16)
		binary.BigEndian.PutUint64(d, lba)
		binary.BigEndian.PutUint32(d[8:], uint32(blocks))
		if !mapped {
			d[12] = 1 // deallocated
		}
		out = append(out, d...)
		lba += blocks
	}
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return c.trim(out)
}

// START STOP UNIT (SBC-3 section 5.25).
func parseStartStop(c *scsiCmd) *scsiResult {
	if c.cdb[4]&0xf0 != 0 {
		// Power conditions other than START_VALID are not supported.
		return invalidCDB(4, 7)
	}
	return nil
}

func execStartStop(c *scsiCmd, _ []byte) *scsiResult {
	start := c.cdb[4]&0x01 != 0
	loej := c.cdb[4]&0x02 != 0
	if loej && !start {
		// Ejecting a medium that cannot be removed.
		return checkCondition(senseIllegalRequest, ascMediumRemovalPrevented)
	}
	if !start && c.cdb[4]&0x04 == 0 {
		if err := c.lu.vol.Flush(); err != nil {
			return volumeError(err, false)
		}
	}
	c.lu.mu.Lock()
	c.lu.stopped = !start
	c.lu.mu.Unlock()
	return resultGood
}

// volumeError maps a volume failure to sense data. The result keeps err,
// so that the command's end logs and counts it once (VolumeError).
func volumeError(err error, read bool) *scsiResult {
	res := volumeSense(err, read)
	res.volErr = err
	return res
}

func volumeSense(err error, read bool) *scsiResult {
	if errors.Is(err, ErrNoSpace) {
		// SBC-3 section 4.7.3.6: a write to a thin LU that cannot be
		// given space.
		return checkCondition(senseDataProtect, ascSpaceAllocFailed)
	}
	if errors.Is(err, ErrMedium) {
		asc := uint16(ascWriteError)
		if read {
			asc = ascUnrecoveredReadError
		}
		return checkCondition(senseMediumError, asc)
	}
	if errors.Is(err, ErrOutcomeUnknown) {
		return checkCondition(senseAbortedCommand, 0)
	}
	var ns *NotReadyError
	if errors.As(err, &ns) {
		return checkCondition(senseNotReady, ns.ASC)
	}
	return checkCondition(senseHardwareError, ascInternalTargetFailure)
}

// ErrOutcomeUnknown is returned (wrapped) by a volume when a write may or
// may not have taken effect: a mirrored volume whose writer went away
// while the write was on its way. It maps to ABORTED COMMAND, which
// initiators retry and which, unlike NOT READY, does not say the command
// was not carried out.
var ErrOutcomeUnknown = errors.New("volume: outcome of the command unknown")

// NotReadyError is returned by a volume that cannot serve I/O right now
// (for example a site that lost its lease); it maps to NOT READY with ASC.
type NotReadyError struct{ ASC uint16 }

func (e *NotReadyError) Error() string { return "volume not ready" }

// maxAtomicBytes bounds WRITE ATOMIC(16) (Block Limits VPD, SBC-4).
const maxAtomicBytes = 1 << 20

// readModifyWrite replaces the blocks of c with f(current) atomically: it
// reads, computes and commits with the volume's compare-and-write, and
// retries if a concurrent write got in between.
func (c *scsiCmd) readModifyWrite(f func(cur []byte) []byte) *scsiResult {
	n := c.bytesOf(c.blocks)
	cur := make([]byte, n)
	for attempt := 0; attempt < 16; attempt++ {
		if err := c.lu.vol.ReadAt(cur, c.off()); err != nil {
			return volumeError(err, true)
		}
		next := f(cur)
		at, err := c.lu.vol.CompareAndWrite(c.off(), cur, next)
		if err != nil {
			return volumeError(err, false)
		}
		if at < 0 {
			return c.durable()
		}
	}
	// Overlapping writes kept winning; the initiator may retry.
	return &scsiResult{status: statusBusy}
}

// ORWRITE(16) (SBC-3 section 5.8) with a non-zero ORPROTECT refused.
func parseOrWrite(c *scsiCmd) *scsiResult { return parseWrite(c) }

func execOrWrite(c *scsiCmd, data []byte) *scsiResult {
	if c.blocks == 0 {
		return resultGood
	}
	data = data[:c.dataOut]
	return c.readModifyWrite(func(cur []byte) []byte {
		out := make([]byte, len(cur))
		for i := range cur {
			out[i] = cur[i] | data[i]
		}
		return out
	})
}

// WRITE ATOMIC(16) (SBC-4 section 5.48): the whole transfer or nothing is
// visible to any other command.
func parseWriteAtomic(c *scsiCmd) *scsiResult {
	if c.cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7)
	}
	c.fua = c.cdb[1]&0x08 != 0
	c.lba = be64(c.cdb[2:])
	c.blocks = uint64(be16(c.cdb[12:]))
	if c.bytesOf(c.blocks) > maxAtomicBytes {
		return invalidCDB(12, -1)
	}
	if res := c.checkRange(); res != nil {
		return res
	}
	c.dataOut = c.bytesOf(c.blocks)
	return nil
}

func execWriteAtomic(c *scsiCmd, data []byte) *scsiResult {
	if c.blocks == 0 {
		return resultGood
	}
	data = data[:c.dataOut]
	return c.readModifyWrite(func([]byte) []byte { return data })
}

// READ DEFECT DATA (SBC-3 sections 5.17, 5.18): a virtual volume has no
// defects, so the lists are empty in whatever format was asked for.
func parseReadDefect(c *scsiCmd) *scsiResult {
	if c.cdb[0] == 0x37 {
		c.allocIn(int(be16(c.cdb[7:])))
	} else {
		c.allocIn(int(be32(c.cdb[6:])))
	}
	return nil
}

func execReadDefect(c *scsiCmd, _ []byte) *scsiResult {
	flags := c.cdb[1] & 0x1f
	if c.cdb[0] == 0x37 {
		flags = c.cdb[2] & 0x1f
		return c.trim([]byte{0, flags, 0, 0})
	}
	return c.trim([]byte{0, flags, 0, 0, 0, 0, 0, 0})
}
