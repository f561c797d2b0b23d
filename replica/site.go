package replica

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/semaphore"

	"github.com/metrolun/metrolun/target"
)

// View is the committed cluster state a site acts on (raftlog owns it).
type View struct {
	Epoch  uint64
	Writer string
	InSync []string
	// Fenced are the sites an operator fenced off (raftlog/fence.go): a
	// fenced site acts as if it were lost (see fenced).
	Fenced []string
	// Peers are the data sites of the cluster (this one may be among
	// them) with their replication addresses ("" if unknown), members
	// being removed left out. The writer resyncs a site that appears here
	// and then puts it in sync; it drops (waiting out its lease) and
	// forgets one that disappears. nil: the cluster does not say, and
	// SiteConfig.Peers is the set.
	Peers map[string]string
	// Handover: the previous writer released its epoch (a planned
	// move), so nobody waited out the read leases it granted; this
	// writer does, for a replica it drops early in its epoch.
	Handover bool
}

// Control is what a site needs from the cluster: the committed view,
// this site's writer lease, and the two in-sync changes a writer makes.
// raftlog implements it (through a small adapter in cmd); tests use a
// fake.
type Control interface {
	View() View
	// Changed returns a channel closed at the next change of View or of
	// the writer lease.
	Changed() <-chan struct{}
	// WriterLease says until when this site may act as writer of epoch
	// (zero values: it may not).
	WriterLease() (epoch uint64, until time.Time)
	// DropInSync and AddInSync change the in-sync set in the writer's
	// epoch. A site already out (in) is refused with an error that Is
	// ErrNotInSync (ErrAlreadyInSync).
	DropInSync(name string, epoch uint64) error
	AddInSync(name string, epoch uint64) error
}

// SiteConfig configures one data site's mirrored volume.
type SiteConfig struct {
	Name  string
	Store *LocalFile
	// Dir holds the dirty bitmaps and the writer marker.
	Dir string
	// Peers maps every other data site to the replication address this
	// site dials (which may be a proxy). It is where the site starts; the
	// cluster's View.Peers then says which sites there are, and gives the
	// address of those Peers does not list.
	Peers   map[string]string
	Control Control
	// Lease is the read lease a writer grants (at most its own).
	Lease time.Duration
	// ReplicaTimeout: an in-sync replica that does not answer for this
	// long is dropped.
	ReplicaTimeout time.Duration
	// Hold is how long an operation waits for a writer or a lease before
	// it fails with NOT READY; default ReplicaTimeout + 2*Lease.
	Hold time.Duration
	// ResyncBandwidth caps resync traffic in bytes/s; 0: no cap.
	ResyncBandwidth int64
	// PDL: once this site has lost the cluster (State would say
	// transitioning) after having served since it started, it reports
	// its volume lost (Lost, target.DeviceLoss) rather than
	// transitioning: the answer VMware ESXi takes for a permanent
	// device loss (conf's quorum_loss = "pdl").
	PDL bool
	// RegionSize is the bytes per dirty-bitmap bit; default 1 MiB.
	RegionSize int64
	// Dial opens a connection to the data site name at addr (TLS when
	// configured: the server must prove it is name, whatever addr is, as
	// addr may be a proxy); default plain TCP.
	Dial func(ctx context.Context, name, addr string) (net.Conn, error)
	// Authenticate says whether the other end of an accepted replication
	// connection proved to be the data site from, which its hello names
	// (with TLS: a member certificate that names from and does not state
	// another role). It runs before anything in the hello is acted on.
	// nil: names are taken on trust (plain TCP, which the config must ask
	// for explicitly).
	Authenticate func(c net.Conn, from string) error
	// BootID names this boot of the host (statefiles.go); default the
	// kernel's /proc/sys/kernel/random/boot_id.
	BootID func() string
	Logger hclog.Logger
}

