package replica

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/time/rate"
)

// The writer of one epoch (DESIGN.md write path step 2): it orders every
// write, applies it locally, streams it to every in-sync replica and
// answers once they all have it. It also drops a replica that stops
// answering (through Raft, then waiting out its lease), records what the
// replica misses in a persistent bitmap, and resyncs it when it is back.

// errNotWriter: this site is not (or no longer) the writer; the operation
// was not applied anywhere and may be retried elsewhere.
var errNotWriter = errors.New("replica: not the writer")

// Peer states, as the writer sees them.
const (
	peerOut     = "out"     // not in sync: misses writes (bitmap)
	peerSyncing = "syncing" // resync running: writes behind the cursor go to it
	peerInSync  = "in-sync" // every write waits for it
	peerDrop    = "dropping"
)

type peer struct {
	w     *writer
	name  string
	addr  string
	empty bool     // its hello answer said its image was never written
	image *ImageID // its hello answer's image identity (identity.go)
	// carried: ranges it applied that the last writer never committed
	// (its hello answer); they may differ from this site's.
	carried []appliedRange

	// Guarded by w.mu.
	state     string
	link      *Link
	cursor    int64 // syncing: writes below it are sent
	grantEnd  time.Time
	resolved  chan struct{} // dropping: closed when the drop is settled
	resolveOK bool
	resync    resyncProgress
	// gone: the peer left the cluster; the writer drops it if it is in
	// sync and then forgets it (retire).
	gone bool

	dirty *Bitmap
	// unfl: the regions it acknowledged and may not have flushed
	// (unflushed.go).
	unfl *unflushed
	// lastErr: why the last connect failed, "" after one succeeded
	// (guarded by w.mu).
	lastErr string
	// fresh: the peer joined while this writer ran, so no record of what
	// it holds can be trusted: its first resync compares everything.
	fresh bool
	// ctx ends this peer's goroutines (manage, watchdog, its resync),
	// with the writer or when the peer is forgotten; wg waits for them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// errRemoved: the peer was removed from the cluster.
var errRemoved = errors.New("removed from the cluster")

type resyncProgress struct {
	Done, Total int // regions
	Copied      int // regions that were sent (differed or dirty)
	Started     time.Time
}

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

	mu       sync.Mutex // orders writes: seq, local apply and send
	seq      uint64
	closed   bool
	paused   bool
	peers    []*peer
	inflight sync.WaitGroup
	tainted  bool // a locally applied write failed: this site may have diverged
	// markerErr: the writer marker could not be written, so a crash
	// would not be recognised; this writer acknowledges nothing.
	markerErr error
	// steppingDown: the local store failed and the writer role is being
	// handed to an in-sync replica (localFailed).
	steppingDown bool
	busy         []*busyRange // guarded by rmu

	// Visibility (I3 with forwarding and with several replicas): a write
	// is visible, to reads here and at every replica, only once every
	// in-sync site holds it, its origin included. unsettled are the
	// sequence numbers ordered and not yet there, in order; commit is the
	// highest below all of them, which the committer sends to the
	// replicas (FrameCommit).
	rmu       sync.RWMutex // guards busy; local apply and its busy range vs. reads here
	unsettled []uint64
	settledAt map[uint64]bool
	commit    uint64
	commitSig chan struct{}

	// carried: ranges this site applied as a replica that the last
	// writer never committed. Readers here wait for them until every
	// in-sync peer is connected clean or dropped for a resync of them
	// (carriedLeft counts the peers still to go).
	carried     []appliedRange
	carriedBusy []*busyRange
	carriedLeft int

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
		commitSig: make(chan struct{}, 1), flushEvery: flushEvery, flushSig: make(chan struct{}, 1)}
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
		if slices.Contains(v.InSync, name) {
			p.state = peerInSync
			p.unfl.unknown = true
		}
		w.mu.Lock() // the committer runs already
		w.peers = append(w.peers, p)
		w.mu.Unlock()
	}
	for _, a := range w.carried {
		b := &busyRange{off: a.off, n: a.n, done: make(chan struct{})}
		w.carriedBusy = append(w.carriedBusy, b)
		w.busy = append(w.busy, b)
	}
	for _, p := range w.peers {
		if p.state == peerInSync {
			w.carriedLeft++
		}
	}
	if w.carriedLeft == 0 {
		w.releaseCarried()
	}
	w.log.Info("writer: starting", "in_sync", v.InSync, "stale_marker", stale, "carried_ranges", len(w.carried))
	for _, p := range w.peers {
		w.startPeer(p, stale)
	}
	return w
}

