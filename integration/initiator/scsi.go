package initiator

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// ErrNotSent marks an operation that failed before anything of it went
// to the target (a bad argument, or a preparatory command that failed):
// it was certainly not executed.
var ErrNotSent = errors.New("iscsi: command not sent")

// maxCDB is what fits in the BHS; longer CDBs would need an AHS.
const maxCDB = 16

// result is what a command returned with GOOD status.
type result struct {
	data      []byte // Data-In, without the residual
	underflow bool
	overflow  bool
	residual  uint32
}

// Command sends one SCSI command with up to inLen bytes of Data-In or the
// Data-Out in out (not both) and returns the Data-In received. A status
// other than GOOD or CONDITION MET is a *SCSIError. Fewer Data-In bytes
// than inLen (an underflow, normal for INQUIRY and the like) is not an
// error here.
func (s *Session) Command(ctx context.Context, lun uint64, cdb []byte, inLen int, out []byte) ([]byte, error) {
	res, err := s.exec(ctx, cdbName(cdb), lun, cdb, inLen, out)
	return res.data, err
}

func cdbName(cdb []byte) string {
	if len(cdb) == 0 {
		return "empty CDB"
	}
	switch cdb[0] {
	case 0x00:
		return "TEST UNIT READY"
	case 0x12:
		return "INQUIRY"
	case 0x35:
		return "SYNCHRONIZE CACHE(10)"
	case 0x88:
		return "READ(16)"
	case 0x8a:
		return "WRITE(16)"
	case 0x9e:
		return "READ CAPACITY(16)"
	}
	return fmt.Sprintf("SCSI op 0x%02x", cdb[0])
}

// exec runs one command: the SCSI Command PDU with immediate data,
// unsolicited Data-Out up to FirstBurstLength (InitialR2T=No), Data-Out
// for each R2T, Data-In collection, and the status.
// exec runs a command, sending it again (up to maxUARetries times) when
// the target answers with a unit attention, which SAM-5 reports instead
// of carrying the command out: what an initiator's SCSI layer does after
// noting the attention (a reset, an ALUA state change).
func (s *Session) exec(ctx context.Context, name string, lun uint64, cdb []byte, inLen int, out []byte) (result, error) {
	for try := 0; ; try++ {
		res, err := s.exec1(ctx, name, lun, cdb, inLen, out)
		var se *SCSIError
		if s.opts.NoUARetry || try == maxUARetries || !errors.As(err, &se) ||
			se.Status != StatusCheckCondition || se.SenseKey != SenseUnitAttention {
			return res, err
		}
		s.stats.UnitAttentions.Add(1)
	}
}

// maxUARetries bounds the resends after unit attentions.
const maxUARetries = 8

