package initiator

import (
	"encoding/binary"
	"errors"
	"fmt"
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

// bhsLen is the size of the basic header segment (RFC 7143 section 11.2).
const bhsLen = 48

// noTag is the reserved tag value 0xffffffff (ITT and TTT).
const noTag = 0xffffffff

// maxDataSegment is what the 24-bit DataSegmentLength can express.
const maxDataSegment = 1<<24 - 1

// bhs is a 48-byte basic header segment. The accessors follow the common
// layout of RFC 7143 section 11.2: opcode and I bit in byte 0, flags in
// byte 1, TotalAHSLength in byte 4, DataSegmentLength in bytes 5-7, LUN
// or opcode-specific in 8-15, ITT in 16-19, and opcode-specific words
// from 20 on.
type bhs [bhsLen]byte

func (h *bhs) opcode() byte              { return h[0] & 0x3f }
func (h *bhs) immediate() bool           { return h[0]&0x40 != 0 }
func (h *bhs) flags() byte               { return h[1] }
func (h *bhs) final() bool               { return h[1]&0x80 != 0 }
func (h *bhs) ahsWords() int             { return int(h[4]) }
func (h *bhs) u16(off int) uint16        { return binary.BigEndian.Uint16(h[off:]) }
func (h *bhs) u32(off int) uint32        { return binary.BigEndian.Uint32(h[off:]) }
func (h *bhs) u64(off int) uint64        { return binary.BigEndian.Uint64(h[off:]) }
func (h *bhs) put16(off int, v uint16)   { binary.BigEndian.PutUint16(h[off:], v) }
func (h *bhs) put32(off int, v uint32)   { binary.BigEndian.PutUint32(h[off:], v) }
func (h *bhs) put64(off int, v uint64)   { binary.BigEndian.PutUint64(h[off:], v) }
func (h *bhs) itt() uint32               { return h.u32(16) }
func (h *bhs) ttt() uint32               { return h.u32(20) }
func (h *bhs) statSN() uint32            { return h.u32(24) }
func (h *bhs) expCmdSN() uint32          { return h.u32(28) }
func (h *bhs) maxCmdSN() uint32          { return h.u32(32) }
func (h *bhs) dataSN() uint32            { return h.u32(36) }
func (h *bhs) bufferOffset() uint32      { return h.u32(40) }
func (h *bhs) residual() uint32          { return h.u32(44) }
func (h *bhs) setOpcode(op byte, i bool) { h[0] = op & 0x3f; h.setImmediate(i) }
func (h *bhs) setImmediate(i bool) {
	if i {
		h[0] |= 0x40
	} else {
		h[0] &^= 0x40
	}
}

func (h *bhs) dataSegmentLength() int {
	return int(h[5])<<16 | int(h[6])<<8 | int(h[7])
}

func (h *bhs) setDataSegmentLength(n int) {
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
}

// pdu is a whole protocol data unit: header, additional header segments
// (multiples of 4 bytes) and the data segment without its padding.
type pdu struct {
	hdr  bhs
	ahs  []byte
	data []byte
}

func (p *pdu) String() string {
	return fmt.Sprintf("pdu(op=0x%02x flags=0x%02x itt=0x%x ttt=0x%x len=%d)", p.hdr.opcode(), p.hdr.flags(), p.hdr.itt(), p.hdr.ttt(), len(p.data))
}

// Errors of the PDU reader. Any of them ends the connection.
var (
	errBadAHS       = errors.New("iscsi: AHS length is not a multiple of 4")
	errDataTooLong  = errors.New("iscsi: data segment longer than allowed")
	errDataTooLarge = errors.New("iscsi: data segment exceeds 2^24-1 bytes")
)

// marshal returns the wire form of p: header with TotalAHSLength and
// DataSegmentLength filled in, AHS, data, zero padding to 4 bytes. No
// digests (this initiator negotiates HeaderDigest=None, DataDigest=None).
func (p *pdu) marshal() ([]byte, error) {
	if len(p.ahs)%4 != 0 || len(p.ahs)/4 > 255 {
		return nil, errBadAHS
	}
	if len(p.data) > maxDataSegment {
		return nil, errDataTooLarge
	}
	p.hdr[4] = byte(len(p.ahs) / 4)
	p.hdr.setDataSegmentLength(len(p.data))
	pad := padLen(len(p.data))
	b := make([]byte, 0, bhsLen+len(p.ahs)+len(p.data)+pad)
	b = append(b, p.hdr[:]...)
	b = append(b, p.ahs...)
	b = append(b, p.data...)
	b = append(b, make([]byte, pad)...)
	return b, nil
}

func padLen(n int) int { return (4 - n%4) % 4 }

// readPDU reads one PDU. The data segment is refused before any
// allocation when it is longer than maxData, so a hostile length costs
// nothing. The padding is read and discarded.
func readPDU(r io.Reader, maxData int) (*pdu, error) {
	p := &pdu{}
	if _, err := io.ReadFull(r, p.hdr[:]); err != nil {
		return nil, err
	}
	if n := p.hdr.ahsWords() * 4; n > 0 {
		p.ahs = make([]byte, n)
		if _, err := io.ReadFull(r, p.ahs); err != nil {
			return nil, unexpectedEOF(err)
		}
	}
	n := p.hdr.dataSegmentLength()
	if n > maxData {
		return p, fmt.Errorf("%w: %d > %d (%v)", errDataTooLong, n, maxData, p)
	}
	if n > 0 {
		buf := make([]byte, n+padLen(n))
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, unexpectedEOF(err)
		}
		p.data = buf[:n]
	}
	return p, nil
}

