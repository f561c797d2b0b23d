package raftlog

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/vmihailenco/msgpack/v5"
	"go.etcd.io/bbolt"
)

// Peer is one member as another member sees it.
type Peer struct {
	Name string // Raft server ID and address (ServerAddress = Name; the transport resolves names with Addr)
	Role string // RoleData or RoleWitness
	Addr string // host:port this member dials to reach the peer (may be a proxy); for self: ignored
	// Addrs is what the state records for the peer when the first leader
	// of a new cluster adds it (Raft defaults to Addr), so that members
	// added later, whose configs may not list it, know it too.
	Addrs Addrs
}

// Config is one member's view of the cluster.
type Config struct {
	Name, Role string
	// Dir holds the Raft state: log store, stable store, snapshots. It is
	// created if missing.
	Dir string
	// Listen is the bind address of the Raft transport.
	Listen string
	// Peers lists every member, self included. Members added at run time
	// (AddMember) need not be listed: their addresses come from the state.
	Peers []Peer
	// Join: without Raft state in Dir, wait to be added to a running
	// cluster (AddMember at its leader) instead of bootstrapping a new
	// one from Peers. Ignored once there is state.
	Join bool
	// LUN is the LU a data site serves (lun.go); nil at a witness.
	LUN *LUN
	// Image is a data site's image identity (image.go); nil at a witness,
	// or where the store keeps none (then no image is checked here).
	Image ImageStore
	// TLS nil: plain TCP. Otherwise mutual TLS: it must carry
	// Certificates, RootCAs and ClientCAs. Each side also checks that the
	// other's certificate names a member (CN or DNS SAN); the dialer, that
	// it names the member it dialled.
	TLS *tls.Config
	// Lease is the writer lease. Required: conf is the only source of
	// defaults (conf.DefaultLease); a zero value is refused, not filled in.
	Lease time.Duration
	// ElectionTimeout is Raft's heartbeat, election and leader lease
	// timeout. Required (conf.DefaultElectionTimeout).
	ElectionTimeout time.Duration
	// RPCTimeout bounds every Raft RPC on the transport, dial and TLS
	// handshake included (default ElectionTimeout/2). It also bounds how
	// old the acknowledgements behind a VerifyLeader renewal can be, so a
	// new writer waits it out on top of Lease (see lease.go).
	RPCTimeout time.Duration
	// Guard, when set, wraps the Raft listener (cmd/netguard: connection
	// caps, accept errors waited out). Nil: the bare listener.
	Guard func(net.Listener) net.Listener
	// Logger gets this package's lines, and Raft's under Named("raft") at
	// the same level: Warn keeps elections and refusals, Info adds each
	// writer change. Nil: no logs.
	Logger hclog.Logger
}

func (cfg *Config) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("raftlog: config: "+format, args...)
	}
	if cfg.Name == "" {
		return bad("no member name")
	}
	if cfg.Role != RoleData && cfg.Role != RoleWitness {
		return bad("member %s: role %q, want %q or %q", cfg.Name, cfg.Role, RoleData, RoleWitness)
	}
	if cfg.Dir == "" {
		return bad("no Dir for the Raft state")
	}
	if cfg.Listen == "" {
		return bad("no Listen address")
	}
	seen := map[string]bool{}
	self := false
	for _, p := range cfg.Peers {
		switch {
		case p.Name == "":
			return bad("a peer without a name")
		case seen[p.Name]:
			return bad("peer %s listed twice", p.Name)
		case p.Role != RoleData && p.Role != RoleWitness:
			return bad("peer %s: role %q", p.Name, p.Role)
		}
		seen[p.Name] = true
		if p.Name == cfg.Name {
			self = true
			if p.Role != cfg.Role {
				return bad("peer %s has role %s, the member says %s", p.Name, p.Role, cfg.Role)
			}
		} else if p.Addr == "" {
			return bad("peer %s has no address", p.Name)
		}
	}
	if !self {
		return bad("member %s is not among the peers", cfg.Name)
	}
	if t := cfg.TLS; t != nil {
		if len(t.Certificates) == 0 && t.GetCertificate == nil {
			return bad("TLS without a certificate")
		}
		if t.RootCAs == nil {
			return bad("TLS without RootCAs to verify peers")
		}
		if t.ClientCAs == nil {
			return bad("TLS without ClientCAs to verify peers")
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Lease", cfg.Lease}, {"ElectionTimeout", cfg.ElectionTimeout}, {"RPCTimeout", cfg.RPCTimeout}} {
		if d.v < 0 {
			return bad("%s is negative", d.name)
		}
	}
	// Timings have one source, conf (DESIGN: defaults in one place); a
	// package that filled in its own once disagreed with it (1s against
	// 300ms), so a caller that forgets one is told.
	if cfg.Lease == 0 {
		return bad("Lease is not set")
	}
	if cfg.ElectionTimeout == 0 {
		return bad("ElectionTimeout is not set")
	}
	return nil
}

