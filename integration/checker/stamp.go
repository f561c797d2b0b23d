package checker

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc64"
	"math/rand/v2"
)

// stampMagic starts every stamped block.
var stampMagic = [8]byte{'M', 'L', 'S', 'T', 'A', 'M', 'P', 1}

// MinStampBlock is the smallest block Stamp can fill.
const MinStampBlock = 64

var crcTable = crc64.MakeTable(crc64.ECMA)

// Value identifies what a block holds: the stamp of the one write that
// wrote it, or the zero Value for the initial all-zero block.
type Value struct {
	Client uint32
	Seq    uint64
	LBA    uint64
}

// IsZero reports the initial value (an all-zero block).
func (v Value) IsZero() bool { return v == Value{} }

func (v Value) String() string {
	if v.IsZero() {
		return "zeros"
	}
	return fmt.Sprintf("c%d#%d@%d", v.Client, v.Seq, v.LBA)
}

// Stamp returns a block of blockSize bytes that identifies one write:
// a header with magic, client, sequence number and LBA, then a filler
// derived from the header (so that the whole block depends on it), then
// a CRC-64 of everything before it. A block torn between two writes, a
// block from another LBA, or a corrupted block does not parse as the
// stamp it partly resembles. blockSize must be at least MinStampBlock.
//
// Layout: magic[8] client[4] blockSize[4] seq[8] lba[8] filler crc64[8].
func Stamp(client uint32, seq, lba uint64, blockSize int) []byte {
	if blockSize < MinStampBlock {
		panic(fmt.Sprintf("checker: Stamp block size %d < %d", blockSize, MinStampBlock))
	}
	b := make([]byte, blockSize)
	copy(b, stampMagic[:])
	binary.BigEndian.PutUint32(b[8:], client)
	binary.BigEndian.PutUint32(b[12:], uint32(blockSize))
	binary.BigEndian.PutUint64(b[16:], seq)
	binary.BigEndian.PutUint64(b[24:], lba)
	r := rand.NewPCG(uint64(client)<<32^seq, lba^0x9e3779b97f4a7c15)
	fill := b[32 : blockSize-8]
	for i := 0; i < len(fill); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(fill[i:], w[:])
	}
	binary.BigEndian.PutUint64(b[blockSize-8:], crc64.Checksum(b[:blockSize-8], crcTable))
	return b
}

// ParseStamp returns the Value a block holds: the zero Value and true for
// an all-zero block (the initial value), the stamp and true for a block
// Stamp made (whatever its LBA: the caller compares LBA with where the
// block was read), and false for anything else (torn, corrupted,
// foreign data).
func ParseStamp(b []byte) (Value, bool) {
	if isZero(b) {
		return Value{}, true
	}
	n := len(b)
	if n < MinStampBlock || !bytes.Equal(b[:8], stampMagic[:]) || binary.BigEndian.Uint32(b[12:]) != uint32(n) {
		return Value{}, false
	}
	if crc64.Checksum(b[:n-8], crcTable) != binary.BigEndian.Uint64(b[n-8:]) {
		return Value{}, false
	}
	v := Value{
		Client: binary.BigEndian.Uint32(b[8:]),
		Seq:    binary.BigEndian.Uint64(b[16:]),
		LBA:    binary.BigEndian.Uint64(b[24:]),
	}
	if v.IsZero() {
		// A stamp that says "zeros" would be ambiguous; Stamp never
		// makes one that is valid for a real write (Seq starts at 1).
		return Value{}, false
	}
	return v, true
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ReadValue interprets a block read from lba: its Value, and corrupt when
// the block is neither zeros nor a valid stamp written for this lba.
func ReadValue(lba uint64, b []byte) (v Value, corrupt bool) {
	v, ok := ParseStamp(b)
	if !ok {
		return Value{}, true
	}
	if !v.IsZero() && v.LBA != lba {
		return v, true
	}
	return v, false
}
