package replica

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/metrolun/metrolun/replica/core"
)

// SiteStatus is what `metrolun status` shows about a site's volume.
type SiteStatus struct {
	Name  string `json:"name"`
	Role  string `json:"role"` // writer, replica or none
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
	Lease string `json:"lease_left,omitempty"`
	Stale bool   `json:"diverged,omitempty"`
	// LostRegions: 64 KiB regions whose reads fail here (MEDIUM ERROR)
	// because a write-back failed here or at the writer that resynced
	// this site, until they are rewritten; LostRanges lists the first
	// ones as byte ranges [from, to).
	LostRegions int           `json:"lost_regions,omitempty"`
	LostRanges  [][2]int64    `json:"lost_ranges,omitempty"`
	Peers       []PeerStatus  `json:"peers,omitempty"` // at the writer
	Verify      *VerifyStatus `json:"verify,omitempty"`
}

// PeerStatus is one replica as the writer sees it.
type PeerStatus struct {
	Name         string `json:"name"`
	State        string `json:"state"`
	Connected    bool   `json:"connected"`
	LagFrames    int    `json:"lag_frames"`
	LagBytes     int64  `json:"lag_bytes"`
	DirtyRegions int    `json:"dirty_regions"`
	// UnflushedRegions: regions it acknowledged and has not yet been
	// asked to flush, which a power loss there would add to the dirty
	// ones.
	UnflushedRegions int     `json:"unflushed_regions,omitempty"`
	ResyncDone       int     `json:"resync_done,omitempty"`
	ResyncTotal      int     `json:"resync_total,omitempty"`
	ResyncPct        float64 `json:"resync_percent,omitempty"`
	// Error is why the last connection attempt failed ("" once one
	// succeeds): an unreachable site, a refusal such as different LU
	// sizes.
	Error string `json:"error,omitempty"`
}

// Status returns a snapshot of the site.
func (s *Site) Status() SiteStatus {
	st := SiteStatus{Name: s.cfg.Name, Role: "none"}
	st.Epoch, st.Seq = s.recv.Applied()
	s.mu.Lock()
	st.Stale = s.markerStale.Load()
	st.LostRanges, st.LostRegions = s.cfg.Store.LostRanges(16)
	if s.verify != nil {
		v := *s.verify
		st.Verify = &v
	}
	s.mu.Unlock()
	if ok, end := s.recv.leaseValid(time.Now()); ok {
		st.Role = "replica"
		st.Lease = time.Until(end).Truncate(time.Millisecond).String()
	}
	w := s.activeWriter()
	if w == nil {
		return st
	}
	st.Role = "writer"
	_, until := s.cfg.Control.WriterLease()
	st.Lease = time.Until(until).Truncate(time.Millisecond).String()
	w.mu.Lock()
	st.Epoch, st.Seq = w.epoch, w.c.Seq()
	type snap struct {
		p  PeerStatus
		l  *Link
		bm *Bitmap
	}
	var ps []snap
	for _, p := range w.peers {
		x := snap{p: PeerStatus{Name: p.name, State: w.st(p).String(), Error: p.lastErr, UnflushedRegions: p.unfl.regions()}, l: p.link, bm: p.dirty}
		if w.st(p) == core.Syncing {
			x.p.ResyncDone, x.p.ResyncTotal = p.resync.Done, p.resync.Total
			if p.resync.Total > 0 {
				x.p.ResyncPct = float64(100*p.resync.Done) / float64(p.resync.Total)
			}
		}
		ps = append(ps, x)
	}
	w.mu.Unlock()
	for _, x := range ps {
		if x.l != nil && x.l.Err() == nil {
			x.p.Connected = true
			x.p.LagFrames, x.p.LagBytes = x.l.Pending()
		}
		if x.bm != nil {
			x.p.DirtyRegions = x.bm.Dirty()
		}
		st.Peers = append(st.Peers, x.p)
	}
	return st
}

