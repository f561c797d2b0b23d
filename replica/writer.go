package replica

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/metrolun/metrolun/replica/core"
)

// The writer of one epoch (DESIGN.md write path step 2): it orders every
// write, applies it locally, streams it to every in-sync replica and
// answers once they all have it. It also drops a replica that stops
// answering (through Raft, then waiting out its lease), records what the
// replica misses in a persistent bitmap, and resyncs it when it is back.

// errNotWriter: this site is not (or no longer) the writer; the operation
// was not applied anywhere and may be retried elsewhere.
var errNotWriter = errors.New("replica: not the writer")

type writer struct {
	s     *Site
	epoch uint64
	log   hclog.Logger
	empty bool // this site's image was never written when the writer started
	// started, handover: a planned move left read leases granted by the
	// previous writer running (View.Handover); they end within a lease
	// of this writer's start.
	started  time.Time
	handover bool

	mu sync.Mutex // orders writes: the core, local apply and send
	// c decides the write order (replica/core): sequence numbers, which
	// replica gets or misses a write, when a write may be answered and
	// when it is visible, the commit point, drops and lease grants.
	c        *core.Core
	waiters  map[uint64]*waiter // operations in order, by seq
	closed   bool
	paused   bool
	peers    []*peer
	inflight sync.WaitGroup
	tainted  bool // a locally applied write failed: this site may have diverged
	// staleLeft: this writer started with the marker of an unclean stop
	// (Site.markerStale), and this many peers in sync at its start are
	// still to be found diverged and dropped for a full compare
	// (manage). Until then a stop must keep the marker, or the next
	// writer here would take itself for clean and compare nobody.
	staleLeft int
	// markerErr: the writer marker could not be written, so a crash
	// would not be recognised; this writer acknowledges nothing.
	markerErr error
	// steppingDown: the local store failed and the writer role is being
	// handed to an in-sync replica (localFailed).
	steppingDown bool
	busy         []*busyRange // guarded by rmu

	// Visibility (I3 with forwarding and with several replicas): a write
	// is visible, to reads here and at every replica, only once every
	// in-sync site holds it, its origin included (the core settles it).
	// Here its busy range is released then; the replicas learn it from
	// the commit point, on the next data frame or from the committer.
	rmu sync.RWMutex // guards busy; local apply and its busy range vs. reads here
	// commitTimer wakes the committer commitIdle after the commit point
	// last moved (reset under mu by step, which is cheaper than waking
	// the committer for every move: at queue depth 1 every write moved
	// it, and the next write's frame carried it).
	commitTimer *time.Timer
	commitIdle  time.Duration // commitIdle when the writer started
	// commitFrames counts the FrameCommits the committer sent and
	// commitWakes the times it woke (tests: data frames carry the commit
	// point under load, and the committer sleeps meanwhile).
	commitFrames, commitWakes int
	// lostSent counts the FrameLost a resync sent (parts of regions this
	// store lost).
	lostSent atomic.Int64

	// carried: ranges this site applied as a replica that the last
	// writer never committed. Readers here wait for them until every
	// in-sync peer is connected clean or dropped for a resync of them
	// (carriedLeft counts the peers still to go).
	carried     []appliedRange
	carriedBusy []*busyRange
	carriedLeft int
	// carriedOut: every in-sync peer has what this site carried (they
	// were released); Site.notify told waiters (settleLost).
	carriedOut bool

	// The background flush (unflushed.go): flushDue is set by the first
	// write sent since the last one, which wakes the flusher.
	flushEvery time.Duration
	flushDue   bool
	flushSig   chan struct{}
	flushWakes int // times the flusher woke up (tests: none when idle)
	bgFlushes  int // background flush rounds sent

	ctx    context.Context
	cancel context.CancelFunc
	done   sync.WaitGroup
}

