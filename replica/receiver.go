package replica

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metrolun/metrolun/internal/grid"
	"github.com/metrolun/metrolun/internal/stamp"
)

// sumLen is the size of a region digest (SHA-256: a resync that skips a
// region on a matching digest must not be fooled by a collision).
const sumLen = sha256.Size

// Store is what a replica applies frames to; LocalFile implements it.
type Store interface {
	ReadAt(p []byte, off int64) error
	WriteAt(p []byte, off int64, fua bool) error
	Unmap(off, length int64) error
	Flush() error
	Size() int64
}

// lossTracker is implemented by a store that remembers failed
// write-backs (LocalFile): Lost counts regions that read back wrong,
// Resynced forgets them once a resync rewrote whatever differed.
type lossTracker interface {
	Lost() int
	Resynced()
	MarkLost(off, n int64)
}

// receiver applies the current writer's stream to the local store, in
// sequence order, and holds this site's read lease (DESIGN.md I3).
type receiver struct {
	store Store
	meta  *metaStore
	lease time.Duration
	// refs resolves FlagRef frames: operations this site forwarded.
	refs func(id uint64) *fwdOp
	// synced runs when a resync ends (the diverged marker can go).
	synced func()

	mu       sync.Mutex
	epoch    uint64
	seq      uint64
	cur      net.Conn // the current writer's stream; a newer one replaces it
	first    bool     // the next frame on cur sets the sequence
	diverged bool
	fenced   bool // the site is fenced: no stream, no read lease
	leaseEnd time.Time
	leaseEp  uint64
	reqs     map[uint64]time.Time // lease request id -> when it was sent
	nextReq  uint64
	// renewAt is when to ask for the next lease, set by each grant;
	// regrant tells the asker it moved.
	renewAt time.Time
	regrant chan struct{}

	// Applied but not yet committed (FrameCommit): readers here wait for
	// these ranges. vmu orders a store write and its registration against
	// reads; the fields are guarded by mu.
	vmu         sync.RWMutex
	commit      uint64
	uncommitted []appliedRange
	// carriedCommits counts commit points that arrived on data frames
	// (tests).
	carriedCommits int
	visible        chan struct{} // closed and replaced when commit moves
}

// appliedRange is a write or unmap applied here at seq.
type appliedRange struct {
	seq    uint64
	off, n int64
}

// committed takes the writer's commit point for the current stream.
func (r *receiver) committed(conn net.Conn, f *Frame) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if conn != r.cur || f.Epoch != r.epoch || f.Seq <= r.commit {
		return
	}
	r.commit = f.Seq
	r.uncommitted = slices.DeleteFunc(r.uncommitted, func(a appliedRange) bool { return a.seq <= f.Seq })
	r.wake()
}

// carriedSeq marks a range left uncommitted by an earlier stream: no
// commit clears it, only the end of a resync.
const carriedSeq = math.MaxUint64

// maxCarried bounds the ranges a hello answer lists.
const maxCarried = 4096

// carry (mu held) turns every uncommitted range into a carried one,
// wakes readers and returns them.
func (r *receiver) carry() []appliedRange {
	for i := range r.uncommitted {
		r.uncommitted[i].seq = carriedSeq
	}
	r.wake()
	return slices.Clone(r.uncommitted)
}

// takeCarried is for this site becoming the writer: its uncommitted
// ranges, which the writer must make equal at every in-sync site.
func (r *receiver) takeCarried() []appliedRange {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.carry()
	r.uncommitted = nil
	r.wake()
	return c
}

func encodeRanges(rs []appliedRange) []byte {
	b := make([]byte, 0, 16*len(rs))
	for _, a := range rs {
		b = binary.BigEndian.AppendUint64(b, uint64(a.off))
		b = binary.BigEndian.AppendUint64(b, uint64(a.n))
	}
	return b
}

func decodeRanges(b []byte) []appliedRange {
	var rs []appliedRange
	for ; len(b) >= 16; b = b[16:] {
		off, n := int64(binary.BigEndian.Uint64(b)), int64(binary.BigEndian.Uint64(b[8:]))
		if off >= 0 && n > 0 && n <= MaxFrameData {
			rs = append(rs, appliedRange{seq: carriedSeq, off: off, n: n})
		}
	}
	return rs
}

