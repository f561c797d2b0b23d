package replica

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// This file is the writer's end of the replication data path to one
// replica: frames are pipelined (many in flight on one connection, never a
// round trip per write) and the replica applies them in sequence order, so
// overlapping writes land in the same order at every site.

// ErrStaleEpoch is a replica's answer to a frame from an older epoch
// (DESIGN.md I2: a replica rejects frames from an older epoch).
var ErrStaleEpoch = errors.New("replica: frame from an older epoch")

// ErrSizeMismatch: two sites' LUs differ in size, so one can never be a
// copy of the other; their hello is refused (the cluster also refuses such
// a site by its LU definition, raftlog/lun.go).
var ErrSizeMismatch = errors.New("replica: LU sizes differ")

// ErrLinkDown means the replica cannot be reached; the writer must not
// acknowledge writes that needed it until the cluster drops it.
var ErrLinkDown = errors.New("replica: link down")

// Ack is a replica's verdict on one frame.
type Ack struct {
	Err    error
	Differ bool // for a FrameSum: the replica's bytes differ
}

// Link is the writer's end of one replica connection. Send queues a frame
// and returns a channel that receives the replica's verdict.
type Link struct {
	conn net.Conn

	// The send side (push): frames are encoded into out in the order
	// they are given. A caller that finds no write under way writes out
	// itself, at once; frames given while a write is under way wait in
	// out and leave together, in one socket write (one TLS record up to
	// 16 KiB), as soon as it ends. So an idle link costs no delay and a
	// busy one a write per batch, not one per frame.
	omu     sync.Mutex
	out     []byte
	spare   []byte // the last batch's buffer, for the next one
	writing bool
	werr    error
	// lazy: frames that may wait for the next one (pushLazy) are in out;
	// lazyTimer sends them after lazyLinger if no other frame does.
	lazy      bool
	lazyTimer *time.Timer

	mu      sync.Mutex
	pending []pendingFrame // in sequence order
	err     error
	done    chan struct{}

	// onLease answers a lease request; it runs on the reader goroutine.
	onLease func(l *Link, req *Frame)
	// onDown runs once when the link fails, with the frames that the
	// replica had not acknowledged (their regions are now dirty there).
	onDown func(err error, lost []pendingFrame)
}

type pendingFrame struct {
	seq  uint64
	kind uint8
	off  int64
	n    int64
	sent time.Time
	ch   chan Ack
	// refused: the replica answered it with a nack (its store failed,
	// typically), so it certainly does not hold what the frame carried.
	refused bool
}

// NewLink starts the acknowledgement reader on conn (after the hello
// exchange). br is the reader that already holds the hello answer's
// buffered bytes, or nil.
func NewLink(conn net.Conn, br *bufio.Reader, onLease func(*Link, *Frame), onDown func(error, []pendingFrame)) *Link {
	if br == nil {
		br = bufio.NewReaderSize(conn, 64<<10)
	}
	l := &Link{conn: conn, done: make(chan struct{}), onLease: onLease, onDown: onDown}
	l.lazyTimer = time.AfterFunc(time.Hour, l.lazyFlush)
	l.lazyTimer.Stop()
	go l.readAcks(br)
	return l
}

// lazyLinger bounds how long a lazy frame (a commit point, which only
// makes writes visible to readers at the replica) waits for another
// frame to carry it: under a steady stream it rides with the next write
// and costs no socket write of its own.
const lazyLinger = 500 * time.Microsecond

// maxSpare: a batch buffer larger than this (large writes) is not kept.
const maxSpare = 1 << 20

// Send writes f to the replica. The returned channel gets the replica's
// verdict. Frames must be sent in sequence order; the caller serialises
// Send.
func (l *Link) Send(f *Frame) <-chan Ack {
	ch := make(chan Ack, 1)
	l.mu.Lock()
	if l.err != nil {
		err := l.err
		l.mu.Unlock()
		ch <- Ack{Err: err}
		return ch
	}
	p := pendingFrame{seq: f.Seq, kind: f.Kind, off: f.Offset, sent: time.Now(), ch: ch}
	if f.Kind == FrameWrite || f.Kind == FrameUnmap {
		p.n = int64(f.Length)
	}
	l.pending = append(l.pending, p)
	l.mu.Unlock()
	// A reference to a forwarded operation is of no use to the origin
	// before the operation's result, which the writer sends on this link
	// right after it (serveForward): the two leave in one write.
	if err := l.push(f, f.Flags&FlagRef != 0); err != nil {
		l.fail(fmt.Errorf("%w: %v", ErrLinkDown, err))
	}
	return ch
}

func (l *Link) write(f *Frame) error { return l.push(f, false) }

