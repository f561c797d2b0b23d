package replica

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/metrolun/metrolun/replica/core"
	"golang.org/x/time/rate"
)

// Resync (DESIGN.md Failures): a copy cursor brings an out-of-sync
// replica back while writes go on.

type resyncProgress struct {
	Done, Total int // regions
	Copied      int // regions that were sent (differed or dirty)
	Started     time.Time
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
	if !w.c.StartSync(p.id) {
		w.mu.Unlock()
		return errNotWriter
	}
	p.resync = resyncProgress{Total: b.Regions(), Started: time.Now()}
	w.mu.Unlock()
	w.log.Info("resync: starting", "replica", p.name, "full_compare", full, "dirty_regions", b.Dirty(), "regions", b.Regions())
	// The shared record first; changes to it from now on reach the
	// replica in the stream.
	if err := w.sendMeta(); err != nil {
		w.mu.Lock()
		if w.c.SyncFailed(p.id) {
			if p.link != nil {
				go p.link.Close()
			}
		}
		w.mu.Unlock()
		return err
	}
	fail := func(err error) error {
		w.mu.Lock()
		if w.c.SyncFailed(p.id) {
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
			w.c.SetCursor(p.id, off+n)
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
		if w.st(p) != core.Syncing || w.closed {
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
		f := &Frame{Epoch: w.epoch, Seq: w.c.NextSeq(), Offset: off, Length: uint32(n)}
		if full {
			sum := sha256.Sum256(buf[:n])
			f.Kind, f.Data = FrameSum, sum[:]
		} else {
			f.Kind, f.Data, f.CRC = FrameWrite, buf[:n], Checksum(buf[:n])
			p.resync.Copied++
		}
		ch := p.link.Send(f)
		w.c.SetCursor(p.id, off+n)
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
	if w.closed || !w.c.SyncDone(p.id) {
		w.mu.Unlock()
		return fail(errNotWriter)
	}
	// From here on its misses are new ones (a failure after this pass):
	// the bitmap is cleared only if none was recorded.
	marks := b.Marks()
	synced := &Frame{Kind: FrameFlush, Epoch: w.epoch, Seq: w.c.NextSeq(), Flags: FlagSynced}
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
	ch := p.link.Send(&Frame{Kind: FrameWrite, Epoch: w.epoch, Seq: w.c.NextSeq(), Offset: off, Length: uint32(n), Data: buf, CRC: Checksum(buf)})
	p.resync.Copied++
	w.mu.Unlock()
	// Waiting here keeps at most one copy in flight per compared window
	// slot; the ack also proves the region arrived.
	return (<-ch).Err
}