// unexpectedEOF turns an EOF inside a PDU into io.ErrUnexpectedEOF.
func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// encodeLUN is the SAM-5 single level LUN structure the target expects:
// peripheral device addressing below 256, flat space addressing up to
// 16383 (RFC 7143 section 11.2.1.6 refers to SAM).
func encodeLUN(lun uint64) (uint64, error) {
	switch {
	case lun < 256:
		return lun << 48, nil
	case lun < 1<<14:
		return (0x4000 | lun) << 48, nil
	}
	return 0, fmt.Errorf("iscsi: LUN %d cannot be encoded (single level, at most 16383)", lun)
}

// decodeLUN is encodeLUN's inverse for the two addressing methods.
func decodeLUN(v uint64) (uint64, bool) {
	if v&0x0000ffffffffffff != 0 {
		return 0, false
	}
	top := v >> 48
	switch top >> 14 {
	case 0:
		if top&0x3f00 != 0 {
			return 0, false
		}
		return top & 0xff, true
	case 1:
		return top & 0x3fff, true
	}
	return 0, false
}

// Key=value text (RFC 7143 section 6.1): NUL-terminated pairs.

type kv struct{ k, v string }

func encodeText(kvs []kv) []byte {
	var b []byte
	for _, x := range kvs {
		b = append(b, x.k...)
		b = append(b, '=')
		b = append(b, x.v...)
		b = append(b, 0)
	}
	return b
}

func parseText(b []byte) ([]kv, error) {
	var out []kv
	for len(b) > 0 {
		end := -1
		for i, c := range b {
			if c == 0 {
				end = i
				break
			}
		}
		if end < 0 {
			return nil, fmt.Errorf("iscsi: text without terminating NUL: %q", b)
		}
		pair := string(b[:end])
		b = b[end+1:]
		if pair == "" {
			// Tolerate padding NULs.
			continue
		}
		eq := -1
		for i := 0; i < len(pair); i++ {
			if pair[i] == '=' {
				eq = i
				break
			}
		}
		if eq <= 0 {
			return nil, fmt.Errorf("iscsi: text pair without key=value: %q", pair)
		}
		out = append(out, kv{pair[:eq], pair[eq+1:]})
	}
	return out, nil
}

// serialLess is RFC 1982 serial number arithmetic on 32 bits, as iSCSI
// uses for CmdSN and StatSN (RFC 7143 section 4.2.2.1).
func serialLess(a, b uint32) bool {
	return a != b && int32(a-b) < 0
}
