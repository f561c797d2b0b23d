package replica

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

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

	// FrameLost: a resync's stream frame for Offset..+Length, which the
	// writer's store lost (a failed write-back, LostError): the replica
	// marks the range lost too instead of receiving bytes (MarkLost).
	FrameLost
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
	// Commit, on a stream frame: every frame up to it is on every
	// in-sync site, as a FrameCommit would say; carried on the next data
	// frame instead of a frame of its own per write (replica/core).
	Commit uint64 `msgpack:"m,omitempty"`
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
	case FrameLost:
		if len(f.Data) != 0 || f.Length == 0 || f.Flags != 0 {
			return fmt.Errorf("%w: a lost range needs a length, and no data or flags", ErrFrame)
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

// WriteFrame encodes f with a 4-byte big-endian length prefix
// (appendFrame), in one Write.
func WriteFrame(w io.Writer, f *Frame) error {
	b, err := appendFrame(nil, f)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// Frame size limits, checked against the length prefix before anything
// is allocated. A connection's first frame is a hello, from a peer that
// has proved nothing yet, so it may cost no more than a few KiB; frames
// that never carry data stay small for the whole connection; only the
// stream from a writer and forwarded operations may carry MaxFrameData.
const (
	// MaxHelloLen bounds a hello: names, an epoch, a size and flags.
	MaxHelloLen = 4 << 10
	// MaxControlLen bounds acks, lease and forwarding results, whose
	// largest field is an error text of at most 4096 bytes.
	MaxControlLen = 8 << 10
	// MaxHelloAckLen bounds a hello answer, which may list the ranges a
	// site applied and never saw committed.
	MaxHelloAckLen = maxCarried*16 + MaxControlLen
	// MaxDataFrameLen bounds a frame on a writer's stream or a
	// forwarding connection.
	MaxDataFrameLen = maxFrameLen
)

// FrameMemory bounds the frame bodies being received by every connection
// of the process together (a body is held from its length prefix until it
// is decoded), so that the memory replication takes does not grow with
// the number of connections. A connection holds one body at a time, so a
// few peers streaming maximal frames at once fit.
const FrameMemory = 4 * maxFrameLen

// budgetFree: bodies up to this size take no share of FrameMemory (their
// total is bounded by the connection caps on the port) and no wait.
const budgetFree = 64 << 10

// budgetWait is how long a frame waits for FrameMemory before its
// connection is dropped as if it had sent an oversize frame; the peer
// reconnects.
const budgetWait = 10 * time.Second

var frameBudget = semaphore.NewWeighted(FrameMemory)

// ErrFrameMemory: FrameMemory stayed exhausted for budgetWait.
var ErrFrameMemory = errors.New("replica: frame memory exhausted")

// ReadFrame decodes one frame of at most limit encoded bytes (MaxHelloLen,
// MaxControlLen, MaxHelloAckLen or MaxDataFrameLen). The length prefix is
// checked before any allocation, a body above budgetFree waits for its
// share of FrameMemory, every length inside the body must fit in it, and
// the frame is validated: a hostile peer costs at most one body of limit
// bytes, within the global budget, and never yields an unchecked frame.
func ReadFrame(r *bufio.Reader, limit int) (*Frame, error) {
	return readFrame(r, limit, nil)
}

// bodyGuard bounds what one connection's large bodies cost the process:
// without it a peer that sends a length prefix and stops (or is stopped,
// its kernel keeping the TCP connection alive) holds its share of
// FrameMemory for ever, and a few such connections starve the writer's
// stream of it.
type bodyGuard struct {
	conn net.Conn
	// timeout: a body announced by a length prefix must arrive within
	// it, or the connection fails and its share is released.
	timeout time.Duration
	// peer: the sending site's share (Site.peerMemory), one maximal body,
	// so that one site's connections together hold at most that much.
	peer *semaphore.Weighted
	// refuse, if set, says before a large body is read whether the
	// connection takes it now; when it does not, the body is skipped
	// without a share of FrameMemory and readFrame returns a
	// *refusedFrame.
	refuse func() error
}

// refusedFrame: a frame whose body bodyGuard.refuse turned away; Kind
// and Seq are read from the start of the body so that it can be
// answered.
type refusedFrame struct {
	Kind uint8
	Seq  uint64
	err  error
}

func (e *refusedFrame) Error() string { return e.err.Error() }
func (e *refusedFrame) Unwrap() error { return e.err }

// skipBody reads the kind and sequence number at the start of a body of
// n bytes (a Frame's first fields, encoded in field order) and discards
// the rest as it arrives, under g's deadline.
func skipBody(r *bufio.Reader, n int, g *bodyGuard, why error) error {
	g.conn.SetReadDeadline(time.Now().Add(g.timeout))
	defer g.conn.SetReadDeadline(time.Time{})
	head, err := r.Peek(min(n, 64))
	if err != nil {
		return err
	}
	rf := &refusedFrame{err: why}
	d := msgpack.NewDecoder(bytes.NewReader(head))
	fields, err := d.DecodeMapLen()
	for i := 0; err == nil && i < fields && rf.Seq == 0; i++ {
		var k string
		if k, err = d.DecodeString(); err != nil {
			break
		}
		switch k {
		case "k":
			rf.Kind, err = d.DecodeUint8()
		case "s":
			rf.Seq, err = d.DecodeUint64()
		default:
			err = d.Skip()
		}
	}
	if err != nil || rf.Seq == 0 {
		return fmt.Errorf("%w: refused frame without a readable sequence number", ErrFrame)
	}
	if _, err := r.Discard(n); err != nil {
		return err
	}
	return rf
}

// readFrame is ReadFrame under g (nil: no guard).
func readFrame(r *bufio.Reader, limit int, g *bodyGuard) (*Frame, error) {
	f, release, err := readFrameHeld(r, limit, g)
	if err != nil {
		return nil, err
	}
	if f.Data != nil {
		f.Data = bytes.Clone(f.Data)
	}
	release()
	return f, nil
}

// readFrameHeld is readFrame without the copy: the frame's Data is in
// the pooled body, and the body and its share of the frame memory stay
// taken until release is called (after which Data must not be used).
func readFrameHeld(r *bufio.Reader, limit int, g *bodyGuard) (f *Frame, release func(), err error) {
	var undo []func()
	rel := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		undo = nil
	}
	defer func() {
		if err != nil {
			rel()
		}
	}()
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if limit = min(limit, maxFrameLen); n == 0 || n > limit {
		return nil, nil, fmt.Errorf("%w: length prefix %d not in 1..%d", ErrFrame, n, limit)
	}
	c := bodyClass(n)
	guarded := false
	if size := int64(classSize(c)); size > budgetFree {
		if g != nil && g.refuse != nil {
			if why := g.refuse(); why != nil {
				return nil, nil, skipBody(r, n, g, why)
			}
		}
		if g != nil {
			if err := takeMemory(g.peer, size); err != nil {
				return nil, nil, err
			}
			undo = append(undo, func() { g.peer.Release(size) })
		}
		if err := takeMemory(frameBudget, size); err != nil {
			return nil, nil, err
		}
		undo = append(undo, func() { frameBudget.Release(size) })
		if g != nil && n > r.Buffered() {
			// Set once per large body only: small frames, which hold
			// no share, keep the hot path free of syscalls.
			g.conn.SetReadDeadline(time.Now().Add(g.timeout))
			guarded = true
		}
	}
	bp := getBody(c)
	undo = append(undo, func() { putBody(bp) })
	body := (*bp)[:n]
	_, err = io.ReadFull(r, body)
	if guarded {
		// The connection may stay idle between frames for ever.
		g.conn.SetReadDeadline(time.Time{})
	}
	if err != nil {
		return nil, nil, err
	}
	// msgpack allocates a bin or str from its length header before it
	// reads the bytes: a 10-byte body claiming 4 GiB would allocate it.
	// (decodeFrame allocates nothing by a length; the check also bounds
	// the nesting it skips.)
	if err := msgpackFits(body); err != nil {
		return nil, nil, err
	}
	f = &Frame{}
	if err := decodeFrame(body, f); err != nil {
		return nil, nil, err
	}
	if err := f.Validate(); err != nil {
		return nil, nil, err
	}
	return f, rel, nil
}

func takeMemory(sem *semaphore.Weighted, n int64) error {
	if sem.TryAcquire(n) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), budgetWait)
	defer cancel()
	if err := sem.Acquire(ctx, n); err != nil {
		return fmt.Errorf("%w: %w: a frame of %d bytes waited %v", ErrFrame, ErrFrameMemory, n, budgetWait)
	}
	return nil
}