// Site is one data site's view of the mirrored LUN. It implements
// target.Volume: at the writer, writes are ordered and mirrored; at any
// other in-sync site they are forwarded; reads are local under a lease.
type Site struct {
	cfg SiteConfig
	log hclog.Logger

	recv *receiver
	fwd  *forwarder
	meta *metaStore // the shared record (meta.go)

	bmu     sync.Mutex
	bitmaps map[string]*Bitmap

	mu          sync.Mutex
	w           *writer
	view        View
	changed     chan struct{} // closed and replaced on every change
	closing     chan struct{}
	markerStale atomic.Bool
	// powerLost: the writer marker is from another boot of this host
	// (statefiles.go): this site's own unflushed writes are gone.
	powerLost atomic.Bool
	// servedAt is when State last found this site able to serve (a
	// writer with its lease, or a replica with a read lease), in Unix
	// nanoseconds; the site's start at first.
	servedAt atomic.Int64
	// served: State has found this site able to serve since it started.
	served atomic.Bool
	// lost: what Lost last answered (to log its changes).
	lost      atomic.Bool
	listeners []net.Listener
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
	verify    *VerifyStatus
	warned    map[string]time.Time // refused peers logged lately (refused)
	// peerMem: each data site's share of FrameMemory (bodyGuard), by
	// name, *semaphore.Weighted.
	peerMem sync.Map
}

// bodyGuard bounds the large bodies a connection from the data site peer
// (a known name: the map stays as small as the cluster) may hold.
func (s *Site) bodyGuard(c net.Conn, peer string) *bodyGuard {
	sem, _ := s.peerMem.LoadOrStore(peer, semaphore.NewWeighted(int64(classSize(topClass))))
	return &bodyGuard{conn: c, timeout: s.cfg.ReplicaTimeout, peer: sem.(*semaphore.Weighted)}
}

var _ target.Volume = (*Site)(nil)

