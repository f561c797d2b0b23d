package replica

import (
	"net"
	"sync"
	"time"

	"github.com/metrolun/metrolun/internal/stamp"
)

// sender is the send side of a replication connection (a writer's
// stream, a forwarding connection). Frames are encoded into out in the
// order they are given, and go out in batches, one socket write (one TLS
// record up to 16 KiB) per batch:
//
//   - When the connection is idle (nothing written is waiting for an
//     answer), the caller writes at once: no hand-off, no delay, which is
//     what a single outstanding write (queue depth 1) needs.
//   - Otherwise the frame is left to the sender's goroutine, and frames
//     given while it writes leave together with the next batch. The
//     caller, who may hold the lock that orders writes, does not wait
//     for a socket write, and a busy link costs a write per batch, not
//     one per frame.
//   - A lazy frame (a forwarded operation's reference, whose result
//     follows at once) waits for the next frame, at most lazyLinger. The
//     commit point needs none: it rides on data frames (Frame.Commit),
//     and the committer sends one of its own only when none carried it.
type sender struct {
	conn net.Conn
	// busy reports whether answers are outstanding on the connection.
	busy func() bool
	// onErr runs when a write the caller did not make fails; the
	// connection is then of no use (it may run more than once).
	onErr func(error)

	mu sync.Mutex
	// idle is signalled when a batch write ends (writing turns false),
	// for a large frame waiting to be written by its caller (direct).
	idle      sync.Cond
	out       []byte
	spare     []byte // the last batch's buffer, for the next one
	writing   bool   // a batch is being written; new frames join the next
	werr      error
	lazy      bool // a lazy frame waits in out, lazyTimer runs
	lazyTimer *time.Timer
	kick      chan struct{}
	quit      chan struct{}
	closed    bool
}

// lazyLinger bounds how long a lazy frame waits for another frame to
// carry it: under a steady stream it rides with the next one and costs
// no socket write of its own.
const lazyLinger = 500 * time.Microsecond

// maxSpare: a batch buffer larger than this is not kept for the next
// batch. Large enough for a queue of 1 MiB writes, so that they do not
// allocate (and zero) a new buffer per batch.
const maxSpare = 8 << 20

func newSender(conn net.Conn, busy func() bool, onErr func(error)) *sender {
	s := &sender{conn: conn, busy: busy, onErr: onErr, kick: make(chan struct{}, 1), quit: make(chan struct{})}
	s.idle.L = &s.mu
	s.lazyTimer = time.AfterFunc(time.Hour, s.lazyFlush)
	s.lazyTimer.Stop()
	go s.loop()
	return s
}

// Frame modes for push.
const (
	sendNow  = iota // written at once if the connection is idle
	sendLazy        // may wait for the next frame, up to lazyLinger
)

// directMin: a frame with at least this much data is written by its
// caller from where the data is (direct), not copied into the batch.
const directMin = 64 << 10

// push queues f. It returns an error when the connection failed
// already, f could not be encoded, or its own write failed.
func (s *sender) push(f *Frame, mode int) error {
	if len(f.Data) >= directMin {
		return s.direct(f)
	}
	s.mu.Lock()
	if s.werr != nil {
		err := s.werr
		s.mu.Unlock()
		return err
	}
	if need := len(f.Data) + len(f.Err) + len(f.From) + 256; cap(s.out)-len(s.out) < need {
		// One allocation of what the frame needs (doubling, so that a
		// batch of large frames is copied a bounded number of times),
		// not append's growth steps, each of which copies the data.
		nb := make([]byte, len(s.out), max(2*cap(s.out), len(s.out)+need))
		copy(nb, s.out)
		s.out = nb
	}
	var err error
	if s.out, err = appendFrame(s.out, f); err != nil {
		s.mu.Unlock()
		return err
	}
	switch {
	case s.writing:
		// Joins the batch after the one being written.
		s.mu.Unlock()
		return nil
	case mode == sendLazy:
		if !s.lazy {
			s.lazy = true
			s.lazyTimer.Reset(lazyLinger)
		}
		s.mu.Unlock()
		return nil
	case s.busy():
		s.mu.Unlock()
		select {
		case s.kick <- struct{}{}:
		default:
		}
		return nil
	}
	return s.flushLocked()
}

// direct writes a large frame from its caller, after what is queued,
// without copying its data: it waits for a batch being written to end,
// writes the queue and the frame's start, the data, and the frame's end,
// and returns once the data is on its way (f.Data is not referenced
// after it returns), then writes what was queued meanwhile.
func (s *sender) direct(f *Frame) error {
	s.mu.Lock()
	for s.writing && s.werr == nil {
		s.idle.Wait()
	}
	if s.werr != nil {
		err := s.werr
		s.mu.Unlock()
		return err
	}
	out, at, err := encodeFrame(s.out, f, false)
	if err != nil {
		s.out = out
		s.mu.Unlock()
		return err
	}
	if s.lazy {
		s.lazyTimer.Stop()
	}
	s.writing, s.lazy = true, false
	s.out, s.spare = s.spare[:0], nil
	s.mu.Unlock()
	_, err = s.conn.Write(out[:at])
	if err == nil {
		_, err = s.conn.Write(f.Data)
	}
	if err == nil && at < len(out) {
		_, err = s.conn.Write(out[at:])
	}
	s.mu.Lock()
	if cap(out) <= maxSpare {
		s.spare = out[:0]
	}
	if err != nil {
		s.werr, s.out = err, nil
	}
	return s.writeQueued(err)
}

// flushLocked (mu held; it unlocks) writes out what is queued, batch
// after batch, unless a write is under way already.
func (s *sender) flushLocked() error {
	if s.writing {
		s.mu.Unlock()
		return nil
	}
	if s.lazy {
		s.lazyTimer.Stop()
	}
	s.writing, s.lazy = true, false
	return s.writeQueued(nil)
}

// writeQueued (mu held, writing set; it unlocks) writes batches until
// none is queued, then clears writing.
func (s *sender) writeQueued(err error) error {
	for len(s.out) > 0 && err == nil {
		buf := s.out
		s.out, s.spare = s.spare[:0], nil
		s.mu.Unlock()
		stamp.MarkAll("sock.write")
		_, err = s.conn.Write(buf)
		stamp.MarkAll("sock.written")
		s.mu.Lock()
		if cap(buf) <= maxSpare {
			s.spare = buf[:0]
		}
		if err != nil {
			s.werr, s.out = err, nil
		}
	}
	s.writing = false
	s.idle.Broadcast()
	s.mu.Unlock()
	return err
}

// flush writes out what is queued (from the goroutine or the timer).
func (s *sender) flush() {
	s.mu.Lock()
	if s.werr != nil || len(s.out) == 0 {
		s.mu.Unlock()
		return
	}
	if err := s.flushLocked(); err != nil {
		s.onErr(err)
	}
}

func (s *sender) lazyFlush() {
	s.mu.Lock()
	if !s.lazy {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.flush()
}

func (s *sender) loop() {
	for {
		select {
		case <-s.quit:
			return
		case <-s.kick:
			s.flush()
		}
	}
}

// close stops the goroutine and the timer; the caller closes the
// connection.
func (s *sender) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.lazyTimer.Stop()
	close(s.quit)
}