// startWriter begins epoch at this site.
func (s *Site) startWriter(epoch uint64, v View) *writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{s: s, epoch: epoch, log: s.log.With("epoch", epoch), ctx: ctx, cancel: cancel, empty: storeEmpty(s.cfg.Store),
		started: time.Now(), handover: v.Handover,
		commitTimer: time.NewTimer(time.Hour), commitIdle: commitIdle, flushEvery: flushEvery, flushSig: make(chan struct{}, 1), waiters: map[uint64]*waiter{}}
	w.c = core.New(core.Config{Epoch: epoch, Lease: s.cfg.Lease, Clock: core.Real{}, WriterLease: s.cfg.Control.WriterLease,
		Started: w.started, Handover: w.handover, CommitIdle: w.commitIdle})
	w.done.Add(2)
	go func() {
		defer w.done.Done()
		w.committer()
	}()
	go func() {
		defer w.done.Done()
		w.flusher()
	}()
	stale := s.markerStale.Load()
	w.markerErr = s.setMarker()
	w.carried = s.recv.takeCarried()
	s.recv.raise(epoch)
	// Every in-sync site is a peer, even one being removed: the writer
	// must drop it (waiting out its lease) before it acknowledges writes
	// without it; syncPeers does that next.
	set := s.peerSet(v)
	for _, name := range s.peerNames(v) {
		addr := set[name]
		if addr == "" {
			addr = s.cfg.Peers[name]
		}
		p := w.newPeer(name, addr)
		// Opened here, not only in manage, so that a write never finds
		// a peer without its record (manage handles an error).
		p.dirty, _ = s.bitmap(name)
		st := core.Out
		if slices.Contains(v.InSync, name) {
			st = core.InSync
			p.unfl.unknown = true
		}
		w.mu.Lock() // the committer runs already
		p.id = w.c.AddPeer(name, st)
		w.peers = append(w.peers, p)
		w.mu.Unlock()
	}
	for _, a := range w.carried {
		b := &busyRange{off: a.off, n: a.n, done: make(chan struct{})}
		w.carriedBusy = append(w.carriedBusy, b)
		w.busy = append(w.busy, b)
	}
	w.mu.Lock()
	for _, p := range w.peers {
		if w.st(p) == core.InSync {
			w.carriedLeft++
			if stale {
				w.staleLeft++
			}
		}
	}
	w.mu.Unlock()
	if w.carriedLeft == 0 {
		w.releaseCarried()
	}
	w.log.Info("writer: starting", "in_sync", v.InSync, "stale_marker", stale, "carried_ranges", len(w.carried))
	for _, p := range w.peers {
		w.startPeer(p, stale)
	}
	return w
}

func (w *writer) leaseOK() bool {
	ep, until := w.s.cfg.Control.WriterLease()
	return ep == w.epoch && time.Now().Before(until)
}

// stop ends this writer: no new operations; operations in flight finish
// (bounded by replica_timeout); links close. A clean stop clears the
// marker that says this site may hold unacknowledged writes.
func (w *writer) stop() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	w.mu.Unlock()
	drained := make(chan struct{})
	go func() { w.inflight.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(w.s.cfg.ReplicaTimeout + w.s.cfg.Lease):
		w.log.Warn("writer: operations still in flight at stop")
		w.mu.Lock()
		w.tainted = true
		w.mu.Unlock()
	}
	w.mu.Lock()
	var links, live []*Link
	c := w.c.FinalCommit()
	for _, p := range w.peers {
		if p.link != nil {
			links = append(links, p.link)
			if st := w.st(p); st == core.InSync || st == core.Syncing {
				live = append(live, p.link)
			}
		}
	}
	tainted := w.tainted
	staleLeft := w.staleLeft
	w.mu.Unlock()
	if !tainted {
		// What drained is on every in-sync site: say so before the
		// streams close. Left to the committer's next tick (a handover
		// is quicker, the more so over TLS), each replica would carry
		// those ranges as uncommitted, and the next writer would drop
		// it to resync them.
		for _, l := range live {
			l.Grant(&Frame{Kind: FrameCommit, Epoch: w.epoch, Seq: c})
		}
	}
	w.cancel()
	for _, l := range links {
		l.Close()
	}
	w.done.Wait()
	// Links closing recorded what the peers had not flushed; this
	// records what was sent after a link had failed, which only a drop
	// or the next resync would have.
	w.mu.Lock()
	peers := slices.Clone(w.peers)
	w.mu.Unlock()
	for _, p := range peers {
		p.spill()
	}
	if !tainted && staleLeft == 0 {
		w.s.clearMarker()
	}
	w.log.Info("writer: stopped", "clean", !tainted, "stale_peers_left", staleLeft)
}

// pause holds new operations and waits for those in flight (a planned
// handover); resume lets them go on.
func (w *writer) pause(timeout time.Duration) error {
	w.mu.Lock()
	w.paused = true
	w.mu.Unlock()
	drained := make(chan struct{})
	go func() { w.inflight.Wait(); close(drained) }()
	select {
	case <-drained:
		return nil
	case <-time.After(timeout):
		return errors.New("writes still in flight")
	}
}

func (w *writer) resume() {
	w.mu.Lock()
	w.paused = false
	w.mu.Unlock()
	w.s.notify()
}