// settledHere marks the write applied at seq as on every in-sync site
// (a forwarded write the writer answered).
func (r *receiver) settledHere(epoch, seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if epoch != r.epoch {
		return
	}
	n := len(r.uncommitted)
	r.uncommitted = slices.DeleteFunc(r.uncommitted, func(a appliedRange) bool { return a.seq == seq })
	if len(r.uncommitted) != n {
		r.wake()
	}
}

// wake (mu held) wakes readers waiting for ranges to commit.
func (r *receiver) wake() {
	if r.visible != nil {
		close(r.visible)
	}
	r.visible = make(chan struct{})
}

// readCommitted reads p at off once no uncommitted write overlaps it. It
// reports false (retry after checking the lease again) when it waited.
func (r *receiver) readCommitted(p []byte, off int64, deadline <-chan time.Time, closing <-chan struct{}) (bool, error) {
	n := int64(len(p))
	r.vmu.RLock()
	r.mu.Lock()
	busy := slices.ContainsFunc(r.uncommitted, func(a appliedRange) bool { return a.off < off+n && off < a.off+a.n })
	if r.visible == nil {
		r.visible = make(chan struct{})
	}
	ch := r.visible
	r.mu.Unlock()
	if !busy {
		err := r.store.ReadAt(p, off)
		r.vmu.RUnlock()
		return true, err
	}
	r.vmu.RUnlock()
	select {
	case <-ch:
		return false, nil
	case <-closing:
		return true, &notReady{asc: ascTransition, err: errors.New("site closing")}
	case <-deadline:
		return true, &notReady{asc: ascTransition, err: errors.New("a write to these blocks is not yet on every in-sync site")}
	}
}

// tryRead reads p at off if this site holds its read lease at now and
// no uncommitted write overlaps the range, as leaseValid and then
// readCommitted would, and reports false (nothing read) when they would
// not serve it or would wait. It waits for neither lock: an apply holds
// both for as long as the store takes, a flush included.
func (r *receiver) tryRead(p []byte, off int64, now time.Time) (bool, error) {
	n := int64(len(p))
	if !r.vmu.TryRLock() {
		return false, nil
	}
	defer r.vmu.RUnlock()
	if !r.mu.TryLock() {
		return false, nil
	}
	ok := !r.fenced && now.Before(r.leaseEnd) && r.leaseEp == r.epoch &&
		!slices.ContainsFunc(r.uncommitted, func(a appliedRange) bool { return a.off < off+n && off < a.off+a.n })
	r.mu.Unlock()
	if !ok {
		return false, nil
	}
	return true, r.store.ReadAt(p, off)
}

// Applied returns the epoch and the highest applied sequence number.
func (r *receiver) Applied() (epoch, seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.epoch, r.seq
}

// raise adopts epoch as the lowest acceptable one: a site that becomes
// writer of epoch refuses every older writer from then on.
func (r *receiver) raise(epoch uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if epoch > r.epoch {
		r.epoch, r.seq = epoch, 0
		if r.cur != nil {
			r.cur.Close()
			r.cur = nil
		}
	}
}

// setDiverged makes the next hello answer say this site's image may
// differ from the writer's (a full compare), until a resync ends.
func (r *receiver) setDiverged() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.diverged = true
}

// leaseValid reports whether this site may serve reads now, and until when.
func (r *receiver) leaseValid(now time.Time) (bool, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.fenced && now.Before(r.leaseEnd) && r.leaseEp == r.epoch, r.leaseEnd
}

// setFenced fences or unfences the receiver and reports whether that
// changed anything. Fenced, it ends the current stream, drops its read
// lease and refuses new streams, as a lost site would answer nothing.
func (r *receiver) setFenced(on bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fenced == on {
		return false
	}
	r.fenced = on
	if on {
		r.leaseEnd = time.Time{}
		if r.cur != nil {
			r.cur.Close()
			r.cur = nil
		}
	}
	return true
}

// refAckLinger bounds how long a replica holds the acknowledgement of a
// reference for another answer to carry it (serveStream); a variable
// for tests.
var refAckLinger = lazyLinger

// refAcksHeld counts the acknowledgements of references held (tests).
var refAcksHeld atomic.Int64