// NewSite starts a site. It does nothing on the network until Serve is
// given a listener, except dialing peers when it becomes the writer.
func NewSite(cfg SiteConfig) (*Site, error) {
	if cfg.Store == nil || cfg.Control == nil || cfg.Name == "" {
		return nil, errors.New("replica: site needs a name, a store and a control")
	}
	// Timings have one source, conf (conf.DefaultLease and
	// DefaultReplicaTimeout): a package that filled in its own once
	// disagreed with it, so a zero value is refused.
	if cfg.Lease <= 0 || cfg.ReplicaTimeout <= 0 {
		return nil, fmt.Errorf("replica: site %s: Lease (%v) and ReplicaTimeout (%v) must be set", cfg.Name, cfg.Lease, cfg.ReplicaTimeout)
	}
	if cfg.ReplicaTimeout <= cfg.Lease {
		return nil, fmt.Errorf("replica: site %s: ReplicaTimeout %v must exceed Lease %v", cfg.Name, cfg.ReplicaTimeout, cfg.Lease)
	}
	if cfg.Hold <= 0 {
		cfg.Hold = cfg.ReplicaTimeout + 2*cfg.Lease
	}
	if cfg.RegionSize <= 0 {
		cfg.RegionSize = 1 << 20
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = func(ctx context.Context, _, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	s := &Site{
		cfg:     cfg,
		log:     cfg.Logger,
		bitmaps: make(map[string]*Bitmap),
		changed: make(chan struct{}),
		closing: make(chan struct{}),
		conns:   make(map[net.Conn]struct{}),
	}
	s.fwd = &forwarder{s: s}
	meta, err := openMeta(filepath.Join(cfg.Dir, "shared.meta"))
	if err != nil {
		return nil, err
	}
	s.meta = meta
	s.recv = &receiver{store: cfg.Store, meta: meta, lease: cfg.Lease, refs: s.fwd.lookup, synced: s.clearMarker, regrant: make(chan struct{}, 1)}
	if err := cfg.Store.PersistLost(filepath.Join(cfg.Dir, "lost.ranges")); err != nil {
		return nil, err
	}
	if boot, err := s.readMarker(); err == nil {
		// This site was a writer that did not stop cleanly: it may hold
		// writes nobody acknowledged.
		s.markerStale.Store(true)
		s.recv.diverged = true
		s.log.Warn("this site stopped uncleanly as writer; it needs a full compare before it is in sync again")
		if now := s.bootID(); boot == "" || boot != now {
			// And the host restarted since (power lost, or the OS
			// crashed): what it had not flushed is gone, including
			// writes the replicas acknowledged (manage).
			s.powerLost.Store(true)
			s.log.Warn("the host restarted since this site was the writer: writes it had not flushed are lost here; if it is elected writer again it hands the role to an in-sync replica",
				"marker_boot_id", boot, "boot_id", now)
		}
	}
	s.view = cfg.Control.View()
	s.servedAt.Store(time.Now().UnixNano())
	s.wg.Add(1)
	go s.run()
	return s, nil
}

// run follows the cluster: it starts and stops the writer as this site's
// writer lease comes and goes.
func (s *Site) run() {
	defer s.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		ch := s.cfg.Control.Changed()
		next := s.reconcile()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
		select {
		case <-s.closing:
			s.mu.Lock()
			w := s.w
			s.w = nil
			s.mu.Unlock()
			if w != nil {
				w.stop()
			}
			return
		case <-ch:
		case <-timer.C:
		}
	}
}

// reconcile acts on the current view and lease; it returns when to look
// again at the latest (the lease's end).
func (s *Site) reconcile() time.Duration {
	v := s.cfg.Control.View()
	ep, until := s.cfg.Control.WriterLease()
	now := time.Now()
	fenced := slices.Contains(v.Fenced, s.cfg.Name)
	writer := !fenced && ep != 0 && ep == v.Epoch && v.Writer == s.cfg.Name && now.Before(until)
	// Operations forwarded to a writer that is no longer the writer
	// (frozen, cut off) will not be answered: end them now, with an
	// unknown outcome, instead of holding them for the whole hold time.
	s.fwd.retarget(v.Writer)
	s.mu.Lock()
	s.view = v
	old := s.w
	if old != nil && (!writer || old.epoch != ep) {
		s.w = nil
	}
	s.mu.Unlock()
	if old != nil && (!writer || old.epoch != ep) {
		old.stop()
	}
	// After the writer stopped (its operations in flight finished under
	// its lease): the stream from a writer ends and the read lease goes.
	if s.recv.setFenced(fenced) {
		if fenced {
			s.log.Warn("fenced by the cluster: acting as a lost site")
		} else {
			s.log.Warn("unfenced: the writer resyncs this site")
		}
	}
	if writer {
		s.mu.Lock()
		if s.w == nil {
			s.w = s.startWriter(ep, v)
		}
		w := s.w
		s.mu.Unlock()
		w.syncPeers(v)
	}
	s.notify()
	if writer {
		return until.Sub(now) + time.Millisecond
	}
	return s.cfg.Lease / 4
}

// notify wakes operations that wait for a change.
func (s *Site) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *Site) waitCh() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// fenced reports whether the cluster fenced this site off. A fenced site
// acts as a lost one, for drills: it is not the writer, serves no I/O,
// refuses replication and holds no read lease, so the writer drops it
// and records what it misses; unfenced, it is resynced.
func (s *Site) fenced() bool {
	return slices.Contains(s.currentView().Fenced, s.cfg.Name)
}

// errFenced answers I/O at a fenced site.
var errFenced = &notReady{asc: ascUnavailable, err: errors.New("this site is fenced")}

// activeWriter returns the writer if this site holds the writer lease.
func (s *Site) activeWriter() *writer {
	s.mu.Lock()
	w := s.w
	s.mu.Unlock()
	if w == nil || !w.leaseOK() {
		return nil
	}
	return w
}

func (s *Site) currentView() View {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.view
}