// push queues f and, unless lazy or a write is under way, writes out
// everything queued.
func (l *Link) push(f *Frame, lazy bool) error {
	l.omu.Lock()
	if l.werr != nil {
		err := l.werr
		l.omu.Unlock()
		return err
	}
	var err error
	if l.out, err = appendFrame(l.out, f); err != nil {
		l.omu.Unlock()
		return err
	}
	if lazy {
		if !l.lazy && !l.writing {
			l.lazy = true
			l.lazyTimer.Reset(lazyLinger)
		}
		l.omu.Unlock()
		return nil
	}
	return l.flushLocked()
}

// flushLocked (omu held; it unlocks) writes out what is queued, batch
// after batch, unless another caller is doing so already.
func (l *Link) flushLocked() error {
	if l.writing {
		l.omu.Unlock()
		return nil
	}
	if l.lazy {
		l.lazyTimer.Stop()
	}
	l.writing, l.lazy = true, false
	var err error
	for len(l.out) > 0 && err == nil {
		buf := l.out
		l.out, l.spare = l.spare[:0], nil
		l.omu.Unlock()
		_, err = l.conn.Write(buf)
		l.omu.Lock()
		if cap(buf) <= maxSpare {
			l.spare = buf[:0]
		}
		if err != nil {
			l.werr, l.out = err, nil
		}
	}
	l.writing = false
	l.omu.Unlock()
	return err
}

func (l *Link) lazyFlush() {
	l.omu.Lock()
	if !l.lazy || l.werr != nil {
		l.omu.Unlock()
		return
	}
	if err := l.flushLocked(); err != nil {
		l.fail(fmt.Errorf("%w: %v", ErrLinkDown, err))
	}
}

// Commit sends a commit point (FrameCommit) with the next frame, or
// within lazyLinger.
func (l *Link) Commit(f *Frame) {
	if err := l.push(f, true); err != nil {
		l.fail(fmt.Errorf("%w: %v", ErrLinkDown, err))
	}
}

// Grant sends a lease answer; it is not a stream frame and takes no seq.
func (l *Link) Grant(f *Frame) {
	if err := l.write(f); err != nil {
		l.fail(fmt.Errorf("%w: %v", ErrLinkDown, err))
	}
}

// Oldest returns when the oldest unacknowledged frame was sent, or zero.
func (l *Link) Oldest() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) == 0 {
		return time.Time{}
	}
	return l.pending[0].sent
}

// Pending returns the number of frames and bytes the replica has not yet
// acknowledged: its replication lag.
func (l *Link) Pending() (frames int, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.pending {
		bytes += p.n
	}
	return len(l.pending), bytes
}

// Err returns why the link is down, or nil.
func (l *Link) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

func (l *Link) readAcks(br *bufio.Reader) {
	defer close(l.done)
	for {
		f, err := ReadFrame(br, MaxControlLen)
		if err != nil {
			l.fail(fmt.Errorf("%w: %v", ErrLinkDown, err))
			return
		}
		switch f.Kind {
		case FrameLeaseReq:
			if l.onLease != nil {
				l.onLease(l, f)
			}
			continue
		case FrameAck, FrameNack:
		default:
			l.fail(fmt.Errorf("%w: unexpected frame kind %d from replica", ErrLinkDown, f.Kind))
			return
		}
		l.mu.Lock()
		var settle []pendingFrame
		// An answer settles its frame and, acknowledgements being
		// cumulative in order, every frame before it. A refused frame
		// stays pending: fail hands it to onDown with the rest, so its
		// range is recorded as missing at the replica before anyone
		// hears of the refusal.
		for len(l.pending) > 0 && l.pending[0].seq <= f.Seq {
			if f.Kind == FrameNack && l.pending[0].seq == f.Seq {
				l.pending[0].refused = true
				break
			}
			settle = append(settle, l.pending[0])
			l.pending = l.pending[1:]
		}
		l.mu.Unlock()
		for _, p := range settle {
			if p.seq != f.Seq {
				p.ch <- Ack{}
				continue
			}
			p.ch <- Ack{Differ: f.Flags&FlagDiffer != 0}
		}
		if f.Kind == FrameNack {
			// The replica closes the stream after a refusal.
			l.fail(fmt.Errorf("%w: replica refused seq %d: %s", ErrLinkDown, f.Seq, f.Err))
			return
		}
	}
}

// fail ends the link: every pending frame gets err.
func (l *Link) fail(err error) {
	l.mu.Lock()
	first := l.err == nil
	if first {
		l.err = err
	}
	pending := l.pending
	l.pending = nil
	l.mu.Unlock()
	l.lazyTimer.Stop()
	l.conn.Close()
	if first && l.onDown != nil {
		l.onDown(err, pending)
	}
	for _, p := range pending {
		p.ch <- Ack{Err: err}
	}
}

// Close ends the link.
func (l *Link) Close() error {
	l.fail(fmt.Errorf("%w: closed", ErrLinkDown))
	<-l.done
	return nil
}