func (cfg *Config) defaults() {
	if cfg.RPCTimeout == 0 {
		cfg.RPCTimeout = cfg.ElectionTimeout / 2
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
}

// NotLeaderError is returned by calls that only the Raft leader serves; it
// wraps ErrNotLeader and names the leader ("" when none is known).
type NotLeaderError struct{ Leader string }

func (e *NotLeaderError) Error() string {
	if e.Leader == "" {
		return "raftlog: not the leader (no leader known)"
	}
	return "raftlog: not the leader (the leader is " + e.Leader + ")"
}

func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// ErrClosed: the cluster member was closed.
var ErrClosed = errors.New("raftlog: closed")

// Cluster is one member's Raft participant: the replicated state, the
// election of the writer and this member's writer lease.
type Cluster struct {
	cfg    Config
	log    hclog.Logger
	raft   *raft.Raft
	fsm    *FSM
	store  *raftboltdb.BoltStore
	stream *streamLayer
	trans  *termGuard
	obs    *raft.Observer
	obsCh  chan raft.Observation

	wake      chan struct{} // asks run to look at leadership again
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
	handoffs  atomic.Uint64 // leaderships this member handed on because it could not write
	// hints are the Raft addresses of members added at run time, as the
	// log on disk had them at Open: a restarted member can dial them
	// before it has applied that log again (members.go).
	hints    map[string]string
	expiring atomic.Bool // an automatic unfence is being proposed (fence.go)

	mu      sync.Mutex
	changed chan struct{}
	lease   lease
	// lastUntil is the latest end of any lease this member was granted;
	// this member acted as writer at no time after it.
	lastUntil  time.Time
	leaseTimer *time.Timer
	// staleTimer fires when no majority has confirmed this leader for
	// Lease/2 (lease.go); it tells holdLease through stale.
	staleTimer *time.Timer
	stale      chan struct{}
	lead       *leadership // the leader's duties while it leads, else nil
}

// Open starts this member: it reopens or bootstraps the Raft state in
// cfg.Dir, listens on cfg.Listen and takes part in elections.
func Open(cfg Config) (*Cluster, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg.defaults()
	cfg.Peers = append([]Peer(nil), cfg.Peers...)
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("raftlog: %w", err)
	}
	rlog := cfg.Logger.Named("raft")

	store, err := raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(cfg.Dir, "raft.db"),
		// Another process holding the file: fail, do not hang.
		BoltOptions: &bbolt.Options{Timeout: 2 * time.Second},
	})
	if err != nil {
		return nil, fmt.Errorf("raftlog: log store in %s: %w", cfg.Dir, err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, rlog)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("raftlog: snapshot store in %s: %w", cfg.Dir, err)
	}
	stream, err := newStreamLayer(&cfg, cfg.RPCTimeout, cfg.Logger)
	if err != nil {
		store.Close()
		return nil, err
	}
	trans := newTermGuard(raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		// No pipelining: every AppendEntries then goes through
		// termGuard.AppendEntries, whose answers renew the writer lease,
		// and has its own I/O deadline of Timeout from when it was sent,
		// which bounds how stale an answer counted by VerifyLeader can be
		// (lease.go).
		MaxRPCsInFlight: 1,
		Timeout:         cfg.RPCTimeout,
		Logger:          rlog.Named("transport"),
	}), store)

	// Raft waits HeartbeatTimeout/10 to /5 between heartbeats.
	trans.beatEvery.Store(int64(cfg.ElectionTimeout / 5))
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Name)
	rc.HeartbeatTimeout = cfg.ElectionTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	// Raft's leader lease only makes a leader cut off from a majority
	// step down; the writer lease (lease.go) is what keeps two writers
	// apart, and it lapses after Lease without a majority. At half the
	// election timeout a leader stepped down whenever two heartbeats in a
	// row were late (a loaded machine, a 50 ms link), which the VerifyLeader
	// rounds and commit-timeout AppendEntries once hid by adding contacts.
	rc.LeaderLeaseTimeout = cfg.ElectionTimeout
	// CommitTimeout is how long Raft's replicate goroutine waits after
	// each answer before it sends a follower an AppendEntries with nothing
	// new (CommitTimeout to 2x that, at a random phase). The transport
	// holds such a request for the next 100 ms grid instant
	// (termGuard.hold), so with a millisecond here the goroutine comes
	// back while the process is awake from the answer and sends one
	// request per grid instant: the leader's heartbeat, on the grid with
	// the rest of the periodic work, and without a timer of its own
	// (it was 100-200 ms, a random wake-up per follower each time).
	// Raft's own heartbeats are slowed at the writer (slowBeats).
	// Followers learn a commit at once anyway: propose adds a barrier.
	rc.CommitTimeout = time.Millisecond
	rc.SnapshotThreshold = 1024
	rc.TrailingLogs = 1024
	rc.Logger = rlog
	fail := func(err error) (*Cluster, error) {
		trans.Close()
		store.Close()
		return nil, err
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return fail(fmt.Errorf("raftlog: %w", err))
	}
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fail(fmt.Errorf("raftlog: reading state in %s: %w", cfg.Dir, err))
	}
	switch {
	case !has && cfg.Join:
		cfg.Logger.Info("no Raft state: waiting to be added to a running cluster (join)")
	case !has:
		var servers []raft.Server
		for _, p := range cfg.Peers {
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.Name), Address: raft.ServerAddress(p.Name)})
		}
		if err := raft.BootstrapCluster(rc, store, store, snaps, trans, raft.Configuration{Servers: servers}); err != nil {
			return fail(fmt.Errorf("raftlog: bootstrap: %w", err))
		}
	}

	c := &Cluster{
		cfg:     cfg,
		log:     cfg.Logger,
		store:   store,
		stream:  stream,
		trans:   trans,
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		changed: make(chan struct{}),
		stale:   make(chan struct{}, 1),
	}
	c.fsm = &FSM{onChange: c.notify}
	trans.onContact = c.contacted
	trans.self = raft.ServerID(cfg.Name)
	trans.witnesses = c.witnesses
	c.hints = logAddrs(store, cfg.Logger)
	stream.setMembers(c.stateAddr, c.stateNames)
	// The leader reads the entry before the next one to send every
	// follower from the log store for each AppendEntries, one a grid
	// instant per follower when idle (a bolt read and a msgpack decode
	// each): recent entries stay in memory.
	logs, err := raft.NewLogCache(logCacheEntries, kickStore{store, trans.release})
	if err != nil {
		return fail(fmt.Errorf("raftlog: %w", err))
	}
	r, err := raft.NewRaft(rc, c.fsm, logs, store, snaps, trans)
	if err != nil {
		return fail(fmt.Errorf("raftlog: %w", err))
	}
	c.raft = r
	trans.raft.Store(r)
	c.obsCh = make(chan raft.Observation, 16)
	c.obs = raft.NewObserver(c.obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.RaftState, raft.LeaderObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(c.obs)
	c.wg.Add(2)
	go c.observe()
	go c.run()
	return c, nil
}