// Serve accepts replication connections (streams from the writer,
// forwarding from other sites) on l until Close.
func (s *Site) Serve(l net.Listener) error {
	s.mu.Lock()
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case <-s.closing:
				return nil
			default:
			}
			return err
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			if err := s.serveConn(c); errors.Is(err, ErrFrame) {
				// A peer that breaks the protocol is worth an
				// operator's look (DESIGN.md I6); a peer going away
				// is not.
				s.log.Warn("replication connection dropped: bad frame", "remote", c.RemoteAddr(), "error", err)
			} else if err != nil {
				s.log.Debug("replication connection ended", "remote", c.RemoteAddr(), "error", err)
			}
		}()
	}
}

func (s *Site) serveConn(c net.Conn) error {
	// Until the hello is in, the connection gets a small buffer and a
	// small frame: a peer that has proved nothing costs little.
	hbr := bufio.NewReaderSize(c, MaxHelloLen)
	c.SetReadDeadline(time.Now().Add(s.cfg.ReplicaTimeout))
	hello, err := ReadFrame(hbr, MaxHelloLen)
	if err != nil {
		// With TLS a refused certificate ends here, before any hello.
		if !errors.Is(err, io.EOF) {
			s.refused(c, "", err)
		}
		return err
	}
	c.SetReadDeadline(time.Time{})
	br := growReader(hbr, c, 256<<10)
	if hello.Kind != FrameHello {
		return fmt.Errorf("first frame is kind %d, not a hello", hello.Kind)
	}
	if s.cfg.Authenticate != nil {
		if err := s.cfg.Authenticate(c, hello.From); err != nil {
			WriteFrame(c, &Frame{Kind: FrameHelloAck, Err: fmt.Sprintf("not authenticated as %q: %v", hello.From, err)})
			s.refused(c, hello.From, err)
			return fmt.Errorf("hello as %q from %s: not authenticated: %w", hello.From, c.RemoteAddr(), err)
		}
	}
	if !s.knownPeer(hello.From) {
		WriteFrame(c, &Frame{Kind: FrameHelloAck, Err: fmt.Sprintf("%q is not a data site of this cluster", hello.From)})
		return fmt.Errorf("hello from unknown site %q", hello.From)
	}
	if s.fenced() {
		WriteFrame(c, &Frame{Kind: FrameHelloAck, Err: fmt.Sprintf("site %s is fenced", s.cfg.Name)})
		return fmt.Errorf("hello from %s refused: this site is fenced", hello.From)
	}
	// Sizes: 0 is a peer from before sizes were sent.
	if size := s.cfg.Store.Size(); hello.Offset != 0 && hello.Offset != size {
		WriteFrame(c, &Frame{Kind: FrameHelloAck, Err: fmt.Sprintf("%v: %s's LU has %d bytes, %s's %d", ErrSizeMismatch, hello.From, hello.Offset, s.cfg.Name, size)})
		return fmt.Errorf("hello from %s refused: %w: its LU has %d bytes, this site's %d", hello.From, ErrSizeMismatch, hello.Offset, size)
	}
	if hello.Flags&FlagForward != 0 {
		return s.serveForward(c, br, hello, s.bodyGuard(c, hello.From))
	}
	if err := s.admitStream(hello); err != nil {
		WriteFrame(c, &Frame{Kind: FrameHelloAck, Epoch: s.cfg.Control.View().Epoch, Err: err.Error()})
		return fmt.Errorf("stream from %s refused: %w", hello.From, err)
	}
	s.log.Info("replication stream from writer", "writer", hello.From, "epoch", hello.Epoch)
	return s.recv.serveStream(c, br, hello, s.bodyGuard(c, hello.From))
}

// growReader returns a reader of size bytes on c that first yields what
// small has buffered (a peer may send its next frame before the answer to
// its hello).
func growReader(small *bufio.Reader, c net.Conn, size int) *bufio.Reader {
	n := small.Buffered()
	if n == 0 {
		return bufio.NewReaderSize(c, size)
	}
	rest, _ := small.Peek(n)
	return bufio.NewReaderSize(io.MultiReader(bytes.NewReader(slices.Clone(rest)), c), size)
}

