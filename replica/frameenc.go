package replica

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// appendFrame appends f to b as WriteFrame sends it: a 4-byte big-endian
// length, then the Frame as a msgpack map with the keys of its struct
// tags, in field order (skipBody reads the kind and sequence number
// first), omitempty fields left out as msgpack.Marshal leaves them. It
// is written out by hand because the replication stream encodes a frame
// per write: reflection and a fresh body per frame cost more than the
// rest of the encoding, and the data is copied once, into b.
// msgpack.Unmarshal (readFrame) decodes it as it decodes Marshal's.
func appendFrame(b []byte, f *Frame) ([]byte, error) {
	start := len(b)
	b = append(b, 0, 0, 0, 0)
	fields := 6 // k e s o l c
	if len(f.Data) > 0 {
		fields++
	}
	if f.Flags != 0 {
		fields++
	}
	if f.Err != "" {
		fields++
	}
	if f.From != "" {
		fields++
	}
	if f.Ref != 0 {
		fields++
	}
	if f.At != 0 {
		fields++
	}
	if f.Image != nil {
		fields++
	}
	b = append(b, 0x80|byte(fields)) // fixmap: at most 13 fields
	b = appendKey(b, "k")
	b = appendUint(b, uint64(f.Kind))
	b = appendKey(b, "e")
	b = appendUint(b, f.Epoch)
	b = appendKey(b, "s")
	b = appendUint(b, f.Seq)
	b = appendKey(b, "o")
	b = appendInt(b, f.Offset)
	b = appendKey(b, "l")
	b = appendUint(b, uint64(f.Length))
	if len(f.Data) > 0 {
		b = appendKey(b, "d")
		b = appendBin(b, f.Data)
	}
	b = appendKey(b, "c")
	b = appendUint(b, uint64(f.CRC))
	if f.Flags != 0 {
		b = appendKey(b, "f")
		b = appendUint(b, uint64(f.Flags))
	}
	if f.Err != "" {
		b = appendKey(b, "x")
		b = appendStr(b, f.Err)
	}
	if f.From != "" {
		b = appendKey(b, "n")
		b = appendStr(b, f.From)
	}
	if f.Ref != 0 {
		b = appendKey(b, "r")
		b = appendUint(b, f.Ref)
	}
	if f.At != 0 {
		b = appendKey(b, "a")
		b = appendInt(b, f.At)
	}
	if f.Image != nil {
		im, err := msgpack.Marshal(f.Image)
		if err != nil {
			return b[:start], err
		}
		b = appendKey(b, "im")
		b = append(b, im...)
	}
	n := len(b) - start - 4
	if n > maxFrameLen {
		return b[:start], fmt.Errorf("%w: encoded frame of %d bytes exceeds %d", ErrFrame, n, maxFrameLen)
	}
	binary.BigEndian.PutUint32(b[start:], uint32(n))
	return b, nil
}

// appendKey appends a map key of at most 31 bytes (fixstr).
func appendKey(b []byte, k string) []byte {
	return append(append(b, 0xa0|byte(len(k))), k...)
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendUint(b, uint64(v))
	case v >= -32:
		return append(b, byte(v)) // negative fixint
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
}

func appendBin(b []byte, p []byte) []byte {
	switch n := len(p); {
	case n <= math.MaxUint8:
		b = append(b, 0xc4, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
	}
	return append(b, p...)
}

func appendStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n <= 31:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}
