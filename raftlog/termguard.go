package raftlog

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/metrolun/metrolun/internal/grid"
)

// maxTermJump bounds how far ahead of this member's term an RPC's term
// may be. Terms grow by one per election (pre-vote keeps a partitioned
// member from raising its own), so a million is beyond any real history;
// a term near 2^64 is not, and would leave the cluster without a leader
// for good (no candidate can go higher), restarts included. The stream
// layer already keeps everyone but members out (peerTLS); this keeps a
// member that misbehaves, or runs a broken build, from doing it.
const maxTermJump = 1 << 20

// termGuard is the Raft transport with every incoming RPC's term checked
// against the member's own before Raft sees it. It embeds the network
// transport so that raft finds the same optional interfaces (pre-vote,
// close, peers) on it.
type termGuard struct {
	*raft.NetworkTransport
	// current is this member's term; set once Raft exists. Until then
	// the stable store's is read.
	raft   atomic.Pointer[raft.Raft]
	stable raft.StableStore

	out  chan raft.RPC
	done chan struct{}
	once sync.Once

	cmu      sync.Mutex
	contacts map[raft.ServerID]contact
	// beats is when each peer was last sent a heartbeat.
	beats map[raft.ServerID]time.Time

	// beatEvery is the longest pause Raft leaves between two heartbeats
	// to a peer (it waits HeartbeatTimeout/10 to /5 after each answer):
	// a heartbeat is held for the next grid instant when that comes no
	// later than beatEvery after the previous one (see hold). Zero holds
	// nothing at all. Set before Raft starts, and by slowBeats.
	beatEvery atomic.Int64
	// hurryUntil (Unix ns): hold nothing before then (hurry).
	hurryUntil atomic.Int64
	// kick is closed to release the requests being held (hurry).
	kick chan struct{}
	// witnesses, when set (before Raft starts), names the members that
	// are witnesses (spare).
	witnesses func() []raft.ServerID
	// self is this member's Raft ID (spare); set before Raft starts.
	self raft.ServerID
	// onContact, when set (before Raft starts), is called after each
	// contact recorded, with its term.
	onContact func(term uint64)
}

// contact is the latest AppendEntries a peer accepted: of term, sent at
// sent (lease.go).
type contact struct {
	term uint64
	sent time.Time
}

func newTermGuard(t *raft.NetworkTransport, stable raft.StableStore) *termGuard {
	g := &termGuard{NetworkTransport: t, stable: stable, out: make(chan raft.RPC), done: make(chan struct{}),
		contacts: map[raft.ServerID]contact{}, beats: map[raft.ServerID]time.Time{}, kick: make(chan struct{})}
	go g.run()
	return g
}

// currentTerm is the term RPCs are measured against.
func (g *termGuard) currentTerm() uint64 {
	if r := g.raft.Load(); r != nil {
		return r.CurrentTerm()
	}
	// Raft's own key for its term (raft.go keyCurrentTerm).
	t, _ := g.stable.GetUint64([]byte("CurrentTerm"))
	return t
}

// check refuses an RPC whose term is absurdly ahead of this member's.
func (g *termGuard) check(cmd any) error {
	var term uint64
	switch c := cmd.(type) {
	case *raft.RequestVoteRequest:
		term = c.Term
	case *raft.RequestPreVoteRequest:
		term = c.Term
	case *raft.AppendEntriesRequest:
		term = c.Term
	case *raft.InstallSnapshotRequest:
		term = c.Term
	default:
		return nil
	}
	if cur := g.currentTerm(); term > cur && term-cur > maxTermJump {
		return fmt.Errorf("raftlog: refused an RPC with term %d, this member is at %d", term, cur)
	}
	return nil
}

func (g *termGuard) run() {
	in := g.NetworkTransport.Consumer()
	for {
		select {
		case rpc := <-in:
			if err := g.check(rpc.Command); err != nil {
				rpc.Respond(nil, err)
				continue
			}
			select {
			case g.out <- rpc:
			case <-g.done:
				rpc.Respond(nil, raft.ErrTransportShutdown)
				return
			}
		case <-g.done:
			return
		}
	}
}

// Consumer gives Raft the RPCs that passed check.
func (g *termGuard) Consumer() <-chan raft.RPC { return g.out }

// SetHeartbeatHandler checks heartbeats too: they bypass the consumer.
func (g *termGuard) SetHeartbeatHandler(cb func(rpc raft.RPC)) {
	if cb == nil {
		g.NetworkTransport.SetHeartbeatHandler(nil)
		return
	}
	g.NetworkTransport.SetHeartbeatHandler(func(rpc raft.RPC) {
		if err := g.check(rpc.Command); err != nil {
			rpc.Respond(nil, err)
			return
		}
		cb(rpc)
	})
}

