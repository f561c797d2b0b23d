package raftlog

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/metrolun/metrolun/integration/proxy"
)

// Timings for the tests: short enough to keep the package fast, long
// enough for three members and the race detector on two cores.
const (
	testElection = 300 * time.Millisecond
	testLease    = 300 * time.Millisecond
	testDeadline = 15 * time.Second
)

// syncBuf collects one member's log lines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// member is one member of a test cluster; c is nil while it is down.
type member struct {
	name, role string
	dir        string
	listen     string
	addrs      map[string]string // how this member reaches each peer
	tls        *tls.Config
	logs       *syncBuf
	c          *Cluster
	// peers, when set, are the members this one's config lists (members
	// added at run time are missing from the others'); join sets
	// Config.Join.
	peers []string
	join  bool
	lun   *LUN
	image ImageStore
}

type sites struct {
	t       *testing.T
	members []*member
	mu      sync.Mutex // guards member.c against the monitor
}

// freeAddr reserves a loopback port for a member to listen on, so that the
// others (or proxies) know its address before it starts.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// newMembers lays out a, b (data) and w (witness), each dialling the
// others directly. Nothing is started.
func newMembers(t *testing.T) *sites {
	tc := &sites{t: t}
	for _, nr := range [][2]string{{"a", RoleData}, {"b", RoleData}, {"w", RoleWitness}} {
		tc.members = append(tc.members, &member{
			name: nr[0], role: nr[1], dir: t.TempDir(), listen: freeAddr(t),
			addrs: map[string]string{}, logs: &syncBuf{},
		})
	}
	for _, m := range tc.members {
		for _, p := range tc.members {
			if p != m {
				m.addrs[p.name] = p.listen
			}
		}
	}
	t.Cleanup(func() {
		for _, m := range tc.members {
			m.stop(t)
		}
		if t.Failed() {
			for _, m := range tc.members {
				t.Logf("--- log of %s ---\n%s", m.name, m.logs.String())
			}
		}
	})
	return tc
}

// startCluster starts a, b and w and waits for a writer.
func startCluster(t *testing.T) *sites {
	tc := newMembers(t)
	tc.startAll()
	return tc
}

func (tc *sites) startAll() {
	for _, m := range tc.members {
		m.start(tc.t, tc)
	}
}

func (tc *sites) get(name string) *member {
	for _, m := range tc.members {
		if m.name == name {
			return m
		}
	}
	tc.t.Fatalf("no member %s", name)
	return nil
}

func (m *member) config(tc *sites) Config {
	level := hclog.Warn
	if os.Getenv("RAFTLOG_TEST_DEBUG") != "" {
		level = hclog.Debug
	}
	cfg := Config{
		Name: m.name, Role: m.role, Dir: m.dir, Listen: m.listen, TLS: m.tls,
		Lease: testLease, ElectionTimeout: testElection,
		Logger: hclog.New(&hclog.LoggerOptions{Name: m.name, Level: level, Output: m.logs}),
	}
	for _, p := range tc.members {
		if m.peers != nil && !slices.Contains(m.peers, p.name) {
			continue
		}
		cfg.Peers = append(cfg.Peers, Peer{Name: p.name, Role: p.role, Addr: m.addrs[p.name]})
	}
	cfg.Join = m.join
	cfg.LUN = m.lun
	cfg.Image = m.image
	return cfg
}

func (m *member) start(t *testing.T, tc *sites) {
	t.Helper()
	c, err := Open(m.config(tc))
	if err != nil {
		t.Fatalf("open %s: %v", m.name, err)
	}
	tc.mu.Lock()
	m.c = c
	tc.mu.Unlock()
}

func (m *member) stop(t *testing.T) {
	if m.c == nil {
		return
	}
	if err := m.c.Close(); err != nil {
		t.Errorf("close %s: %v", m.name, err)
	}
}

// up returns the members that are running.
func (tc *sites) up() []*member {
	var ms []*member
	for _, m := range tc.members {
		if m.c != nil && !closed(m.c.stop) {
			ms = append(ms, m)
		}
	}
	return ms
}

