package replica

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// This file is the replication data path between a writer and one
// replica: frames are pipelined (many in flight on one connection, never a
// round trip per write) and the replica applies them in sequence order, so
// overlapping writes land in the same order at every site.

// ErrStaleEpoch is a replica's answer to a frame from an older epoch
// (DESIGN.md I2: a replica rejects frames from an older epoch).
var ErrStaleEpoch = errors.New("replica: frame from an older epoch")

// ErrLinkDown means the replica cannot be reached; the writer must not
// acknowledge writes that needed it until the cluster drops it.
var ErrLinkDown = errors.New("replica: link down")

// Store is what a replica applies frames to; LocalFile implements it.
type Store interface {
	WriteAt(p []byte, off int64, fua bool) error
	Unmap(off, length int64) error
	Flush() error
}

// Receiver applies a writer's frames to a local store. It accepts frames
// of the highest epoch it has seen and refuses older ones.
type Receiver struct {
	store Store
	mu    sync.Mutex
	epoch uint64
	seq   uint64 // highest applied sequence number in epoch
}

// NewReceiver returns a receiver that starts at epoch (frames of an older
// epoch are refused from the start).
func NewReceiver(s Store, epoch uint64) *Receiver {
	return &Receiver{store: s, epoch: epoch}
}

// Applied returns the epoch and the highest applied sequence number.
func (r *Receiver) Applied() (epoch, seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.epoch, r.seq
}

// apply applies one frame and returns the answer to send back.
func (r *Receiver) apply(f *Frame) *Frame {
	r.mu.Lock()
	defer r.mu.Unlock()
	nack := func(msg string) *Frame {
		return &Frame{Kind: FrameNack, Epoch: r.epoch, Seq: f.Seq, Err: msg}
	}
	if f.Epoch < r.epoch {
		return nack(fmt.Sprintf("%v: frame epoch %d < %d", ErrStaleEpoch, f.Epoch, r.epoch))
	}
	if f.Epoch > r.epoch {
		r.epoch, r.seq = f.Epoch, 0
	}
	if f.Seq != r.seq+1 {
		// One TCP stream delivers in order; a gap means the writer lost
		// track, and applying out of order would break I4.
		return nack(fmt.Sprintf("sequence gap: got %d after %d", f.Seq, r.seq))
	}
	var err error
	switch f.Kind {
	case FrameWrite:
		err = r.store.WriteAt(f.Data, f.Offset, f.Flags&FlagFUA != 0)
	case FrameUnmap:
		err = r.store.Unmap(f.Offset, int64(f.Length))
	case FrameFlush:
		err = r.store.Flush()
	default:
		return nack(fmt.Sprintf("unexpected frame kind %d", f.Kind))
	}
	if err != nil {
		return nack(err.Error())
	}
	r.seq = f.Seq
	return &Frame{Kind: FrameAck, Epoch: f.Epoch, Seq: f.Seq}
}

// Serve reads frames from conn, applies them and acknowledges each one,
// until the connection ends. A malformed frame ends the connection.
func (r *Receiver) Serve(conn io.ReadWriter) error {
	br := bufio.NewReaderSize(conn, 256<<10)
	bw := bufio.NewWriterSize(conn, 64<<10)
	for {
		f, err := ReadFrame(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		ans := r.apply(f)
		if err := WriteFrame(bw, ans); err != nil {
			return err
		}
		// Answers are batched while more frames are already buffered.
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
		if ans.Kind == FrameNack {
			bw.Flush()
			return fmt.Errorf("refused seq %d: %s", f.Seq, ans.Err)
		}
	}
}

// Link is the writer's end of one replica connection. Send queues a frame
// and returns a channel that receives the replica's verdict.
type Link struct {
	conn net.Conn
	bw   *bufio.Writer

	mu      sync.Mutex
	pending []pendingFrame // in sequence order
	err     error
	done    chan struct{}
	wmu     sync.Mutex
}

type pendingFrame struct {
	seq uint64
	ch  chan error
}

// NewLink starts the acknowledgement reader on conn.
func NewLink(conn net.Conn) *Link {
	l := &Link{conn: conn, bw: bufio.NewWriterSize(conn, 256<<10), done: make(chan struct{})}
	go l.readAcks()
	return l
}

// Send writes f to the replica. The returned channel gets nil when the
// replica applied it, or an error. Frames must be sent in sequence order;
// the caller serialises Send.
func (l *Link) Send(f *Frame) <-chan error {
	ch := make(chan error, 1)
	l.mu.Lock()
	if l.err != nil {
		err := l.err
		l.mu.Unlock()
		ch <- err
		return ch
	}
	l.pending = append(l.pending, pendingFrame{f.Seq, ch})
	l.mu.Unlock()
	l.wmu.Lock()
	err := WriteFrame(l.bw, f)
	if err == nil {
		err = l.bw.Flush()
	}
	l.wmu.Unlock()
	if err != nil {
		l.fail(fmt.Errorf("%w: %v", ErrLinkDown, err))
	}
	return ch
}

func (l *Link) readAcks() {
	defer close(l.done)
	br := bufio.NewReaderSize(l.conn, 64<<10)
	for {
		f, err := ReadFrame(br)
		if err != nil {
			l.fail(fmt.Errorf("%w: %v", ErrLinkDown, err))
			return
		}
		l.mu.Lock()
		var settle []pendingFrame
		// An answer settles its frame and, acknowledgements being
		// cumulative in order, every frame before it.
		for len(l.pending) > 0 && l.pending[0].seq <= f.Seq {
			settle = append(settle, l.pending[0])
			l.pending = l.pending[1:]
		}
		l.mu.Unlock()
		for _, p := range settle {
			if f.Kind == FrameNack && p.seq == f.Seq {
				p.ch <- fmt.Errorf("replica refused seq %d: %s", f.Seq, f.Err)
				continue
			}
			p.ch <- nil
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
	if l.err == nil {
		l.err = err
	}
	pending := l.pending
	l.pending = nil
	l.mu.Unlock()
	for _, p := range pending {
		p.ch <- err
	}
	l.conn.Close()
}

// Close ends the link.
func (l *Link) Close() error {
	l.fail(fmt.Errorf("%w: closed", ErrLinkDown))
	<-l.done
	return nil
}
