package replica

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/metrolun/metrolun/internal/stamp"
	"github.com/metrolun/metrolun/replica/core"
)

// Forwarding (DESIGN.md write path step 3): a site that is not the writer
// sends the operation to the writer and keeps the data. The writer orders
// it, applies it, sends the ordered frame to this site as a reference
// (FlagRef, no data) on the stream and tells this site, on the forwarding
// connection, once every other in-sync site has it. This site applies the
// reference in sequence order and answers the initiator: one WAN round
// trip.

// fwdOp is one forwarded operation at the forwarding site.
type fwdOp struct {
	id   uint64
	kind uint8
	off  int64
	n    int64
	data []byte // write data (or, for compare-and-write, the write half)
	cmp  []byte
	fua  bool
	// conn is the connection it was sent on (under forwarder.mu): only
	// that connection's end leaves its outcome unknown.
	conn net.Conn

	mu        sync.Mutex
	isApplied bool
	// localErr: applying it here failed (this site's store); the
	// operation ends with this error whatever the writer answers.
	localErr error
	epoch    uint64 // the stream frame that applied it here
	seq      uint64
	result   *Frame
	done     chan struct{}
}

func (o *fwdOp) applied(epoch, seq uint64) {
	o.mu.Lock()
	o.isApplied = true
	o.epoch, o.seq = epoch, seq
	o.check()
	o.mu.Unlock()
}

func (o *fwdOp) failedHere(err error) {
	o.mu.Lock()
	if o.localErr == nil {
		o.localErr = err
	}
	o.check()
	o.mu.Unlock()
}

func (o *fwdOp) answered(f *Frame) {
	o.mu.Lock()
	if o.result == nil {
		o.result = f
	}
	o.check()
	o.mu.Unlock()
}

// check completes the operation once it is both applied here and known
// to be everywhere else, or refused. o.mu is held.
func (o *fwdOp) check() {
	select {
	case <-o.done:
		return
	default:
	}
	if o.localErr != nil {
		close(o.done)
		return
	}
	if o.result == nil {
		return
	}
	if o.result.Err != "" || o.result.At != 0 || o.isApplied {
		close(o.done)
	}
}

// helloResultsOnStream, in a forwarding hello's At, says that the
// forwarding site takes the writer's results (FrameFwdResult) on the
// stream it gets from the writer as well as on the forwarding
// connection; the writer then sends a result right after the reference
// to the operation (serveForward). A hello's At is otherwise unused, and
// a writer from before ignores it.
const helloResultsOnStream = 1

// forwarder holds this site's forwarding connection to the writer.
type forwarder struct {
	s *Site

	mu   sync.Mutex
	to   string // writer site name
	conn net.Conn
	snd  *sender // conn's send side
	ops  map[uint64]*fwdOp
	next uint64
	// nops is len(ops): operations waiting for an answer (sender.busy).
	nops atomic.Int32
	// retired: connections to a site that is no longer the writer, kept
	// open until it answered what was sent on them or a grace ran out
	// (retireLocked).
	retired map[net.Conn]*time.Timer
}

func (fw *forwarder) lookup(id uint64) *fwdOp {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.ops[id]
}

// errRetry: the writer did not take the operation (it is not the writer,
// or not yet); nothing was applied anywhere.
var errRetry = errors.New("replica: forwarded operation not taken")

// errFwdLost: the connection to the writer ended before it answered; it
// may or may not have ordered the operation.
var errFwdLost = errors.New("connection to the writer lost")

// lostForward is an operation whose connection to the writer (of epoch)
// ended before the answer: an unknown outcome (err) until Site.op settles
// it (settleLost) once this site is the writer.
type lostForward struct {
	op     *fwdOp
	writer string
	epoch  uint64
	err    error // an *indeterminate: what the initiator hears if it stays unknown
}

func (l *lostForward) Error() string { return l.err.Error() }
func (l *lostForward) Unwrap() error { return l.err }

