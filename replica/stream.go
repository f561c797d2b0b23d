package replica

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metrolun/metrolun/internal/stamp"
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

	snd *sender
	// npending is len(pending), for snd.busy.
	npending atomic.Int32

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
	// Busy while the replica owes answers beyond the frame being sent.
	l.snd = newSender(conn, func() bool { return l.npending.Load() > 1 }, func(err error) { l.fail(fmt.Errorf("%w: %v", ErrLinkDown, err)) })
	go l.readAcks(br)
	return l
}

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
	if f.Kind == FrameWrite || f.Kind == FrameUnmap || f.Kind == FrameLost {
		p.n = int64(f.Length)
	}
	l.pending = append(l.pending, p)
	l.npending.Store(int32(len(l.pending)))
	l.mu.Unlock()
	// A reference to a forwarded operation is of no use to the origin
	// before the operation's result, which the writer sends on this link
	// right after it (serveForward): the two leave in one write.
	mode := sendNow
	if f.Flags&FlagRef != 0 {
		mode = sendLazy
	}
	stamp.MarkAll("link.push")
	if err := l.snd.push(f, mode); err != nil {
		l.fail(fmt.Errorf("%w: %v", ErrLinkDown, err))
	}
	stamp.MarkAll("link.pushed")
	return ch
}

func (l *Link) write(f *Frame) error { return l.snd.push(f, sendNow) }

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
		l.npending.Store(int32(len(l.pending)))
		l.mu.Unlock()
		stamp.MarkAll("ack.read")
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
	l.npending.Store(0)
	l.mu.Unlock()
	l.snd.close()
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
