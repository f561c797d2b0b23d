// Package mirrorfloor is a measuring aid, not a product path: the least
// work any synchronous mirror must do, so that bench-mirror can show how
// far the real mirror (replica/) is from the best this machine allows
// (docs/bench.md, "The floor of mirroring on this machine").
//
// A Volume wraps a single site's store. On every write it sends the
// write (a 24-byte header and the data) over one connection, TLS or
// plain, to an echo process (Serve) that pwrites it into an image file
// of its own and answers with a 12-byte ack; the write returns only
// after the local write and the ack. No epochs, sequence numbers,
// ordering of overlapping writes, commit points, leases, Raft or resync:
// overlapping concurrent writes may land in different orders at the two
// ends, and a lost echo fails writes instead of being dropped from an
// in-sync set. Never use it for data.
//
// It keeps queue depth: concurrent writes pipeline over the one
// connection (each caller writes its request under a lock and waits for
// its own ack by id), and requests that queue behind each other leave in
// one socket write, as the echo's acks do. Acks are read by whichever
// waiting caller holds the read turn, which hands the others theirs
// (Options.Reader: by a reader goroutine instead, as replica/ does): at
// queue depth 1 the caller reads its own ack, without a hand-off from
// another goroutine.
package mirrorfloor

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metrolun/metrolun/target"
)

// The wire format, little-endian:
//
//	request: op u8, flags u8, 0 u16, length u32, id u64, offset i64, then length bytes (op write)
//	ack:     id u64, status u32 (0: done; else the echo failed it)
const (
	reqSize = 24
	ackSize = 12

	opWrite = 1
	opFlush = 2

	flagFUA = 1

	// MaxData bounds one request's data (the echo's buffer).
	MaxData = 16 << 20
)

// AckSize is the size of an ack on the wire.
const AckSize = ackSize

// AppendRequest appends a write request for p at off with the given id
// (a bare client's, for measuring the round trip alone).
func AppendRequest(b []byte, id uint64, p []byte, off int64) []byte {
	var h [reqSize]byte
	h[0] = opWrite
	binary.LittleEndian.PutUint32(h[4:], uint32(len(p)))
	binary.LittleEndian.PutUint64(h[8:], id)
	binary.LittleEndian.PutUint64(h[16:], uint64(off))
	return append(append(b, h[:]...), p...)
}

// DefaultTimeout is how long a write waits for its ack before it fails
// and the connection is closed.
const DefaultTimeout = 10 * time.Second

// ErrClosed is returned for writes after the connection failed or was
// closed.
var ErrClosed = errors.New("mirror floor: connection closed")

type call struct {
	id   uint64
	done chan error // buffered 1
}

// Options tune a Client.
type Options struct {
	// Timeout bounds the wait for each ack (0: DefaultTimeout).
	Timeout time.Duration
	// Reader: a goroutine reads every ack and hands it to its caller,
	// instead of the callers taking turns.
	Reader bool
}

// Client sends writes to an echo over one connection.
type Client struct {
	conn    net.Conn
	timeout time.Duration

	// rturn holds the read turn (and br, the acks' reader) while no
	// caller reads.
	rturn chan struct{}
	br    *bufio.Reader

	wmu     sync.Mutex
	bw      *bufio.Writer
	hdr     [reqSize]byte
	waiting atomic.Int32 // callers queued on wmu or writing

	mu      sync.Mutex
	next    uint64
	pending map[uint64]*call
	err     error // set once: every later call fails with it
}

// NewClient returns a client that sends on conn.
func NewClient(conn net.Conn, o Options) *Client {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	c := &Client{conn: conn, timeout: o.Timeout, bw: bufio.NewWriterSize(conn, 64<<10), pending: map[uint64]*call{},
		rturn: make(chan struct{}, 1), br: bufio.NewReaderSize(conn, 4<<10)}
	if o.Reader {
		go c.readAcks()
	} else {
		c.rturn <- struct{}{}
	}
	return c
}

// Close closes the connection; writes in flight fail.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	return nil
}