// admitStream accepts a stream only from the writer of the committed
// view, at that view's epoch (DESIGN.md I2): a replica never records an
// epoch the cluster did not commit, so no hello, however authenticated,
// can make it refuse the real writer. A writer's hello may arrive a
// moment before this site's Raft state commits its epoch, so a newer
// epoch is waited for, bounded by half the replica timeout (the writer
// waits a whole one for the answer).
func (s *Site) admitStream(hello *Frame) error {
	deadline := time.NewTimer(s.cfg.ReplicaTimeout / 2)
	defer deadline.Stop()
	for {
		ch := s.cfg.Control.Changed()
		v := s.cfg.Control.View()
		switch {
		case hello.Epoch < v.Epoch:
			return fmt.Errorf("%w: writer epoch %d < %d", ErrStaleEpoch, hello.Epoch, v.Epoch)
		case hello.Epoch == v.Epoch && hello.From == v.Writer:
			return nil
		case hello.Epoch == v.Epoch:
			return fmt.Errorf("%s is not the writer of epoch %d (%s is)", hello.From, v.Epoch, v.Writer)
		}
		select {
		case <-ch:
		case <-deadline.C:
			return fmt.Errorf("epoch %d is not committed here (the cluster is at %d)", hello.Epoch, v.Epoch)
		case <-s.closing:
			return errors.New("site closing")
		}
	}
}

// maxWarned bounds the refused peers remembered for rate limiting.
const maxWarned = 1024

// refused logs a connection this site refused, as a warning once a
// minute per claimed name and remote host: a misconfigured peer retries
// all the time and would flood the log.
func (s *Site) refused(c net.Conn, from string, err error) {
	if len(from) > 64 {
		from = from[:64] + "..." // the name is the peer's, and so is its length
	}
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	key := from + "@" + host
	now := time.Now()
	s.mu.Lock()
	if s.warned == nil {
		s.warned = map[string]time.Time{}
	}
	if len(s.warned) >= maxWarned {
		// Bounded whatever names a peer makes up: forget what is past
		// its minute, and stay quiet if that is not enough.
		maps.DeleteFunc(s.warned, func(_ string, t time.Time) bool { return now.Sub(t) >= time.Minute })
		if len(s.warned) >= maxWarned {
			s.mu.Unlock()
			return
		}
	}
	last, ok := s.warned[key]
	if ok && now.Sub(last) < time.Minute {
		s.mu.Unlock()
		return
	}
	s.warned[key] = now
	s.mu.Unlock()
	if from == "" {
		s.log.Warn("refused replication peer before its hello", "remote", c.RemoteAddr().String(), "error", err)
		return
	}
	s.log.Warn("refused replication peer", "claimed", from, "remote", c.RemoteAddr().String(), "error", err)
}

// peerSet returns the other data sites of v with the address to dial
// each: this site's config first (it may name a proxy), then the view's.
func (s *Site) peerSet(v View) map[string]string {
	out := map[string]string{}
	if v.Peers == nil {
		for n, a := range s.cfg.Peers {
			out[n] = a
		}
		return out
	}
	for n, a := range v.Peers {
		if n == s.cfg.Name {
			continue
		}
		if own := s.cfg.Peers[n]; own != "" {
			a = own
		}
		out[n] = a
	}
	return out
}

// peerAddr is where this site dials the data site name.
func (s *Site) peerAddr(name string) (string, bool) {
	if a := s.cfg.Peers[name]; a != "" {
		return a, true
	}
	a := s.currentView().Peers[name]
	return a, a != ""
}

// knownPeer reports whether name is a data site of the cluster as this
// site knows it now; a site being removed is not.
func (s *Site) knownPeer(name string) bool {
	if name == s.cfg.Name {
		return false
	}
	if v := s.currentView(); v.Peers != nil {
		_, ok := v.Peers[name]
		return ok
	}
	_, ok := s.cfg.Peers[name]
	return ok
}

