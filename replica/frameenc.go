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
	b, _, err := encodeFrame(b, f, true)
	return b, err
}

// encodeFrame is appendFrame; without withData, f.Data's bytes are left
// out (its length and the rest of the frame are there) and at is where
// they belong in b, for a sender that writes them from where they are.
func encodeFrame(b []byte, f *Frame, withData bool) (_ []byte, at int, _ error) {
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
	if f.Commit != 0 {
		fields++
	}
	b = append(b, 0x80|byte(fields)) // fixmap: at most 14 fields
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
	at = -1
	if len(f.Data) > 0 {
		b = appendKey(b, "d")
		b = appendBinHeader(b, len(f.Data))
		at = len(b)
		if withData {
			b = append(b, f.Data...)
		}
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
			return b[:start], 0, err
		}
		b = appendKey(b, "im")
		b = append(b, im...)
	}
	if f.Commit != 0 {
		b = appendKey(b, "m")
		b = appendUint(b, f.Commit)
	}
	n := len(b) - start - 4
	if !withData {
		n += len(f.Data)
	}
	if n > maxFrameLen {
		return b[:start], 0, fmt.Errorf("%w: encoded frame of %d bytes exceeds %d", ErrFrame, n, maxFrameLen)
	}
	binary.BigEndian.PutUint32(b[start:], uint32(n))
	return b, at, nil
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

