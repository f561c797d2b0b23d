package target

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Opcodes, RFC 7143 section 11.1.1.
const (
	opNOPOut      = 0x00
	opSCSICmd     = 0x01
	opTaskMgmt    = 0x02
	opLoginReq    = 0x03
	opTextReq     = 0x04
	opDataOut     = 0x05
	opLogoutReq   = 0x06
	opSNACK       = 0x10
	opNOPIn       = 0x20
	opSCSIResp    = 0x21
	opTaskMgmtRsp = 0x22
	opLoginRsp    = 0x23
	opTextRsp     = 0x24
	opDataIn      = 0x25
	opLogoutRsp   = 0x26
	opR2T         = 0x31
	opAsyncMsg    = 0x32
	opReject      = 0x3f
)

const bhsLen = 48

// maxAHSLen is what the one-byte TotalAHSLength field can express (in words).
const maxAHSLen = 255 * 4

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// PDU is one iSCSI protocol data unit: the basic header segment, any
// additional header segments and the data segment (without padding).
// Field accessors follow the layouts of RFC 7143 section 11.
type PDU struct {
	BHS  [bhsLen]byte
	AHS  []byte
	Data []byte
}

func (p *PDU) Opcode() byte       { return p.BHS[0] & 0x3f }
func (p *PDU) Immediate() bool    { return p.BHS[0]&0x40 != 0 }
func (p *PDU) Final() bool        { return p.BHS[1]&0x80 != 0 }
func (p *PDU) Flags() byte        { return p.BHS[1] }
func (p *PDU) ITT() uint32        { return p.u32(16) }
func (p *PDU) LUN() uint64        { return binary.BigEndian.Uint64(p.BHS[8:16]) }
func (p *PDU) u32(off int) uint32 { return binary.BigEndian.Uint32(p.BHS[off:]) }
func (p *PDU) put32(off int, v uint32) {
	binary.BigEndian.PutUint32(p.BHS[off:], v)
}
func (p *PDU) u16(off int) uint16 { return binary.BigEndian.Uint16(p.BHS[off:]) }
func (p *PDU) put16(off int, v uint16) {
	binary.BigEndian.PutUint16(p.BHS[off:], v)
}

// dataSegmentLength is the 24-bit length in bytes 5-7.
func (p *PDU) dataSegmentLength() int {
	return int(p.BHS[5])<<16 | int(p.BHS[6])<<8 | int(p.BHS[7])
}

func (p *PDU) setDataSegmentLength(n int) {
	p.BHS[5], p.BHS[6], p.BHS[7] = byte(n>>16), byte(n>>8), byte(n)
}

// Fields shared by most initiator requests.
func (p *PDU) CmdSN() uint32     { return p.u32(24) }
func (p *PDU) ExpStatSN() uint32 { return p.u32(28) }

// SCSI Command fields (section 11.3).
func (p *PDU) readBit() bool       { return p.BHS[1]&0x40 != 0 }
func (p *PDU) writeBit() bool      { return p.BHS[1]&0x20 != 0 }
func (p *PDU) taskAttr() byte      { return p.BHS[1] & 0x07 }
func (p *PDU) expectedLen() uint32 { return p.u32(20) }
func (p *PDU) cdb() []byte         { return p.BHS[32:48] }

// Data-Out fields (section 11.7).
func (p *PDU) TTT() uint32          { return p.u32(20) }
func (p *PDU) dataSN() uint32       { return p.u32(36) }
func (p *PDU) bufferOffset() uint32 { return p.u32(40) }

// Errors returned by ReadPDU. A caller drops the connection on any of them;
// errors wrapping errProtocol are answered with a Reject first where the
// header could be parsed.
var (
	errHeaderDigest = errors.New("iscsi: header digest mismatch")
	errDataDigest   = errors.New("iscsi: data digest mismatch")
	errTooLong      = errors.New("iscsi: data segment longer than MaxRecvDataSegmentLength")
)

// pdoReader reads PDUs off one connection. Digests and the length bound are
// set by the connection as negotiation progresses.
type pduReader struct {
	r         io.Reader
	headerCRC bool
	dataCRC   bool
	maxData   int // bytes; a longer data segment is a protocol error
	digestBuf [4]byte
}

// ReadPDU reads one PDU. The data segment is bounded by maxData before any
// allocation, so a hostile length costs nothing.
func (pr *pduReader) ReadPDU() (*PDU, error) {
	p := &PDU{}
	if _, err := io.ReadFull(pr.r, p.BHS[:]); err != nil {
		return nil, err
	}
	ahsLen := int(p.BHS[4]) * 4
	if ahsLen > 0 {
		p.AHS = make([]byte, ahsLen)
		if _, err := io.ReadFull(pr.r, p.AHS); err != nil {
			return nil, err
		}
	}
	if pr.headerCRC {
		if _, err := io.ReadFull(pr.r, pr.digestBuf[:]); err != nil {
			return nil, err
		}
		sum := crc32.Update(crc32.Checksum(p.BHS[:], crc32c), crc32c, p.AHS)
		if binary.LittleEndian.Uint32(pr.digestBuf[:]) != sum {
			return p, errHeaderDigest
		}
	}
	n := p.dataSegmentLength()
	if n > pr.maxData {
		return p, fmt.Errorf("%w: %d > %d", errTooLong, n, pr.maxData)
	}
	if n > 0 {
		padded := (n + 3) &^ 3
		buf := getBuf(padded)
		if _, err := io.ReadFull(pr.r, buf[:padded]); err != nil {
			putBuf(buf)
			return nil, err
		}
		p.Data = buf[:n]
		if pr.dataCRC {
			if _, err := io.ReadFull(pr.r, pr.digestBuf[:]); err != nil {
				return nil, err
			}
			// The digest covers the data and its padding (section 11.1).
			if binary.LittleEndian.Uint32(pr.digestBuf[:]) != crc32.Checksum(buf[:padded], crc32c) {
				return p, errDataDigest
			}
		}
	}
	return p, nil
}

var zeroPad [4]byte

// appendWire appends the wire form of p (header, digests, padded data) to
// the iovec list for a vectored write. The data slice is referenced, not
// copied.
func (p *PDU) appendWire(iov [][]byte, headerCRC, dataCRC bool, scratch []byte) ([][]byte, []byte) {
	p.BHS[4] = byte(len(p.AHS) / 4)
	p.setDataSegmentLength(len(p.Data))
	iov = append(iov, p.BHS[:])
	if len(p.AHS) > 0 {
		iov = append(iov, p.AHS)
	}
	if headerCRC {
		sum := crc32.Update(crc32.Checksum(p.BHS[:], crc32c), crc32c, p.AHS)
		scratch = binary.LittleEndian.AppendUint32(scratch, sum)
		iov = append(iov, scratch[len(scratch)-4:])
	}
	if len(p.Data) > 0 {
		iov = append(iov, p.Data)
		pad := (4 - len(p.Data)%4) % 4
		if pad > 0 {
			iov = append(iov, zeroPad[:pad])
		}
		if dataCRC {
			sum := crc32.Update(crc32.Checksum(p.Data, crc32c), crc32c, zeroPad[:pad])
			scratch = binary.LittleEndian.AppendUint32(scratch, sum)
			iov = append(iov, scratch[len(scratch)-4:])
		}
	}
	return iov, scratch
}