// Bodies are reused from pools by size class: a power of two of data,
// 4 KiB to MaxFrameData, plus the envelope's room, so that a write of a
// power-of-two size does not take a buffer twice its size.
const (
	minBodyShift = 12
	bodySlack    = maxFrameLen - MaxFrameData
	topClass     = 25 - minBodyShift // 1<<25 == MaxFrameData
)

var bodyPools [topClass + 1]sync.Pool

func bodyClass(n int) int {
	return min(max(bits.Len(uint(max(n-bodySlack, 1)-1))-minBodyShift, 0), topClass)
}

func classSize(c int) int { return 1<<(c+minBodyShift) + bodySlack }

func getBody(c int) *[]byte {
	if bp, ok := bodyPools[c].Get().(*[]byte); ok {
		return bp
	}
	b := make([]byte, classSize(c))
	return &b
}

func putBody(bp *[]byte) {
	bodyPools[bodyClass(cap(*bp))].Put(bp)
}

// msgpackFits checks that b holds one msgpack value in which every
// length (of a str, bin, ext, array or map) fits in the bytes left, so
// that decoding it cannot allocate more than len(b) per field.
func msgpackFits(b []byte) error {
	if _, err := msgpackSkip(b, 0); err != nil {
		return fmt.Errorf("%w: %v", ErrFrame, err)
	}
	return nil
}