func (g *termGuard) Close() error {
	g.once.Do(func() { close(g.done) })
	return g.NetworkTransport.Close()
}

// AppendEntries records, for the writer lease, when each peer was last
// sent an AppendEntries (a heartbeat or entries) that it accepted as the
// leader's of that term: Success, and its term equal to the request's,
// so it had not moved to a later term (and voted there) when it answered.
// The time is taken before the request is handed to the connection, so
// it is never after the peer's answer, however long the dial, the queue
// or the network took; and after hold, so a held heartbeat counts from
// when it was really sent (taken before the hold, it would still be safe,
// only shorter).
func (g *termGuard) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	g.cmu.Lock()
	kick := g.kick
	g.cmu.Unlock()
	if d := g.hold(id, args, time.Now()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-kick:
			t.Stop()
		case <-g.done:
			t.Stop()
			return raft.ErrTransportShutdown
		}
	}
	sent := time.Now()
	if isHeartbeat(args) {
		g.cmu.Lock()
		g.beats[id] = sent
		g.cmu.Unlock()
	}
	err := g.NetworkTransport.AppendEntries(id, target, args, resp)
	if err == nil && resp.Success && resp.Term == args.Term {
		g.cmu.Lock()
		if c := g.contacts[id]; args.Term > c.term || (args.Term == c.term && sent.After(c.sent)) {
			g.contacts[id] = contact{term: args.Term, sent: sent}
		}
		g.cmu.Unlock()
		if g.onContact != nil {
			g.onContact(args.Term)
		}
	}
	return err
}

// hold is how long to keep an AppendEntries to id back, so that it goes
// on the process's grid (internal/grid) with the rest of the periodic
// work, at both ends: an idle process pays per wake-up, and Raft's
// heartbeats and commit-index requests, each from a goroutine of its own
// at a random phase, were most of an idle cluster's wake-ups.
//
// An AppendEntries that carries only the commit index waits for the next
// grid instant. Raft's replicate goroutine sends one CommitTimeout after
// each answer when there is nothing new, and CommitTimeout is a
// millisecond (cluster.go): the goroutine comes back while the process
// is still awake from the answer and waits here, so it sends one request
// per grid instant, every 100 ms on a LAN, and that request is the
// leader's heartbeat (a follower resets its election timer on it, the
// leader counts it for Raft's leader lease and the writer lease). While a
// proposal or a VerifyLeader round is under way (hurry) it waits at most
// hurriedHold. Entries are never held, and new entries release the
// requests being held (kickStore), so an entry never waits behind one.
//
// A heartbeat (Raft's own, from its heartbeat goroutine; rare at the
// writer, see Cluster.slowBeats) is held only when the next grid instant
// comes within beatEvery of the previous heartbeat to id, so that it
// never comes later than Raft meant it to; over a long link, where the
// answer takes a good part of that, it goes at once. Not while hurried.
func (g *termGuard) hold(id raft.ServerID, args *raft.AppendEntriesRequest, now time.Time) time.Duration {
	beatEvery := time.Duration(g.beatEvery.Load())
	if beatEvery <= 0 || len(args.Entries) > 0 {
		return 0
	}
	hurried := now.UnixNano() < g.hurryUntil.Load()
	if !isHeartbeat(args) {
		d := grid.Wait(now, now.Add(grid.Step))
		if !hurried && g.spare(id, args.Term, now) {
			d = grid.Next(now, spareEvery).Sub(now)
		}
		if hurried {
			d = min(d, hurriedHold)
		}
		return d
	}
	if hurried {
		return 0
	}
	g.cmu.Lock()
	last, ok := g.beats[id]
	g.cmu.Unlock()
	if !ok {
		return 0
	}
	return grid.Wait(now, last.Add(beatEvery))
}

// spareEvery is how often a peer whose answers no majority needs gets a
// commit-index request (spare): a multiple of the grid step, and short
// enough that the peer, a follower that starts an election when it has
// heard nothing for Raft's heartbeat timeout (an election timeout), and
// Raft's leader lease (the same) are never in doubt.
const spareEvery = 3 * grid.Step

