// Package core is the replication writer's ordering core: a state machine
// with no goroutines, sockets, files or clock of its own. The writer
// (replica/writer.go) feeds it events (a write to order, a replica's
// answer, a link that failed, a drop that committed, the clock moving)
// and acts on the decisions it returns: frames to send, regions to mark
// dirty, answers to give, ranges that became readable, drops to start.
// Everything it decides can be replayed from a seed (core_test.go).
//
// # What it enforces
//
// The core holds the write order of one epoch (DESIGN.md write path).
//
//   - Sequence. Every operation takes the next sequence number; frames
//     go to each replica in that order, and a replica applies them in
//     that order, so overlapping writes land in the same order at every
//     site (write path step 4). A write whose local apply fails gives its
//     number back (Abort).
//   - Acknowledgement (I1, I2, I3). A write is answered only once every
//     replica that was in sync when it was ordered has acknowledged it,
//     or has been dropped: the range it missed marked in its dirty
//     bitmap (the Mark is persisted and Advance called before the answer
//     is released), the drop committed through Raft, and the last read
//     lease this writer granted it run out (with a tenth of a lease for
//     clock rates). A drop that does not commit fails the write. A
//     writer whose own lease lapsed answers only if it comes back for the
//     same epoch within one lease.
//   - Replicas out of sync. A write is marked dirty for every replica
//     that does not get it (out of sync, or resyncing with the write
//     ahead of its copy cursor) before the caller releases its lock:
//     a copy cursor that passes the region afterwards finds it dirty.
//     Writes behind the cursor (and flushes, and the shared record) are
//     sent to a resyncing replica; its answer does not count.
//   - Visibility and the commit point (I3). A write is settled once the
//     answer was good and its origin (the site that forwarded it, which
//     applies it from its own copy) acknowledged it or was dropped. The
//     commit point is the highest sequence number below every unsettled
//     write; it never passes one. It rides on the next data frame to
//     each replica, or, when none follows within CommitIdle, on a commit
//     frame of its own (CommitsDue). A write answered with an error is
//     never settled: the commit point stays below it for the rest of the
//     epoch, as a replica must not show bytes that are not everywhere.
//   - Leases. A replica is granted a read lease only while it is in sync,
//     never past the writer's own lease; the latest end granted decides
//     how long a drop waits.
//
// # Not here (yet)
//
// The writer still keeps, outside the core: what each link sent and the
// replica has not answered (Link's pending list, marked by linkDown when
// a link fails), the regions a replica acknowledged but may not have
// flushed (unflushed.go), the resync loop that tests each region's bit
// and copies it (it moves the cursor here under the same lock), the
// ranges a takeover carries from the last writer, and the busy ranges
// readers at the writer wait on (released on Settled and Released).
package core

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrNotWriter: the core does not take operations now (an in-sync
// replica has no link yet, or the writer lease is not valid).
var ErrNotWriter = errors.New("core: not the writer")

// PeerID names a replica inside one core; names may come back after a
// replica was removed, IDs do not.
type PeerID uint32

// PeerState is a replica's state as the writer sees it.
type PeerState uint8

const (
	Out      PeerState = iota // not in sync: misses writes (dirty bitmap)
	Syncing                   // resync running: writes behind the cursor go to it
	InSync                    // every write waits for it
	Dropping                  // leaving the in-sync set: writes wait for the drop
)

func (s PeerState) String() string {
	switch s {
	case Out:
		return "out"
	case Syncing:
		return "syncing"
	case InSync:
		return "in-sync"
	case Dropping:
		return "dropping"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Kind is what an operation does.
type Kind uint8

const (
	Write Kind = 1 + iota
	Unmap
	Flush
	Meta // the shared record (meta.go)
)

// Op is one operation in the write order. Origin is the in-sync replica
// that forwarded it (0 for one that arrived at the writer): it gets a
// reference instead of the data and its answer only makes the write
// visible.
type Op struct {
	Kind   Kind
	Off, N int64
	Origin PeerID
}

func (o Op) ranged() bool { return o.Kind == Write || o.Kind == Unmap }

// Config describes one epoch's writer.
type Config struct {
	Epoch uint64
	// Lease is the cluster's lease length: a grant is at most this long;
	// a drop waits a tenth of it more than the last grant's end.
	Lease time.Duration
	Clock Clock
	// WriterLease reports the writer lease the cluster holds for this
	// site: its epoch (0 when unknown) and end.
	WriterLease func() (epoch uint64, until time.Time)
	// Started, Handover: this writer took over in a planned move, so the
	// previous writer may have granted read leases up to Started+Lease;
	// a drop waits for those too.
	Started  time.Time
	Handover bool
	// CommitIdle is how long a moved commit point may wait for a data
	// frame to carry it before CommitsDue sends it on its own.
	CommitIdle time.Duration
}

// Send is one frame to send for an admitted operation, in this order.
type Send struct {
	Peer PeerID
	// Ref: the peer is the origin; send a reference, not the data.
	Ref bool
	// Wait: the peer's answer decides the operation's answer (or, for
	// the origin, its visibility); false for a resyncing peer.
	Wait bool
	// Commit, when not 0, is the commit point to carry on the frame.
	Commit uint64
}

// Mark says that Peer misses Off..Off+N (the operation Seq): the caller
// records it in Peer's dirty bitmap, reports a failure with MarkFailed,
// and only then calls Advance.
type Mark struct {
	Peer   PeerID
	Seq    uint64
	Off, N int64
	// Must: a failure to record it fails the operation's answer (false
	// for the origin's own write, already answered).
	Must bool
}

// Answer is the verdict on an admitted operation.
type Answer struct {
	Seq uint64
	Err error // nil: acknowledge it; otherwise its outcome is unknown
	// Poll: not a verdict yet; the writer lease lapsed and the caller
	// must call Tick (every few milliseconds) until the verdict comes.
	Poll bool
}

// Ready is what the caller must act on, in field order: persist Marks,
// start Drops, give Answers, release the reads waiting for Settled and
// Released, then call Advance.
type Ready struct {
	Marks   []Mark
	Drops   []PeerID // peers that left InSync for Dropping: close their link, drop them through Raft
	Answers []Answer
	// Settled operations are on every in-sync site: readers here may
	// see them. Released ones never will be (failed): readers stop
	// waiting for them.
	Settled  []uint64
	Released []uint64
	// CommitMoved: the commit point moved; CommitsDue will have work
	// after CommitIdle unless data frames carry it first.
	CommitMoved bool
}

func (rd *Ready) empty() bool {
	return len(rd.Marks)+len(rd.Drops)+len(rd.Answers)+len(rd.Settled)+len(rd.Released) == 0 && !rd.CommitMoved
}

type resolution uint8

const (
	resNone    resolution = iota // never dropped: a wait for its drop fails
	resPending                   // drop under way
	resOK                        // dropped and its lease ran out
	resFailed                    // the drop did not commit
)

type peer struct {
	id         PeerID
	name       string
	state      PeerState
	connected  bool
	cursor     int64 // Syncing: writes below it are sent
	grantEnd   time.Time
	res        resolution
	dropUntil  time.Time // the drop committed; resolved once the clock passes it
	committed  bool      // the drop committed (dropUntil is set)
	sentCommit uint64
}

type waitKind uint8

const (
	waitAck  waitKind = iota // for the peer's answer to the frame
	waitDrop                 // for the peer's drop to resolve
)

type waiter struct {
	peer PeerID
	kind waitKind
}

type phase uint8

const (
	phWaiting  phase = iota // waits and marks outstanding
	phLease                 // all in; waiting for the writer lease to come back
	phAnswered              // answered good; waiting for the origin
	phDone                  // settled or released
)

type originState uint8

const (
	originNone originState = iota
	originPending
	originAcked
	originDropping
	originFailed
)

type entry struct {
	seq        uint64
	op         Op
	waits      []waiter
	marks      int // Must marks not yet advanced
	errs       []error
	ph         phase
	leaseUntil time.Time
	origin     originState
}

// Core is the write order of one epoch. It is not safe for concurrent
// use: the writer calls it under its own lock.
type Core struct {
	cfg    Config
	nextID PeerID
	peers  []*peer

	seq      uint64
	reserved bool // seq is taken by Begin, not yet admitted or aborted

	entries   map[uint64]*entry
	unsettled []uint64 // admitted, not settled, in order
	settled   map[uint64]bool
	commit    uint64 // the highest commit point computed
	movedAt   time.Time

	touched []*entry
	rd      Ready
	// handed: marks handed out in a Ready, not yet advanced.
	handed map[uint64]int
}

// New returns the core of one epoch.
func New(cfg Config) *Core {
	if cfg.Clock == nil {
		cfg.Clock = Real{}
	}
	if cfg.WriterLease == nil {
		cfg.WriterLease = func() (uint64, time.Time) { return 0, time.Time{} }
	}
	return &Core{cfg: cfg, entries: map[uint64]*entry{}, settled: map[uint64]bool{}, handed: map[uint64]int{}}
}

// Epoch is the core's epoch.
func (c *Core) Epoch() uint64 { return c.cfg.Epoch }

// Seq is the last sequence number taken.
func (c *Core) Seq() uint64 { return c.seq }

// AddPeer adds a replica in state st (InSync or Out).
func (c *Core) AddPeer(name string, st PeerState) PeerID {
	c.nextID++
	c.peers = append(c.peers, &peer{id: c.nextID, name: name, state: st})
	return c.nextID
}

// RemovePeer forgets a replica that is neither in sync nor dropping: no
// operation waits for it.
func (c *Core) RemovePeer(id PeerID) {
	c.peers = slices.DeleteFunc(c.peers, func(p *peer) bool { return p.id == id })
}

func (c *Core) peer(id PeerID) *peer {
	for _, p := range c.peers {
		if p.id == id {
			return p
		}
	}
	return nil
}

// State is a replica's state (Out for one not known).
func (c *Core) State(id PeerID) PeerState {
	if p := c.peer(id); p != nil {
		return p.state
	}
	return Out
}

// Cursor is a resyncing replica's copy cursor.
func (c *Core) Cursor(id PeerID) int64 {
	if p := c.peer(id); p != nil {
		return p.cursor
	}
	return 0
}

// Connected records whether a replica has a link; a new link has not
// seen any commit point yet.
func (c *Core) Connected(id PeerID, ok bool) {
	if p := c.peer(id); p != nil {
		p.connected = ok
		p.sentCommit = 0
	}
}

// Ready reports whether every in-sync replica has a link (at the start
// of an epoch they are being connected, or dropped).
func (c *Core) Linked() bool {
	for _, p := range c.peers {
		if p.state == InSync && !p.connected {
			return false
		}
	}
	return true
}

// StartSync puts an out-of-sync replica into resync with its cursor at 0.
func (c *Core) StartSync(id PeerID) bool {
	p := c.peer(id)
	if p == nil || p.state != Out && p.state != Syncing {
		return false
	}
	p.state, p.cursor = Syncing, 0
	return true
}

// SetCursor moves a resyncing replica's copy cursor to off: from now on
// writes below off are sent to it. The caller has copied (or found
// clean) everything below off under the same lock as this call.
func (c *Core) SetCursor(id PeerID, off int64) {
	if p := c.peer(id); p != nil && p.state == Syncing && off > p.cursor {
		p.cursor = off
	}
}

// SyncDone puts a resyncing replica in sync: from now on every write
// waits for it.
func (c *Core) SyncDone(id PeerID) bool {
	p := c.peer(id)
	if p == nil || p.state != Syncing {
		return false
	}
	p.state = InSync
	return true
}

// SyncFailed takes a resyncing replica back out of sync.
func (c *Core) SyncFailed(id PeerID) bool {
	p := c.peer(id)
	if p == nil || p.state != Syncing {
		return false
	}
	p.state = Out
	return true
}

// Fail starts dropping an in-sync replica. It reports whether it did (the
// caller then closes its link and proposes the drop through Raft).
func (c *Core) Fail(id PeerID) bool {
	p := c.peer(id)
	if p == nil || p.state != InSync {
		return false
	}
	p.state, p.res, p.committed, p.dropUntil = Dropping, resPending, false, time.Time{}
	return true
}

// DropCommitted records that the cluster dropped the replica. It returns
// when the replica's last read lease has certainly run out; the drop
// resolves once DropExpired sees the clock past it.
func (c *Core) DropCommitted(id PeerID) time.Time {
	p := c.peer(id)
	if p == nil || p.state != Dropping || p.res != resPending {
		return time.Time{}
	}
	end := p.grantEnd
	if e := c.cfg.Started.Add(c.cfg.Lease); c.cfg.Handover && e.After(end) && !plant.noHandover {
		// The previous writer released its epoch and may have granted
		// this replica a lease up to its own lease's end.
		end = e
	}
	if !end.IsZero() {
		// Clock rates differ a little between sites: a tenth more.
		end = end.Add(c.cfg.Lease / 10)
	}
	p.committed, p.dropUntil = true, end
	if plant.dropIgnoresLease {
		p.dropUntil = time.Time{}
	}
	return p.dropUntil
}

// DropExpired resolves a committed drop once the clock is past its
// replica's lease, and reports whether it did.
func (c *Core) DropExpired(id PeerID) bool {
	p := c.peer(id)
	if p == nil || p.state != Dropping || p.res != resPending || !p.committed {
		return false
	}
	if c.cfg.Clock.Now().Before(p.dropUntil) {
		return false
	}
	p.state, p.res = Out, resOK
	c.resolved(p)
	return true
}

// DropFailed resolves a drop that did not commit: every operation that
// waits for it fails (this writer acknowledges nothing without it).
func (c *Core) DropFailed(id PeerID) {
	p := c.peer(id)
	if p == nil || p.state != Dropping || p.res != resPending {
		return
	}
	p.res = resFailed
	c.resolved(p)
}

// Dropped reports whether a replica's last drop resolved, and how.
func (c *Core) Dropped(id PeerID) (resolved, ok bool) {
	p := c.peer(id)
	if p == nil {
		return true, false
	}
	switch p.res {
	case resOK:
		return true, true
	case resFailed, resNone:
		return true, false
	}
	return false, false
}

func (c *Core) resolved(p *peer) {
	for _, e := range c.entries {
		if e.origin == originDropping && e.op.Origin == p.id {
			c.touch(e)
		}
		for _, w := range e.waits {
			if w.peer == p.id && w.kind == waitDrop {
				c.touch(e)
				break
			}
		}
	}
}

// Grant answers a replica's lease request: how long its read lease runs
// from when it asked. Only an in-sync replica gets one, and never past
// the writer's own lease, so it cannot outlive this epoch.
func (c *Core) Grant(id PeerID) (time.Duration, bool) {
	p := c.peer(id)
	if p == nil || p.state != InSync {
		return 0, false
	}
	now := c.cfg.Clock.Now()
	d := c.cfg.Lease
	if ep, until := c.cfg.WriterLease(); ep != c.cfg.Epoch {
		return 0, false
	} else if left := until.Sub(now); left < d {
		d = left
	}
	if d < time.Millisecond {
		return 0, false
	}
	d = d.Truncate(time.Millisecond)
	if end := now.Add(d); end.After(p.grantEnd) {
		p.grantEnd = end
	}
	return d, true
}

// LeaseOK reports whether the writer lease is valid now.
func (c *Core) LeaseOK() bool {
	ep, until := c.cfg.WriterLease()
	return ep == c.cfg.Epoch && c.cfg.Clock.Now().Before(until)
}

// Begin takes the next sequence number for an operation that the caller
// applies locally next, then passes to Admit (or Abort on failure).
func (c *Core) Begin() (uint64, error) {
	if c.reserved {
		return 0, errors.New("core: Begin before the last operation was admitted")
	}
	if !c.Linked() || !c.LeaseOK() {
		return 0, ErrNotWriter
	}
	c.seq++
	c.reserved = true
	return c.seq, nil
}

// Abort gives back the sequence number of an operation whose local
// apply failed or declined.
func (c *Core) Abort(seq uint64) {
	if c.reserved && seq == c.seq {
		c.seq--
		c.reserved = false
	}
}

// NextSeq takes a sequence number for a frame outside the write order
// (a resync copy, a digest, a flush of the writer's own): it is not
// waited for and counts as settled.
func (c *Core) NextSeq() uint64 {
	c.seq++
	return c.seq
}

// Admit puts the operation seq (from Begin, applied locally) in the
// write order and returns the frames to send, in order. Marks for the
// replicas that miss it are in the next Ready, which the caller handles
// before it releases the lock it holds around Begin and Admit.
func (c *Core) Admit(seq uint64, op Op) []Send {
	if !c.reserved || seq != c.seq {
		panic("core: Admit without Begin")
	}
	c.reserved = false
	e := &entry{seq: seq, op: op}
	c.entries[seq] = e
	c.unsettled = append(c.unsettled, seq)
	var sends []Send
	commit := c.Commit()
	send := func(p *peer, ref, wait bool) {
		s := Send{Peer: p.id, Ref: ref, Wait: wait}
		if commit > p.sentCommit && !plant.noPiggyback {
			s.Commit, p.sentCommit = commit, commit
		}
		sends = append(sends, s)
	}
	for _, p := range c.peers {
		switch p.state {
		case InSync:
			if p.id == op.Origin {
				send(p, true, true)
				e.origin = originPending
				continue
			}
			send(p, false, true)
			if !plant.ackEarly {
				e.waits = append(e.waits, waiter{p.id, waitAck})
			}
		case Dropping:
			// It missed this write: marked now, before the drop can
			// settle and before the answer.
			c.mark(e, p.id, true)
			if !plant.noWaitDropping {
				e.waits = append(e.waits, waiter{p.id, waitDrop})
			}
		case Syncing:
			if !op.ranged() || op.Off < p.cursor {
				send(p, false, false)
			} else if !plant.noMarkAhead {
				c.mark(e, p.id, true)
			}
		default:
			c.mark(e, p.id, true)
		}
	}
	if op.Origin != 0 && e.origin == originNone {
		// The origin is not in sync (any more): nothing of its own
		// decides visibility.
		e.origin = originNone
	}
	c.touch(e)
	return sends
}

// SendFailed: a frame to a resyncing replica was refused by a link that
// had failed already, so the link's own failure handling did not see it;
// the replica misses it.
func (c *Core) SendFailed(seq uint64, id PeerID) {
	if e := c.entries[seq]; e != nil {
		c.mark(e, id, true)
		c.touch(e)
	}
}

func (c *Core) mark(e *entry, id PeerID, must bool) {
	if !e.op.ranged() {
		return
	}
	if must {
		e.marks++
	}
	c.rd.Marks = append(c.rd.Marks, Mark{Peer: id, Seq: e.seq, Off: e.op.Off, N: e.op.N, Must: must})
}

// MarkFailed: a mark of seq's range for a replica could not be recorded.
// The operation fails (when the mark was a Must).
func (c *Core) MarkFailed(seq uint64, id PeerID, err error) {
	e := c.entries[seq]
	if e == nil || e.ph != phWaiting {
		return
	}
	name := "?"
	if p := c.peer(id); p != nil {
		name = p.name
	}
	e.errs = append(e.errs, fmt.Errorf("dirty bitmap for %s: %w", name, err))
	c.touch(e)
}

// Ack is a replica's answer to the frame of seq (err nil: it applied
// it). A failed answer marks the range for it and starts its drop; the
// operation then waits for the drop.
func (c *Core) Ack(seq uint64, id PeerID, err error) {
	e := c.entries[seq]
	if e == nil {
		return
	}
	if e.op.Origin == id && e.origin == originPending {
		if err == nil {
			e.origin = originAcked
		} else {
			// The origin could not apply its own write: it answers its
			// initiator with the error; here it is dropped and its
			// range marked (not a Must: the write was answered).
			c.mark(e, id, false)
			c.fail(id)
			e.origin = originDropping
		}
		c.touch(e)
		return
	}
	i := slices.IndexFunc(e.waits, func(w waiter) bool { return w.peer == id && w.kind == waitAck })
	if i < 0 {
		return
	}
	if err == nil {
		e.waits = slices.Delete(e.waits, i, i+1)
	} else {
		c.mark(e, id, true)
		c.fail(id)
		e.waits[i].kind = waitDrop
	}
	c.touch(e)
}

func (c *Core) fail(id PeerID) {
	if c.Fail(id) {
		c.rd.Drops = append(c.rd.Drops, id)
	}
}

// Tick re-evaluates what depends on the clock: drops whose lease ran
// out are the caller's (DropExpired); here, operations waiting for the
// writer lease to come back.
func (c *Core) Tick() {
	for _, e := range c.entries {
		if e.ph == phLease {
			c.touch(e)
		}
	}
}

// GiveUp fails every operation still waiting for the writer lease (the
// site is closing).
func (c *Core) GiveUp() {
	for _, e := range c.entries {
		if e.ph == phLease {
			e.leaseUntil = time.Time{}
			c.touch(e)
		}
	}
}

func (c *Core) touch(e *entry) {
	c.touched = append(c.touched, e)
}

// HasReady reports whether Ready has anything.
func (c *Core) HasReady() bool {
	c.progress()
	return !c.rd.empty()
}

// Ready returns the decisions to act on; Advance must follow.
func (c *Core) Ready() Ready {
	c.progress()
	rd := c.rd
	c.rd = Ready{}
	for _, m := range rd.Marks {
		if m.Must {
			c.handed[m.Seq]++
		}
	}
	return rd
}

// Advance confirms that rd was acted on: its marks are recorded (those
// that failed were reported with MarkFailed).
func (c *Core) Advance(rd Ready) {
	for _, m := range rd.Marks {
		if !m.Must {
			continue
		}
		c.handed[m.Seq]--
		if c.handed[m.Seq] == 0 {
			delete(c.handed, m.Seq)
		}
		if e := c.entries[m.Seq]; e != nil {
			e.marks--
			c.touch(e)
		}
	}
}

func (c *Core) progress() {
	for len(c.touched) > 0 {
		e := c.touched[0]
		c.touched = c.touched[1:]
		c.step(e)
	}
}

func (c *Core) step(e *entry) {
	if c.entries[e.seq] != e {
		return
	}
	now := c.cfg.Clock.Now()
	switch e.ph {
	case phWaiting:
		e.waits = slices.DeleteFunc(e.waits, func(w waiter) bool {
			if w.kind != waitDrop {
				return false
			}
			p := c.peer(w.peer)
			res := resNone
			name := "?"
			if p != nil {
				res, name = p.res, p.name
			}
			switch res {
			case resPending:
				return false
			case resOK:
				return true
			}
			e.errs = append(e.errs, fmt.Errorf("replica %s unreachable and not dropped", name))
			return true
		})
		if (len(e.waits) > 0 || e.marks > 0 && !plant.answerBeforeMark) && !plant.ackEarly {
			return
		}
		if len(e.errs) > 0 {
			c.answer(e, errors.Join(e.errs...))
			return
		}
		if c.LeaseOK() || plant.noLeaseCheck {
			c.answer(e, nil)
			return
		}
		if ep, _ := c.cfg.WriterLease(); ep != 0 && ep != c.cfg.Epoch {
			c.answer(e, errors.New("writer lease lapsed before the answer"))
			return
		}
		// The epoch may have ended while the replicas answered: a
		// writer without its lease acknowledges nothing (I2), unless the
		// lease comes back for the same epoch within one lease. The
		// cluster renews a lease only after a majority confirmed this
		// member still leads the same term, so no other writer can have
		// acted meanwhile: a renewal that was merely late (a busy
		// machine) does not fail the writes in flight.
		e.ph, e.leaseUntil = phLease, now.Add(c.cfg.Lease)
		c.rd.Answers = append(c.rd.Answers, Answer{Seq: e.seq, Poll: true})
	case phLease:
		ep, _ := c.cfg.WriterLease()
		switch {
		case c.LeaseOK():
			c.answer(e, nil)
		case ep != 0 && ep != c.cfg.Epoch, !now.Before(e.leaseUntil):
			c.answer(e, errors.New("writer lease lapsed before the answer"))
		}
	case phAnswered:
		c.visible(e)
	}
}

func (c *Core) answer(e *entry, err error) {
	c.rd.Answers = append(c.rd.Answers, Answer{Seq: e.seq, Err: err})
	if err != nil {
		// Applied here and perhaps elsewhere: never visible as settled.
		e.ph = phDone
		delete(c.entries, e.seq)
		c.rd.Released = append(c.rd.Released, e.seq)
		return
	}
	e.ph = phAnswered
	c.visible(e)
}

// visible settles an answered operation once its origin has it (or was
// dropped), or releases it when the origin's drop did not commit.
func (c *Core) visible(e *entry) {
	switch e.origin {
	case originPending:
		if !plant.settleBeforeOrigin {
			return
		}
	case originDropping:
		resolved, ok := c.Dropped(e.op.Origin)
		if !resolved {
			return
		}
		if !ok {
			e.ph = phDone
			delete(c.entries, e.seq)
			c.rd.Released = append(c.rd.Released, e.seq)
			return
		}
	}
	e.ph = phDone
	delete(c.entries, e.seq)
	c.settle(e.seq)
}

func (c *Core) settle(seq uint64) {
	c.settled[seq] = true
	for len(c.unsettled) > 0 && c.settled[c.unsettled[0]] {
		delete(c.settled, c.unsettled[0])
		c.unsettled = c.unsettled[1:]
	}
	c.rd.Settled = append(c.rd.Settled, seq)
	if cp := c.Commit(); cp > c.commit {
		c.commit = cp
		c.movedAt = c.cfg.Clock.Now()
		c.rd.CommitMoved = true
	}
}

// Commit is the commit point: every operation up to it is on every
// in-sync site.
func (c *Core) Commit() uint64 {
	cp := c.seq
	if c.reserved {
		cp = c.seq - 1
	}
	if plant.commitPastUnsettled {
		return cp
	}
	if len(c.unsettled) > 0 {
		cp = min(cp, c.unsettled[0]-1)
	}
	return cp
}

// Unsettled is the number of operations admitted and not settled.
func (c *Core) Unsettled() int { return len(c.unsettled) }

// CommitFrame is a commit point to send on its own to a replica.
type CommitFrame struct {
	Peer PeerID
	Seq  uint64
}

// CommitsDue returns the commit frames to send now: to each connected
// in-sync or resyncing replica whose last frame carried an older commit
// point, once CommitIdle has passed since the point last moved. wait is
// how long until more may be due (0: nothing pending).
func (c *Core) CommitsDue() (fs []CommitFrame, wait time.Duration) {
	cp := c.Commit()
	pending := false
	for _, p := range c.peers {
		if p.connected && (p.state == InSync || p.state == Syncing) && p.sentCommit < cp {
			pending = true
		}
	}
	if !pending {
		return nil, 0
	}
	if left := c.movedAt.Add(c.cfg.CommitIdle).Sub(c.cfg.Clock.Now()); left > 0 {
		return nil, left
	}
	for _, p := range c.peers {
		if p.connected && (p.state == InSync || p.state == Syncing) && p.sentCommit < cp {
			fs = append(fs, CommitFrame{Peer: p.id, Seq: cp})
			p.sentCommit = cp
		}
	}
	return fs, 0
}

// FinalCommit is the commit point to tell every live replica when the
// writer stops cleanly (everything drained is on every in-sync site).
func (c *Core) FinalCommit() uint64 { return c.Commit() }