// serveStream runs one writer's stream after its hello.
func (r *receiver) serveStream(conn net.Conn, br *bufio.Reader, hello *Frame, g *bodyGuard) error {
	bw := bufio.NewWriterSize(conn, 64<<10)
	var wmu sync.Mutex
	// What bw holds (under wmu): held, answers that go out as soon as
	// no more input is buffered; lazy, only acknowledgements of
	// references, which wait up to refAckLinger (lazyTimer) for another
	// answer to carry them. A reference is an operation this site
	// forwarded: the writer does not wait for its acknowledgement to
	// answer (only to make the write visible elsewhere), and its result
	// follows right after it, so sending the acknowledgement at once
	// would put a socket write between the result and the initiator's
	// answer, and cost one per forwarded write.
	var held, lazy bool
	lazyTimer := time.AfterFunc(time.Hour, func() {
		wmu.Lock()
		defer wmu.Unlock()
		if lazy {
			// A failure stays in bw: the next answer returns it.
			bw.Flush()
			held, lazy = false, false
		}
	})
	lazyTimer.Stop()
	defer lazyTimer.Stop()
	flushLocked := func() error {
		held, lazy = false, false
		return bw.Flush()
	}
	send := func(f *Frame, flush bool) error {
		wmu.Lock()
		defer wmu.Unlock()
		if err := WriteFrame(bw, f); err != nil {
			return err
		}
		if flush {
			return flushLocked()
		}
		held = true
		return nil
	}
	// sendLazy holds the acknowledgement of a reference; idle: no more
	// input is buffered.
	sendLazy := func(f *Frame, idle bool) error {
		wmu.Lock()
		defer wmu.Unlock()
		if err := WriteFrame(bw, f); err != nil {
			return err
		}
		switch {
		case held && idle:
			return flushLocked()
		case !held && !lazy:
			lazy = true
			lazyTimer.Reset(refAckLinger)
		}
		refAcksHeld.Add(1)
		return nil
	}
	r.mu.Lock()
	if r.fenced {
		r.mu.Unlock()
		send(&Frame{Kind: FrameHelloAck, Err: "this site is fenced"}, true)
		return fmt.Errorf("stream from %s refused: this site is fenced", hello.From)
	}
	if hello.Epoch < r.epoch {
		ep := r.epoch
		r.mu.Unlock()
		send(&Frame{Kind: FrameHelloAck, Epoch: ep, Err: fmt.Sprintf("%v: writer epoch %d < %d", ErrStaleEpoch, hello.Epoch, ep)}, true)
		return fmt.Errorf("stream from %s refused: epoch %d < %d", hello.From, hello.Epoch, ep)
	}
	if r.cur != nil {
		r.cur.Close()
	}
	if hello.Epoch > r.epoch {
		r.epoch = hello.Epoch
	}
	r.cur, r.first, r.seq = conn, true, 0
	// A new stream: what the last writer left uncommitted here may be
	// missing at another site, or present only here. The writer learns
	// the ranges and resyncs them; readers here wait for them until a
	// resync ends (FlagSynced) or another writer takes over.
	carried := r.carry()
	r.commit = 0
	ack := &Frame{Kind: FrameHelloAck, Epoch: r.epoch, Offset: r.store.Size()}
	if len(carried) > maxCarried {
		ack.Flags |= FlagDiverged // too many to list: a full compare
	} else {
		ack.Data = encodeRanges(carried)
	}
	if r.diverged {
		ack.Flags |= FlagDiverged
	}
	if lt, ok := r.store.(lossTracker); ok && lt.Lost() > 0 {
		// A failed write-back here: the writer's record cannot know
		// where this image is wrong; it compares everything.
		ack.Flags |= FlagDiverged
	}
	if storeEmpty(r.store) {
		ack.Flags |= FlagEmpty
	}
	if lf, ok := r.store.(*LocalFile); ok {
		if id, _, ok := lf.Image(); ok {
			ack.Image = &id
		}
	}
	r.mu.Unlock()
	if err := send(ack, true); err != nil {
		return err
	}

	// Ask for a read lease, and again before it runs out (granted).
	stop := make(chan struct{})
	defer close(stop)
	go r.askLeases(conn, stop, send)

	for {
		// The data stays in the pooled body until the frame is
		// applied: no copy per write (release below).
		f, release, err := readFrameHeld(br, MaxDataFrameLen, g)
		if stamp.On && err == nil {
			switch {
			case f.Kind == FrameFwdResult:
				stamp.Mark(stamp.Cmd, "result.read")
			case f.Flags&FlagRef != 0:
				stamp.Mark(stamp.Cmd, "ref.read")
			case f.Kind == FrameWrite:
				stamp.Begin(stamp.Frame)
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if f.Kind == FrameLease || f.Kind == FrameCommit || f.Kind == FrameFwdResult {
			switch f.Kind {
			case FrameLease:
				r.granted(f)
			case FrameCommit:
				r.committed(conn, f)
			default:
				// The writer's answer to an operation this site
				// forwarded, right after its reference (serveForward).
				if op := r.refs(f.Seq); op != nil {
					op.answered(f)
				}
			}
			release()
			// Acks held back while more input was buffered go out
			// once none is.
			if br.Buffered() == 0 {
				wmu.Lock()
				var err error
				if held {
					err = flushLocked()
				}
				wmu.Unlock()
				if err != nil {
					return err
				}
			}
			continue
		}
		ans, stopNow := r.apply(conn, f)
		stamp.Mark(stamp.Frame, "applied")
		stamp.Mark(stamp.Cmd, "ref.applied")
		release()
		if f.Flags&FlagRef != 0 && ans.Kind == FrameAck && !stopNow {
			err = sendLazy(ans, br.Buffered() == 0)
		} else {
			err = send(ans, br.Buffered() == 0 || stopNow)
		}
		if err != nil {
			return err
		}
		stamp.End(stamp.Frame)
		stamp.Mark(stamp.Cmd, "ref.acked")
		if stopNow {
			return fmt.Errorf("refused seq %d: %s", f.Seq, ans.Err)
		}
	}
}

// askLeases asks the writer on conn for read leases while conn is the
// current stream: at once, then each time the lease granted nears its end
// (granted sets when), and every lease/4 while none comes. Asking every
// lease/4 whatever the grant was kept an idle replica and its writer
// busy with a round trip every 75 ms.
func (r *receiver) askLeases(conn net.Conn, stop <-chan struct{}, send func(*Frame, bool) error) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		case <-r.regrant:
			r.mu.Lock()
			at := r.renewAt
			r.mu.Unlock()
			t.Reset(time.Until(at))
			continue
		}
		r.mu.Lock()
		if r.cur != conn {
			r.mu.Unlock()
			return
		}
		r.nextReq++
		id := r.nextReq
		if r.reqs == nil {
			r.reqs = make(map[uint64]time.Time)
		}
		now := time.Now()
		r.reqs[id] = now
		r.mu.Unlock()
		t.Reset(r.lease / 4) // unless a grant says when
		if send(&Frame{Kind: FrameLeaseReq, Seq: id}, true) != nil {
			return
		}
	}
}