type running struct {
	name, role string
	c          *Cluster
}

// running is up for the monitor's goroutine.
func (tc *sites) running() []running {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	var rs []running
	for _, m := range tc.members {
		if m.c != nil && !closed(m.c.stop) {
			rs = append(rs, running{m.name, m.role, m.c})
		}
	}
	return rs
}

// waitFor polls cond until it holds, waking on any member's Changed and at
// least every 10ms (Raft's indexes move without a Changed).
func (tc *sites) waitFor(what string, cond func() bool) {
	tc.t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			tc.t.Fatalf("no %s within %v", what, testDeadline)
		}
		cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(time.After(10 * time.Millisecond))}}
		for _, m := range tc.up() {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(m.c.Changed())})
		}
		reflect.Select(cases)
	}
}

// writer waits until exactly one member holds a writer lease with an
// epoch above after, and returns it with the epoch.
func (tc *sites) writer(after uint64) (*member, uint64) {
	tc.t.Helper()
	var w *member
	var epoch uint64
	tc.waitFor(fmt.Sprintf("writer above epoch %d", after), func() bool {
		w, epoch = nil, 0
		for _, m := range tc.up() {
			if e, _ := m.c.WriterLease(); e > after {
				if w != nil {
					return false
				}
				w, epoch = m, e
			}
		}
		return w != nil
	})
	return w, epoch
}

// other returns the data site that is not m.
func (tc *sites) other(m *member) *member {
	for _, o := range tc.members {
		if o != m && o.role == RoleData {
			return o
		}
	}
	tc.t.Fatal("no other data site")
	return nil
}

// monitor samples every member's writer lease until stopped and fails the
// test if two members hold one at the same time or a witness holds one.
// Each round reads all members twice, in order: a member valid with the
// same epoch in both reads held its lease during every read in between,
// so another valid read there is a real overlap, however the sampler is
// scheduled.
type monitor struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	errs    []string
	samples int
}

func (tc *sites) monitor() *monitor {
	mon := &monitor{stop: make(chan struct{}), done: make(chan struct{})}
	type read struct {
		epoch uint64
		ok    bool
	}
	go func() {
		defer close(mon.done)
		for !closed(mon.stop) {
			ms := tc.running()
			r := make([][2]read, len(ms))
			for pass := 0; pass < 2; pass++ {
				for i, m := range ms {
					e, _ := m.c.WriterLease()
					r[i][pass] = read{e, e != 0}
				}
			}
			mon.mu.Lock()
			mon.samples++
			for i, m := range ms {
				if m.role == RoleWitness && (r[i][0].ok || r[i][1].ok) {
					mon.errs = append(mon.errs, fmt.Sprintf("witness %s holds a writer lease", m.name))
				}
				if !r[i][0].ok || !r[i][1].ok || r[i][0].epoch != r[i][1].epoch {
					continue
				}
				for j := range ms {
					if (j > i && r[j][0].ok) || (j < i && r[j][1].ok) {
						mon.errs = append(mon.errs, fmt.Sprintf("%s (epoch %d) and %s (epoch %d) both hold a writer lease",
							m.name, r[i][0].epoch, ms[j].name, max(r[j][0].epoch, r[j][1].epoch)))
					}
				}
			}
			mon.mu.Unlock()
			time.Sleep(200 * time.Microsecond) // sampling rate, not synchronisation
		}
	}()
	tc.t.Cleanup(func() { mon.check(tc.t) })
	return mon
}

// check stops the monitor and reports what it saw.
func (mon *monitor) check(t *testing.T) {
	t.Helper()
	if !closed(mon.stop) {
		close(mon.stop)
	}
	<-mon.done
	mon.mu.Lock()
	defer mon.mu.Unlock()
	if len(mon.errs) > 0 {
		t.Errorf("%d lease violations in %d samples, first: %s", len(mon.errs), mon.samples, mon.errs[0])
		mon.errs = nil
	}
}

func (m *member) lastUntil() time.Time {
	m.c.mu.Lock()
	defer m.c.mu.Unlock()
	return m.c.lastUntil
}

