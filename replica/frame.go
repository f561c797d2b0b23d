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

	// Connection set-up: the first frame on every connection says what it
	// is for; the answer says whether the peer takes it.
	FrameHello    // From, Epoch, Offset = the LU's size; FlagForward for a forwarding connection
	FrameHelloAck // Epoch and Offset (the LU's size) are the answerer's; FlagDiverged, Err on refusal

	// Leases (DESIGN.md I3): a replica asks, the writer grants Length
	// milliseconds, counted by the replica from when it asked.
	FrameLeaseReq // replica -> writer, Seq is the request id
	FrameLease    // writer -> replica, Seq echoes the request id

	// Forwarding from a non-writer site (DESIGN.md write path step 3).
	// Seq is the forwarding site's operation id; the writer orders the
	// operation and sends the forwarding site a stream frame with FlagRef
	// and Ref = that id instead of the data it already has.
	FrameFwdWrite  // Offset, Length, Data, CRC, FlagFUA
	FrameFwdUnmap  // Offset, Length
	FrameFwdFlush  //
	FrameFwdCAW    // Data = compare bytes then write bytes, Length = one half
	FrameFwdResult // writer -> forwarder: Err, or At = 1 + miscompare offset

	// FrameSum asks a replica whether its bytes at Offset..+Length have
	// the SHA-256 in Data (resync without a bitmap, online verify); the
	// ack carries FlagDiffer when they do not.
	FrameSum

	// The shared record (meta.go): FrameMeta sets it at a replica to
	// Data with version Offset; FrameFwdMeta asks the writer to set it to
	// Data if its version is still Offset (At = 1 when it was not).
	FrameMeta
	FrameFwdMeta

	// FrameCommit: writer -> replica, not a stream frame: every frame up
	// to Seq is on every in-sync site, so a replica may show it to
	// readers (writer.settle).
	FrameCommit
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
	From   string `msgpack:"n,omitempty"` // hello: the sender's site name
	Ref    uint64 `msgpack:"r,omitempty"` // FlagRef: the forwarder's operation id
	At     int64  `msgpack:"a,omitempty"` // forward result: 1 + miscompare offset
	// Image: a hello answer's image identity (identity.go).
	Image *ImageID `msgpack:"im,omitempty"`
}

// Frame flags.
const (
	// FlagFUA asks the replica to make a write durable before acknowledging.
	FlagFUA uint8 = 1 << iota
	// FlagRef: the data is the forwarded operation Ref, which the
	// receiving site holds already.
	FlagRef
	// FlagDiffer: a FrameSum's region differs at the replica.
	FlagDiffer
	// FlagDiverged: the answering site may hold writes nobody acknowledged
	// (it was a writer that stopped uncleanly) and needs a full resync.
	FlagDiverged
	// FlagForward: a hello that opens a forwarding connection.
	FlagForward
	// FlagSynced: a flush that ends a resync; the replica's data is whole.
	FlagSynced
	// FlagEmpty: a hello answer from a site whose image was never
	// written (all holes): two such images are equal without a compare.
	FlagEmpty
	// FlagGen: a flush after which the replica's image holds every write
	// of Epoch: it raises its image generation to Epoch (durably) before
	// it acknowledges. A flush with FlagSynced does too.
	FlagGen
)

// maxNameLen bounds a site name in a hello.
const maxNameLen = 255

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC32C a frame carries for its data.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// ErrFrame marks a frame that is malformed or fails its checks; the stream
// that carried it is dropped.
var ErrFrame = errors.New("replica: bad frame")

// Validate checks a decoded frame's fields against each other.
func (f *Frame) Validate() error {
	switch f.Kind {
	case FrameWrite, FrameFwdWrite:
		if f.Kind == FrameWrite && f.Flags&FlagRef != 0 {
			if len(f.Data) != 0 || f.Ref == 0 || f.Length == 0 || f.Length > MaxFrameData {
				return fmt.Errorf("%w: referenced write needs a ref, a length and no data", ErrFrame)
			}
			break
		}
		if int(f.Length) != len(f.Data) {
			return fmt.Errorf("%w: write of %d bytes carries %d", ErrFrame, f.Length, len(f.Data))
		}
		if f.Length == 0 || f.Length > MaxFrameData {
			return fmt.Errorf("%w: write length %d not in 1..%d", ErrFrame, f.Length, MaxFrameData)
		}
		if Checksum(f.Data) != f.CRC {
			return fmt.Errorf("%w: checksum mismatch at seq %d", ErrFrame, f.Seq)
		}
	case FrameUnmap, FrameFwdUnmap:
		if len(f.Data) != 0 || f.Length == 0 {
			return fmt.Errorf("%w: unmap with data or no length", ErrFrame)
		}
	case FrameFwdCAW:
		if f.Length == 0 || f.Length > MaxFrameData/2 || len(f.Data) != 2*int(f.Length) {
			return fmt.Errorf("%w: compare-and-write of %d bytes carries %d", ErrFrame, f.Length, len(f.Data))
		}
		if Checksum(f.Data) != f.CRC {
			return fmt.Errorf("%w: checksum mismatch in forwarded compare-and-write", ErrFrame)
		}
	case FrameMeta, FrameFwdMeta:
		if f.Length > MaxMeta {
			return fmt.Errorf("%w: shared record of %d bytes exceeds %d", ErrFrame, f.Length, MaxMeta)
		}
		if f.Kind == FrameMeta && f.Flags&FlagRef != 0 {
			if len(f.Data) != 0 || f.Ref == 0 {
				return fmt.Errorf("%w: referenced shared record needs a ref and no data", ErrFrame)
			}
			break
		}
		if int(f.Length) != len(f.Data) || Checksum(f.Data) != f.CRC {
			return fmt.Errorf("%w: shared record of %d bytes carries %d, or a bad checksum", ErrFrame, f.Length, len(f.Data))
		}
	case FrameSum:
		if len(f.Data) != sumLen || f.Length == 0 {
			return fmt.Errorf("%w: sum needs a %d-byte digest and a length", ErrFrame, sumLen)
		}
	case FrameHello, FrameHelloAck:
		// A hello answer may list the ranges the site applied and never
		// saw committed (encodeRanges).
		if f.Kind == FrameHello && len(f.Data) != 0 || len(f.Data) > maxCarried*16 || len(f.Data)%16 != 0 || len(f.From) > maxNameLen || f.Offset < 0 {
			return fmt.Errorf("%w: bad hello", ErrFrame)
		}
		if f.Image != nil && (f.Kind == FrameHello || len(f.Image.UUID) > 64) {
			return fmt.Errorf("%w: bad image identity in a hello", ErrFrame)
		}
	case FrameFlush, FrameAck, FrameNack, FrameLeaseReq, FrameLease, FrameFwdFlush, FrameFwdResult, FrameCommit:
		if len(f.Data) != 0 {
			return fmt.Errorf("%w: kind %d carries data", ErrFrame, f.Kind)
		}
	default:
		return fmt.Errorf("%w: unknown kind %d", ErrFrame, f.Kind)
	}
	if f.Offset < 0 {
		return fmt.Errorf("%w: negative offset %d", ErrFrame, f.Offset)
	}
	if f.Epoch == 0 && (f.Kind <= FrameFlush || f.Kind == FrameSum || f.Kind == FrameMeta) {
		// Every stream frame belongs to an epoch; set-up frames may
		// come from a site that has seen none yet.
		return fmt.Errorf("%w: epoch 0", ErrFrame)
	}
	if len(f.Err) > 4096 {
		return fmt.Errorf("%w: error text of %d bytes", ErrFrame, len(f.Err))
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