func (s *Session) exec1(ctx context.Context, name string, lun uint64, cdb []byte, inLen int, out []byte) (result, error) {
	var res result
	if len(cdb) == 0 || len(cdb) > maxCDB {
		return res, fmt.Errorf("%w: %s: CDB of %d bytes (1 to %d supported)", ErrNotSent, name, len(cdb), maxCDB)
	}
	if inLen > 0 && len(out) > 0 {
		return res, fmt.Errorf("%w: %s: bidirectional commands are not supported", ErrNotSent, name)
	}
	if inLen < 0 || inLen > 1<<31-1 || len(out) > 1<<31-1 {
		return res, fmt.Errorf("%w: %s: transfer length out of range", ErrNotSent, name)
	}
	lunField, err := encodeLUN(lun)
	if err != nil {
		return res, fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	unlock, err := s.begin(ctx, name)
	if err != nil {
		return res, err
	}
	defer unlock()
	if err := s.waitWindow(ctx, name); err != nil {
		return res, err
	}
	p := s.params
	itt := s.nextITT()
	s.mu.Lock()
	cmdSN := s.cmdSN
	s.cmdSN++
	expStatSN := s.expStatSN
	s.mu.Unlock()

	imm := 0
	if len(out) > 0 && p.ImmediateData {
		imm = min(len(out), p.FirstBurstLength, p.TargetMaxRecvDataSegmentLength)
	}
	unsolEnd := imm
	if len(out) > 0 && !p.InitialR2T {
		unsolEnd = min(len(out), p.FirstBurstLength)
	}
	cmd := &pdu{}
	cmd.hdr.setOpcode(opSCSICmd, false)
	flags := byte(0x01) // task attribute SIMPLE
	if unsolEnd == imm {
		flags |= 0x80 // F: no unsolicited Data-Out follows
	}
	edtl := inLen
	if inLen > 0 {
		flags |= 0x40
	}
	if len(out) > 0 {
		flags |= 0x20
		edtl = len(out)
	}
	cmd.hdr[1] = flags
	cmd.hdr.put64(8, lunField)
	cmd.hdr.put32(16, itt)
	cmd.hdr.put32(20, uint32(edtl))
	cmd.hdr.put32(24, cmdSN)
	cmd.hdr.put32(28, expStatSN)
	copy(cmd.hdr[32:48], cdb)
	cmd.data = out[:imm]
	pdus := append([]*pdu{cmd}, s.dataOut(lunField, itt, noTag, out, imm, unsolEnd)...)

	// From here on the target may execute the command.
	fail := func(err error) (result, error) {
		s.end(fmt.Errorf("%s: %w", name, err))
		return result{}, &ConnError{Op: name, Sent: true, Err: err}
	}
	s.stats.Commands.Add(1)
	s.stats.DataOut.Add(uint64(len(pdus) - 1))
	if err := s.writeCtx(ctx, pdus...); err != nil {
		return fail(err)
	}
	var (
		in         = make([]byte, inLen)
		got        int
		nextDataSN uint32
		nextR2TSN  uint32
	)
	for {
		r, err := s.next(ctx)
		if err != nil {
			return fail(err)
		}
		if r.hdr.itt() != itt {
			if r.hdr.opcode() == opReject && rejectedITT(r) == itt {
				return fail(rejectErr(r))
			}
			continue // left over from an earlier exchange
		}
		switch r.hdr.opcode() {
		case opDataIn:
			if inLen == 0 {
				return fail(fmt.Errorf("Data-In for a command that reads nothing (%v)", r))
			}
			if r.hdr.dataSN() != nextDataSN {
				return fail(fmt.Errorf("Data-In DataSN %d, expected %d", r.hdr.dataSN(), nextDataSN))
			}
			nextDataSN++
			s.stats.DataIn.Add(1)
			off := int(r.hdr.bufferOffset())
			if off < 0 || off+len(r.data) > inLen {
				return fail(fmt.Errorf("Data-In at offset %d+%d beyond the expected %d bytes", off, len(r.data), inLen))
			}
			copy(in[off:], r.data)
			got += len(r.data)
			if f := r.hdr.flags(); f&0x01 != 0 { // S: status included
				res.underflow, res.overflow, res.residual = f&0x02 != 0, f&0x04 != 0, r.hdr.residual()
				return s.status(name, cdb[0], r.hdr[3], nil, in, got, res)
			}
		case opR2T:
			if len(out) == 0 {
				return fail(fmt.Errorf("R2T for a command that writes nothing (%v)", r))
			}
			if sn := r.hdr.u32(36); sn != nextR2TSN {
				return fail(fmt.Errorf("R2TSN %d, expected %d", sn, nextR2TSN))
			}
			nextR2TSN++
			off, n := int64(r.hdr.bufferOffset()), int64(r.hdr.u32(44))
			if n == 0 || off+n > int64(len(out)) {
				return fail(fmt.Errorf("R2T for bytes %d+%d of a %d-byte write", off, n, len(out)))
			}
			s.stats.R2Ts.Add(1)
			douts := s.dataOut(lunField, itt, r.hdr.ttt(), out, int(off), int(off+n))
			s.stats.DataOut.Add(uint64(len(douts)))
			if err := s.writeCtx(ctx, douts...); err != nil {
				return fail(err)
			}
		case opSCSIResp:
			if resp := r.hdr[2]; resp != 0 {
				return result{}, &ResponseError{Op: cdb[0], Response: resp}
			}
			f := r.hdr.flags()
			res.underflow, res.overflow, res.residual = f&0x02 != 0, f&0x04 != 0, r.hdr.residual()
			var sense []byte
			if len(r.data) >= 2 {
				n := int(binary.BigEndian.Uint16(r.data))
				sense = r.data[2:min(2+n, len(r.data))]
			}
			return s.status(name, cdb[0], r.hdr[3], sense, in, got, res)
		}
	}
}

// status turns a final status into the command's result.
func (s *Session) status(name string, op, status byte, sense, in []byte, got int, res result) (result, error) {
	if status != StatusGood && status != StatusConditionMet {
		e := &SCSIError{Op: op, Status: status, Sense: append([]byte(nil), sense...)}
		if status == StatusCheckCondition {
			e.SenseKey, e.ASC, e.ASCQ, _ = ParseSense(sense)
		}
		return result{}, e
	}
	n := len(in)
	if res.underflow {
		if int64(res.residual) > int64(n) {
			return result{}, &ConnError{Op: name, Sent: true, Err: fmt.Errorf("residual %d exceeds the %d bytes expected", res.residual, n)}
		}
		n -= int(res.residual)
	}
	if got < n && len(in) > 0 {
		// The target said it sent n bytes but fewer arrived.
		return result{}, &ConnError{Op: name, Sent: true, Err: fmt.Errorf("%d bytes of Data-In, status says %d", got, n)}
	}
	res.data = in[:n]
	return res, nil
}

// dataOut builds the Data-Out PDUs for out[from:to], one sequence (DataSN
// from 0) for the given TTT (0xffffffff for unsolicited data), each PDU
// within the target's MaxRecvDataSegmentLength, F on the last.
func (s *Session) dataOut(lunField uint64, itt, ttt uint32, out []byte, from, to int) []*pdu {
	var ps []*pdu
	mr := s.params.TargetMaxRecvDataSegmentLength
	var sn uint32
	for off := from; off < to; {
		n := min(to-off, mr)
		p := &pdu{}
		p.hdr.setOpcode(opDataOut, false)
		if off+n == to {
			p.hdr[1] = 0x80
		}
		p.hdr.put64(8, lunField)
		p.hdr.put32(16, itt)
		p.hdr.put32(20, ttt)
		s.mu.Lock()
		p.hdr.put32(28, s.expStatSN)
		s.mu.Unlock()
		p.hdr.put32(36, sn)
		p.hdr.put32(40, uint32(off))
		p.data = out[off : off+n]
		ps = append(ps, p)
		sn++
		off += n
	}
	return ps
}

// SetBlockSize tells the session a LUN's logical block size, so that
// ReadBlocks and WriteBlocks need not ask with READ CAPACITY(16).
func (s *Session) SetBlockSize(lun uint64, bs uint32) {
	s.mu.Lock()
	s.blockSizes[lun] = bs
	s.mu.Unlock()
}

// BlockSize returns the LUN's logical block size, asking the target with
// READ CAPACITY(16) the first time.
func (s *Session) BlockSize(ctx context.Context, lun uint64) (uint32, error) {
	s.mu.Lock()
	bs, ok := s.blockSizes[lun]
	s.mu.Unlock()
	if ok {
		return bs, nil
	}
	bs, _, err := s.ReadCapacity16(ctx, lun)
	return bs, err
}

// ReadCapacity16 returns the logical block size and the number of blocks
// (RETURNED LOGICAL BLOCK ADDRESS + 1), SBC-3 section 5.16.
func (s *Session) ReadCapacity16(ctx context.Context, lun uint64) (blockSize uint32, blocks uint64, err error) {
	cdb := make([]byte, 16)
	cdb[0], cdb[1] = 0x9e, 0x10
	binary.BigEndian.PutUint32(cdb[10:14], 32)
	res, err := s.exec(ctx, "READ CAPACITY(16)", lun, cdb, 32, nil)
	if err != nil {
		return 0, 0, err
	}
	if len(res.data) < 12 {
		return 0, 0, fmt.Errorf("READ CAPACITY(16): %d bytes of parameter data, need 12", len(res.data))
	}
	last := binary.BigEndian.Uint64(res.data[0:8])
	blockSize = binary.BigEndian.Uint32(res.data[8:12])
	if blockSize == 0 {
		return 0, 0, errors.New("READ CAPACITY(16): block size 0")
	}
	s.SetBlockSize(lun, blockSize)
	return blockSize, last + 1, nil
}

func (s *Session) blockSizeFor(ctx context.Context, lun uint64, op string) (uint32, error) {
	bs, err := s.BlockSize(ctx, lun)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: block size of LUN %d unknown: %w", ErrNotSent, op, lun, err)
	}
	return bs, nil
}