// TestWriterElection: the first writer is a data site, and a witness that
// is made leader hands leadership on instead of writing.
func TestWriterElection(t *testing.T) {
	tc := startCluster(t)
	mon := tc.monitor()
	w, epoch := tc.writer(0)
	if w.role != RoleData || epoch < 1 {
		t.Fatalf("writer %s (%s) epoch %d", w.name, w.role, epoch)
	}
	if l := w.c.Leader(); l != w.name {
		t.Fatalf("writer %s, leader %s", w.name, l)
	}
	tc.waitFor("every member sees the writer", func() bool {
		for _, m := range tc.members {
			s := m.c.State()
			if s.Writer != w.name || s.Epoch != epoch || len(s.Members) != 3 || len(s.InSync) != 2 {
				return false
			}
		}
		return true
	})
	st := w.c.Status()
	if st.RaftState != "leader" || st.WriterEpoch != epoch || st.LeaseRemaining <= 0 || st.LeaseRemaining > testLease {
		t.Fatalf("writer status %+v", st)
	}

	// Force the witness to lead: it must hand leadership to a data site,
	// which then waits out the lease and writes in a new epoch.
	wit := tc.get("w")
	if err := w.c.raft.LeadershipTransferToServer("w", "w").Error(); err != nil {
		t.Fatalf("transfer to the witness: %v", err)
	}
	tc.waitFor("the witness hands leadership on", func() bool { return wit.c.handoffs.Load() > 0 })
	w2, epoch2 := tc.writer(epoch)
	if w2.role != RoleData || w2.c.Leader() != w2.name {
		t.Fatalf("writer %s (%s), leader %s", w2.name, w2.role, w2.c.Leader())
	}
	t.Logf("after the witness led: writer %s epoch %d", w2.name, epoch2)
	mon.check(t)
}

// TestCrashFailover: the writer dies; the other data site takes over in a
// higher epoch, only after the old lease is over. The old writer comes
// back from its directory as a follower.
func TestCrashFailover(t *testing.T) {
	tc := startCluster(t)
	mon := tc.monitor()
	x, epoch := tc.writer(0)
	y := tc.other(x)

	// Let the lease be renewed a few times before the crash.
	_, until0 := x.c.WriterLease()
	tc.waitFor("lease renewals", func() bool {
		e, u := x.c.WriterLease()
		return e == epoch && u.Sub(until0) >= testLease/2
	})
	x.stop(t)
	crash := time.Now()
	oldEnd := x.lastUntil()
	if e, _ := x.c.WriterLease(); e != 0 {
		t.Fatalf("closed member still holds a lease for epoch %d", e)
	}

	w2, epoch2 := tc.writer(epoch)
	took := time.Since(crash)
	if w2 != y {
		t.Fatalf("new writer %s, want %s", w2.name, y.name)
	}
	since := y.c.Status().WriterSince
	t.Logf("failover: %v from close to the new writer lease (epoch %d -> %d); new lease began %v after the old one ended",
		took.Round(time.Millisecond), epoch, epoch2, since.Sub(oldEnd).Round(time.Millisecond))
	if since.Before(oldEnd) {
		t.Fatalf("new lease began %v before the old one ended", oldEnd.Sub(since))
	}

	// The old writer restarts from its directory and follows.
	x.start(t, tc)
	tc.waitFor("the old writer rejoins", func() bool {
		s := x.c.State()
		return s.Epoch == epoch2 && s.Writer == y.name && x.c.Leader() == y.name
	})
	if e, _ := x.c.WriterLease(); e != 0 {
		t.Fatalf("restarted old writer holds a lease for epoch %d", e)
	}
	mon.check(t)
}

