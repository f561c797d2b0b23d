package replica

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/metrolun/metrolun/internal/grid"
	"github.com/metrolun/metrolun/replica/core"
)

// The writer's replicas: connecting them, dropping one that fails
// (through Raft, then waiting out its lease), granting read leases, and
// following the cluster's data sites.

// Peer states, as the writer sees them: core.PeerState's names (status
// reports them).
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

	// id is its name in the writer's core, which holds its state, copy
	// cursor and lease grants (replica/core).
	id core.PeerID

	// Guarded by w.mu.
	link      *Link
	resolved  chan struct{} // dropping: closed when the drop is settled
	resolveOK bool
	resync    resyncProgress
	// gone: the peer left the cluster; the writer drops it if it is in
	// sync and then forgets it (retire).
	gone bool

	// Acknowledgements of the operations it forwarded (originAcks):
	// queued under omu; orunning says its goroutine runs, osig wakes it.
	omu      sync.Mutex
	oq       []originWait
	orunning bool
	osig     chan struct{}

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
	p := &peer{w: w, name: name, addr: addr, unfl: newUnflushed(w.s.cfg.Store.Size(), w.s.cfg.RegionSize)}
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
		p.id = w.c.AddPeer(n, core.Out)
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
		st := w.st(p)
		if st != core.InSync && st != core.Dropping {
			// Out of sync or resyncing: it holds no lease from this
			// writer, and no write waits for it.
			w.peers = slices.DeleteFunc(w.peers, func(x *peer) bool { return x == p })
			w.c.RemovePeer(p.id)
			l := p.link
			w.mu.Unlock()
			p.cancel()
			if l != nil {
				l.Close()
			}
			break
		}
		w.mu.Unlock()
		if st == core.InSync {
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

// st is p's state (w.mu held).
func (w *writer) st(p *peer) core.PeerState { return w.c.State(p.id) }

// failPeer starts dropping an in-sync peer whose link failed.
func (w *writer) failPeer(p *peer, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.c.Fail(p.id) {
		return
	}
	w.dropStarted(p, err)
	w.step()
}

// dropStarted acts on the core's decision to drop p (w.mu held): its link
// closes and the drop is proposed through Raft.
func (w *writer) dropStarted(p *peer, err error) {
	if w.closed {
		// A stopping writer closes its own links; nothing is proposed
		// (below), so saying "dropping" would mislead whoever reads
		// the log of a planned move.
		w.log.Debug("replica link ended while the writer stops", "replica", p.name, "error", err)
	} else {
		w.log.Warn("replica failed; dropping it from the in-sync set", "replica", p.name, "error", err)
	}
	p.resolved = make(chan struct{})
	p.resolveOK = false
	if p.link != nil {
		go p.link.Close()
	}
	if w.closed {
		// Stopping: no new goroutines once stop may be waiting for them
		// (a write still in flight then fails, as the writer's do).
		w.c.DropFailed(p.id)
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
		if !ok {
			w.c.DropFailed(p.id)
		}
		p.resolveOK = ok
		close(p.resolved)
		w.step()
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
	// The core says until when the last lease granted to it (or, after
	// a planned move, by the previous writer) may run, with a tenth of a
	// lease for clock rates, and resolves the drop only past it.
	w.mu.Lock()
	end := w.c.DropCommitted(p.id)
	w.mu.Unlock()
	if wait := time.Until(end); wait > 0 {
		w.log.Info("waiting for the dropped replica's lease", "replica", p.name, "wait", wait)
	}
	for {
		w.mu.Lock()
		ok = w.c.DropExpired(p.id)
		w.mu.Unlock()
		if ok {
			break
		}
		select {
		case <-w.ctx.Done():
			return
		case <-time.After(max(time.Until(end), time.Millisecond)):
		}
	}
	w.log.Info("replica dropped", "replica", p.name)
}

// isNotInSync: a refusal saying the site is not in sync, i.e. already out.
func isNotInSync(err error) bool { return errors.Is(err, ErrNotInSync) }

// grant answers a replica's lease request: only an in-sync replica gets
// one, never past the writer's own lease (so a replica's lease cannot
// outlive the epoch that granted it).
func (w *writer) grant(p *peer, l *Link, req *Frame) {
	w.mu.Lock()
	if w.closed || p.link != l {
		w.mu.Unlock()
		return
	}
	// The core records the grant's end: a drop waits it out.
	d, ok := w.c.Grant(p.id)
	w.mu.Unlock()
	if !ok {
		return
	}
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
		if w.c.Fail(p.id) {
			// Without a record it must not be dropped: keep writes
			// waiting until an operator fixes the bitmap.
			w.c.DropFailed(p.id)
			p.resolved = make(chan struct{})
			close(p.resolved)
			w.step()
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
	inSync := w.st(p) == core.InSync
	w.mu.Unlock()
	record := false
	if inSync {
		// A peer in sync answers a new writer's hello within one round
		// trip; one that does not answer within a lease (a frozen or cut
		// off old writer, typically) is dropped and resynced later
		// rather than holding every write for replica_timeout.
		stale0 := stale
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
		if err == nil && !diverged && stale && (w.s.powerLost.Load() || w.s.cfg.Store.Lost() > 0) {
			// This host restarted since it was the writer, or this
			// site's store lost a write-back before it stopped
			// (LocalFile.PersistLost): its own unflushed writes are gone,
			// and p, in sync, holds every acknowledged one. p's bytes
			// must win, not this site's (nor may a resync from here mark
			// p's good copy lost): p becomes the writer and compares
			// this site in full.
			w.mu.Lock()
			w.handOverAfterPowerLoss(p)
			w.mu.Unlock()
			stale = false
		}
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
		if stale0 {
			// Compared in full from now on (or, after a power loss,
			// the writer role handed to it): this peer no longer needs
			// the marker.
			w.mu.Lock()
			w.staleLeft--
			w.mu.Unlock()
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
		st, gone := w.st(p), p.gone
		w.mu.Unlock()
		if gone && st != core.InSync && st != core.Dropping {
			return // retire forgets it
		}
		if st == core.InSync {
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(grid.Until(w.s.cfg.ReplicaTimeout / 8)):
			}
			continue
		}
		if st == core.Dropping {
			w.awaitDrop(p)
			w.mu.Lock()
			if w.st(p) == core.Dropping {
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
// (the resync fails and starts again later). It ticks on the process's
// grid (internal/grid).
func (w *writer) watchdog(p *peer) {
	t := grid.NewTicker(w.s.cfg.ReplicaTimeout / 8)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		st, l := w.st(p), p.link
		w.mu.Unlock()
		if l == nil || (st != core.InSync && st != core.Syncing) {
			continue
		}
		err := l.Err()
		if o := l.Oldest(); err == nil && !o.IsZero() && time.Since(o) > w.s.cfg.ReplicaTimeout {
			err = fmt.Errorf("no answer for %v", time.Since(o).Truncate(time.Millisecond))
		}
		if err == nil {
			continue
		}
		if st == core.InSync {
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
	if w.closed || p.gone && w.st(p) != core.InSync {
		w.mu.Unlock()
		l.Close()
		return false, errNotWriter
	}
	p.link = l
	w.c.Connected(p.id, true)
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