var errMsgpackShort = errors.New("msgpack value longer than its frame")

// msgpackSkip returns b after the value it starts with.
func msgpackSkip(b []byte, depth int) ([]byte, error) {
	if depth > 8 {
		return nil, errors.New("msgpack nested too deep")
	}
	if len(b) == 0 {
		return nil, errMsgpackShort
	}
	c := b[0]
	b = b[1:]
	// size reads a big-endian length of w bytes.
	size := func(w int) (int, error) {
		if len(b) < w {
			return 0, errMsgpackShort
		}
		var n uint64
		for _, x := range b[:w] {
			n = n<<8 | uint64(x)
		}
		b = b[w:]
		if n > uint64(len(b)) {
			return 0, errMsgpackShort
		}
		return int(n), nil
	}
	skip := func(n int) ([]byte, error) {
		if n > len(b) {
			return nil, errMsgpackShort
		}
		return b[n:], nil
	}
	elems := func(n int) ([]byte, error) {
		var err error
		for range n {
			if b, err = msgpackSkip(b, depth+1); err != nil {
				return nil, err
			}
		}
		return b, nil
	}
	var n, w int
	var err error
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return b, nil
	case c&0xf0 == 0x80:
		return elems(2 * int(c&0x0f))
	case c&0xf0 == 0x90:
		return elems(int(c & 0x0f))
	case c&0xe0 == 0xa0:
		return skip(int(c & 0x1f))
	case c == 0xcc || c == 0xd0:
		return skip(1)
	case c == 0xcd || c == 0xd1:
		return skip(2)
	case c == 0xca || c == 0xce || c == 0xd2:
		return skip(4)
	case c == 0xcb || c == 0xcf || c == 0xd3:
		return skip(8)
	case c >= 0xd4 && c <= 0xd8: // fixext 1, 2, 4, 8, 16 after a type byte
		return skip(1 + 1<<(c-0xd4))
	case c == 0xc4 || c == 0xd9: // bin8, str8
		w = 1
	case c == 0xc5 || c == 0xda:
		w = 2
	case c == 0xc6 || c == 0xdb:
		w = 4
	case c >= 0xc7 && c <= 0xc9: // ext 8, 16, 32: the length, a type byte, the data
		if n, err = size(1 << (c - 0xc7)); err != nil {
			return nil, err
		}
		return skip(1 + n)
	case c == 0xdc || c == 0xdd: // array 16, 32: each element takes a byte at least
		if n, err = size(2 << (c - 0xdc)); err != nil {
			return nil, err
		}
		if n > len(b) {
			return nil, errMsgpackShort
		}
		return elems(n)
	case c == 0xde || c == 0xdf:
		if n, err = size(2 << (c - 0xde)); err != nil {
			return nil, err
		}
		if 2*n > len(b) {
			return nil, errMsgpackShort
		}
		return elems(2 * n)
	default: // 0xc1 is never used
		return nil, fmt.Errorf("msgpack code 0x%02x", c)
	}
	if n, err = size(w); err != nil {
		return nil, err
	}
	return skip(n)
}