// ReadBlocks reads n blocks at lba with READ(16).
func (s *Session) ReadBlocks(ctx context.Context, lun, lba uint64, n uint32) ([]byte, error) {
	bs, err := s.blockSizeFor(ctx, lun, "READ(16)")
	if err != nil {
		return nil, err
	}
	if uint64(n)*uint64(bs) > 1<<31-1 {
		return nil, fmt.Errorf("%w: READ(16) of %d blocks is too long", ErrNotSent, n)
	}
	cdb := make([]byte, 16)
	cdb[0] = 0x88
	binary.BigEndian.PutUint64(cdb[2:10], lba)
	binary.BigEndian.PutUint32(cdb[10:14], n)
	want := int(n) * int(bs)
	res, err := s.exec(ctx, fmt.Sprintf("READ(16) lba %d n %d", lba, n), lun, cdb, want, nil)
	if err != nil {
		return nil, err
	}
	if len(res.data) != want || res.overflow {
		return nil, &ResidualError{Op: 0x88, Underflow: res.underflow, Residual: res.residual}
	}
	return res.data, nil
}

// WriteBlocks writes data (a whole number of blocks) at lba with
// WRITE(16), FUA when asked. Data goes as immediate data, unsolicited
// Data-Out and R2T-solicited Data-Out as negotiated.
func (s *Session) WriteBlocks(ctx context.Context, lun, lba uint64, data []byte, fua bool) error {
	bs, err := s.blockSizeFor(ctx, lun, "WRITE(16)")
	if err != nil {
		return err
	}
	if len(data) == 0 || len(data)%int(bs) != 0 {
		return fmt.Errorf("%w: WRITE(16) of %d bytes, not a positive multiple of the %d-byte block", ErrNotSent, len(data), bs)
	}
	n := len(data) / int(bs)
	cdb := make([]byte, 16)
	cdb[0] = 0x8a
	if fua {
		cdb[1] = 0x08
	}
	binary.BigEndian.PutUint64(cdb[2:10], lba)
	binary.BigEndian.PutUint32(cdb[10:14], uint32(n))
	res, err := s.exec(ctx, fmt.Sprintf("WRITE(16) lba %d n %d", lba, n), lun, cdb, 0, data)
	if err != nil {
		return err
	}
	if res.underflow || res.overflow {
		return &ResidualError{Op: 0x8a, Underflow: res.underflow, Residual: res.residual}
	}
	return nil
}