// Close stops the leader's duties, ends the writer lease and shuts Raft,
// the transport and the stores down. It is safe to call more than once.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		close(c.stop)
		c.wg.Wait() // run stops the leader's duties before it returns
		c.raft.DeregisterObserver(c.obs)
		var errs []error
		if err := c.raft.Shutdown().Error(); err != nil {
			errs = append(errs, err)
		}
		// Raft closes the transport; the stream layer also closes the
		// connections the transport keeps open.
		if err := c.stream.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
		if err := c.store.Close(); err != nil {
			errs = append(errs, err)
		}
		c.mu.Lock()
		if c.leaseTimer != nil {
			c.leaseTimer.Stop()
		}
		if c.staleTimer != nil {
			c.staleTimer.Stop()
		}
		c.mu.Unlock()
		c.notify()
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// notify closes the Changed channel and replaces it.
func (c *Cluster) notify() {
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// Changed returns a channel closed at the next change of State(), of
// leadership, or of this member's writer lease (granted, lost or expired;
// not at each renewal). Call it again for the next change.
func (c *Cluster) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// State returns a copy of the committed state as applied on this member.
func (c *Cluster) State() State { return c.fsm.State() }

// Leader returns the name of the Raft leader as this member knows it, or
// "".
func (c *Cluster) Leader() string {
	_, id := c.raft.LeaderWithID()
	return string(id)
}

func (c *Cluster) notLeader() error { return &NotLeaderError{Leader: c.Leader()} }

func (c *Cluster) isLeader() bool { return c.raft.State() == raft.Leader }

// Status is a member's view for `metrolun status`.
type Status struct {
	Name, Role   string
	RaftState    string // leader, follower, candidate or shutdown
	Leader       string
	Term         uint64
	LastIndex    uint64
	CommitIndex  uint64
	AppliedIndex uint64
	// LastContact is when this member last heard from a leader (zero if
	// never; meaningless on the leader itself).
	LastContact time.Time
	State       State
	// WriterEpoch is the epoch this member is writer for, with the time
	// it became so and the lease left; zero when it is not the writer.
	WriterEpoch    uint64
	WriterSince    time.Time
	LeaseRemaining time.Duration
}

// Status reports this member's view of Raft, the state and its lease.
func (c *Cluster) Status() Status {
	st := Status{
		Name:         c.cfg.Name,
		Role:         c.cfg.Role,
		RaftState:    strings.ToLower(c.raft.State().String()),
		Leader:       c.Leader(),
		Term:         c.raft.CurrentTerm(),
		LastIndex:    c.raft.LastIndex(),
		CommitIndex:  c.raft.CommitIndex(),
		AppliedIndex: c.raft.AppliedIndex(),
		LastContact:  c.raft.LastContact(),
		State:        c.State(),
	}
	if l, ok := c.currentLease(time.Now()); ok {
		st.WriterEpoch, st.WriterSince, st.LeaseRemaining = l.epoch, l.since, time.Until(l.until)
	}
	return st
}

// DropInSync takes name out of the in-sync set. Only the writer of epoch
// asks; the error is nil once committed, or wraps ErrNotLeader or
// ErrRefused, or says why nothing was committed.
func (c *Cluster) DropInSync(name string, epoch uint64) error {
	return c.changeInSync(CmdDropInSync, name, epoch)
}

// AddInSync puts name, which finished resync, back in the in-sync set;
// errors as DropInSync.
func (c *Cluster) AddInSync(name string, epoch uint64) error {
	return c.changeInSync(CmdAddInSync, name, epoch)
}

func (c *Cluster) changeInSync(kind, name string, epoch uint64) error {
	return c.writerPropose(Command{Kind: kind, Name: name, ByEpoch: epoch})
}

// writerPropose commits c, which only the writer of c.ByEpoch may ask.
func (c *Cluster) writerPropose(cmd Command) error {
	if !c.isLeader() {
		return c.notLeader()
	}
	if e, _ := c.WriterLease(); e == 0 || e != cmd.ByEpoch {
		return refuse("%s: %s is not the writer of epoch %d", cmd.Kind, c.cfg.Name, cmd.ByEpoch)
	}
	_, err := c.propose(cmd)
	return err
}

// witnesses names the members whose role is witness.
func (c *Cluster) witnesses() []raft.ServerID {
	var ws []raft.ServerID
	for _, m := range c.State().Members {
		if m.Role == RoleWitness {
			ws = append(ws, raft.ServerID(m.Name))
		}
	}
	return ws
}

// logCacheEntries is how many of the latest Raft entries stay in memory.
const logCacheEntries = 64

// propose commits cmd and returns its log index and the state machine's
// verdict (nil or an error wrapping ErrRefused).
func (c *Cluster) propose(cmd Command) (uint64, error) {
	b, err := msgpack.Marshal(cmd)
	if err != nil {
		return 0, err
	}
	for attempt := 0; ; attempt++ {
		// The entry, and the barrier after it, go out without waiting
		// for the grid (termGuard.hold).
		c.trans.hurry(c.cfg.ElectionTimeout)
		f := c.raft.Apply(b, c.cfg.ElectionTimeout)
		err := f.Error()
		// Raft refuses entries for a moment after a leadership transfer
		// that failed; it lifts the refusal within an election timeout.
		if errors.Is(err, raft.ErrLeadershipTransferInProgress) && attempt < 20 {
			select {
			case <-time.After(c.cfg.ElectionTimeout / 10):
				continue
			case <-c.stop:
				return 0, ErrClosed
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
			errors.Is(err, raft.ErrLeadershipTransferInProgress):
			return 0, fmt.Errorf("%w: %v", c.notLeader(), err)
		case errors.Is(err, raft.ErrRaftShutdown):
			return 0, ErrClosed
		default:
			return 0, fmt.Errorf("raftlog: %s: %w", cmd.Kind, err)
		}
		// Followers learn that the entry is committed from the next
		// AppendEntries that carries the commit index, and with nothing
		// new to send Raft waits CommitTimeout for one: a barrier is a new
		// entry, which goes out at once. Nobody waits for it.
		c.raft.Barrier(0)
		if r, ok := f.Response().(error); ok && r != nil {
			return f.Index(), r
		}
		return f.Index(), nil
	}
}

// observe turns Raft's leadership observations into Changed and a look at
// the leader's duties.
func (c *Cluster) observe() {
	defer c.wg.Done()
	for {
		select {
		case <-c.obsCh:
			c.notify()
			c.poke()
		case <-c.stop:
			return
		}
	}
}

func (c *Cluster) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}