// TestPromote: a planned move hands the writer over without overlap and
// without waiting out the lease.
func TestPromote(t *testing.T) {
	tc := startCluster(t)
	mon := tc.monitor()
	x, epoch := tc.writer(0)
	y := tc.other(x)

	var nle *NotLeaderError
	if err := y.c.Promote(y.name, time.Second); !errors.As(err, &nle) || !errors.Is(err, ErrNotLeader) || nle.Leader != x.name {
		t.Fatalf("promote on a follower: %v", err)
	}
	if err := x.c.Promote("w", time.Second); !errors.Is(err, ErrRefused) {
		t.Fatalf("promote the witness: %v", err)
	}
	if err := x.c.Promote("nobody", time.Second); !errors.Is(err, ErrRefused) {
		t.Fatalf("promote a stranger: %v", err)
	}
	if err := x.c.Promote(x.name, time.Second); err != nil {
		t.Fatalf("promote the writer itself: %v", err)
	}

	start := time.Now()
	if err := x.c.Promote(y.name, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	w2, epoch2 := tc.writer(epoch)
	took := time.Since(start)
	if w2 != y || epoch2 != epoch+1 {
		t.Fatalf("writer %s epoch %d after promote", w2.name, epoch2)
	}
	t.Logf("promote %s -> %s: %v to the new writer lease (lease %v, takeover wait %v)",
		x.name, y.name, took.Round(time.Millisecond), testLease, y.c.takeoverWait())
	if s := y.c.State(); s.Released != epoch {
		t.Fatalf("released %d, want %d", s.Released, epoch)
	}
	if e, _ := x.c.WriterLease(); e != 0 {
		t.Fatalf("old writer still holds epoch %d", e)
	}

	// And back again.
	start = time.Now()
	if err := y.c.Promote(x.name, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	w3, epoch3 := tc.writer(epoch2)
	if w3 != x || epoch3 != epoch2+1 {
		t.Fatalf("writer %s epoch %d after promote back", w3.name, epoch3)
	}
	t.Logf("promote %s -> %s: %v", y.name, x.name, time.Since(start).Round(time.Millisecond))
	mon.check(t)
}

// TestWriterSlowsBeats: the writer has Raft's own heartbeats slowed
// (slowBeats; its commit-index requests on the grid stand in for them)
// and every other member, the old writer after a planned move included,
// keeps the election timeout as its heartbeat timeout, which is how
// long a follower waits for its leader.
func TestWriterSlowsBeats(t *testing.T) {
	tc := startCluster(t)
	mon := tc.monitor()
	x, epoch := tc.writer(0)
	y := tc.other(x)
	check := func(writer *member) {
		t.Helper()
		tc.waitFor("heartbeat timeouts", func() bool {
			for _, m := range tc.up() {
				want := testElection
				if m == writer {
					want *= slowBeatFactor
				}
				if rc := m.c.raft.ReloadableConfig(); rc.HeartbeatTimeout != want || rc.ElectionTimeout < want {
					return false
				}
			}
			return true
		})
		for _, m := range tc.up() {
			rc := m.c.raft.ReloadableConfig()
			t.Logf("%s: heartbeat timeout %v, election timeout %v", m.name, rc.HeartbeatTimeout, rc.ElectionTimeout)
		}
	}
	check(x)
	// The lease lives on the commit-index requests: it does not lapse.
	until := x.lastUntil()
	tc.waitFor("lease renewed", func() bool { return x.lastUntil().After(until.Add(2 * testLease)) })
	if e, _ := x.c.WriterLease(); e != epoch {
		t.Fatalf("writer holds epoch %d, want %d", e, epoch)
	}
	if err := x.c.Promote(y.name, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if w, _ := tc.writer(epoch); w != y {
		t.Fatalf("writer %s after promote, want %s", w.name, y.name)
	}
	check(y)
	mon.check(t)
}

// TestRestartRejoin: a member reopened from its directory has its state at
// once (from its snapshot) and catches up with what it missed.
func TestRestartRejoin(t *testing.T) {
	tc := startCluster(t)
	x, epoch := tc.writer(0)
	y := tc.other(x)
	tc.waitFor("y applies the writer", func() bool { return y.c.State().Epoch == epoch })
	if err := y.c.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	before := y.c.State()
	y.stop(t)

	// What y misses while it is down.
	if err := x.c.DropInSync(y.name, epoch); err != nil {
		t.Fatal(err)
	}
	y.start(t, tc)
	s := y.c.State()
	if len(s.Members) != 3 || s.Epoch != before.Epoch || s.Writer != before.Writer {
		t.Fatalf("reopened state %+v, before close %+v", s, before)
	}
	tc.waitFor("y catches up", func() bool {
		s := y.c.State()
		return y.c.Leader() == x.name && s.Epoch == epoch && slices.Equal(s.InSync, []string{x.name})
	})
	if err := x.c.AddInSync(y.name, epoch); err != nil {
		t.Fatal(err)
	}
	tc.waitFor("y sees itself in sync", func() bool { return y.c.State().IsInSync(y.name) })
}

// TestInSyncChanges: only the writer of the current epoch changes the
// in-sync set, and a site out of sync cannot be promoted.
func TestInSyncChanges(t *testing.T) {
	tc := startCluster(t)
	x, epoch := tc.writer(0)
	y := tc.other(x)

	if err := y.c.DropInSync(x.name, epoch); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("drop from a follower: %v", err)
	}
	if err := x.c.DropInSync(y.name, epoch-1); !errors.Is(err, ErrRefused) {
		t.Fatalf("drop with a stale epoch: %v", err)
	}
	if err := x.c.DropInSync(y.name, epoch+1); !errors.Is(err, ErrRefused) {
		t.Fatalf("drop with a future epoch: %v", err)
	}
	if err := x.c.DropInSync("w", epoch); !errors.Is(err, ErrRefused) {
		t.Fatalf("drop the witness: %v", err)
	}
	if err := x.c.DropInSync(x.name, epoch); !errors.Is(err, ErrRefused) {
		t.Fatalf("writer dropped itself: %v", err)
	}
	if err := x.c.DropInSync(y.name, epoch); err != nil {
		t.Fatal(err)
	}
	if s := x.c.State(); !slices.Equal(s.InSync, []string{x.name}) {
		t.Fatalf("in sync %v after drop", s.InSync)
	}
	if err := x.c.Promote(y.name, time.Second); !errors.Is(err, ErrRefused) {
		t.Fatalf("promote an out-of-sync site: %v", err)
	}
	if err := x.c.DropInSync(y.name, epoch); !errors.Is(err, ErrRefused) {
		t.Fatalf("drop twice: %v", err)
	}
	if err := y.c.AddInSync(y.name, epoch); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("add from a follower: %v", err)
	}
	if err := x.c.AddInSync(y.name, epoch); err != nil {
		t.Fatal(err)
	}
	tc.waitFor("everyone sees y in sync", func() bool {
		for _, m := range tc.members {
			if !m.c.State().IsInSync(y.name) {
				return false
			}
		}
		return true
	})
}

// TestPartitionedWriter: the writer is cut off from both other members by
// proxies; its lease runs out before the other data site's begins, and it
// follows after the heal.
func TestPartitionedWriter(t *testing.T) {
	tc := newMembers(t)
	// proxies[i][j] carries what member i sends to member j.
	proxies := map[[2]string]*proxy.Proxy{}
	for _, m := range tc.members {
		for _, p := range tc.members {
			if m == p {
				continue
			}
			px, err := proxy.New("127.0.0.1:0", p.listen)
			if err != nil {
				t.Fatal(err)
			}
			// Cleanups run last first: proxies close after the members.
			t.Cleanup(func() { px.Close() })
			proxies[[2]string{m.name, p.name}] = px
			m.addrs[p.name] = px.Addr()
		}
	}
	tc.startAll()
	mon := tc.monitor()
	x, epoch := tc.writer(0)
	y := tc.other(x)
	cutLink := func(m, n string, cut bool) {
		proxies[[2]string{m, n}].Partition(cut, cut)
		proxies[[2]string{n, m}].Partition(cut, cut)
	}

	// A planned move to a site the writer cannot reach fails, and the
	// writer takes the next epoch itself at once.
	cutLink(x.name, y.name, true)
	start := time.Now()
	if err := x.c.Promote(y.name, 5*time.Second); err == nil {
		t.Fatal("promote to an unreachable site succeeded")
	} else {
		t.Logf("promote to an unreachable site: %v", err)
	}
	if w, e := tc.writer(epoch); w != x || e != epoch+1 {
		t.Fatalf("after a failed promote: writer %s epoch %d, want %s epoch %d", w.name, e, x.name, epoch+1)
	}
	if s := x.c.State(); s.Released != epoch {
		t.Fatalf("released %d, want %d", s.Released, epoch)
	}
	t.Logf("writer back after a failed promote in %v", time.Since(start).Round(time.Millisecond))
	epoch++
	cutLink(x.name, y.name, false)
	tc.waitFor("y catches up", func() bool { return y.c.State().Epoch == epoch && y.c.Leader() == x.name })

	isolate := func(cut bool) {
		for _, o := range tc.members {
			if o != x {
				cutLink(x.name, o.name, cut)
			}
		}
	}
	isolate(true)
	cut := time.Now()
	tc.waitFor("the isolated writer's lease ends", func() bool { e, _ := x.c.WriterLease(); return e == 0 })
	ended := time.Since(cut)
	if err := x.c.DropInSync(y.name, epoch); err == nil {
		t.Fatal("the isolated writer dropped a replica")
	}
	w2, epoch2 := tc.writer(epoch)
	took := time.Since(cut)
	if w2 != y {
		t.Fatalf("new writer %s, want %s", w2.name, y.name)
	}
	oldEnd, since := x.lastUntil(), y.c.Status().WriterSince
	t.Logf("partition: old lease gone after %v, new writer after %v; new lease began %v after the old one's last possible end",
		ended.Round(time.Millisecond), took.Round(time.Millisecond), since.Sub(oldEnd).Round(time.Millisecond))
	if since.Before(oldEnd) {
		t.Fatalf("new lease began %v before the isolated writer's lease could end", oldEnd.Sub(since))
	}

	isolate(false)
	tc.waitFor("the old writer follows after the heal", func() bool {
		s := x.c.State()
		return s.Epoch == epoch2 && x.c.Leader() == y.name
	})
	if e, _ := x.c.WriterLease(); e != 0 {
		t.Fatalf("healed old writer holds epoch %d", e)
	}
	mon.check(t)
}

// TestConfigErrors: a bad config is refused with a clear error.
func TestConfigErrors(t *testing.T) {
	good := func() Config {
		return Config{Name: "a", Role: RoleData, Dir: t.TempDir(), Listen: "127.0.0.1:0", Peers: []Peer{
			{Name: "a", Role: RoleData}, {Name: "b", Role: RoleData, Addr: "127.0.0.1:1"},
		}, Lease: testLease, ElectionTimeout: testElection}
	}
	cases := map[string]func(*Config){
		"no name":         func(c *Config) { c.Name = "" },
		"bad role":        func(c *Config) { c.Role = "boss" },
		"self not a peer": func(c *Config) { c.Name = "c" },
		"role mismatch":   func(c *Config) { c.Role = RoleWitness },
		"duplicate peer":  func(c *Config) { c.Peers = append(c.Peers, c.Peers[1]) },
		"peer no address": func(c *Config) { c.Peers[1].Addr = "" },
		"no dir":          func(c *Config) { c.Dir = "" },
		"tls without CAs": func(c *Config) { c.TLS = &tls.Config{Certificates: []tls.Certificate{{}}} },
		"negative lease":  func(c *Config) { c.Lease = -time.Second },
		"no lease":        func(c *Config) { c.Lease = 0 },
		"no election":     func(c *Config) { c.ElectionTimeout = 0 },
	}
	for name, mod := range cases {
		cfg := good()
		mod(&cfg)
		if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "config") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestCloseStopsEverything: closed members leave no goroutine behind.
func TestCloseStopsEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	tc := startCluster(t)
	x, epoch := tc.writer(0)
	if err := x.c.DropInSync(tc.other(x).name, epoch); err != nil {
		t.Fatal(err)
	}
	for _, m := range tc.members {
		m.stop(t)
	}
	deadline := time.Now().Add(testDeadline)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the cluster:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond) // polling the count; nothing to wait on
	}
}
