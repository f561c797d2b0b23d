package checker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/metrolun/metrolun/integration/initiator"
)

// Target is one site's iSCSI portal for the LUN under test.
type Target struct {
	Site string
	// Addr is the portal, host:port (127.0.0.1 in tests).
	Addr string
	IQN  string
	LUN  uint64
}

// Workload drives single-block reads and writes against one or more
// sites and records every operation in a History. Each client owns one
// iSCSI session to its site, issues one operation at a time, and after
// an error reconnects with a bounded exponential backoff. Every write
// writes a unique Stamp, so every read maps to exactly one write (or to
// the initial zeros).
//
// The blocks [FirstLBA, FirstLBA+Blocks) must read as zeros when the run
// starts (a fresh sparse LUN, or a region no run used before), unless
// Prefill is set.
type Workload struct {
	Targets []Target
	// ClientsPerSite is the number of clients (sessions) per target
	// (default 1). Client ids are 0.. in target order.
	ClientsPerSite int
	// FirstLBA and Blocks define the scratch region (default 32 blocks).
	FirstLBA uint64
	Blocks   int
	// ReadWeight:WriteWeight is the mix (default 1:1).
	ReadWeight, WriteWeight int
	// FUAPercent of the writes are sent with FUA.
	FUAPercent int
	// SyncPercent of the operations are SYNCHRONIZE CACHE instead of a
	// read or a write: what makes a store write back, so that failed
	// write-backs (a storage fault) happen. A sync changes no block, so
	// it is not in the history; Stats counts it.
	SyncPercent int
	// Seed makes each client's choice of blocks and operations
	// reproducible (math/rand/v2 PCG seeded with Seed and the client id).
	Seed uint64
	// Duration stops issuing operations after this long (0: until ctx
	// ends). Operations in flight then finish (bounded by OpTimeout).
	Duration time.Duration
	// MaxOps bounds the number of operations over all clients (0: no
	// bound).
	MaxOps int
	// OpTimeout bounds one operation, login included (default 5s).
	OpTimeout time.Duration
	// InitiatorIQN prefixes each client's initiator name (default
	// "iqn.2026-11.io.metrolun:checker"); client i is PREFIX-cI.
	InitiatorIQN string
	// Options are passed to initiator.Dial.
	Options initiator.Options
	// BlockSize of the LUN; 0 asks with READ CAPACITY(16) per session.
	BlockSize uint32
	// MaxBackoff bounds the pause after an error (default 500ms; the
	// pause starts at 10ms and doubles).
	MaxBackoff time.Duration
	// Pace, when set, is the least time between the starts of one
	// client's operations: it bounds the load (and the history's length)
	// so that the clients do not starve the processes under test.
	Pace time.Duration
	// Prefill writes every block once (recorded, as client id
	// len(Targets)*ClientsPerSite) through the first target before the
	// clients start, so the region need not start as zeros.
	Prefill bool
	// Logf, when set, is told about reconnections.
	Logf func(format string, args ...any)
}

// Stats summarises a run.
type Stats struct {
	Ops, Reads, Writes        int
	OK, Failed, Indeterminate int
	// Logins counts successful logins, ConnectFailures failed ones
	// (each recorded as a failed operation).
	Logins, ConnectFailures int
	// Corrupt counts reads of torn or foreign blocks.
	Corrupt int
	Elapsed time.Duration
	// PerSiteOK and PerSiteNotOK count operations by site.
	PerSiteOK, PerSiteNotOK map[string]int
	// FirstError and LastError are error texts of failed or
	// indeterminate operations.
	FirstError, LastError string
	// ClientsWithoutSuccess counts clients none of whose operations
	// succeeded.
	ClientsWithoutSuccess int
	// Syncs counts SYNCHRONIZE CACHE commands (not in Ops), SyncsFailed
	// those not answered GOOD.
	Syncs, SyncsFailed int

	mu        sync.Mutex
	clientsOK []bool
}

func (s *Stats) String() string {
	str := fmt.Sprintf("%d ops (%d reads, %d writes): %d ok, %d failed, %d indeterminate; %d logins, %d connect failures; %v",
		s.Ops, s.Reads, s.Writes, s.OK, s.Failed, s.Indeterminate, s.Logins, s.ConnectFailures, s.Elapsed.Round(time.Millisecond))
	if s.Syncs > 0 {
		str += fmt.Sprintf("; %d syncs, %d not GOOD", s.Syncs, s.SyncsFailed)
	}
	return str
}