// fail closes the connection and fails every write in flight and every
// later one with err (the first error wins).
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	p := c.pending
	c.pending = map[uint64]*call{}
	c.mu.Unlock()
	c.conn.Close()
	for _, cl := range p {
		cl.done <- err
	}
}

// send writes one request and returns the call that its ack completes.
// The data is on the connection, or in the client's buffer with a
// caller behind it that will flush it, when send returns; p is not
// referenced after.
func (c *Client) send(op, flags byte, p []byte, off int64) (*call, error) {
	cl := &call{done: make(chan error, 1)}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.next++
	cl.id = c.next
	c.pending[cl.id] = cl
	c.mu.Unlock()

	c.waiting.Add(1)
	c.wmu.Lock()
	h := c.hdr[:]
	h[0], h[1], h[2], h[3] = op, flags, 0, 0
	binary.LittleEndian.PutUint32(h[4:], uint32(len(p)))
	binary.LittleEndian.PutUint64(h[8:], cl.id)
	binary.LittleEndian.PutUint64(h[16:], uint64(off))
	_, err := c.bw.Write(h)
	if err == nil && len(p) > 0 {
		_, err = c.bw.Write(p)
	}
	// The last of the callers queued here flushes for all of them: the
	// requests that piled up meanwhile leave in one socket write.
	if c.waiting.Add(-1) == 0 && err == nil {
		err = c.bw.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("mirror floor: send: %w", err))
		return nil, err
	}
	return cl, nil
}

// wait waits for the call's ack: handed over by another caller or the
// reader goroutine, or read by this caller when the read turn is free.
func (c *Client) wait(cl *call) error {
	// A caller that reads is bounded by the read deadline; the timer is
	// for one that waits to be handed its ack.
	t := time.NewTimer(c.timeout)
	defer t.Stop()
	select {
	case err := <-cl.done:
		return err
	case <-c.rturn:
		err := c.readTurn(cl)
		c.rturn <- struct{}{}
		return err
	case <-t.C:
		err := fmt.Errorf("mirror floor: no ack within %v", c.timeout)
		c.fail(err)
		return err
	}
}

// readTurn reads acks, handing each to its call, until cl's has come.
func (c *Client) readTurn(cl *call) error {
	select {
	case err := <-cl.done: // handed over before the turn came
		return err
	default:
	}
	c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	for {
		err := c.readAck()
		if err != nil {
			c.fail(err) // cl's answer is err now, unless it came first
		}
		select {
		case e := <-cl.done:
			return e
		default:
			if err != nil {
				return err
			}
		}
	}
}

// Write sends a write and waits for its ack.
func (c *Client) Write(p []byte, off int64, fua bool) error {
	cl, err := c.send(opWrite, fuaFlag(fua), p, off)
	if err != nil {
		return err
	}
	return c.wait(cl)
}

// Flush asks the echo to make its writes stable.
func (c *Client) Flush() error {
	cl, err := c.send(opFlush, 0, nil, 0)
	if err != nil {
		return err
	}
	return c.wait(cl)
}

func fuaFlag(fua bool) byte {
	if fua {
		return flagFUA
	}
	return 0
}

// readAcks is the reader goroutine (Options.Reader).
func (c *Client) readAcks() {
	for {
		if err := c.readAck(); err != nil {
			c.fail(err)
			return
		}
	}
}