// granted records a lease: it runs from when the request left this site,
// so it ends no later than the writer believes (DESIGN.md I3). The next
// request goes out a quarter lease, or three round trips if longer (a
// grant is shorter than a lease by how old the writer's own confirmation
// is, which grows with the round trip), before it ends, and never sooner
// than a quarter lease after this one.
func (r *receiver) granted(f *Frame) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sent, ok := r.reqs[f.Seq]
	for id := range r.reqs {
		if id <= f.Seq {
			delete(r.reqs, id)
		}
	}
	if !ok || f.Epoch != r.epoch || r.fenced {
		return
	}
	if end := sent.Add(time.Duration(f.Length) * time.Millisecond); end.After(r.leaseEnd) {
		r.leaseEnd, r.leaseEp = end, f.Epoch
	}
	margin := max(r.lease/4, 3*time.Since(sent))
	r.renewAt = r.leaseEnd.Add(-margin)
	soonest := sent.Add(r.lease / 4)
	if r.renewAt.Before(soonest) {
		r.renewAt = soonest
	}
	// On the process's grid (internal/grid) when one instant falls
	// between the soonest and the planned time: asked earlier, never
	// later, and the request shares a wake-up with the other periodic
	// work.
	if g := grid.Next(r.renewAt.Add(-grid.Step), grid.Step); !g.Before(soonest) && !g.After(r.renewAt) {
		r.renewAt = g
	}
	select {
	case r.regrant <- struct{}{}:
	default:
	}
}