func (w *Workload) fill() error {
	if len(w.Targets) == 0 {
		return errors.New("checker: workload without targets")
	}
	if w.ClientsPerSite <= 0 {
		w.ClientsPerSite = 1
	}
	if w.Blocks <= 0 {
		w.Blocks = 32
	}
	if w.ReadWeight < 0 || w.WriteWeight < 0 {
		return errors.New("checker: negative read or write weight")
	}
	if w.ReadWeight == 0 && w.WriteWeight == 0 {
		w.ReadWeight, w.WriteWeight = 1, 1
	}
	if w.SyncPercent < 0 || w.SyncPercent > 100 {
		return errors.New("checker: SyncPercent out of 0..100")
	}
	if w.OpTimeout <= 0 {
		w.OpTimeout = 5 * time.Second
	}
	if w.InitiatorIQN == "" {
		w.InitiatorIQN = "iqn.2026-11.io.metrolun:checker"
	}
	if w.MaxBackoff <= 0 {
		w.MaxBackoff = 500 * time.Millisecond
	}
	return nil
}

// Run runs the workload until ctx ends, Duration passes or MaxOps
// operations were issued, recording into h, and returns the counts.
// Errors are for a bad configuration or a failed Prefill only: operation
// failures are outcomes in the history.
func (w Workload) Run(ctx context.Context, h *History) (*Stats, error) {
	if h == nil {
		return nil, errors.New("checker: workload without a history")
	}
	if err := w.fill(); err != nil {
		return nil, err
	}
	start := time.Now()
	var stopAt time.Time
	if w.Duration > 0 {
		stopAt = start.Add(w.Duration)
	}
	nClients := len(w.Targets) * w.ClientsPerSite
	st := &Stats{PerSiteOK: map[string]int{}, PerSiteNotOK: map[string]int{}, clientsOK: make([]bool, nClients)}
	if w.Prefill {
		if err := w.prefill(ctx, h, nClients, st); err != nil {
			return st, err
		}
	}
	var issued atomic.Int64
	var wg sync.WaitGroup
	for ti, t := range w.Targets {
		for j := range w.ClientsPerSite {
			id := ti*w.ClientsPerSite + j
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := &client{w: &w, h: h, id: id, t: t, st: st, stopAt: stopAt, issued: &issued,
					rng: rand.New(rand.NewPCG(w.Seed, uint64(id)+1))}
				c.run(ctx)
			}()
		}
	}
	wg.Wait()
	st.Elapsed = time.Since(start)
	for _, ok := range st.clientsOK {
		if !ok {
			st.ClientsWithoutSuccess++
		}
	}
	return st, nil
}

type client struct {
	w      *Workload
	h      *History
	id     int
	t      Target
	st     *Stats
	stopAt time.Time
	issued *atomic.Int64
	rng    *rand.Rand
	sess   *initiator.Session
	bs     uint32
	seq    uint64
}

func (c *client) logf(format string, args ...any) {
	if c.w.Logf != nil {
		c.w.Logf(format, args...)
	}
}

func (c *client) stopped(ctx context.Context) bool {
	return ctx.Err() != nil || (!c.stopAt.IsZero() && time.Now().After(c.stopAt))
}

// connect logs in and learns the block size.
func (c *client) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.w.OpTimeout)
	defer cancel()
	iqn := fmt.Sprintf("%s-c%d", c.w.InitiatorIQN, c.id)
	s, err := initiator.Dial(ctx, c.t.Addr, c.t.IQN, iqn, c.w.Options)
	if err != nil {
		return err
	}
	if c.w.BlockSize > 0 {
		s.SetBlockSize(c.t.LUN, c.w.BlockSize)
	}
	bs, err := s.BlockSize(ctx, c.t.LUN)
	if err != nil {
		s.Close()
		return fmt.Errorf("block size: %w", err)
	}
	if bs < MinStampBlock {
		s.Close()
		return fmt.Errorf("block size %d is below %d", bs, MinStampBlock)
	}
	c.sess, c.bs = s, bs
	return nil
}

func (c *client) closeSession() {
	if c.sess == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	c.sess.Logout(ctx)
	cancel()
	c.sess.Close()
	c.sess = nil
}