func appendBinHeader(b []byte, n int) []byte {
	switch {
	case n <= math.MaxUint8:
		return append(b, 0xc4, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
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

// decodeFrame decodes a frame body (one msgpack map, which msgpackFits
// has checked) into f, as msgpack.Unmarshal would for what appendFrame
// and msgpack.Marshal write, without reflection and without copying:
// f.Data and the strings' bytes alias body. Keys it does not know are
// skipped, as Unmarshal skips them.
func decodeFrame(body []byte, f *Frame) error {
	b := body
	n, err := mapLen(&b)
	if err != nil {
		return err
	}
	for range n {
		k, err := strBytes(&b)
		if err != nil {
			return err
		}
		var u uint64
		switch string(k) {
		case "k":
			u, err = uintVal(&b, math.MaxUint8)
			f.Kind = uint8(u)
		case "e":
			f.Epoch, err = uintVal(&b, math.MaxUint64)
		case "s":
			f.Seq, err = uintVal(&b, math.MaxUint64)
		case "o":
			f.Offset, err = intVal(&b)
		case "l":
			u, err = uintVal(&b, math.MaxUint32)
			f.Length = uint32(u)
		case "d":
			f.Data, err = binBytes(&b)
		case "c":
			u, err = uintVal(&b, math.MaxUint32)
			f.CRC = uint32(u)
		case "f":
			u, err = uintVal(&b, math.MaxUint8)
			f.Flags = uint8(u)
		case "x":
			var s []byte
			s, err = strOrNil(&b)
			f.Err = string(s)
		case "n":
			var s []byte
			s, err = strOrNil(&b)
			f.From = string(s)
		case "r":
			f.Ref, err = uintVal(&b, math.MaxUint64)
		case "a":
			f.At, err = intVal(&b)
		case "m":
			f.Commit, err = uintVal(&b, math.MaxUint64)
		case "im":
			var rest []byte
			if rest, err = msgpackSkip(b, 0); err != nil {
				break
			}
			v := b[:len(b)-len(rest)]
			b = rest
			if len(v) == 1 && v[0] == 0xc0 {
				f.Image = nil
				break
			}
			f.Image = &ImageID{}
			err = msgpack.Unmarshal(v, f.Image)
		default:
			b, err = msgpackSkip(b, 0)
		}
		if err != nil {
			return fmt.Errorf("%w: field %q: %v", ErrFrame, k, err)
		}
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d bytes after the frame", ErrFrame, len(b))
	}
	return nil
}

var errCode = fmt.Errorf("unexpected msgpack code")

func take(b *[]byte, n int) ([]byte, error) {
	if n < 0 || n > len(*b) {
		return nil, errMsgpackShort
	}
	v := (*b)[:n:n]
	*b = (*b)[n:]
	return v, nil
}

// beUint reads a big-endian unsigned integer of w bytes.
func beUint(b *[]byte, w int) (uint64, error) {
	v, err := take(b, w)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, x := range v {
		n = n<<8 | uint64(x)
	}
	return n, nil
}

func mapLen(b *[]byte) (int, error) {
	c, err := take(b, 1)
	if err != nil {
		return 0, err
	}
	switch {
	case c[0]&0xf0 == 0x80:
		return int(c[0] & 0x0f), nil
	case c[0] == 0xde:
		n, err := beUint(b, 2)
		return int(n), err
	case c[0] == 0xdf:
		n, err := beUint(b, 4)
		return int(n), err
	}
	return 0, fmt.Errorf("%w 0x%02x for a map", errCode, c[0])
}

// rawLen reads a str or bin header (bin: bins too) and returns the
// length; nil (0xc0) gives -1.
func rawLen(b *[]byte, strs, bins bool) (int, error) {
	c, err := take(b, 1)
	if err != nil {
		return 0, err
	}
	var w int
	switch x := c[0]; {
	case x == 0xc0:
		return -1, nil
	case strs && x&0xe0 == 0xa0:
		return int(x & 0x1f), nil
	case strs && x == 0xd9, bins && x == 0xc4:
		w = 1
	case strs && x == 0xda, bins && x == 0xc5:
		w = 2
	case strs && x == 0xdb, bins && x == 0xc6:
		w = 4
	default:
		return 0, fmt.Errorf("%w 0x%02x for a string or bytes", errCode, x)
	}
	n, err := beUint(b, w)
	return int(n), err
}

func strBytes(b *[]byte) ([]byte, error) {
	n, err := rawLen(b, true, false)
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, fmt.Errorf("%w: nil map key", errCode)
	}
	return take(b, n)
}

func strOrNil(b *[]byte) ([]byte, error) {
	n, err := rawLen(b, true, true)
	if err != nil || n < 0 {
		return nil, err
	}
	return take(b, n)
}

// binBytes reads bytes (bin or str; nil gives nil, as Unmarshal does).
func binBytes(b *[]byte) ([]byte, error) {
	n, err := rawLen(b, true, true)
	if err != nil || n < 0 {
		return nil, err
	}
	v, err := take(b, n)
	if n == 0 {
		return []byte{}, err
	}
	return v, err
}

// intVal reads any msgpack integer as an int64.
func intVal(b *[]byte) (int64, error) {
	c, err := take(b, 1)
	if err != nil {
		return 0, err
	}
	x := c[0]
	switch {
	case x <= 0x7f:
		return int64(x), nil
	case x >= 0xe0:
		return int64(int8(x)), nil
	case x == 0xc0:
		return 0, nil
	case x >= 0xcc && x <= 0xcf:
		v, err := beUint(b, 1<<(x-0xcc))
		return int64(v), err
	case x >= 0xd0 && x <= 0xd3:
		w := 1 << (x - 0xd0)
		v, err := beUint(b, w)
		// Sign-extend from w bytes.
		s := uint(64 - 8*w)
		return int64(v<<s) >> s, err
	}
	return 0, fmt.Errorf("%w 0x%02x for an integer", errCode, x)
}

// uintVal reads a msgpack integer that must fit in 0..max.
func uintVal(b *[]byte, max uint64) (uint64, error) {
	c := *b
	v, err := intVal(b)
	if err != nil {
		return 0, err
	}
	u := uint64(v)
	if len(c) > 0 && c[0] != 0xcf && v < 0 || u > max {
		return 0, fmt.Errorf("integer %d out of range", v)
	}
	return u, nil
}