// do forwards op to writer and waits for its outcome. It returns errRetry
// when the operation certainly did not happen, so the caller may try
// again once the cluster changes.
func (fw *forwarder) do(ctx context.Context, writer string, op *fwdOp, epoch uint64) (int, error) {
	fw.mu.Lock()
	if fw.conn == nil || fw.to != writer {
		fw.retireLocked()
		fw.mu.Unlock()
		conn, br, err := fw.s.hello(ctx, writer, FlagForward, epoch)
		if err != nil {
			return -1, fmt.Errorf("%w: %v", errRetry, err)
		}
		fw.mu.Lock()
		if fw.conn != nil { // another operation connected meanwhile
			conn.Close()
		} else {
			snd := newSender(conn, func() bool { return fw.nops.Load() > 1 }, func(error) { conn.Close() })
			fw.conn, fw.to, fw.snd = conn, writer, snd
			go fw.readResults(conn, br, snd)
		}
	}
	fw.next++
	op.id = fw.next
	op.done = make(chan struct{})
	if fw.ops == nil {
		fw.ops = make(map[uint64]*fwdOp)
	}
	fw.ops[op.id] = op
	fw.nops.Store(int32(len(fw.ops)))
	op.conn = fw.conn
	f := &Frame{Kind: op.kind, Epoch: epoch, Seq: op.id, Offset: op.off, Length: uint32(op.n)}
	switch op.kind {
	case FrameFwdWrite:
		f.Data = op.data
		f.CRC = Checksum(op.data)
		if op.fua {
			f.Flags = FlagFUA
		}
	case FrameFwdCAW:
		f.Data = append(append(make([]byte, 0, 2*len(op.data)), op.cmp...), op.data...)
		f.CRC = Checksum(f.Data)
	case FrameFwdMeta:
		f.Data = op.data
		f.CRC = Checksum(op.data)
	}
	conn := fw.conn
	// The data is copied into the batch before push returns: the
	// initiator's buffer is not referenced after it.
	stamp.Mark(stamp.Cmd, "fwd.push")
	err := fw.snd.push(f, sendNow)
	stamp.Mark(stamp.Cmd, "fwd.pushed")
	fw.mu.Unlock()
	defer func() {
		fw.mu.Lock()
		delete(fw.ops, op.id)
		fw.nops.Store(int32(len(fw.ops)))
		if _, ok := fw.retired[conn]; ok && !fw.pendingOn(conn) {
			// The former writer answered everything sent to it.
			conn.Close()
		}
		fw.mu.Unlock()
	}()
	if err != nil {
		conn.Close()
		// The frame may have left in part: the outcome is unknown.
		return -1, &lostForward{op: op, writer: writer, epoch: epoch, err: &indeterminate{err: err}}
	}
	select {
	case <-op.done:
	case <-ctx.Done():
		return -1, &indeterminate{err: fmt.Errorf("forwarded operation: %w", ctx.Err())}
	}
	stamp.Mark(stamp.Cmd, "fwd.done")
	op.mu.Lock()
	r, localErr := op.result, op.localErr
	op.mu.Unlock()
	if localErr != nil {
		// Ordered and kept elsewhere, failed here: not GOOD. The
		// store's error says why (out of space, medium error).
		return -1, localErr
	}
	switch {
	case r.Err == errNotWriter.Error():
		return -1, errRetry
	case r.Err == errFwdLost.Error():
		return -1, &lostForward{op: op, writer: writer, epoch: epoch, err: &indeterminate{err: errFwdLost}}
	case r.Err != "":
		return -1, &indeterminate{err: errors.New(r.Err)}
	case r.At != 0:
		return int(r.At - 1), nil
	}
	// The writer answers only once every other in-sync site has it, and
	// it is applied here: readers here need not wait for the commit.
	op.mu.Lock()
	ep, seq := op.epoch, op.seq
	op.mu.Unlock()
	fw.s.recv.settledHere(ep, seq)
	return -1, nil
}