func (c *client) run(ctx context.Context) {
	defer c.closeSession()
	backoff := time.Duration(0)
	pause := func() {
		if backoff == 0 {
			backoff = 10 * time.Millisecond
		} else {
			backoff = min(2*backoff, c.w.MaxBackoff)
		}
		t := time.NewTimer(backoff)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	var last time.Time
	for !c.stopped(ctx) {
		if c.w.Pace > 0 && !last.IsZero() {
			if d := c.w.Pace - time.Since(last); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
				if c.stopped(ctx) {
					return
				}
			}
		}
		last = time.Now()
		if c.w.MaxOps > 0 && c.issued.Add(1) > int64(c.w.MaxOps) {
			return
		}
		if c.w.SyncPercent > 0 && c.rng.IntN(100) < c.w.SyncPercent {
			if c.sess != nil {
				c.sync(ctx, pause)
				continue
			}
		}
		lba := c.w.FirstLBA + uint64(c.rng.IntN(c.w.Blocks))
		kind := Write
		if c.rng.IntN(c.w.ReadWeight+c.w.WriteWeight) < c.w.ReadWeight {
			kind = Read
		}
		fua := c.rng.IntN(100) < c.w.FUAPercent
		op := Op{Client: c.id, Site: c.t.Site, Block: lba, Kind: kind}
		if kind == Write {
			c.seq++
			op.Value = Value{Client: uint32(c.id), Seq: c.seq, LBA: lba}
		}
		op.Call = c.h.Now()
		if c.sess == nil {
			if err := c.connect(ctx); err != nil {
				// Nothing of the operation was sent.
				op.Return, op.Outcome, op.Err = c.h.Now(), Failed, "connect: "+err.Error()
				c.record(op, true)
				c.logf("client %d (%s): connect to %s: %v", c.id, c.t.Site, c.t.Addr, err)
				pause()
				continue
			}
			c.st.mu.Lock()
			c.st.Logins++
			c.st.mu.Unlock()
			op.Call = c.h.Now()
		}
		opCtx, cancel := context.WithTimeout(ctx, c.w.OpTimeout)
		var err error
		if kind == Read {
			var data []byte
			data, err = c.sess.ReadBlocks(opCtx, c.t.LUN, lba, 1)
			if err == nil {
				op.Value, op.Corrupt = ReadValue(lba, data)
			}
		} else {
			err = c.sess.WriteBlocks(opCtx, c.t.LUN, lba, Stamp(uint32(c.id), c.seq, lba, int(c.bs)), fua)
		}
		cancel()
		op.Return = c.h.Now()
		switch {
		case err == nil:
			op.Outcome = OK
		case initiator.Indeterminate(err):
			op.Outcome, op.Err = Indeterminate, err.Error()
		default:
			op.Outcome, op.Err = Failed, err.Error()
		}
		c.record(op, false)
		if err != nil {
			if c.sess.Err() != nil {
				c.logf("client %d (%s): session ended: %v", c.id, c.t.Site, err)
				c.sess.Close()
				c.sess = nil
			}
			pause()
		} else {
			backoff = 0
		}
	}
}

// sync sends SYNCHRONIZE CACHE on the open session and counts it.
func (c *client) sync(ctx context.Context, pause func()) {
	opCtx, cancel := context.WithTimeout(ctx, c.w.OpTimeout)
	err := c.sess.SyncCache(opCtx, c.t.LUN)
	cancel()
	c.st.mu.Lock()
	c.st.Syncs++
	if err != nil {
		c.st.SyncsFailed++
	}
	c.st.mu.Unlock()
	if err == nil {
		return
	}
	if c.sess.Err() != nil {
		c.logf("client %d (%s): session ended: %v", c.id, c.t.Site, err)
		c.sess.Close()
		c.sess = nil
	}
	pause()
}

func (c *client) record(op Op, connectFailure bool) {
	c.h.Add(op)
	st := c.st
	st.mu.Lock()
	defer st.mu.Unlock()
	st.Ops++
	if op.Kind == Read {
		st.Reads++
	} else {
		st.Writes++
	}
	switch op.Outcome {
	case OK:
		st.OK++
		st.PerSiteOK[op.Site]++
		if c.id < len(st.clientsOK) {
			st.clientsOK[c.id] = true
		}
	case Failed:
		st.Failed++
		st.PerSiteNotOK[op.Site]++
	case Indeterminate:
		st.Indeterminate++
		st.PerSiteNotOK[op.Site]++
	}
	if op.Corrupt {
		st.Corrupt++
	}
	if connectFailure {
		st.ConnectFailures++
	}
	if op.Err != "" {
		if st.FirstError == "" {
			st.FirstError = op.Err
		}
		st.LastError = op.Err
	}
}

// prefill writes every block once through the first target.
func (w *Workload) prefill(ctx context.Context, h *History, id int, st *Stats) error {
	c := &client{w: w, h: h, id: id, t: w.Targets[0], st: st}
	if err := c.connect(ctx); err != nil {
		return fmt.Errorf("checker: prefill: %w", err)
	}
	defer c.closeSession()
	for i := range w.Blocks {
		lba := w.FirstLBA + uint64(i)
		c.seq++
		op := Op{Client: id, Site: c.t.Site, Block: lba, Kind: Write, Value: Value{Client: uint32(id), Seq: c.seq, LBA: lba}, Call: h.Now()}
		opCtx, cancel := context.WithTimeout(ctx, w.OpTimeout)
		err := c.sess.WriteBlocks(opCtx, c.t.LUN, lba, Stamp(uint32(id), c.seq, lba, int(c.bs)), true)
		cancel()
		op.Return = h.Now()
		switch {
		case err == nil:
			op.Outcome = OK
		case initiator.Indeterminate(err):
			op.Outcome, op.Err = Indeterminate, err.Error()
		default:
			op.Outcome, op.Err = Failed, err.Error()
		}
		c.record(op, false)
		if err != nil {
			return fmt.Errorf("checker: prefill of block %d: %w", lba, err)
		}
	}
	return nil
}