// VerifyStatus is the progress and outcome of an online verify.
type VerifyStatus struct {
	Running bool               `json:"running"`
	Started time.Time          `json:"started"`
	Done    int                `json:"regions_done"`
	Total   int                `json:"regions_total"`
	Differ  map[string][]int64 `json:"differ,omitempty"` // replica -> byte offsets of differing regions
	// Lost: byte offsets of regions not compared because part of them is
	// lost at the writer (status lost_ranges; they read as lost at the
	// replicas too).
	Lost     []int64  `json:"lost,omitempty"`
	Region   int64    `json:"region_bytes"`
	Error    string   `json:"error,omitempty"`
	Replicas []string `json:"replicas"`
}

// Verify compares every in-sync replica with this site (the writer),
// region by region, without stopping I/O: each region's digest goes down
// the stream in the write order, so each replica compares the same
// version of the region. bandwidth caps the bytes read per second (0: no
// cap). It returns the report; Status shows progress meanwhile.
func (s *Site) Verify(ctx context.Context, bandwidth int64) (VerifyStatus, error) {
	w := s.activeWriter()
	if w == nil {
		return VerifyStatus{}, errors.New("verify runs at the writer")
	}
	region := s.cfg.RegionSize
	size := s.cfg.Store.Size()
	total := int((size + region - 1) / region)
	vs := &VerifyStatus{Running: true, Started: time.Now(), Total: total, Region: region, Differ: map[string][]int64{}}
	s.mu.Lock()
	if s.verify != nil && s.verify.Running {
		s.mu.Unlock()
		return VerifyStatus{}, errors.New("a verify is running already")
	}
	s.verify = vs
	s.mu.Unlock()
	var lim *rate.Limiter
	if bandwidth > 0 {
		lim = rate.NewLimiter(rate.Limit(bandwidth), int(max(bandwidth, region)))
	}
	type sent struct {
		off  int64
		acks map[string]<-chan Ack
	}
	window := make(chan sent, 16)
	errc := make(chan error, 1)
	go func() {
		var first error
		for x := range window {
			for name, ch := range x.acks {
				a := <-ch
				if a.Err != nil && first == nil {
					first = fmt.Errorf("replica %s: %w", name, a.Err)
				}
				if a.Err == nil && a.Differ {
					s.mu.Lock()
					vs.Differ[name] = append(vs.Differ[name], x.off)
					s.mu.Unlock()
				}
			}
			s.mu.Lock()
			vs.Done++
			s.mu.Unlock()
		}
		errc <- first
	}()
	buf := make([]byte, region)
	var sendErr error
	for r := 0; r < total; r++ {
		off := int64(r) * region
		n := min(region, size-off)
		if lim != nil {
			if sendErr = lim.WaitN(ctx, int(n)); sendErr != nil {
				break
			}
		}
		if sendErr = ctx.Err(); sendErr != nil {
			break
		}
		w.mu.Lock()
		if w.closed || !w.ready() {
			w.mu.Unlock()
			sendErr = errNotWriter
			break
		}
		if sendErr = s.cfg.Store.ReadAt(buf[:n], off); sendErr != nil {
			w.mu.Unlock()
			if errors.As(sendErr, new(*LostError)) {
				// Nothing here to compare with: the region's last bytes
				// exist nowhere (or only at a replica the resync marked
				// lost as well).
				sendErr = nil
				s.mu.Lock()
				vs.Lost = append(vs.Lost, off)
				vs.Done++
				s.mu.Unlock()
				continue
			}
			break
		}
		sum := sha256.Sum256(buf[:n])
		f := &Frame{Kind: FrameSum, Epoch: w.epoch, Seq: w.c.NextSeq(), Offset: off, Length: uint32(n), Data: sum[:]}
		x := sent{off: off, acks: map[string]<-chan Ack{}}
		var names []string
		for _, p := range w.peers {
			if w.st(p) == core.InSync {
				x.acks[p.name] = p.link.Send(f)
				names = append(names, p.name)
			} else if w.st(p) == core.Syncing {
				// Keep the syncing peer's sequence unbroken; its answer
				// does not count.
				p.link.Send(f)
			}
		}
		w.mu.Unlock()
		if r == 0 {
			s.mu.Lock()
			vs.Replicas = names
			s.mu.Unlock()
		}
		window <- x
	}
	close(window)
	err := errors.Join(<-errc, sendErr)
	s.mu.Lock()
	vs.Running = false
	if err != nil {
		vs.Error = err.Error()
	}
	out := *vs
	s.mu.Unlock()
	return out, err
}