// spare reports whether the voters that come before id, with this
// member, already make a majority that accepted an AppendEntries of term
// in the last two grid steps: then id's answers renew neither the writer
// lease (confirmed takes the majority's oldest) nor Raft's leader lease,
// and id's commit-index requests go on the spareEvery grid. The order
// keeps the choice one-sided (counted against each other, two peers
// would each find the other enough and both go spare, and the lease
// would go stale every cycle): data sites first, then by ID. So with two
// data sites and a witness, the witness is spare while the other data
// site answers, a third of the requests to it: in a metro cluster the
// data sites are the near pair and the witness is farther, and a lease
// renewed from a far peer's answers goes stale sooner (lease.go). The
// other order was measured too (the data site spare): the same total,
// the data site 15-25% cheaper and the witness 40% dearer. When those
// before it stop answering, id's next request is back on every grid
// instant, and a lease gone stale meanwhile is renewed by a VerifyLeader
// round (lease.go), whose hurry releases the request held.
func (g *termGuard) spare(id raft.ServerID, term uint64, now time.Time) bool {
	r := g.raft.Load()
	if r == nil {
		return false
	}
	f := r.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	var voters []raft.ServerID
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters = append(voters, s.ID)
		}
	}
	var witnesses []raft.ServerID
	if g.witnesses != nil {
		witnesses = g.witnesses()
	}
	return g.spareAmong(voters, witnesses, id, term, now)
}

// spareAmong is spare for the voters given, witnesses among them.
func (g *termGuard) spareAmong(voters, witnesses []raft.ServerID, id raft.ServerID, term uint64, now time.Time) bool {
	// Data sites come before witnesses, then by ID.
	before := func(a, b raft.ServerID) bool {
		wa, wb := slices.Contains(witnesses, a), slices.Contains(witnesses, b)
		if wa != wb {
			return wb
		}
		return a < b
	}
	since := now.Add(-2 * grid.Step)
	n := 0
	g.cmu.Lock()
	for _, v := range voters {
		if v == g.self {
			n++
		} else if c, ok := g.contacts[v]; ok && before(v, id) && c.term == term && !c.sent.Before(since) {
			n++
		}
	}
	g.cmu.Unlock()
	return n >= len(voters)/2+1
}

// hurriedHold bounds how long a commit-index request waits while hurried:
// long enough that Raft's replicate goroutine, which comes back a
// CommitTimeout after each answer, does not spin.
const hurriedHold = 10 * time.Millisecond

// release lets the requests being held go now: Raft has new entries to
// send (kickStore), and its replicate goroutine may be waiting here with
// a commit-index request.
func (g *termGuard) release() {
	g.cmu.Lock()
	close(g.kick)
	g.kick = make(chan struct{})
	g.cmu.Unlock()
}

// hurry has heartbeats go at once for d, and commit-index requests after
// hurriedHold at most, those held now released: a proposal is under way
// (its entry and the barrier after it), or a VerifyLeader round.
func (g *termGuard) hurry(d time.Duration) {
	until := time.Now().Add(d).UnixNano()
	for {
		old := g.hurryUntil.Load()
		if old >= until || g.hurryUntil.CompareAndSwap(old, until) {
			break
		}
	}
	g.release()
}

// isHeartbeat is NetworkTransport's test for a heartbeat (Raft's
// heartbeat goroutine sends only the term and the leader).
func isHeartbeat(a *raft.AppendEntriesRequest) bool {
	return a.PrevLogEntry == 0 && a.PrevLogTerm == 0 && len(a.Entries) == 0 && a.LeaderCommitIndex == 0
}

// confirmed is the latest time t such that a majority of voters (this
// member, self, included when it is one) accepted an AppendEntries of
// term sent at t or later; ok is false when no majority did. now stands
// for self, whose own acceptance is immediate.
func (g *termGuard) confirmed(self raft.ServerID, voters []raft.ServerID, term uint64, now time.Time) (t time.Time, ok bool) {
	need := len(voters)/2 + 1
	var sent []time.Time
	g.cmu.Lock()
	for _, v := range voters {
		if v == self {
			sent = append(sent, now)
			continue
		}
		if c, ok := g.contacts[v]; ok && c.term == term {
			sent = append(sent, c.sent)
		}
	}
	g.cmu.Unlock()
	if len(sent) < need {
		return time.Time{}, false
	}
	// The need-th latest: every voter from there up answered a request
	// sent no earlier.
	slices.SortFunc(sent, func(a, b time.Time) int { return b.Compare(a) })
	return sent[need-1], true
}

// kickStore is the Raft log store that releases the transport's held
// requests once new entries are stored: Raft stores an entry before it
// wakes the replicate goroutines to send it, and one of them may be
// waiting in hold with a commit-index request, which would keep the
// entry back until the grid instant.
type kickStore struct {
	*raftboltdb.BoltStore
	stored func()
}

func (s kickStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s kickStore) StoreLogs(logs []*raft.Log) error {
	err := s.BoltStore.StoreLogs(logs)
	s.stored()
	return err
}