// readAck reads one ack and hands it to its call. An ack for no call in
// flight, a short ack or a read error is an error for the connection.
func (c *Client) readAck() error {
	var a [ackSize]byte
	if _, err := io.ReadFull(c.br, a[:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("mirror floor: reading acks: %w", err)
	}
	id := binary.LittleEndian.Uint64(a[:])
	status := binary.LittleEndian.Uint32(a[8:])
	c.mu.Lock()
	cl := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if cl == nil {
		return fmt.Errorf("mirror floor: ack for request %d, which is not in flight", id)
	}
	if status != 0 {
		cl.done <- fmt.Errorf("mirror floor: the echo failed request %d (status %d)", id, status)
	} else {
		cl.done <- nil
	}
	return nil
}

// Store is what the echo writes into.
type Store interface {
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
}

// Serve answers one connection's requests in order until it fails or
// ends (nil at a clean end between requests). With st nil it writes
// nothing and acks at once (the bare round trip). Acks that are ready
// while the next request is already in its buffer leave with that
// request's ack.
func Serve(conn net.Conn, st Store) error {
	defer conn.Close()
	br := bufio.NewReaderSize(conn, 64<<10)
	bw := bufio.NewWriterSize(conn, 4<<10)
	var h [reqSize]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		op, flags := h[0], h[1]
		n := binary.LittleEndian.Uint32(h[4:])
		id := binary.LittleEndian.Uint64(h[8:])
		off := int64(binary.LittleEndian.Uint64(h[16:]))
		if n > MaxData || op != opWrite && n != 0 || off < 0 {
			return fmt.Errorf("mirror floor: bad request %d: op %d, %d bytes at %d", id, op, n, off)
		}
		var status uint32
		switch op {
		case opWrite:
			if cap(buf) < int(n) {
				buf = make([]byte, n)
			}
			p := buf[:n]
			if _, err := io.ReadFull(br, p); err != nil {
				return err
			}
			if st != nil {
				if _, err := st.WriteAt(p, off); err != nil {
					status = 1
				} else if flags&flagFUA != 0 && st.Sync() != nil {
					status = 2
				}
			}
		case opFlush:
			if st != nil && st.Sync() != nil {
				status = 2
			}
		default:
			return fmt.Errorf("mirror floor: request %d: unknown op %d", id, op)
		}
		var a [ackSize]byte
		binary.LittleEndian.PutUint64(a[:], id)
		binary.LittleEndian.PutUint32(a[8:], status)
		bw.Write(a[:])
		if !nextBuffered(br) {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
}

// nextBuffered reports whether a whole request is already in br, so
// that it can be served without waiting for the network.
func nextBuffered(br *bufio.Reader) bool {
	if br.Buffered() < reqSize {
		return false
	}
	h, _ := br.Peek(reqSize)
	n := binary.LittleEndian.Uint32(h[4:])
	return br.Buffered() >= reqSize+int(n)
}

// Volume is a single site's volume whose writes (and flushes) are also
// made at the echo: each write is sent first, then written locally while
// the echo works, and returns once both are done.
type Volume struct {
	target.Volume
	C *Client
}

func (v *Volume) WriteAt(p []byte, off int64, fua bool) error {
	cl, err := v.C.send(opWrite, fuaFlag(fua), p, off)
	if err != nil {
		return err
	}
	lerr := v.Volume.WriteAt(p, off, fua)
	return errors.Join(lerr, v.C.wait(cl))
}

func (v *Volume) Flush() error {
	cl, err := v.C.send(opFlush, 0, nil, 0)
	if err != nil {
		return err
	}
	lerr := v.Volume.Flush()
	return errors.Join(lerr, v.C.wait(cl))
}

// Unwrap lets target find what the wrapped volume implements.
func (v *Volume) Unwrap() target.Volume { return v.Volume }

func (v *Volume) Close() error {
	v.C.Close()
	return v.Volume.Close()
}

// Spawned is a Volume that the target takes for a mirrored one: it has
// an LU state record (kept in memory here, for this site alone), so the
// target runs its writes on a goroutine of their own instead of on the
// connection's reader at queue depth 1 (target/task.go: a volume with
// SharedState may wait for another site, and the reader must keep
// reading meanwhile), as it must for replica/'s volume. It measures what
// that rule costs at the floor.
type Spawned struct {
	*Volume
	ver  atomic.Uint64
	mu   sync.Mutex
	data []byte
}

var _ target.SharedState = (*Spawned)(nil)

func (s *Spawned) SharedState() (uint64, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ver.Load(), s.data
}

func (s *Spawned) SharedVersion() uint64 { return s.ver.Load() }

func (s *Spawned) SetSharedState(expect uint64, data []byte) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ver.Load() != expect {
		return false, nil
	}
	s.data = append([]byte(nil), data...)
	s.ver.Add(1)
	return true, nil
}