// SyncCache sends SYNCHRONIZE CACHE(10) for the whole LUN.
func (s *Session) SyncCache(ctx context.Context, lun uint64) error {
	cdb := make([]byte, 10)
	cdb[0] = 0x35
	_, err := s.exec(ctx, "SYNCHRONIZE CACHE(10)", lun, cdb, 0, nil)
	return err
}

// TestUnitReady sends TEST UNIT READY.
func (s *Session) TestUnitReady(ctx context.Context, lun uint64) error {
	_, err := s.exec(ctx, "TEST UNIT READY", lun, make([]byte, 6), 0, nil)
	return err
}

// InquiryData is the start of standard INQUIRY data (SPC-4 6.6.2).
type InquiryData struct {
	PeripheralQualifier byte
	DeviceType          byte
	Vendor              string
	Product             string
	Revision            string
	Raw                 []byte
}

// Inquiry returns the standard INQUIRY data.
func (s *Session) Inquiry(ctx context.Context, lun uint64) (InquiryData, error) {
	cdb := []byte{0x12, 0, 0, 0, 255, 0}
	res, err := s.exec(ctx, "INQUIRY", lun, cdb, 255, nil)
	if err != nil {
		return InquiryData{}, err
	}
	b := res.data
	if len(b) < 36 {
		return InquiryData{}, fmt.Errorf("INQUIRY: %d bytes of data, need 36", len(b))
	}
	return InquiryData{
		PeripheralQualifier: b[0] >> 5,
		DeviceType:          b[0] & 0x1f,
		Vendor:              strings.TrimSpace(string(b[8:16])),
		Product:             strings.TrimSpace(string(b[16:32])),
		Revision:            strings.TrimSpace(string(b[32:36])),
		Raw:                 b,
	}, nil
}

// InquiryVPD returns a vital product data page (EVPD=1), header included.
func (s *Session) InquiryVPD(ctx context.Context, lun uint64, page byte) ([]byte, error) {
	const alloc = 4096
	cdb := []byte{0x12, 0x01, page, alloc >> 8, alloc & 0xff, 0}
	res, err := s.exec(ctx, fmt.Sprintf("INQUIRY VPD 0x%02x", page), lun, cdb, alloc, nil)
	if err != nil {
		return nil, err
	}
	if len(res.data) < 4 || res.data[1] != page {
		return nil, fmt.Errorf("INQUIRY VPD 0x%02x: malformed page (%d bytes)", page, len(res.data))
	}
	return res.data, nil
}