// peerNames lists the other data sites of v, and the in-sync ones it
// leaves out (sites being removed).
func (s *Site) peerNames(v View) []string {
	var names []string
	for n := range s.peerSet(v) {
		names = append(names, n)
	}
	for _, n := range v.InSync {
		if n != s.cfg.Name && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

func (w *writer) newPeer(name, addr string) *peer {
	p := &peer{w: w, name: name, addr: addr, state: peerOut, unfl: newUnflushed(w.s.cfg.Store.Size(), w.s.cfg.RegionSize)}
	p.ctx, p.cancel = context.WithCancel(w.ctx)
	return p
}

func (w *writer) startPeer(p *peer, stale bool) {
	w.done.Add(1)
	p.wg.Add(1)
	go func() {
		defer w.done.Done()
		defer p.wg.Done()
		w.manage(p, stale)
	}()
}

// syncPeers follows the cluster's data sites while this writer runs: a
// site that joined becomes a peer (out of sync; manage resyncs it with a
// full compare and puts it in sync), one that left is retired.
func (w *writer) syncPeers(v View) {
	want := w.s.peerSet(v)
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	var newNames []string
	for n := range want {
		if !slices.ContainsFunc(w.peers, func(p *peer) bool { return p.name == n }) {
			newNames = append(newNames, n)
		}
	}
	w.mu.Unlock()
	// A new peer's bitmap is open before any write can see the peer.
	bms := map[string]*Bitmap{}
	for _, n := range newNames {
		b, err := w.s.bitmap(n)
		if err != nil {
			w.log.Error("dirty bitmap for a site that joined; not resyncing it yet", "replica", n, "error", err)
			continue
		}
		bms[n] = b
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	var added, gone []*peer
	have := map[string]bool{}
	for _, p := range w.peers {
		have[p.name] = true
		if _, ok := want[p.name]; !ok && !p.gone {
			p.gone = true
			gone = append(gone, p)
		}
	}
	var names []string
	for n := range want {
		if !have[n] && bms[n] != nil {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		p := w.newPeer(n, want[n])
		p.fresh, p.dirty = true, bms[n]
		w.peers = append(w.peers, p)
		added = append(added, p)
	}
	// Started with w.mu held: stop sets closed under it before it waits
	// for w.done, so no goroutine is added after that.
	for _, p := range added {
		w.log.Info("a data site joined the cluster; resyncing it", "replica", p.name, "addr", p.addr)
		w.startPeer(p, false)
	}
	for _, p := range gone {
		w.done.Add(1)
		go func() {
			defer w.done.Done()
			w.retire(p)
		}()
	}
	w.mu.Unlock()
	if len(added)+len(gone) > 0 {
		w.s.notify()
	}
}

// retire forgets a peer that left the cluster. One in sync is dropped
// first, as a lost replica is: the drop committed, then its lease waited
// out (I2, I3); only then do writes stop waiting for it. Then its link
// closes and its dirty bitmap is deleted.
func (w *writer) retire(p *peer) {
	w.log.Info("a data site left the cluster; dropping and forgetting it", "replica", p.name)
	for {
		w.mu.Lock()
		st := p.state
		if st != peerInSync && st != peerDrop {
			// Out of sync or resyncing: it holds no lease from this
			// writer, and no write waits for it.
			w.peers = slices.DeleteFunc(w.peers, func(x *peer) bool { return x == p })
			p.state = peerOut
			l := p.link
			w.mu.Unlock()
			p.cancel()
			if l != nil {
				l.Close()
			}
			break
		}
		w.mu.Unlock()
		if st == peerInSync {
			w.failPeer(p, errRemoved)
		}
		if !w.awaitDrop(p) {
			// The drop did not commit: this writer acknowledges nothing
			// more; the next one retires the site.
			w.log.Warn("a removed data site could not be dropped", "replica", p.name)
			return
		}
	}
	p.wg.Wait()
	w.s.forgetBitmap(p.name)
	w.log.Info("data site forgotten", "replica", p.name)
	w.s.notify()
}

// mark records in p's bitmap that p misses off..off+n.
func (p *peer) mark(off, n int64) error {
	if p.dirty == nil {
		return errors.New("no dirty bitmap")
	}
	return p.dirty.Mark(off, n)
}

// isGone reports whether p was removed from the cluster.
func (w *writer) isGone(p *peer) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return p.gone
}

func (w *writer) leaseOK() bool {
	ep, until := w.s.cfg.Control.WriterLease()
	return ep == w.epoch && time.Now().Before(until)
}

// leaseReturns waits up to one lease for a lapsed writer lease to come
// back for the same epoch. The cluster renews a lease only after a
// majority confirmed this member still leads the same term, so no other
// writer can have acted meanwhile, and a write every in-sync replica
// holds may then be acknowledged: a renewal that was merely late (a busy
// machine) does not fail the writes in flight.
func (w *writer) leaseReturns() bool {
	deadline := time.Now().Add(w.s.cfg.Lease)
	for time.Now().Before(deadline) {
		ep, until := w.s.cfg.Control.WriterLease()
		if ep == w.epoch && time.Now().Before(until) {
			return true
		}
		if ep != 0 && ep != w.epoch {
			return false
		}
		select {
		case <-w.s.closing:
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return false
}

// leaseLeft is how long the writer may still grant.
func (w *writer) leaseUntil() time.Time {
	ep, until := w.s.cfg.Control.WriterLease()
	if ep != w.epoch {
		return time.Time{}
	}
	return until
}

type pendingWait struct {
	p  *peer
	ch <-chan Ack // nil: the peer is being dropped, wait for that
}

// order runs one operation in the write order: it takes the next
// sequence number for f, applies it locally with apply (which may decline
// with errSkip, a miscompare), sends it to the replicas and waits for
// every in-sync one. origin is the site that forwarded it ("" for a local
// one): that site gets a FlagRef frame and is not waited for here.
func (w *writer) order(f *Frame, origin string, apply func() error) error {
	w.mu.Lock()
	if w.closed || w.paused || !w.ready() || !w.leaseOK() {
		w.mu.Unlock()
		return errNotWriter
	}
	w.seq++
	f.Epoch, f.Seq = w.epoch, w.seq
	if w.markerErr != nil {
		w.mu.Unlock()
		return fmt.Errorf("writer marker: %w", w.markerErr)
	}
	w.rmu.Lock()
	if err := apply(); err != nil {
		w.rmu.Unlock()
		w.seq--
		if !errors.Is(err, errMiscompare) {
			// Under w.mu, as localFailed requires: a stop() that ran
			// between here and an unlocked call would see the writer
			// untainted and clear the marker this failure sets, and the
			// next writer would trust this site's bitmap over its torn
			// bytes (I4).
			w.localFailed(f, err)
		}
		w.mu.Unlock()
		return err
	}
	w.inflight.Add(1)
	defer w.inflight.Done()
	seq := f.Seq
	w.unsettled = append(w.unsettled, seq)
	var busy *busyRange
	if n := frameBytes(f); n > 0 {
		busy = &busyRange{off: f.Offset, n: n, done: make(chan struct{})}
		w.busy = append(w.busy, busy)
	}
	w.rmu.Unlock()
	settling := false
	defer func() {
		if !settling && busy != nil {
			// Failed: the writer is going down; readers here need not
			// wait for a commit that will not come.
			w.release(busy)
		}
	}()
	var originCh <-chan Ack
	var originPeer *peer
	var waits []pendingWait
	var dirty []*peer
	for _, p := range w.peers {
		switch p.state {
		case peerInSync:
			if p.name == origin {
				ref := *f
				ref.Data, ref.Flags = nil, f.Flags|FlagRef // f.Ref names the origin's operation
				// The origin answers its initiator; its ack only makes
				// the write visible (settle).
				originCh, originPeer = p.link.Send(&ref), p
				w.track(p, &ref, true)
				continue
			}
			waits = append(waits, pendingWait{p, p.link.Send(f)})
			w.track(p, f, true)
		case peerDrop:
			waits = append(waits, pendingWait{p: p})
		case peerSyncing:
			if f.Kind == FrameFlush || f.Kind == FrameMeta || f.Offset < p.cursor {
				p.link.Send(f) // a failure marks it dirty (onDown)
				w.track(p, f, false)
				if p.link.Err() != nil {
					// Refused by a link that had failed already: onDown
					// ran before and will not see this one.
					dirty = append(dirty, p)
				}
			} else {
				dirty = append(dirty, p)
			}
		default:
			dirty = append(dirty, p)
		}
	}
	// Marked before w.mu is released: a resync starting meanwhile could
	// otherwise pass these regions before they are marked, and end with
	// the peer in sync without this write (I4).
	var errs []error
	for _, p := range dirty {
		if err := p.mark(f.Offset, frameBytes(f)); err != nil && !p.gone {
			errs = append(errs, fmt.Errorf("dirty bitmap for %s: %w", p.name, err))
		}
	}
	w.mu.Unlock()
	for _, pw := range waits {
		if bugAckEarly && pw.ch != nil {
			continue // a known bug, for the torture test (bug_none.go)
		}
		if pw.ch != nil {
			a := <-pw.ch
			if a.Err == nil {
				if f.Kind == FrameFlush {
					pw.p.unfl.flushed(seq)
				}
				continue
			}
			// linkDown marked the frame before a.Err came; marking again
			// costs nothing and says whether that is on disk.
			if err := pw.p.mark(f.Offset, frameBytes(f)); err != nil && !w.isGone(pw.p) {
				errs = append(errs, fmt.Errorf("dirty bitmap for %s: %w", pw.p.name, err))
			}
			w.failPeer(pw.p, a.Err)
		} else if err := pw.p.mark(f.Offset, frameBytes(f)); err != nil && !w.isGone(pw.p) {
			errs = append(errs, fmt.Errorf("dirty bitmap for %s: %w", pw.p.name, err))
		}
		// The replica missed this write (marked above, before its drop
		// and before the answer). It may go on only once the cluster
		// has dropped it (I2) and its lease has run out (I3).
		if !w.awaitDrop(pw.p) {
			errs = append(errs, fmt.Errorf("replica %s unreachable and not dropped", pw.p.name))
			continue
		}
	}
	if len(errs) == 0 && !w.leaseOK() && !w.leaseReturns() {
		// The epoch may have ended while the replicas answered: a writer
		// without its lease acknowledges nothing (I2).
		errs = append(errs, errors.New("writer lease lapsed before the answer"))
	}
	if len(errs) > 0 {
		w.mu.Lock()
		w.tainted = true
		w.mu.Unlock()
		// Applied here and perhaps elsewhere: not a clean failure.
		return &indeterminate{err: errors.Join(errs...)}
	}
	settling = true
	if originCh == nil {
		w.settle(seq, busy)
		return nil
	}
	go func() {
		if a := <-originCh; a.Err != nil {
			// The origin could not apply its own write (its store
			// failed): linkDown marked the range for it; it answers its
			// initiator with the error and leaves the in-sync set.
			if err := originPeer.mark(f.Offset, frameBytes(f)); err != nil && !w.isGone(originPeer) {
				w.log.Error("dirty bitmap", "replica", originPeer.name, "error", err)
			}
			w.failPeer(originPeer, a.Err)
			if !w.awaitDrop(originPeer) {
				if busy != nil {
					w.release(busy)
				}
				return
			}
		} else if f.Kind == FrameFlush {
			originPeer.unfl.flushed(seq)
		}
		w.settle(seq, busy)
	}()
	return nil
}

// carriedDone: one more in-sync peer is connected clean or dropped.
func (w *writer) carriedDone() {
	w.mu.Lock()
	w.carriedLeft--
	last := w.carriedLeft == 0
	w.mu.Unlock()
	if last {
		w.releaseCarried()
	}
}

func (w *writer) releaseCarried() {
	w.mu.Lock()
	bs := w.carriedBusy
	w.carriedBusy = nil
	w.mu.Unlock()
	for _, b := range bs {
		w.release(b)
	}
}

// settle records that seq is on every in-sync site: its range becomes
// readable here, and the commit point the replicas get moves on.
func (w *writer) settle(seq uint64, busy *busyRange) {
	w.mu.Lock()
	if w.settledAt == nil {
		w.settledAt = make(map[uint64]bool)
	}
	w.settledAt[seq] = true
	for len(w.unsettled) > 0 && w.settledAt[w.unsettled[0]] {
		delete(w.settledAt, w.unsettled[0])
		w.unsettled = w.unsettled[1:]
	}
	c := w.seq
	if len(w.unsettled) > 0 {
		c = w.unsettled[0] - 1
	}
	advanced := c > w.commit
	if advanced {
		w.commit = c
	}
	w.mu.Unlock()
	if busy != nil {
		w.release(busy)
	}
	if advanced {
		select {
		case w.commitSig <- struct{}{}:
		default:
		}
	}
}

// committer tells the replicas how far the stream is on every in-sync
// site, so they may show those writes to their readers.
// It also ticks, for frames outside the write order (resync copies)
// and for links that came up since.
func (w *writer) committer() {
	sent := map[*Link]uint64{}
	tick := time.NewTicker(max(w.s.cfg.Lease/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-w.commitSig:
		case <-tick.C:
		}
		w.mu.Lock()
		c := w.seq
		if len(w.unsettled) > 0 {
			c = w.unsettled[0] - 1
		}
		var links []*Link
		for _, p := range w.peers {
			if p.link != nil && (p.state == peerInSync || p.state == peerSyncing) {
				links = append(links, p.link)
			}
		}
		w.mu.Unlock()
		live := map[*Link]uint64{}
		for _, l := range links {
			if sent[l] < c {
				l.Commit(&Frame{Kind: FrameCommit, Epoch: w.epoch, Seq: c})
				live[l] = c
			} else {
				live[l] = sent[l]
			}
		}
		sent = live
	}
}

// busyRange is a write applied here but not yet on every in-sync site.
type busyRange struct {
	off, n int64
	done   chan struct{}
}

func (w *writer) release(r *busyRange) {
	w.rmu.Lock()
	w.busy = slices.DeleteFunc(w.busy, func(x *busyRange) bool { return x == r })
	w.rmu.Unlock()
	close(r.done)
}

// readSettled reads p at off from the local store once no write to it
// is unsettled, with no write applied between the check and the read.
func (w *writer) readSettled(p []byte, off int64) error {
	n := int64(len(p))
	for {
		w.rmu.RLock()
		var wait chan struct{}
		for _, r := range w.busy {
			if r.off < off+n && off < r.off+r.n {
				wait = r.done
				break
			}
		}
		if wait == nil {
			err := w.s.cfg.Store.ReadAt(p, off)
			w.rmu.RUnlock()
			return err
		}
		w.rmu.RUnlock()
		<-wait
	}
}

// ready reports whether every in-sync peer is connected (at the start of
// an epoch they are being connected, or dropped). w.mu is held.
func (w *writer) ready() bool {
	for _, p := range w.peers {
		if p.state == peerInSync && p.link == nil {
			return false
		}
	}
	return true
}

func frameBytes(f *Frame) int64 {
	switch f.Kind {
	case FrameWrite, FrameUnmap:
		return int64(f.Length)
	}
	return 0
}

// failPeer starts dropping an in-sync peer whose link failed.
func (w *writer) failPeer(p *peer, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p.state != peerInSync {
		return
	}
	if w.closed {
		// A stopping writer closes its own links; nothing is proposed
		// (below), so saying "dropping" would mislead whoever reads
		// the log of a planned move.
		w.log.Debug("replica link ended while the writer stops", "replica", p.name, "error", err)
	} else {
		w.log.Warn("replica failed; dropping it from the in-sync set", "replica", p.name, "error", err)
	}
	p.state = peerDrop
	p.resolved = make(chan struct{})
	if p.link != nil {
		go p.link.Close()
	}
	if w.closed {
		// Stopping: no new goroutines once stop may be waiting for them
		// (a write still in flight then fails, as the writer's do).
		close(p.resolved)
		return
	}
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		w.drop(p)
	}()
}

// awaitDrop waits until p's drop is settled and reports whether it
// committed (and p's lease ran out).
func (w *writer) awaitDrop(p *peer) bool {
	w.mu.Lock()
	ch := p.resolved
	w.mu.Unlock()
	if ch == nil {
		return false
	}
	<-ch
	w.mu.Lock()
	defer w.mu.Unlock()
	return p.resolveOK
}

// drop takes p out of the in-sync set through Raft, then waits for the
// last lease it was granted to end (DESIGN.md Failures, I2, I3).
func (w *writer) drop(p *peer) {
	ok := false
	defer func() {
		w.mu.Lock()
		if ok {
			p.state = peerOut
		}
		p.resolveOK = ok
		close(p.resolved)
		w.mu.Unlock()
	}()
	// Nothing more is sent to it (it is dropping): what it has not
	// flushed is recorded before any write can go on without it.
	if err := p.spill(); err != nil {
		return // no record: writes waiting for it fail rather than go on
	}
	for attempt := 0; ; attempt++ {
		err := w.s.cfg.Control.DropInSync(p.name, w.epoch)
		if err == nil || isNotInSync(err) {
			break
		}
		w.log.Warn("dropping replica", "replica", p.name, "error", err)
		if !w.leaseOK() || w.ctx.Err() != nil {
			return // a writer that cannot commit the drop stops acknowledging
		}
		select {
		case <-w.ctx.Done():
			return
		case <-time.After(min(time.Duration(attempt+1)*50*time.Millisecond, time.Second)):
		}
	}
	w.mu.Lock()
	end := p.grantEnd
	w.mu.Unlock()
	if e := w.started.Add(w.s.cfg.Lease); w.handover && e.After(end) {
		// The previous writer released its epoch and may have granted
		// this replica a lease up to its own lease's end.
		end = e
	}
	// Clock rates differ a little between sites: wait 10% more.
	if wait := time.Until(end) + w.s.cfg.Lease/10; wait > 0 && !end.IsZero() {
		w.log.Info("waiting for the dropped replica's lease", "replica", p.name, "wait", wait)
		select {
		case <-w.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	w.log.Info("replica dropped", "replica", p.name)
	ok = true
}

// isNotInSync: a refusal saying the site is not in sync, i.e. already out.
func isNotInSync(err error) bool { return errors.Is(err, ErrNotInSync) }

// grant answers a replica's lease request: only an in-sync replica gets
// one, never past the writer's own lease (so a replica's lease cannot
// outlive the epoch that granted it).
func (w *writer) grant(p *peer, l *Link, req *Frame) {
	now := time.Now()
	w.mu.Lock()
	if p.state != peerInSync || w.closed || p.link != l {
		w.mu.Unlock()
		return
	}
	d := min(w.s.cfg.Lease, time.Until(w.leaseUntil()))
	if d < time.Millisecond {
		w.mu.Unlock()
		return
	}
	d = d.Truncate(time.Millisecond)
	if end := now.Add(d); end.After(p.grantEnd) {
		p.grantEnd = end
	}
	w.mu.Unlock()
	l.Grant(&Frame{Kind: FrameLease, Epoch: w.epoch, Seq: req.Seq, Length: uint32(d / time.Millisecond)})
}

// manage keeps one peer connected: at the start of the epoch it connects
// in-sync peers (dropping those it cannot reach), and it resyncs out of
// sync peers whenever they are reachable.
func (w *writer) manage(p *peer, stale bool) {
	// The bitmap was opened with the peer (startWriter, syncPeers).
	if p.dirty == nil {
		_, err := w.s.bitmap(p.name)
		w.log.Error("dirty bitmap", "replica", p.name, "error", err)
		w.mu.Lock()
		if p.state == peerInSync {
			// Without a record it must not be dropped: keep writes
			// waiting until an operator fixes the bitmap.
			p.state = peerDrop
			p.resolved = make(chan struct{})
			close(p.resolved)
		}
		w.mu.Unlock()
		return
	}
	// The bitmap is a true record only if this site kept it in every
	// epoch since: its own previous epoch, or this one; and never for a
	// site that joined meanwhile (a bitmap left from a member of that name
	// removed earlier says nothing about it).
	if e := p.dirty.Epoch(); p.fresh || e != w.epoch && e+1 != w.epoch {
		if err := p.dirty.SetFull(); err != nil {
			w.log.Error("dirty bitmap", "replica", p.name, "error", err)
		}
	}
	if err := p.dirty.SetEpoch(w.epoch); err != nil {
		w.log.Error("dirty bitmap", "replica", p.name, "error", err)
	}
	w.done.Add(1)
	p.wg.Add(1)
	go func() {
		defer w.done.Done()
		defer p.wg.Done()
		w.watchdog(p)
	}()
	w.mu.Lock()
	inSync := p.state == peerInSync
	w.mu.Unlock()
	record := false
	if inSync {
		// A peer in sync answers a new writer's hello within one round
		// trip; one that does not answer within a lease (a frozen or cut
		// off old writer, typically) is dropped and resynced later
		// rather than holding every write for replica_timeout.
		marks := p.dirty.Marks()
		diverged, err := w.connect(p, min(w.s.cfg.ReplicaTimeout, max(w.s.cfg.Lease, 200*time.Millisecond)))
		if err == nil {
			// What the last writer left unflushed there is unknown
			// here: one flush makes it stable, so that losing the peer
			// from now on costs only what this writer sent it.
			err = w.flushPeers([]*peer{p})[0]
		}
		if err == nil && !diverged && w.checkImage(p) != "" {
			// Not the image the cluster knows in sync (I8): whatever
			// this site's bitmap says, it describes another image.
			diverged = true
		}
		if err == nil && !diverged && !stale {
			// In sync and reachable: it has everything so far, unless
			// it failed meanwhile.
			if _, err := p.dirty.ClearIf(marks); err != nil {
				w.log.Error("dirty bitmap", "replica", p.name, "error", err)
			}
		}
		w.s.notify()
		// The first epoch's compare is for images the configuration
		// only declared in sync; one the state records was compared (or
		// kept in sync) by a writer already, and comparing it again when
		// this writer restarts in the same epoch (a lease that lapsed
		// under load) would take an in-sync site out of the set for a
		// full copy.
		recorded := w.recordedImage(p)
		w.mu.Lock()
		initial := w.epoch == 1 && !(w.empty && p.empty) && !recorded
		w.mu.Unlock()
		w.mu.Lock()
		fix := append(slices.Clone(w.carried), p.carried...)
		w.mu.Unlock()
		keep := err == nil && !initial && !diverged && !stale && len(fix) == 0
		if err == nil && !initial && !diverged && !stale && len(fix) > 0 {
			// A takeover with writes in flight: ranges applied at some
			// sites and not others. Copy this site's version of them.
			for _, a := range fix {
				if err := p.dirty.Mark(a.off, a.n); err != nil {
					w.log.Error("dirty bitmap", "replica", p.name, "error", err)
				}
			}
			w.log.Warn("takeover: resyncing ranges the last writer left uncommitted", "replica", p.name, "ranges", len(fix))
			w.failPeer(p, fmt.Errorf("%d ranges left uncommitted by the last writer", len(fix)))
			w.awaitDrop(p)
			err, initial, diverged, stale = nil, false, false, false
		}
		if err == nil && initial {
			// The cluster's first epoch: the configuration says every
			// data site is in sync, which is true only of images that
			// were never written. Others are compared, and the writer's
			// (the first data member's, raftlog) regions win.
			w.log.Warn("first epoch: comparing the replica's image with this writer's; differing regions are copied from here",
				"replica", p.name, "writer_image_empty", w.empty, "replica_image_empty", p.empty)
			diverged = true
		}
		if err == nil && (diverged || stale) {
			// This site or the peer may hold writes nobody acknowledged:
			// only a full compare makes them equal again (the SetFull
			// below, which logs a failure).
			err = fmt.Errorf("diverged (peer %v, here %v)", diverged, stale)
		}
		if err != nil {
			if err := p.dirty.SetFull(); err != nil {
				w.log.Error("dirty bitmap", "replica", p.name, "error", err)
			}
			w.failPeer(p, err)
			w.awaitDrop(p)
		}
		record = keep
	}
	if inSync {
		w.carriedDone()
	}
	if record {
		// Its image holds every write so far: its generation rises to
		// this epoch and the cluster records it (identity.go).
		w.recordImage(p)
	}
	backoff := 100 * time.Millisecond
	for p.ctx.Err() == nil {
		w.mu.Lock()
		st, gone := p.state, p.gone
		w.mu.Unlock()
		if gone && st != peerInSync && st != peerDrop {
			return // retire forgets it
		}
		if st == peerInSync {
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(max(w.s.cfg.ReplicaTimeout/8, 10*time.Millisecond)):
			}
			continue
		}
		if st == peerDrop {
			w.awaitDrop(p)
			w.mu.Lock()
			if p.state == peerDrop {
				w.mu.Unlock()
				return // the drop did not commit: this writer is done
			}
			w.mu.Unlock()
			continue
		}
		if err := w.resync(p); err != nil {
			if p.ctx.Err() != nil {
				return
			}
			w.log.Debug("resync", "replica", p.name, "error", err)
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// watchdog checks a peer's link until the writer ends: an in-sync peer
// whose link failed, or that has not answered for replica_timeout, is
// dropped; a syncing one that stopped answering has its link closed
// (the resync fails and starts again later).
func (w *writer) watchdog(p *peer) {
	t := time.NewTicker(max(w.s.cfg.ReplicaTimeout/8, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		st, l := p.state, p.link
		w.mu.Unlock()
		if l == nil || (st != peerInSync && st != peerSyncing) {
			continue
		}
		err := l.Err()
		if o := l.Oldest(); err == nil && !o.IsZero() && time.Since(o) > w.s.cfg.ReplicaTimeout {
			err = fmt.Errorf("no answer for %v", time.Since(o).Truncate(time.Millisecond))
		}
		if err == nil {
			continue
		}
		if st == peerInSync {
			w.failPeer(p, err)
		} else {
			l.fail(fmt.Errorf("%w: %v", ErrLinkDown, err))
		}
	}
}

// connect opens the stream to p and registers its link. It reports
// whether p says it has diverged.
func (w *writer) connect(p *peer, timeout time.Duration) (diverged bool, err error) {
	defer func() {
		w.mu.Lock()
		p.lastErr = ""
		if err != nil {
			p.lastErr = err.Error()
		}
		w.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	conn, err := w.s.cfg.Dial(ctx, p.name, p.addr)
	if err != nil {
		return false, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	if err := WriteFrame(conn, &Frame{Kind: FrameHello, Epoch: w.epoch, From: w.s.cfg.Name, Offset: w.s.cfg.Store.Size()}); err != nil {
		conn.Close()
		return false, err
	}
	ack, err := ReadFrame(br, MaxHelloAckLen)
	if err != nil {
		conn.Close()
		return false, err
	}
	conn.SetDeadline(time.Time{})
	if ack.Kind != FrameHelloAck || ack.Err != "" {
		conn.Close()
		return false, fmt.Errorf("refused: %s", ack.Err)
	}
	if size := w.s.cfg.Store.Size(); ack.Offset != 0 && ack.Offset != size {
		conn.Close()
		return false, fmt.Errorf("%w: %s's LU has %d bytes, this writer's %d", ErrSizeMismatch, p.name, ack.Offset, size)
	}
	l := NewLink(conn, br, func(l *Link, req *Frame) { w.grant(p, l, req) }, func(err error, lost []pendingFrame) { w.linkDown(p, err, lost) })
	w.mu.Lock()
	if w.closed || p.gone && p.state != peerInSync {
		w.mu.Unlock()
		l.Close()
		return false, errNotWriter
	}
	p.link = l
	w.mu.Unlock()
	w.mu.Lock()
	p.empty = ack.Flags&FlagEmpty != 0
	p.carried = decodeRanges(ack.Data)
	p.image = ack.Image
	w.mu.Unlock()
	return ack.Flags&FlagDiverged != 0, nil
}

// linkDown records what a syncing peer lost; an in-sync one is dropped
// by the writes that waited for it (or by watch).
//
// It may run with w.mu held (a failed Send), so it takes no writer lock;
// marking an in-sync peer's lost frames too is harmless.
func (w *writer) linkDown(p *peer, err error, lost []pendingFrame) {
	for _, f := range lost {
		if f.refused && f.kind == FrameFlush {
			// The replica's flush failed: whatever it held unflushed
			// may be gone, and only it knows where. Compare everything.
			w.log.Error("replica's flush failed; it will be compared in full", "replica", p.name, "error", err)
			if err := p.dirty.SetFull(); err != nil {
				w.log.Error("dirty bitmap", "replica", p.name, "error", err)
			}
			continue
		}
		if f.refused && f.n > 0 {
			w.log.Error("replica failed to apply a write; its range is dirty for it", "replica", p.name,
				"offset", f.off, "bytes", f.n, "error", err)
		}
		if err := p.dirty.Mark(f.off, f.n); err != nil {
			w.log.Error("dirty bitmap", "replica", p.name, "error", err)
		}
	}
	// What it acknowledged unflushed is as good as lost if it lost
	// power; recorded now, a crash of this writer cannot forget it.
	p.spill()
	w.s.notify()
}

// resyncRegionHook, when set (tests only), runs in resync before each
// region's turn, with no lock held: it lets a test order a write exactly
// as the cursor reaches a region.
var resyncRegionHook atomic.Pointer[func(peer string, r int)]

// resync brings an out-of-sync peer back (DESIGN.md Failures): a copy
// cursor walks the regions; writes behind it are mirrored, writes ahead
// are only marked and copied when the cursor passes. Without a bitmap
// (full), each region's digest is compared first and only different ones
// are copied. At the end the peer joins the in-sync set through Raft.
func (w *writer) resync(p *peer) error {
	// Writes sent on a link that had already failed (Send answers with
	// the error, linkDown ran before) are in the set, not yet on disk.
	if err := p.spill(); err != nil {
		return err
	}
	diverged, err := w.connect(p, w.s.cfg.ReplicaTimeout)
	if err != nil {
		return err
	}
	b := p.dirty
	if why := w.checkImage(p); (diverged && !b.Full()) || why != "" {
		// The bitmap describes the image this site had, not this one
		// (I8), or the peer knows its image differs where no record here
		// says (it may hold writes nobody acknowledged, a failed
		// write-back there): compare everything.
		w.log.Warn("resync: the replica's image is not the one the bitmap describes; comparing everything", "replica", p.name, "diverged", diverged, "image", why)
		if err := b.SetFull(); err != nil {
			w.mu.Lock()
			if p.link != nil {
				go p.link.Close()
			}
			w.mu.Unlock()
			return fmt.Errorf("dirty bitmap: %w", err)
		}
	}
	full := b.Full()
	region := b.RegionSize()
	size := w.s.cfg.Store.Size()
	w.mu.Lock()
	if p.gone {
		w.mu.Unlock()
		return errRemoved
	}
	p.state, p.cursor = peerSyncing, 0
	p.resync = resyncProgress{Total: b.Regions(), Started: time.Now()}
	w.mu.Unlock()
	w.log.Info("resync: starting", "replica", p.name, "full_compare", full, "dirty_regions", b.Dirty(), "regions", b.Regions())
	// The shared record first; changes to it from now on reach the
	// replica in the stream.
	if err := w.sendMeta(); err != nil {
		w.mu.Lock()
		if p.state == peerSyncing {
			p.state = peerOut
			if p.link != nil {
				go p.link.Close()
			}
		}
		w.mu.Unlock()
		return err
	}
	fail := func(err error) error {
		w.mu.Lock()
		if p.state == peerSyncing {
			p.state = peerOut
			if p.link != nil {
				go p.link.Close()
			}
		}
		w.mu.Unlock()
		return err
	}
	var lim *rate.Limiter
	if bw := w.s.cfg.ResyncBandwidth; bw > 0 {
		lim = rate.NewLimiter(rate.Limit(bw), int(max(bw, region)))
	}
	// A window of regions in flight keeps the link busy over a WAN.
	type inflight struct {
		r   int
		ch  <-chan Ack
		sum bool
	}
	window := make(chan inflight, 16)
	errc := make(chan error, 1)
	go func() {
		for f := range window {
			a := <-f.ch
			if a.Err != nil {
				errc <- a.Err
				for range window {
				}
				return
			}
			if f.sum && a.Differ {
				if err := w.copyRegion(p, f.r, region, size); err != nil {
					errc <- err
					for range window {
					}
					return
				}
			}
			w.mu.Lock()
			p.resync.Done++
			w.mu.Unlock()
		}
		errc <- nil
	}()
	buf := make([]byte, region)
	var sendErr error
	for r := 0; r < b.Regions() && sendErr == nil; r++ {
		off := int64(r) * region
		n := min(region, size-off)
		if h := resyncRegionHook.Load(); h != nil {
			(*h)(p.name, r)
		}
		// Tested under w.mu, where order marks writes at or ahead of the
		// cursor: a write into region r either is marked before this
		// test (and r is copied) or finds the cursor past r (and is sent
		// to p). Tested before taking w.mu, a write could be marked in
		// between, and the cursor then passed r without copying it: p
		// would join the in-sync set without that write (I4).
		w.mu.Lock()
		if !full && !b.Test(r) {
			p.cursor = off + n
			p.resync.Done++
			w.mu.Unlock()
			continue
		}
		w.mu.Unlock()
		if lim != nil {
			if err := lim.WaitN(p.ctx, int(n)); err != nil {
				sendErr = err
				break
			}
		}
		w.mu.Lock()
		if p.state != peerSyncing || w.closed {
			w.mu.Unlock()
			sendErr = errNotWriter
			break
		}
		if err := p.link.Err(); err != nil {
			w.mu.Unlock()
			sendErr = err
			break
		}
		if err := w.s.cfg.Store.ReadAt(buf[:n], off); err != nil {
			w.mu.Unlock()
			sendErr = err
			break
		}
		w.seq++
		f := &Frame{Epoch: w.epoch, Seq: w.seq, Offset: off, Length: uint32(n)}
		if full {
			sum := sha256.Sum256(buf[:n])
			f.Kind, f.Data = FrameSum, sum[:]
		} else {
			f.Kind, f.Data, f.CRC = FrameWrite, buf[:n], Checksum(buf[:n])
			p.resync.Copied++
		}
		ch := p.link.Send(f)
		p.cursor = off + n
		w.mu.Unlock()
		window <- inflight{r, ch, full}
	}
	close(window)
	if err := <-errc; err != nil || sendErr != nil {
		return fail(errors.Join(err, sendErr))
	}
	// Everything is behind the cursor now. From here every write waits
	// for the peer, before the cluster hears that it is in sync, so no
	// acknowledged write can miss it once it is (I1).
	w.mu.Lock()
	if p.state != peerSyncing || w.closed {
		w.mu.Unlock()
		return fail(errNotWriter)
	}
	p.state = peerInSync
	// From here on its misses are new ones (a failure after this pass):
	// the bitmap is cleared only if none was recorded.
	marks := b.Marks()
	w.seq++
	synced := &Frame{Kind: FrameFlush, Epoch: w.epoch, Seq: w.seq, Flags: FlagSynced}
	ch := p.link.Send(synced)
	w.track(p, synced, true)
	w.mu.Unlock()
	if a := <-ch; a.Err != nil {
		w.failPeer(p, a.Err)
		return a.Err
	}
	p.unfl.flushed(synced.Seq)
	if err := w.addInSync(p); err != nil && !errors.Is(err, ErrAlreadyInSync) {
		w.failPeer(p, fmt.Errorf("joining the in-sync set: %w", err))
		return err
	}
	if _, err := b.ClearIf(marks); err != nil {
		w.log.Error("clearing dirty bitmap", "replica", p.name, "error", err)
	}
	w.mu.Lock()
	pr := p.resync
	w.mu.Unlock()
	w.log.Info("resync: done, replica in sync", "replica", p.name, "regions_copied", pr.Copied, "took", time.Since(pr.Started).Truncate(time.Millisecond))
	return nil
}

// copyRegion sends region r's current bytes to p in the write order.
func (w *writer) copyRegion(p *peer, r int, region, size int64) error {
	off := int64(r) * region
	n := min(region, size-off)
	buf := make([]byte, n)
	w.mu.Lock()
	if p.link == nil || w.closed {
		w.mu.Unlock()
		return errNotWriter
	}
	if err := w.s.cfg.Store.ReadAt(buf, off); err != nil {
		w.mu.Unlock()
		return err
	}
	w.seq++
	ch := p.link.Send(&Frame{Kind: FrameWrite, Epoch: w.epoch, Seq: w.seq, Offset: off, Length: uint32(n), Data: buf, CRC: Checksum(buf)})
	p.resync.Copied++
	w.mu.Unlock()
	// Waiting here keeps at most one copy in flight per compared window
	// slot; the ack also proves the region arrived.
	return (<-ch).Err
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
	c := w.seq
	if len(w.unsettled) > 0 {
		c = w.unsettled[0] - 1
	}
	for _, p := range w.peers {
		if p.link != nil {
			links = append(links, p.link)
			if p.state == peerInSync || p.state == peerSyncing {
				live = append(live, p.link)
			}
		}
	}
	tainted := w.tainted
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
	if !tainted {
		w.s.clearMarker()
	}
	w.log.Info("writer: stopped", "clean", !tainted)
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

// markerPath is the file that says "this site was the writer and may hold
// writes that no replica acknowledged".
func (s *Site) markerPath() string { return filepath.Join(s.cfg.Dir, "writer.marker") }

func (s *Site) setMarker() error {
	err := writeFileSync(s.markerPath(), []byte("metrolun writer marker\n"))
	if err == nil {
		err = syncDir(s.cfg.Dir)
	}
	if err != nil {
		s.log.Error("writing the writer marker; this writer acknowledges nothing", "error", err)
	}
	return err
}

func (s *Site) clearMarker() {
	s.markerStale.Store(false)
	err := os.Remove(s.markerPath())
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if err == nil {
		err = syncDir(s.cfg.Dir)
	}
	if err != nil {
		// Left in place, the marker only costs a full compare later.
		s.log.Warn("removing the writer marker", "error", err)
	}
}

// writeFileSync writes a small file and makes it durable.
func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// forgetBitmap closes and deletes the dirty bitmap of a peer that left
// the cluster.
func (s *Site) forgetBitmap(peer string) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if b := s.bitmaps[peer]; b != nil {
		b.Close()
		delete(s.bitmaps, peer)
	}
	if err := os.Remove(s.bitmapPath(peer)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("removing the dirty bitmap of a removed site", "replica", peer, "error", err)
	}
	if err := syncDir(s.cfg.Dir); err != nil {
		s.log.Warn("syncing the data directory", "error", err)
	}
}

func (s *Site) bitmapPath(peer string) string {
	return filepath.Join(s.cfg.Dir, "dirty-"+peer+".bitmap")
}

// bitmap opens the dirty bitmap this site keeps for peer; a new one is
// full (this writer does not know what the peer has).
func (s *Site) bitmap(peer string) (*Bitmap, error) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if b := s.bitmaps[peer]; b != nil {
		return b, nil
	}
	b, err := OpenBitmap(s.bitmapPath(peer), s.cfg.Store.Size(), s.cfg.RegionSize, true)
	if err != nil {
		return nil, err
	}
	s.bitmaps[peer] = b
	return b, nil
}