func (fw *forwarder) readResults(conn net.Conn, br *bufio.Reader, snd *sender) {
	defer snd.close()
	for {
		f, err := ReadFrame(br, MaxControlLen)
		if err != nil || f.Kind != FrameFwdResult {
			break
		}
		if op := fw.lookup(f.Seq); op != nil {
			op.answered(f)
		}
	}
	conn.Close()
	fw.mu.Lock()
	if fw.conn == conn {
		fw.conn = nil
	}
	if t, ok := fw.retired[conn]; ok {
		t.Stop()
		delete(fw.retired, conn)
	}
	var lost []*fwdOp
	for _, op := range fw.ops {
		// Operations sent on another connection (to the new writer,
		// after a retarget) are not lost with this one.
		if op.conn == conn {
			lost = append(lost, op)
		}
	}
	fw.mu.Unlock()
	for _, op := range lost {
		// The writer may or may not have ordered it: not a retry.
		op.answered(&Frame{Kind: FrameFwdResult, Err: errFwdLost.Error()})
	}
}

// retarget retires the connection to a site that is no longer the
// writer (retireLocked); new operations open one to the new writer.
func (fw *forwarder) retarget(writer string) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.conn != nil && fw.to != writer {
		fw.retireLocked()
	}
}

// retireLocked takes the current connection out of use. Closing it at
// once would turn the operations still waiting on it into unknown
// outcomes (ABORTED COMMAND), yet a former writer that is alive answers
// every one of them within a round trip: most with a refusal (not the
// writer: paused by a planned move, or stopped), after which they are
// retried at the new writer, so a planned move fails no I/O. So the
// connection stays open until those answers are in, and at most one
// lease: a former writer acknowledges nothing past its lease, and one
// that is frozen or cut off does not answer at all; its operations then
// end as unknown, as before, without waiting the whole hold time.
// fw.mu is held.
func (fw *forwarder) retireLocked() {
	old := fw.conn
	fw.conn, fw.snd = nil, nil
	if old == nil {
		return
	}
	if !fw.pendingOn(old) {
		old.Close()
		return
	}
	if fw.retired == nil {
		fw.retired = make(map[net.Conn]*time.Timer)
	}
	fw.retired[old] = time.AfterFunc(fw.s.cfg.Lease, func() { old.Close() })
}

// pendingOn reports whether an operation sent on c waits for its answer.
// fw.mu is held.
func (fw *forwarder) pendingOn(c net.Conn) bool {
	for _, op := range fw.ops {
		if op.conn == c {
			return true
		}
	}
	return false
}

func (fw *forwarder) close() {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.conn != nil {
		fw.conn.Close()
		fw.conn = nil
	}
	for c, t := range fw.retired {
		t.Stop()
		c.Close()
	}
}

// fwdMemory bounds what the operations of one forwarding connection hold
// at the writer, from the read of a frame until it is answered: each
// waits for the writer in its own goroutine with its data decoded, and
// FrameMemory is released once it is. Past the bound the connection is
// not read, so a peer that floods forwarded writes is held back by TCP.
// Two maximal frames' worth: one in order, the next being read.
const fwdMemory = 2 * maxFrameLen

// fwdOpCost is what a forwarded operation counts against fwdMemory: its
// data and room for the frame and goroutine, so that operations without
// data (unmap, flush) are bounded in number too.
func fwdOpCost(f *Frame) int64 { return int64(len(f.Data)) + 4096 }

// fwdHeldHook, when set (by a test, before any site starts), sees every
// change of the bytes forwarded operations hold against fwdMemory.
var fwdHeldHook func(delta int64)

// fwdWaitHook, when set (by a test), runs when a forwarding connection is
// not read because its operations hold fwdMemory.
var fwdWaitHook func()