// apply applies one stream frame and returns the answer; stop is set
// when the stream must end (a refusal).
func (r *receiver) apply(conn net.Conn, f *Frame) (ans *Frame, stop bool) {
	r.vmu.Lock() // before mu, as readers take them
	defer r.vmu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	nack := func(format string, args ...any) (*Frame, bool) {
		return &Frame{Kind: FrameNack, Epoch: r.epoch, Seq: f.Seq, Err: fmt.Sprintf(format, args...)}, true
	}
	if conn != r.cur {
		return nack("%v: a newer stream replaced this one", ErrStaleEpoch)
	}
	if f.Epoch != r.epoch {
		return nack("%v: frame epoch %d, current %d", ErrStaleEpoch, f.Epoch, r.epoch)
	}
	if r.first {
		r.seq, r.first = f.Seq-1, false
	}
	if f.Seq <= r.seq {
		// One TCP stream delivers in order; a frame that goes back means
		// the writer lost track, and applying it would break I4. (Gaps are
		// normal: a resyncing replica gets only the writes behind the
		// copy cursor.)
		return nack("sequence went back: got %d after %d", f.Seq, r.seq)
	}
	var op *fwdOp
	if f.Flags&FlagRef != 0 {
		if op = r.refs(f.Ref); op == nil {
			return nack("unknown forwarded operation %d", f.Ref)
		}
	}
	var err error
	flags := uint8(0)
	switch f.Kind {
	case FrameWrite:
		data := f.Data
		if op != nil {
			data = op.data
			if int64(len(data)) != int64(f.Length) {
				return nack("forwarded operation %d has %d bytes, frame says %d", f.Ref, len(data), f.Length)
			}
		}
		err = r.store.WriteAt(data, f.Offset, f.Flags&FlagFUA != 0)
	case FrameUnmap:
		err = r.store.Unmap(f.Offset, int64(f.Length))
	case FrameLost:
		lt, ok := r.store.(lossTracker)
		if !ok {
			return nack("this store cannot record a lost range")
		}
		lt.MarkLost(f.Offset, int64(f.Length))
	case FrameMeta:
		data := f.Data
		if op != nil {
			data = op.data
		}
		err = r.meta.set(uint64(f.Offset), data)
	case FrameFlush:
		if lt, ok := r.store.(lossTracker); ok && f.Flags&FlagSynced != 0 {
			// The resync that ends here compared every region (a lost
			// region reports FlagDiverged) and rewrote those that
			// differed or could not be read.
			lt.Resynced()
		}
		err = r.store.Flush()
		if err == nil && f.Flags&(FlagSynced|FlagGen) != 0 {
			err = raiseGeneration(r.store, f.Epoch)
		}
		if err == nil && f.Flags&FlagSynced != 0 {
			// Whole again: carried ranges were resynced.
			r.uncommitted = slices.DeleteFunc(r.uncommitted, func(a appliedRange) bool { return a.seq == carriedSeq })
			r.wake()
			r.diverged = false
			if r.synced != nil {
				r.synced()
			}

		}
	case FrameSum:
		var same bool
		same, err = r.sameSum(f)
		if !same {
			flags |= FlagDiffer
		}
	default:
		return nack("unexpected frame kind %d", f.Kind)
	}
	if err != nil {
		if op != nil {
			// This site's own forwarded operation failed here: its
			// initiator gets this store's error now, rather than an
			// unknown outcome after the hold time; the writer drops this
			// site with the range marked (the nack).
			op.failedHere(err)
		}
		return nack("%v", err)
	}
	r.seq = f.Seq
	if f.Commit > r.commit && f.Commit < f.Seq {
		// The writer's commit point, carried on this frame instead of
		// a FrameCommit of its own (it covers frames before this one).
		r.commit = f.Commit
		r.uncommitted = slices.DeleteFunc(r.uncommitted, func(a appliedRange) bool { return a.seq <= f.Commit })
		r.wake()
		r.carriedCommits++
	}
	if (f.Kind == FrameWrite || f.Kind == FrameUnmap || f.Kind == FrameLost) && f.Seq > r.commit {
		r.uncommitted = append(r.uncommitted, appliedRange{seq: f.Seq, off: f.Offset, n: int64(f.Length)})
	}
	if op != nil {
		op.applied(f.Epoch, f.Seq)
	}
	return &Frame{Kind: FrameAck, Epoch: f.Epoch, Seq: f.Seq, Flags: flags}, false
}

func (r *receiver) sameSum(f *Frame) (bool, error) {
	n := int64(f.Length)
	if end := r.store.Size(); f.Offset+n > end {
		n = max(0, end-f.Offset)
	}
	buf := make([]byte, n)
	if err := r.store.ReadAt(buf, f.Offset); err != nil {
		// Unreadable here (a lost write-back, a bad sector): not the
		// same bytes. A resync copies the writer's region over it; a
		// verify reports it.
		return false, nil
	}
	sum := sha256.Sum256(buf)
	return bytes.Equal(sum[:], f.Data), nil
}
