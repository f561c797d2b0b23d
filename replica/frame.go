package replica

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/vmihailenco/msgpack/v5"
)

// Frame kinds on the replication stream between sites.
const (
	FrameWrite uint8 = 1 + iota // data to apply at Offset
	FrameUnmap                  // deallocate Length bytes at Offset
	FrameFlush                  // make everything up to Seq durable
	FrameAck                    // replica -> writer: applied up to Seq
	FrameNack                   // replica -> writer: refused (Err says why)
)

// MaxFrameData bounds the data of one frame; a larger write is split. It
// matches the target's largest transfer.
const MaxFrameData = 32 << 20

// maxFrameLen bounds the encoded frame: the data plus generous room for
// the msgpack envelope.
const maxFrameLen = MaxFrameData + 4096

// Frame is one message of the msgpack replication stream (DESIGN.md write
// path): {epoch, seq, offset, length, data, checksum}.
type Frame struct {
	Kind   uint8  `msgpack:"k"`
	Epoch  uint64 `msgpack:"e"`
	Seq    uint64 `msgpack:"s"`
	Offset int64  `msgpack:"o"`
	Length uint32 `msgpack:"l"`
	Data   []byte `msgpack:"d,omitempty"`
	CRC    uint32 `msgpack:"c"` // CRC32C of Data
	Flags  uint8  `msgpack:"f,omitempty"`
	Err    string `msgpack:"x,omitempty"`
}

// FlagFUA asks the replica to make a write durable before acknowledging.
const FlagFUA uint8 = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC32C a frame carries for its data.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// ErrFrame marks a frame that is malformed or fails its checks; the stream
// that carried it is dropped.
var ErrFrame = errors.New("replica: bad frame")

// Validate checks a decoded frame's fields against each other.
func (f *Frame) Validate() error {
	switch f.Kind {
	case FrameWrite:
		if int(f.Length) != len(f.Data) {
			return fmt.Errorf("%w: write of %d bytes carries %d", ErrFrame, f.Length, len(f.Data))
		}
		if f.Length == 0 || f.Length > MaxFrameData {
			return fmt.Errorf("%w: write length %d not in 1..%d", ErrFrame, f.Length, MaxFrameData)
		}
		if Checksum(f.Data) != f.CRC {
			return fmt.Errorf("%w: checksum mismatch at seq %d", ErrFrame, f.Seq)
		}
	case FrameUnmap:
		if len(f.Data) != 0 || f.Length == 0 {
			return fmt.Errorf("%w: unmap with data or no length", ErrFrame)
		}
	case FrameFlush, FrameAck, FrameNack:
		if len(f.Data) != 0 {
			return fmt.Errorf("%w: kind %d carries data", ErrFrame, f.Kind)
		}
	default:
		return fmt.Errorf("%w: unknown kind %d", ErrFrame, f.Kind)
	}
	if f.Offset < 0 {
		return fmt.Errorf("%w: negative offset %d", ErrFrame, f.Offset)
	}
	if f.Epoch == 0 {
		return fmt.Errorf("%w: epoch 0", ErrFrame)
	}
	return nil
}

// WriteFrame encodes f with a 4-byte big-endian length prefix.
func WriteFrame(w io.Writer, f *Frame) error {
	body, err := msgpack.Marshal(f)
	if err != nil {
		return err
	}
	if len(body) > maxFrameLen {
		return fmt.Errorf("%w: encoded frame of %d bytes exceeds %d", ErrFrame, len(body), maxFrameLen)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err = w.Write(body)
	return err
}

// ReadFrame decodes one frame. The length prefix is bounded before any
// allocation and the frame is validated, so a hostile peer can cost at
// most one maximal frame of memory and never yields an unchecked frame.
func ReadFrame(r *bufio.Reader) (*Frame, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > maxFrameLen {
		return nil, fmt.Errorf("%w: length prefix %d not in 1..%d", ErrFrame, n, maxFrameLen)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	f := &Frame{}
	if err := msgpack.Unmarshal(body, f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}