// serveForward runs at the writer: it orders the operations another site
// forwards and answers each.
func (s *Site) serveForward(conn net.Conn, br *bufio.Reader, hello *Frame, g *bodyGuard) error {
	var wmu sync.Mutex
	bw := bufio.NewWriterSize(conn, 64<<10)
	answer := func(f *Frame) {
		wmu.Lock()
		defer wmu.Unlock()
		if WriteFrame(bw, f) == nil {
			bw.Flush()
		}
	}
	answer(&Frame{Kind: FrameHelloAck, Epoch: hello.Epoch})
	// Only a forwarder that says so takes results on its stream (a site
	// from before that would refuse the frame there and be dropped).
	onStream := hello.At&helloResultsOnStream != 0
	// Data is refused before it is read when this site would refuse it
	// anyway (orderForwarded checks again once the operation is ordered).
	g.refuse = func() error { return s.takesForwardFrom(hello.From) }
	var wg sync.WaitGroup
	defer wg.Wait()
	// Each operation runs on a worker of this connection: an idle one
	// if one waits, else a new one, which stays for fwdWorkerIdle after
	// its operation. A goroutine per operation would be created, and
	// grow its stack through the write order, once per write.
	work := make(chan func())
	quit := make(chan struct{})
	defer close(quit) // before wg.Wait: idle workers end
	run := func(fn func()) {
		select {
		case work <- fn:
			return
		default:
		}
		wg.Add(1)
		fwdWorkersStarted.Add(1)
		go func() {
			defer wg.Done()
			idle := time.NewTimer(fwdWorkerIdle)
			defer idle.Stop()
			for {
				fn()
				idle.Reset(fwdWorkerIdle)
				select {
				case fn = <-work:
				case <-idle.C:
					return
				case <-quit:
					return
				}
			}
		}()
	}
	mem := semaphore.NewWeighted(fwdMemory)
	held := func(d int64) {
		if fwdHeldHook != nil {
			fwdHeldHook(d)
		}
	}
	for {
		// Room for the largest frame before reading the next one; what
		// the frame turns out not to need is given back at once.
		if !mem.TryAcquire(maxFrameLen) {
			if fwdWaitHook != nil {
				fwdWaitHook()
			}
			if err := mem.Acquire(context.Background(), maxFrameLen); err != nil {
				return err
			}
		}
		held(maxFrameLen)
		f, release, err := readFrameHeld(br, MaxDataFrameLen, g)
		if err != nil {
			mem.Release(maxFrameLen)
			held(-maxFrameLen)
			var rf *refusedFrame
			if errors.As(err, &rf) {
				// The same answer orderForwarded gives, before the
				// data took memory: the forwarder retries it at the
				// writer.
				answer(&Frame{Kind: FrameFwdResult, Seq: rf.Seq, Err: rf.err.Error()})
				continue
			}
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		stamp.Begin(stamp.Fwd)
		if len(f.Data) > fwdHoldMax {
			// Its body took a share of FrameMemory: copied out, so
			// that the share comes back at once.
			f.Data = bytes.Clone(f.Data)
			release()
			release = func() {}
		}
		cost := fwdOpCost(f)
		mem.Release(maxFrameLen - cost)
		held(cost - maxFrameLen)
		run(func() {
			defer func() {
				release()
				mem.Release(cost)
				held(-cost)
			}()
			stamp.Mark(stamp.Fwd, "goroutine")
			res := &Frame{Kind: FrameFwdResult, Seq: f.Seq}
			at, err := s.orderForwarded(hello.From, f)
			switch {
			case err != nil:
				res.Err = err.Error()
			case at >= 0:
				res.At = int64(at) + 1
			case onStream:
				// Done: the origin needs the ordered reference, on its
				// stream, and this answer. Sent on the same link, right
				// after the reference, both arrive in one message and
				// are read in one go.
				if l := s.streamTo(hello.From); l != nil {
					l.Grant(res)
					stamp.Mark(stamp.Fwd, "result.granted")
					return
				}
			}
			answer(res)
		})
	}
}

// fwdHoldMax: a forwarded operation with at most this much data is
// ordered from the pooled frame body it was read into (released when it
// is done; such a body takes no share of FrameMemory), a larger one from
// a copy. The order does not keep the data: the stream's sender copies
// small frames into its batch and writes large ones before it returns,
// and the store writes before it returns.
const fwdHoldMax = budgetFree / 4

// fwdWorkersStarted counts the forwarding workers started (tests).
var fwdWorkersStarted atomic.Int64

// fwdWorkerIdle is how long a forwarding connection's idle worker waits
// for its next operation (serveForward).
const fwdWorkerIdle = time.Second

// orderForwarded runs one forwarded operation through the writer.
func (s *Site) orderForwarded(origin string, f *Frame) (int, error) {
	w := s.activeWriter()
	if w == nil || !w.takesForwardFrom(origin) {
		return -1, errNotWriter
	}
	st := s.cfg.Store
	ref := func(k uint8) *Frame {
		return &Frame{Kind: k, Offset: f.Offset, Length: f.Length, Ref: f.Seq, Flags: f.Flags & FlagFUA}
	}
	switch f.Kind {
	case FrameFwdWrite:
		// Other in-sync sites need the data; order strips it for the
		// origin, which has it.
		fr := ref(FrameWrite)
		fr.Data, fr.CRC = f.Data, f.CRC
		return -1, w.order(fr, origin, func() error {
			return st.WriteAt(f.Data, f.Offset, f.Flags&FlagFUA != 0)
		})
	case FrameFwdUnmap:
		return -1, w.order(ref(FrameUnmap), origin, func() error { return st.Unmap(f.Offset, int64(f.Length)) })
	case FrameFwdFlush:
		return -1, w.order(&Frame{Kind: FrameFlush, Ref: f.Seq}, origin, st.Flush)
	case FrameFwdCAW:
		n := int(f.Length)
		return w.compareAndWrite(f.Offset, f.Data[:n], f.Data[n:], ref(FrameWrite), origin)
	case FrameFwdMeta:
		return w.setMeta(uint64(f.Offset), f.Data, ref(FrameMeta), origin)
	}
	return -1, fmt.Errorf("unexpected forwarded frame kind %d", f.Kind)
}

// takesForwardFrom returns errNotWriter unless this site is the writer
// and origin an in-sync site with a stream: only an in-sync site can
// apply the reference in order; one that is resyncing cannot serve I/O
// anyway.
func (s *Site) takesForwardFrom(origin string) error {
	if w := s.activeWriter(); w == nil || !w.takesForwardFrom(origin) {
		return errNotWriter
	}
	return nil
}

// streamTo returns the writer's stream to the in-sync site origin, or
// nil.
func (s *Site) streamTo(origin string) *Link {
	w := s.activeWriter()
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.peers {
		if p.name == origin && w.st(p) == core.InSync {
			return p.link
		}
	}
	return nil
}

func (w *writer) takesForwardFrom(origin string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.peers {
		if p.name == origin && w.st(p) == core.InSync && p.link != nil {
			return true
		}
	}
	return false
}

// hello dials site and opens a connection of the given kind.
func (s *Site) hello(ctx context.Context, site string, flags uint8, epoch uint64) (net.Conn, *bufio.Reader, error) {
	addr, ok := s.peerAddr(site)
	if !ok {
		return nil, nil, fmt.Errorf("no replication address for site %q", site)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ReplicaTimeout)
	defer cancel()
	conn, err := s.cfg.Dial(ctx, site, addr)
	if err != nil {
		return nil, nil, err
	}
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	br := bufio.NewReaderSize(conn, 64<<10)
	hello := &Frame{Kind: FrameHello, Epoch: epoch, From: s.cfg.Name, Flags: flags}
	if flags&FlagForward != 0 {
		hello.At = helloResultsOnStream
	}
	if err := WriteFrame(conn, hello); err != nil {
		conn.Close()
		return nil, nil, err
	}
	ack, err := ReadFrame(br, MaxHelloAckLen)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if ack.Kind != FrameHelloAck || ack.Err != "" {
		conn.Close()
		return nil, nil, fmt.Errorf("%s refused: %s", site, ack.Err)
	}
	conn.SetDeadline(time.Time{})
	return conn, br, nil
}