// op runs one operation: at the writer directly, elsewhere forwarded;
// while there is no writer it waits (up to Hold) for one.
func (s *Site) op(local func(w *writer) (int, error), fwd func() *fwdOp) (int, error) {
	// At the writer, most operations need neither the hold's context
	// nor its timer (a few µs of CPU per write): the loop below checks
	// again from the start if this does not settle it.
	if w := s.activeWriter(); w != nil && !s.fenced() {
		if at, err := local(w); !errors.Is(err, errNotWriter) {
			return at, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Hold)
	defer cancel()
	for {
		ch := s.waitCh()
		if s.fenced() {
			return -1, errFenced
		}
		if w := s.activeWriter(); w != nil {
			at, err := local(w)
			if !errors.Is(err, errNotWriter) {
				return at, err
			}
		} else if v := s.currentView(); v.Writer != "" && v.Writer != s.cfg.Name && slices.Contains(v.InSync, s.cfg.Name) {
			at, err := s.fwd.do(ctx, v.Writer, fwd(), v.Epoch)
			if !errors.Is(err, errRetry) {
				return at, err
			}
		}
		select {
		case <-ch:
		case <-s.closing:
			return -1, &notReady{asc: ascTransition, err: errors.New("site closing")}
		case <-ctx.Done():
			return -1, &notReady{asc: ascTransition, err: errors.New("no writer reachable")}
		case <-time.After(s.cfg.Lease / 4):
			// Poll too: a refused forward does not change the view.
		}
	}
}

// WriteAt writes p at off on every in-sync site (DESIGN.md write path).
func (s *Site) WriteAt(p []byte, off int64, fua bool) error {
	var flags uint8
	if fua {
		flags = FlagFUA
	}
	_, err := s.op(func(w *writer) (int, error) {
		f := &Frame{Kind: FrameWrite, Offset: off, Length: uint32(len(p)), Data: p, CRC: Checksum(p), Flags: flags}
		return -1, w.order(f, "", func() error { return s.cfg.Store.WriteAt(p, off, fua) })
	}, func() *fwdOp { return &fwdOp{kind: FrameFwdWrite, off: off, n: int64(len(p)), data: p, fua: fua} })
	return err
}

// maxUnmapFrame bounds one unmap frame's length (the field is 32 bits).
const maxUnmapFrame = 1 << 30

func (s *Site) Unmap(off, length int64) error {
	for length > 0 {
		n := min(length, maxUnmapFrame)
		_, err := s.op(func(w *writer) (int, error) {
			return -1, w.order(&Frame{Kind: FrameUnmap, Offset: off, Length: uint32(n)}, "", func() error { return s.cfg.Store.Unmap(off, n) })
		}, func() *fwdOp { return &fwdOp{kind: FrameFwdUnmap, off: off, n: n} })
		if err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Flush makes every completed write durable at every in-sync site.
func (s *Site) Flush() error {
	_, err := s.op(func(w *writer) (int, error) {
		return -1, w.order(&Frame{Kind: FrameFlush}, "", s.cfg.Store.Flush)
	}, func() *fwdOp { return &fwdOp{kind: FrameFwdFlush} })
	return err
}

// CompareAndWrite is atomic cluster-wide: the writer compares under the
// lock that orders writes (DESIGN.md write path 4).
func (s *Site) CompareAndWrite(off int64, cmp, data []byte) (int, error) {
	return s.op(func(w *writer) (int, error) {
		f := &Frame{Kind: FrameWrite, Offset: off, Length: uint32(len(data))}
		return w.compareAndWrite(off, cmp, data, f, "")
	}, func() *fwdOp { return &fwdOp{kind: FrameFwdCAW, off: off, n: int64(len(data)), data: data, cmp: cmp} })
}

// errMiscompare makes order skip a compare-and-write that did not match.
var errMiscompare = errors.New("miscompare")

func (w *writer) compareAndWrite(off int64, cmp, data []byte, f *Frame, origin string) (int, error) {
	at := -1
	f.Data, f.CRC = data, Checksum(data)
	err := w.order(f, origin, func() error {
		cur := make([]byte, len(cmp))
		if err := w.s.cfg.Store.ReadAt(cur, off); err != nil {
			return err
		}
		if i := firstDiff(cur, cmp); i >= 0 {
			at = i
			return errMiscompare
		}
		return w.s.cfg.Store.WriteAt(data, off, false)
	})
	if errors.Is(err, errMiscompare) {
		return at, nil
	}
	return -1, err
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// ReadAt serves reads locally, at the writer under its lease and
// elsewhere under the read lease the writer grants (DESIGN.md I3).
func (s *Site) ReadAt(p []byte, off int64) error {
	// Most reads need not wait, nor the hold's timer.
	if ok, err := s.TryReadAt(p, off); ok {
		return err
	}
	deadline := time.NewTimer(s.cfg.Hold)
	defer deadline.Stop()
	for {
		ch := s.waitCh()
		if s.fenced() {
			return errFenced
		}
		if w := s.activeWriter(); w != nil {
			// A write still in flight is not yet on every in-sync site;
			// a read must not see it before that (I1, I3).
			return w.readSettled(p, off)
		}
		if ok, _ := s.recv.leaseValid(time.Now()); ok {
			// Likewise a write this replica applied but the writer has
			// not yet seen on every in-sync site.
			if done, err := s.recv.readCommitted(p, off, deadline.C, s.closing); done {
				return err
			}
			continue
		}
		select {
		case <-ch:
		case <-s.closing:
			return &notReady{asc: ascTransition, err: errors.New("site closing")}
		case <-deadline.C:
			return &notReady{asc: ascTransition, err: errors.New("no lease: this site may be stale")}
		case <-time.After(s.cfg.Lease / 8):
		}
	}
}

var _ target.InlineReader = (*Site)(nil)

// TryReadAt is ReadAt when ReadAt would not wait: this site is not
// fenced, is in sync, holds its lease (the writer's, or a read lease the
// writer granted) and no write to the range is unsettled here (at the
// writer: not yet on every in-sync site; at a replica: applied and not
// yet committed). Then it reads p at off from the local store, with the
// same guarantees as ReadAt (I3), and reports true. Otherwise it reads
// nothing and reports false, and the caller calls ReadAt where it may
// wait (target.InlineReader: the connection's reader must not).
func (s *Site) TryReadAt(p []byte, off int64) (bool, error) {
	v := s.currentView()
	if slices.Contains(v.Fenced, s.cfg.Name) || !slices.Contains(v.InSync, s.cfg.Name) {
		return false, nil
	}
	if w := s.activeWriter(); w != nil {
		return w.tryReadSettled(p, off)
	}
	return s.recv.tryRead(p, off, time.Now())
}

// Size is the capacity.
func (s *Site) Size() int64 { return s.cfg.Store.Size() }

// Mapped reports allocation from the local store.
func (s *Site) Mapped(off int64) (bool, int64, error) { return s.cfg.Store.Mapped(off) }

// State is the ALUA state of this site's port group.
func (s *Site) State() target.PathState {
	if s.fenced() {
		return target.PathUnavailable
	}
	now := time.Now()
	if s.activeWriter() != nil {
		s.servedAt.Store(now.UnixNano())
		s.served.Store(true)
		return target.PathActiveOptimized
	}
	v := s.currentView()
	if !slices.Contains(v.InSync, s.cfg.Name) {
		return target.PathUnavailable
	}
	if ok, _ := s.recv.leaseValid(now); ok {
		s.servedAt.Store(now.UnixNano())
		s.served.Store(true)
		return target.PathActiveNonOptimized
	}
	if now.Sub(time.Unix(0, s.servedAt.Load())) > s.cfg.Hold {
		// In sync by the last view this site heard, but it has had no
		// lease (as a replica or as the writer) for longer than it
		// holds an operation: cut off from the writer, or from the
		// cluster. Its reads and writes answer NOT READY,
		// transitioning, after that hold, and now so do its state, TEST
		// UNIT READY and its REPORT TARGET PORT GROUPS: a multipath
		// host's path checker fails this path over instead of keeping
		// it because TEST UNIT READY passes. A shorter gap (a writer
		// moving, a renewal late on a loaded machine) keeps the state:
		// operations are held through it, and initiators get no unit
		// attention for it.
		return target.PathTransitioning
	}
	return target.PathActiveNonOptimized
}

// Lost reports whether the site is to answer every command as a lost
// device (target.DeviceLoss): only with SiteConfig.PDL, once it has
// served since it started, while State says transitioning (in sync by
// the last view it heard, without a lease for longer than the hold: cut
// off, or without quorum). A site that has not served yet (it starts
// while cut off) stays transitioning: it cannot tell that it was ever
// the site a host should leave. A fenced or resyncing site is
// unavailable, not lost: the cluster knows it and will bring it back.
func (s *Site) Lost() bool {
	if !s.cfg.PDL {
		// Called on every command: nothing more without the option.
		return false
	}
	lost := s.served.Load() && s.State() == target.PathTransitioning
	if s.lost.Load() != lost && s.lost.CompareAndSwap(!lost, lost) {
		if lost {
			s.log.Warn("lost the cluster: every command now gets LOGICAL UNIT NOT SUPPORTED (quorum_loss = \"pdl\")")
		} else {
			s.log.Info("back in the cluster: commands are served again")
		}
	}
	return lost
}

// Close stops the site: the writer (if this is it) finishes what is in
// flight, connections close, the store closes.
func (s *Site) Close() error {
	s.mu.Lock()
	select {
	case <-s.closing:
		s.mu.Unlock()
		return nil
	default:
	}
	close(s.closing)
	for _, l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.fwd.close()
	s.wg.Wait()
	s.bmu.Lock()
	for _, b := range s.bitmaps {
		b.Close()
	}
	s.bmu.Unlock()
	return s.cfg.Store.Close()
}

// Handover prepares a planned move of the writer away from this site:
// new writes wait, writes in flight finish, then fn (the Raft promote)
// runs. Whatever fn returns, held writes then go on, here or at the new
// writer, so a planned move fails no I/O.
func (s *Site) Handover(timeout time.Duration, fn func() error) error {
	w := s.activeWriter()
	if w == nil {
		return fn()
	}
	if err := w.pause(timeout); err != nil {
		w.resume()
		return err
	}
	err := fn()
	if err != nil {
		w.resume()
		return err
	}
	// The lease is gone once fn returns; the run loop stops w cleanly
	// and held operations go to the new writer.
	w.resume()
	return nil
}

// notReady maps to NOT READY sense data with asc.
type notReady struct {
	asc uint16
	err error
}

const (
	ascTransition  = 0x040a // ASYMMETRIC ACCESS STATE TRANSITION
	ascUnavailable = 0x040c // TARGET PORT IN UNAVAILABLE STATE
)

func (e *notReady) Error() string { return fmt.Sprintf("not ready: %v", e.err) }

// indeterminate: the operation may or may not have taken effect (it was
// applied somewhere, or sent to a writer that went away). The target
// answers ABORTED COMMAND (target.ErrOutcomeUnknown).
type indeterminate struct{ err error }

func (e *indeterminate) Error() string   { return fmt.Sprintf("outcome unknown: %v", e.err) }
func (e *indeterminate) Unwrap() []error { return []error{e.err, target.ErrOutcomeUnknown} }
func (e *notReady) Unwrap() error        { return e.err }

// As lets the target see it as its NotReadyError.
func (e *notReady) As(target any) bool {
	if t, ok := target.(**targetNotReady); ok {
		*t = &targetNotReady{ASC: e.asc}
		return true
	}
	return false
}

type targetNotReady = target.NotReadyError

// The refusals a Control gives that the writer acts on.
var (
	ErrNotInSync     = errors.New("replica: site not in sync")
	ErrAlreadyInSync = errors.New("replica: site already in sync")
)
