package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/integration/checker"
	"github.com/metrolun/metrolun/integration/initiator"
	"github.com/metrolun/metrolun/integration/proxy"
	"github.com/metrolun/metrolun/replica"
)

// The torture harness: a cluster of `metrolun serve` processes on
// loopback whose inter-site links (Raft and replication) all pass through
// fault proxies, one per directed member pair and link, so that a fault
// schedule can partition any member from any other (one or both
// directions), add latency and reset connections, besides killing,
// freezing, restarting and promoting sites and replacing a site's image
// with an empty file; with a metrolun_faults build it also makes a
// site's disk fail. It implements checker.Faults, checker.LinkFaults,
// checker.ImageFaults and checker.StorageFaults.

// TortureTarget is the iSCSI target every data site serves (the demo's).
const TortureTarget = "iqn.2026-11.io.metrolun:demo"

// TortureConfig describes a torture cluster.
type TortureConfig struct {
	// Bin is the metrolun binary.
	Bin string
	// Dir receives one directory per member (config, Raft state, LUN
	// image) and one log file per member.
	Dir string
	// Sites is the number of data sites (2 or 3; default 2).
	Sites int
	// NoWitness leaves the witness out (only sensible with 3 sites).
	NoWitness bool
	// Size of the LUN in bytes (default 64 MiB).
	Size int64
	// Cluster timings; zero keeps metrolun's defaults.
	Lease, ElectionTimeout, ReplicaTimeout time.Duration
	// QuorumLoss is the cluster block's quorum_loss; empty keeps the
	// default.
	QuorumLoss string
	// LogLevel of the members (default "info").
	LogLevel string
	// KillResetsLinks: Kill also resets the killed member's links, so
	// bytes it had sent that are still in the (emulated) WAN are lost
	// with it, as in a site disaster. Without it they are delivered.
	KillResetsLinks bool
	// Logf, when set, is told about every fault as it is applied.
	Logf func(format string, args ...any)
	// StorageFaults says Bin is a metrolun_faults build, whose LUN store
	// fails on demand (cmd/metrolun/faults.go): StorageFault needs it.
	StorageFaults bool
}

// TortureMember is one member process.
type TortureMember struct {
	Name, Role string
	// Config is the member's metrolun.hcl, Log its stdout and stderr
	// (appended to across restarts).
	Config, Log string
	// Backing is a data site's LUN image, BlockSize its block size.
	Backing   string
	BlockSize uint32
	// Listen addresses: what the member binds. Other members reach Raft
	// and replication through proxies; Admin and ISCSI are direct.
	Raft, Replication, Admin, ISCSI string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	frozen  bool
	starts  int
	lastErr string
}

// Running reports whether the member's process is alive.
func (m *TortureMember) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return false
	}
	select {
	case <-m.exited:
		return false
	default:
		return true
	}
}

// PID of the running process (0 if none).
func (m *TortureMember) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// TortureLink is one directed link through a proxy: From dials To's Raft
// or replication address at the proxy.
type TortureLink struct {
	From, To, Kind string // Kind: "raft" or "replication"
	Proxy          *proxy.Proxy

	// Guarded by TortureCluster.mu.
	fwdBlocked, backBlocked bool
}

// TortureCluster is a running torture cluster.
type TortureCluster struct {
	cfg     TortureConfig
	Members []*TortureMember
	Links   []*TortureLink

	poll *admin.Client // see pollClient

	mu      sync.Mutex
	latency time.Duration
	closed  bool

	// Storage faults, guarded by storageMu (held while one is applied:
	// they are applied one at a time).
	storageMu sync.Mutex
	// storageOpen is the fault in effect per site.
	storageOpen map[string]checker.FaultKind
	// injectedBase is a site's faults.json.injected when its fault was
	// set; injected sums, per site and kind, what each fault added (a
	// process counts from zero again after a restart).
	injectedBase map[string]map[string]int
	injected     map[string]map[string]int

	// replaced lists the images ReplaceImage replaced (guarded by mu).
	replaced []ImageReplacement
}

// ImageReplacement is one image ReplaceImage replaced.
type ImageReplacement struct {
	Site string
	// OldUUID is the identity the image had (empty if it had none).
	OldUUID string
	// logFrom is every data site's log size when it was replaced.
	logFrom map[string]int64
}

// Member returns the member called name, or nil.
func (c *TortureCluster) Member(name string) *TortureMember {
	for _, m := range c.Members {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// DataSites returns the data members in config order.
func (c *TortureCluster) DataSites() []*TortureMember {
	var out []*TortureMember
	for _, m := range c.Members {
		if m.Role == conf.RoleData {
			out = append(out, m)
		}
	}
	return out
}

// Targets are the data sites' portals for checker.Workload.
func (c *TortureCluster) Targets() []checker.Target {
	var out []checker.Target
	for _, m := range c.DataSites() {
		out = append(out, checker.Target{Site: m.Name, Addr: m.ISCSI, IQN: TortureTarget, LUN: 0})
	}
	return out
}

// Hold is how long a site holds an operation while it waits for a
// writer or a lease before it answers NOT READY (replica.SiteConfig.Hold).
func (c *TortureCluster) Hold() time.Duration {
	lease, rt := c.timings()
	return rt + 2*lease
}

func (c *TortureCluster) timings() (lease, replicaTimeout time.Duration) {
	lease, rt := c.cfg.Lease, c.cfg.ReplicaTimeout
	if lease == 0 {
		lease = conf.DefaultLease
	}
	if rt == 0 {
		rt = conf.DefaultReplicaTimeout
	}
	return lease, rt
}

func (c *TortureCluster) logf(format string, args ...any) {
	if c.cfg.Logf != nil {
		c.cfg.Logf(format, args...)
	}
}

// hostBasePort finds a port p such that p .. p+n-1 are free on
// 127.0.0.1 .. 127.0.0.(hosts).
func hostBasePort(hosts, n int) (int, error) {
	for attempt := 0; attempt < 200; attempt++ {
		base := 20000 + rand.IntN(40000)
		ok := true
		var held []net.Listener
		for h := 1; h <= hosts && ok; h++ {
			for p := base; p < base+n; p++ {
				l, err := net.Listen("tcp", net.JoinHostPort("127.0.0."+strconv.Itoa(h), strconv.Itoa(p)))
				if err != nil {
					ok = false
					break
				}
				held = append(held, l)
			}
		}
		for _, l := range held {
			l.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no %d free ports in a row on 127.0.0.1..%d", n, hosts)
}

// StartTorture writes the configs, starts the proxies and every member,
// and waits (bounded by ctx) until a writer serves. On error everything
// started is stopped.
func StartTorture(ctx context.Context, cfg TortureConfig) (_ *TortureCluster, err error) {
	if cfg.Bin == "" || cfg.Dir == "" {
		return nil, errors.New("torture: Bin and Dir are required")
	}
	if cfg.Sites == 0 {
		cfg.Sites = 2
	}
	if cfg.Sites < 2 || cfg.Sites > 3 {
		return nil, fmt.Errorf("torture: %d data sites, want 2 or 3", cfg.Sites)
	}
	if cfg.Sites == 2 && cfg.NoWitness {
		return nil, errors.New("torture: two data sites need the witness")
	}
	if cfg.Size == 0 {
		cfg.Size = 64 << 20
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	cfg.Dir = dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	witness := !cfg.NoWitness
	hosts := cfg.Sites
	if witness {
		hosts++
	}
	// Per host: Raft, replication, admin (as the demo lays them out) and
	// iSCSI.
	base, err := hostBasePort(hosts, 4)
	if err != nil {
		return nil, err
	}
	configs := conf.DefaultClusterPorts(dir, cfg.Sites, witness, base+3, base)
	c := &TortureCluster{cfg: cfg, storageOpen: map[string]checker.FaultKind{},
		injectedBase: map[string]map[string]int{}, injected: map[string]map[string]int{}}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if _, err = WriteAdminToken(configs[0].Cluster.AdminTokenFile); err != nil {
		return nil, err
	}
	own := map[string]conf.Member{}
	for _, m := range configs[0].Cluster.Members {
		own[m.Name] = m
	}
	// One proxy per directed pair and link.
	via := map[[3]string]string{} // from, to, kind -> proxy address
	for _, from := range configs {
		for _, to := range configs {
			if from.Name == to.Name {
				continue
			}
			kinds := []string{"raft"}
			if from.Role == conf.RoleData && to.Role == conf.RoleData {
				kinds = append(kinds, "replication")
			}
			for _, kind := range kinds {
				up := own[to.Name].Raft
				if kind == "replication" {
					up = own[to.Name].Replication
				}
				host, _, _ := net.SplitHostPort(own[from.Name].Raft)
				p, err := proxy.New(net.JoinHostPort(host, "0"), up)
				if err != nil {
					return nil, fmt.Errorf("torture: proxy %s->%s %s: %w", from.Name, to.Name, kind, err)
				}
				c.Links = append(c.Links, &TortureLink{From: from.Name, To: to.Name, Kind: kind, Proxy: p})
				via[[3]string{from.Name, to.Name, kind}] = p.Addr()
			}
		}
	}
	// Every member authenticates with its certificate, as a demo's do;
	// the proxies pass TLS through as bytes, and each member checks the
	// name of the one it meant to reach, not the proxy's address.
	if err := IssueCerts(ctx, cfg.Bin, dir, configs); err != nil {
		return nil, err
	}
	for _, mc := range configs {
		mc.LogLevel = cfg.LogLevel
		cl := mc.Cluster
		if cfg.Lease > 0 {
			cl.Lease = cfg.Lease
		}
		if cfg.ElectionTimeout > 0 {
			cl.ElectionTimeout = cfg.ElectionTimeout
		}
		if cfg.ReplicaTimeout > 0 {
			cl.ReplicaTimeout = cfg.ReplicaTimeout
		}
		if cfg.QuorumLoss != "" {
			cl.QuorumLoss = cfg.QuorumLoss
		}
		for i := range cl.Members {
			p := &cl.Members[i]
			if p.Name == mc.Name {
				continue
			}
			p.Raft = via[[3]string{mc.Name, p.Name, "raft"}]
			if p.Role == conf.RoleData && mc.Role == conf.RoleData {
				p.Replication = via[[3]string{mc.Name, p.Name, "replication"}]
			}
		}
		m := &TortureMember{
			Name: mc.Name, Role: mc.Role,
			Config: filepath.Join(mc.DataDir, "metrolun.hcl"),
			Log:    filepath.Join(dir, mc.Name+".log"),
			Raft:   cl.RaftListen, Replication: cl.ReplicationListen, Admin: cl.AdminListen,
		}
		for ti := range mc.Targets {
			for li := range mc.Targets[ti].LUNs {
				mc.Targets[ti].LUNs[li].Size = cfg.Size
			}
		}
		if mc.Role == conf.RoleData {
			m.ISCSI = mc.ISCSI.Listen[0]
			m.Backing = mc.Targets[0].LUNs[0].Path
			m.BlockSize = uint32(mc.Targets[0].LUNs[0].BlockSize)
		}
		if err := os.MkdirAll(mc.DataDir, 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(m.Config, []byte(renderTortureConfig(mc)), 0o644); err != nil {
			return nil, err
		}
		// What the member will read must be what was meant.
		if _, err := conf.Load(m.Config); err != nil {
			return nil, fmt.Errorf("torture: generated config: %w", err)
		}
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		if err := c.start(m); err != nil {
			return nil, err
		}
	}
	for _, m := range c.Members {
		if err := c.waitReady(ctx, m); err != nil {
			return nil, err
		}
	}
	for {
		if w, _ := c.PollWriters(ctx); len(w) == 1 {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("torture: no writer elected: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// renderTortureConfig writes c as HCL in the layout `metrolun demo`
// writes (conf.Load reads it back; StartTorture checks that it does).
func renderTortureConfig(c *conf.Config) string {
	q := func(s string) string { return strconv.Quote(strings.ReplaceAll(s, "${", "$${")) }
	list := func(ss []string) string {
		var qs []string
		for _, s := range ss {
			qs = append(qs, q(s))
		}
		return "[" + strings.Join(qs, ", ") + "]"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# written by the metrolun torture harness\nname = %s\nrole = %s\ndata_dir = %s\nlog_level = %s\n\n",
		q(c.Name), q(c.Role), q(c.DataDir), q(c.LogLevel))
	fmt.Fprintf(&b, "iscsi {\n  listen = %s\n  portal_group = %d\n}\n", list(c.ISCSI.Listen), c.ISCSI.PortalGroup)
	cl := c.Cluster
	fmt.Fprintf(&b, "\ncluster {\n  raft_listen = %s\n", q(cl.RaftListen))
	if cl.ReplicationListen != "" {
		fmt.Fprintf(&b, "  replication_listen = %s\n", q(cl.ReplicationListen))
	}
	fmt.Fprintf(&b, "  admin_listen = %s\n  lease = %s\n  election_timeout = %s\n  replica_timeout = %s\n",
		q(cl.AdminListen), q(cl.Lease.String()), q(cl.ElectionTimeout.String()), q(cl.ReplicaTimeout.String()))
	if cl.AdminTokenFile != "" {
		fmt.Fprintf(&b, "  admin_token_file = %s\n", q(cl.AdminTokenFile))
	}
	if cl.QuorumLoss != "" {
		fmt.Fprintf(&b, "  quorum_loss = %s\n", q(cl.QuorumLoss))
	}
	b.WriteString(tlsBlock(cl))
	for _, m := range cl.Members {
		fmt.Fprintf(&b, "\n  member %s {\n    role = %s\n    raft = %s\n", q(m.Name), q(m.Role), q(m.Raft))
		if m.Replication != "" {
			fmt.Fprintf(&b, "    replication = %s\n", q(m.Replication))
		}
		fmt.Fprintf(&b, "    admin = %s\n", q(m.Admin))
		if m.Role == conf.RoleData {
			fmt.Fprintf(&b, "    iscsi = %s\n    portal_group = %d\n", list(m.ISCSI), m.PortalGroup)
		}
		b.WriteString("  }\n")
	}
	b.WriteString("}\n")
	for _, t := range c.Targets {
		fmt.Fprintf(&b, "\ntarget %s {\n", q(t.Name))
		for _, l := range t.LUNs {
			fmt.Fprintf(&b, "  lun \"%d\" {\n    path = %s\n    size = %d\n    block_size = %d\n    thin = %t\n  }\n",
				l.ID, q(l.Path), l.Size, l.BlockSize, l.Thin)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// start runs `metrolun serve` for m in a process group of its own.
func (c *TortureCluster) start(m *TortureMember) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return errors.New("torture: cluster closed")
	}
	logf, err := os.OpenFile(m.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.starts++
	fmt.Fprintf(logf, "=== torture: start %d of %s at %s\n", m.starts, m.Name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(c.cfg.Bin, "serve", "--config", m.Config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = groupAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("torture: start %s: %w", m.Name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	m.cmd, m.exited, m.frozen = cmd, exited, false
	return nil
}

// waitReady waits until m's admin endpoint (and a data site's portal)
// accept connections.
func (c *TortureCluster) waitReady(ctx context.Context, m *TortureMember) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	addrs := []string{m.Admin}
	if m.ISCSI != "" {
		addrs = append(addrs, m.ISCSI)
	}
	for _, a := range addrs {
		for {
			conn, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				conn.Close()
				break
			}
			select {
			case <-exited:
				return fmt.Errorf("torture: %s exited while starting: %s", m.Name, tailFile(m.Log, 10))
			case <-ctx.Done():
				return fmt.Errorf("torture: %s not listening on %s: %w; log: %s", m.Name, a, ctx.Err(), tailFile(m.Log, 10))
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// signal sends sig to m's process group.
func (m *TortureMember) signal(sig syscall.Signal) error {
	pid := m.PID()
	if pid == 0 || !m.Running() {
		return fmt.Errorf("%s is not running", m.Name)
	}
	return killGroup(pid, sig)
}

// waitExit waits up to d for m's process to end.
func (m *TortureMember) waitExit(d time.Duration) bool {
	m.mu.Lock()
	ch := m.exited
	m.mu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func (c *TortureCluster) member(name string) (*TortureMember, error) {
	m := c.Member(name)
	if m == nil {
		return nil, fmt.Errorf("torture: no member %q", name)
	}
	return m, nil
}

// Kill sends SIGKILL to a member and waits until it is gone.
func (c *TortureCluster) Kill(site string) error {
	c.logf("torture: kill -9 %s", site)
	m, err := c.member(site)
	if err != nil {
		return err
	}
	if err := m.signal(syscall.SIGKILL); err != nil {
		return err
	}
	if !m.waitExit(10 * time.Second) {
		return fmt.Errorf("%s survived SIGKILL for 10s", site)
	}
	if c.cfg.KillResetsLinks {
		return c.ResetLinks(site)
	}
	return nil
}

// ReplaceImage kills site with SIGKILL and, once another data site
// serves as writer, replaces its backing file with an empty one (the
// identity block at its end goes with it), as a new disk or a mount
// missing at boot would; the site stays down until Restart. A writer
// elsewhere holds every acknowledged write (it is in the in-sync set),
// so the cluster loses nothing; when no other site takes over within
// three holds, site's image may be the only up-to-date one and is kept
// (the step fails, and is a plain kill -9).
func (c *TortureCluster) ReplaceImage(site string) error {
	m, err := c.member(site)
	if err != nil {
		return err
	}
	if m.Role != conf.RoleData {
		return fmt.Errorf("%s has no image", site)
	}
	if err := c.Kill(site); err != nil {
		return err
	}
	bound := 3*c.Hold() + 5*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	for {
		w, _ := c.PollWriters(ctx)
		if len(w) == 1 && w[0] != site {
			c.logf("torture: %s is writer; replacing the image of %s", w[0], site)
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no other data site took over as writer within %v of killing %s: its image may be the only up-to-date one, kept", bound, site)
		case <-time.After(100 * time.Millisecond):
		}
	}
	rep := ImageReplacement{Site: site, OldUUID: imageUUID(m.Backing), logFrom: map[string]int64{}}
	for _, d := range c.DataSites() {
		if fi, err := os.Stat(d.Log); err == nil {
			rep.logFrom[d.Name] = fi.Size()
		}
	}
	// A new file renamed over the old one: a new inode, as a new disk.
	tmp := m.Backing + ".replace"
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, m.Backing); err != nil {
		return err
	}
	c.logf("torture: replaced the image of %s (identity %q) with an empty file", site, rep.OldUUID)
	c.mu.Lock()
	c.replaced = append(c.replaced, rep)
	c.mu.Unlock()
	return nil
}

// imageUUID is the identity UUID at the end of a backing file ("" when
// it has none).
func imageUUID(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() < 4096 {
		return ""
	}
	b := make([]byte, 4096)
	if _, err := f.ReadAt(b, fi.Size()-4096); err != nil || !bytes.HasPrefix(b, []byte("MLUNIMG1")) {
		return ""
	}
	return fmt.Sprintf("%x", b[16:32])
}

// Replaced returns the images ReplaceImage replaced.
func (c *TortureCluster) Replaced() []ImageReplacement {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.replaced)
}

// CheckReplaced checks, once the cluster is in sync, that every replaced
// image was taken for what it is: a writer's log says it copied that
// site in full after the replacement, and the site's image now has a
// new identity that the cluster trusts. It returns one line per
// replacement.
func (c *TortureCluster) CheckReplaced(ctx context.Context) ([]string, error) {
	reps := c.Replaced()
	if len(reps) == 0 {
		return nil, nil
	}
	status, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	var lines []string
	var errs []error
	for i, r := range reps {
		copied := ""
		for _, d := range c.DataSites() {
			if logHasFrom(d.Log, r.logFrom[d.Name], "copied in full", "replica="+r.Site) {
				copied = d.Name
				break
			}
		}
		if copied == "" {
			errs = append(errs, fmt.Errorf("%s's image was replaced, and no writer's log says it copied it in full", r.Site))
		}
		if i < len(reps)-1 && slices.ContainsFunc(reps[i+1:], func(o ImageReplacement) bool { return o.Site == r.Site }) {
			lines = append(lines, fmt.Sprintf("%s: copied in full by %s", r.Site, copied))
			continue // its identity is the later replacement's
		}
		var img *admin.ImageStatus
		for _, m := range status {
			if m.Name == r.Site && m.Status != nil {
				img = m.Status.Image
			}
		}
		switch {
		case img == nil:
			errs = append(errs, fmt.Errorf("%s: status shows no image", r.Site))
		case img.UUID == r.OldUUID || img.Untrusted != "":
			errs = append(errs, fmt.Errorf("%s's image after its replacement: identity %s (before: %s), untrusted %q", r.Site, img.UUID, r.OldUUID, img.Untrusted))
		default:
			lines = append(lines, fmt.Sprintf("%s: copied in full by %s; identity %s (was %s) gen %d, trusted", r.Site, copied, img.UUID, r.OldUUID, img.Gen))
		}
	}
	return lines, errors.Join(errs...)
}

// logHasFrom reports whether a line past offset from in the file at path
// holds every part.
func logHasFrom(path string, from int64, parts ...string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b, _ := io.ReadAll(io.NewSectionReader(f, from, 1<<40))
	for _, line := range strings.Split(string(b), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// Restart starts a member again; a running one is first stopped cleanly
// (SIGTERM, then SIGKILL after 30s). It returns once the member listens.
func (c *TortureCluster) Restart(site string) error {
	c.logf("torture: restart %s", site)
	m, err := c.member(site)
	if err != nil {
		return err
	}
	var forced error
	if m.Running() {
		m.signal(syscall.SIGCONT)
		m.signal(syscall.SIGTERM)
		if !m.waitExit(30 * time.Second) {
			m.signal(syscall.SIGKILL)
			m.waitExit(10 * time.Second)
			forced = fmt.Errorf("%s did not stop within 30s of SIGTERM; killed", site)
		}
	}
	if err := c.start(m); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return errors.Join(forced, c.waitReady(ctx, m))
}

// Stop freezes a member (SIGSTOP).
func (c *TortureCluster) Stop(site string) error {
	c.logf("torture: SIGSTOP %s", site)
	m, err := c.member(site)
	if err != nil {
		return err
	}
	if err := m.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	m.mu.Lock()
	m.frozen = true
	m.mu.Unlock()
	return nil
}

// Cont thaws a frozen member (SIGCONT).
func (c *TortureCluster) Cont(site string) error {
	c.logf("torture: SIGCONT %s", site)
	m, err := c.member(site)
	if err != nil {
		return err
	}
	if err := m.signal(syscall.SIGCONT); err != nil {
		return err
	}
	m.mu.Lock()
	m.frozen = false
	m.mu.Unlock()
	return nil
}

// apply sets l's proxy from the cluster's state. c.mu is held.
func (c *TortureCluster) apply(l *TortureLink) {
	l.Proxy.Set(proxy.Shape{Latency: c.latency, Blocked: l.fwdBlocked}, proxy.Shape{Latency: c.latency, Blocked: l.backBlocked})
}

// Partition cuts every link between a and b, both directions.
func (c *TortureCluster) Partition(a, b string) error {
	return c.cut(a, b, true)
}

// PartitionOneWay drops what from sends to to; to's traffic to from
// passes (so connections from to stay up but hear no answers).
func (c *TortureCluster) PartitionOneWay(from, to string) error {
	return c.cut(from, to, false)
}

func (c *TortureCluster) cut(a, b string, both bool) error {
	if both {
		c.logf("torture: partition %s|%s", a, b)
	} else {
		c.logf("torture: partition %s->%s", a, b)
	}
	if _, err := c.member(a); err != nil {
		return err
	}
	if _, err := c.member(b); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.Links {
		switch {
		case l.From == a && l.To == b:
			l.fwdBlocked = true // a's requests to b
			l.backBlocked = l.backBlocked || both
		case l.From == b && l.To == a:
			l.backBlocked = true // a's answers to b
			l.fwdBlocked = l.fwdBlocked || both
		default:
			continue
		}
		c.apply(l)
	}
	return nil
}

// Heal unblocks every link (latency stays).
func (c *TortureCluster) Heal() error {
	c.logf("torture: heal")
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.Links {
		l.fwdBlocked, l.backBlocked = false, false
		c.apply(l)
	}
	return nil
}

// Latency sets the one-way delay of every inter-site link, both
// directions (0 ends a spike).
func (c *TortureCluster) Latency(d time.Duration) error {
	c.logf("torture: latency %v", d)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.latency = d
	for _, l := range c.Links {
		c.apply(l)
	}
	return nil
}

// ResetLinks resets every connection between site and the others, in
// both directions, as a peer reset would.
func (c *TortureCluster) ResetLinks(site string) error {
	c.logf("torture: reset links of %s", site)
	if _, err := c.member(site); err != nil {
		return err
	}
	for _, l := range c.Links {
		if l.From == site || l.To == site {
			l.Proxy.Reset()
		}
	}
	return nil
}

// storageControl is the content of faults.json (replica.Faults as JSON)
// for each storage fault kind.
func storageControl(kind checker.FaultKind, delay time.Duration) (string, error) {
	switch kind {
	case checker.FaultStorageEIO:
		return `{"write_eio":true}`, nil
	case checker.FaultStorageFull:
		// No space left at all: every write fails with ENOSPC.
		return `{"no_space":true,"space_left":0}`, nil
	case checker.FaultFlushEIO:
		return `{"flush_eio":1}`, nil
	case checker.FaultStorageSlow:
		if delay <= 0 {
			return "", errors.New("a slow store needs a delay")
		}
		return fmt.Sprintf(`{"delay":%d}`, int64(delay)), nil
	case checker.FaultShortWrite:
		return `{"short_write":true}`, nil
	case checker.FaultStorageReadEIO:
		return `{"read_eio":true}`, nil
	case checker.FaultStorageClear:
		return `{}`, nil
	}
	return "", fmt.Errorf("not a storage fault: %s", kind)
}

// StorageFault puts a storage fault in effect at a data site, or clears
// it (checker.FaultStorageClear), by writing the site's faults.json, and
// returns once the process says it took the new setting (its log line
// "faults set" naming the file, after which faults.json.injected holds
// what the previous setting injected).
func (c *TortureCluster) StorageFault(site string, kind checker.FaultKind, delay time.Duration) error {
	c.logf("torture: storage %s at %s (delay %v)", kind, site, delay)
	if !c.cfg.StorageFaults {
		return errors.New("storage faults need a metrolun_faults build (TortureConfig.StorageFaults)")
	}
	m, err := c.member(site)
	if err != nil {
		return err
	}
	if m.Role != conf.RoleData {
		return fmt.Errorf("%s has no store", site)
	}
	control, err := storageControl(kind, delay)
	if err != nil {
		return err
	}
	c.storageMu.Lock()
	defer c.storageMu.Unlock()
	path := filepath.Join(filepath.Dir(m.Config), "faults.json")
	if kind != checker.FaultStorageClear {
		c.injectedBase[site] = readInjected(path)
	}
	if old, err := os.ReadFile(path); err == nil && string(old) == control {
		// The process acts on a change only (and read the file at its
		// start): this is in effect already.
		return nil
	}
	if !m.Running() {
		return fmt.Errorf("%s is not running", site)
	}
	fi, err := os.Stat(m.Log)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(control), 0o600); err != nil {
		return err
	}
	if kind == checker.FaultStorageClear {
		delete(c.storageOpen, site)
	} else {
		c.storageOpen[site] = kind
	}
	// The process polls the file every 20ms; a live one answers well
	// within this even on a loaded machine.
	if err := waitLogLine(m, fi.Size(), 15*time.Second, "faults set", path); err != nil {
		return err
	}
	if kind == checker.FaultStorageClear {
		base, now := c.injectedBase[site], readInjected(path)
		if c.injected[site] == nil {
			c.injected[site] = map[string]int{}
		}
		for k, n := range now {
			d := n - base[k]
			if d < 0 {
				d = n // counted from zero since a restart
			}
			c.injected[site][k] += d
		}
		delete(c.injectedBase, site)
	}
	return nil
}

// readInjected reads a faults.json.injected (empty if there is none).
func readInjected(control string) map[string]int {
	out := map[string]int{}
	if b, err := os.ReadFile(control + ".injected"); err == nil {
		json.Unmarshal(b, &out)
	}
	return out
}

// waitLogLine waits up to d for a line containing every part in m's
// log past offset from (polling: the log is a file another process
// appends to).
func waitLogLine(m *TortureMember, from int64, d time.Duration, parts ...string) error {
	deadline := time.Now().Add(d)
	for {
		if f, err := os.Open(m.Log); err == nil {
			b, _ := io.ReadAll(io.NewSectionReader(f, from, 1<<40))
			f.Close()
			for _, line := range strings.Split(string(b), "\n") {
				all := true
				for _, p := range parts {
					all = all && strings.Contains(line, p)
				}
				if all {
					return nil
				}
			}
		}
		if !m.Running() {
			return fmt.Errorf("%s exited before its log said %q", m.Name, strings.Join(parts, " "))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s's log did not say %q within %v", m.Name, strings.Join(parts, " "), d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StorageInjected returns the storage faults injected so far, by site
// and kind (faults.json.injected's kinds: write_eio, no_space,
// flush_eio, slow, short_write, ...), counting those of faults that were
// cleared.
func (c *TortureCluster) StorageInjected() map[string]map[string]int {
	c.storageMu.Lock()
	defer c.storageMu.Unlock()
	out := map[string]map[string]int{}
	for site, kinds := range c.injected {
		out[site] = maps.Clone(kinds)
	}
	return out
}

// Promote runs `metrolun promote SITE --dir DIR`.
func (c *TortureCluster) Promote(site string) error {
	c.logf("torture: promote %s", site)
	_, err := RunTool(context.Background(), 45*time.Second, nil, c.cfg.Bin, "promote", site, "--dir", c.cfg.Dir)
	return err
}

// HealAll ends every fault: thaws frozen members, starts dead ones,
// unblocks every link and removes latency.
func (c *TortureCluster) HealAll() error {
	var errs []error
	for _, m := range c.Members {
		m.mu.Lock()
		frozen := m.frozen
		m.mu.Unlock()
		if frozen {
			errs = append(errs, c.Cont(m.Name))
		}
		if !m.Running() {
			errs = append(errs, c.Restart(m.Name))
		}
		c.storageMu.Lock()
		_, open := c.storageOpen[m.Name]
		c.storageMu.Unlock()
		if open {
			errs = append(errs, c.StorageFault(m.Name, checker.FaultStorageClear, 0))
		}
	}
	errs = append(errs, c.Heal(), c.Latency(0))
	return errors.Join(errs...)
}

// Close kills every member (SIGCONT, then SIGKILL to its group) and
// closes the proxies. It is safe to call more than once.
func (c *TortureCluster) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	for _, m := range c.Members {
		if m.Running() {
			m.signal(syscall.SIGKILL)
			m.signal(syscall.SIGCONT)
			m.waitExit(10 * time.Second)
		}
	}
	for _, l := range c.Links {
		l.Proxy.Close()
	}
}

// LogTails returns the last n lines of every member's log.
func (c *TortureCluster) LogTails(n int) string {
	var b strings.Builder
	for _, m := range c.Members {
		fmt.Fprintf(&b, "--- %s (%s):\n", m.Name, m.Log)
		data, _ := os.ReadFile(m.Log)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		b.WriteString(strings.Join(lines, "\n") + "\n")
	}
	return b.String()
}

// TortureStatus is a member's /v1/status (package admin's contract).
type TortureStatus = admin.Status

// TortureSiteStatus is a data site's volume in /v1/status.
type TortureSiteStatus = replica.SiteStatus

// TorturePeer is a replica as the writer's status shows it.
type TorturePeer = replica.PeerStatus

// TortureReport is one member in `metrolun status --json`.
type TortureReport = admin.MemberReport

// Status runs `metrolun status --json --dir DIR`.
func (c *TortureCluster) Status(ctx context.Context) ([]TortureReport, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.cfg.Bin, "status", "--json", "--dir", c.cfg.Dir).Output()
	if err != nil {
		return nil, fmt.Errorf("metrolun status: %w", err)
	}
	var reps []TortureReport
	if err := json.Unmarshal(out, &reps); err != nil {
		return nil, fmt.Errorf("metrolun status --json: %w", err)
	}
	return reps, nil
}

// TortureInSync says whether reps show a healthy cluster with every data site
// in sync (admin.InSync) and nothing outstanding, and if not, why: every
// member answers; one data site is the
// writer and every member's Raft view names it with its epoch; the
// writer sees every other data site in sync, connected, with nothing
// outstanding; every data site is in the in-sync set, holds a lease in
// that epoch and has no divergence pending.
func TortureInSync(reps []TortureReport, sites []string) (bool, string) {
	writer := ""
	var ws *TortureStatus
	for _, r := range reps {
		if !r.Reachable || r.Status == nil {
			return false, fmt.Sprintf("%s unreachable: %s", r.Name, r.Error)
		}
		if s := r.Status.Site; s != nil && s.Role == "writer" {
			if writer != "" {
				return false, fmt.Sprintf("two sites say writer: %s and %s", writer, r.Name)
			}
			writer, ws = r.Name, r.Status
		}
	}
	if ws == nil {
		return false, "no writer"
	}
	for _, r := range reps {
		st := r.Status
		if st.Raft.Writer != writer || st.Raft.Epoch != ws.Site.Epoch {
			return false, fmt.Sprintf("%s: raft says writer %q epoch %d, %s is writer of epoch %d", r.Name, st.Raft.Writer, st.Raft.Epoch, writer, ws.Site.Epoch)
		}
		for _, s := range sites {
			if !slices.Contains(st.Raft.InSync, s) {
				return false, fmt.Sprintf("%s: in-sync set %v lacks %s", r.Name, st.Raft.InSync, s)
			}
		}
		if !slices.Contains(sites, r.Name) {
			continue
		}
		if st.Site == nil {
			return false, fmt.Sprintf("%s: no site status", r.Name)
		}
		if st.Site.Stale {
			return false, fmt.Sprintf("%s: diverged", r.Name)
		}
		if r.Name != writer && (st.Site.Role != "replica" || st.Site.Epoch != ws.Site.Epoch) {
			return false, fmt.Sprintf("%s: role %s epoch %d (writer's epoch %d)", r.Name, st.Site.Role, st.Site.Epoch, ws.Site.Epoch)
		}
	}
	for _, s := range sites {
		if !admin.InSync(reps, s) {
			return false, fmt.Sprintf("%s is not in sync (admin.InSync)", s)
		}
		if s == writer {
			continue
		}
		i := slices.IndexFunc(ws.Site.Peers, func(p TorturePeer) bool { return p.Name == s })
		if i < 0 {
			return false, fmt.Sprintf("writer %s does not list %s", writer, s)
		}
		p := ws.Site.Peers[i]
		if p.State != "in-sync" || !p.Connected || p.LagFrames != 0 || p.DirtyRegions != 0 {
			return false, fmt.Sprintf("writer %s sees %s %s (connected %v, lag %d frames, %d dirty regions)", writer, s, p.State, p.Connected, p.LagFrames, p.DirtyRegions)
		}
	}
	return true, "writer " + writer
}

// WaitInSync polls `metrolun status --json` until TortureInSync holds twice in
// a row, or timeout passes (the error says what was missing last).
func (c *TortureCluster) WaitInSync(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var sites []string
	for _, m := range c.DataSites() {
		sites = append(sites, m.Name)
	}
	why := "no status yet"
	good := 0
	for {
		reps, err := c.Status(ctx)
		if err == nil {
			var ok bool
			ok, why = TortureInSync(reps, sites)
			if ok {
				good++
				if good == 2 {
					return time.Since(start), nil
				}
			} else {
				good = 0
			}
		} else {
			why = err.Error()
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("not in sync after %v: %s", timeout, why)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// PollWriters asks every data site's admin endpoint directly (not
// through a proxy) and returns the sites that say they are the writer
// (holding the writer lease). A frozen or dead site does not answer and
// so is not counted.
func (c *TortureCluster) PollWriters(ctx context.Context) ([]string, error) {
	sites := c.DataSites()
	out := make([]string, len(sites))
	client, err := c.pollClient()
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	var errs []error
	var mu sync.Mutex
	for i, m := range sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := client.Status(ctx, admin.Endpoint{Name: m.Name, Role: m.Role, Admin: m.Admin})
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			if st.Site != nil && st.Site.Role == "writer" {
				out[i] = m.Name
			}
		}()
	}
	wg.Wait()
	out = slices.DeleteFunc(out, func(s string) bool { return s == "" })
	return out, errors.Join(errs...)
}

// pollClient asks with the operator's credential as `metrolun status
// --dir` finds it (Dir/admin.token, and HTTPS checked against
// Dir/pki/ca.pem), briefly: a frozen site must not hold up the sample.
func (c *TortureCluster) pollClient() (*admin.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.poll == nil {
		client, err := admin.NewClient(admin.Credential{Dir: c.cfg.Dir})
		if err != nil {
			return nil, fmt.Errorf("torture: the admin credential in %s: %w", c.cfg.Dir, err)
		}
		client.Timeout = 400 * time.Millisecond
		c.poll = client
	}
	return c.poll, nil
}

// WriterSample is who was writer at one moment (history time).
type WriterSample struct {
	At      time.Duration
	Writers []string
}

// MonitorWriters polls PollWriters every interval until ctx ends and
// returns the samples, stamped with h's clock.
func (c *TortureCluster) MonitorWriters(ctx context.Context, h *checker.History, interval time.Duration) []WriterSample {
	var out []WriterSample
	for ctx.Err() == nil {
		at := h.Now()
		w, _ := c.PollWriters(ctx)
		if ctx.Err() != nil {
			break
		}
		out = append(out, WriterSample{At: at, Writers: w})
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
	return out
}

// FaultGap is what one fault step cost: the time in its window (from the
// step to the next one) during which no data site answered as writer,
// and the longest stretch without an acknowledged write.
type FaultGap struct {
	Fault        checker.FaultEvent
	Window       time.Duration
	NoWriter     time.Duration
	LongestNoAck time.Duration
}

// FaultGaps computes a FaultGap per fault event from the writer samples
// and the history's acknowledged writes; end is when the run ended.
func FaultGaps(faults []checker.FaultEvent, samples []WriterSample, ops []checker.Op, end time.Duration) []FaultGap {
	var acks []time.Duration
	for _, op := range ops {
		if op.Kind == checker.Write && op.Outcome == checker.OK {
			acks = append(acks, op.Return)
		}
	}
	slices.Sort(acks)
	var out []FaultGap
	for i, f := range faults {
		to := end
		if i+1 < len(faults) {
			to = faults[i+1].At
		}
		g := FaultGap{Fault: f, Window: to - f.At}
		for j, s := range samples {
			if s.At < f.At || s.At >= to || len(s.Writers) > 0 {
				continue
			}
			next := to
			if j+1 < len(samples) {
				next = min(samples[j+1].At, to)
			}
			g.NoWriter += next - s.At
		}
		last := f.At
		for _, a := range acks {
			if a <= f.At {
				continue
			}
			if a > to {
				break
			}
			g.LongestNoAck = max(g.LongestNoAck, a-last)
			last = a
		}
		g.LongestNoAck = max(g.LongestNoAck, to-last)
		out = append(out, g)
	}
	return out
}

// luOnly is the LU part of a data site's backing file: each site's ends
// with its own image identity (replica/identity.go), 1 MiB reserved past
// the LU with the block in its last 4 KiB.
func luOnly(b []byte) []byte {
	const reserve, block = 1 << 20, 4096
	if len(b) > reserve && bytes.HasPrefix(b[len(b)-block:], []byte("MLUNIMG1")) {
		return b[:len(b)-reserve]
	}
	return b
}

// CompareBacking compares every data site's backing file with the first
// one's, byte for byte (I4), and returns how many bytes of LU it
// compared (each other site's against the first's). The error names the
// first differing block and what each copy holds there (as a checker
// stamp when it is one).
//
// Bytes in lost (LostRanges: lost at every site alike, reads fail there)
// are not compared: what each file holds there is what a failed write
// left, which no read returns.
func (c *TortureCluster) CompareBacking(lost [][2]int64) (int64, error) {
	sites := c.DataSites()
	ref := sites[0]
	a, err := os.ReadFile(ref.Backing)
	if err != nil {
		return 0, err
	}
	var compared int64
	var errs []error
	for _, m := range sites[1:] {
		b, err := os.ReadFile(m.Backing)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(a) != len(b) {
			errs = append(errs, fmt.Errorf("I4: %s is %d bytes, %s is %d", ref.Name, len(a), m.Name, len(b)))
			continue
		}
		// Each site's image identity past the LU is its own.
		a, b := luOnly(a), luOnly(b)
		if len(a) != len(b) {
			errs = append(errs, fmt.Errorf("I4: %s's LU is %d bytes, %s's %d", ref.Name, len(a), m.Name, len(b)))
			continue
		}
		if len(lost) > 0 {
			a, b = slices.Clone(a), slices.Clone(b)
			for _, r := range lost {
				lo, hi := min(r[0], int64(len(a))), min(r[1], int64(len(a)))
				clear(a[lo:hi])
				clear(b[lo:hi])
			}
		}
		compared += int64(len(a))
		if bytes.Equal(a, b) {
			continue
		}
		bs := int(max(ref.BlockSize, 512))
		var diffs []string
		nblocks := 0
		for off := 0; off < len(a); off += bs {
			end := min(off+bs, len(a))
			if bytes.Equal(a[off:end], b[off:end]) {
				continue
			}
			nblocks++
			if len(diffs) < 8 {
				lba := uint64(off / bs)
				va, _ := checker.ReadValue(lba, a[off:end])
				vb, _ := checker.ReadValue(lba, b[off:end])
				diffs = append(diffs, fmt.Sprintf("block %d: %s has %s, %s has %s", lba, ref.Name, va, m.Name, vb))
			}
		}
		errs = append(errs, fmt.Errorf("I4: %s and %s differ in %d blocks of %d bytes: %s", ref.Name, m.Name, nblocks, bs, strings.Join(diffs, "; ")))
	}
	return compared, errors.Join(errs...)
}

// ReadAll reads blocks first..first+n-1 once at every data site (each
// over a session of its own) and records the reads in h as clients
// firstClient, firstClient+1, ... (one per site). It returns an error
// for a read that did not succeed: after WaitInSync every site serves.
//
// A block in lost (LostRanges) must fail with MEDIUM ERROR instead: its
// data is gone at every site, and reading it must say so.
func (c *TortureCluster) ReadAll(ctx context.Context, h *checker.History, firstClient int, first uint64, n int, lost [][2]int64) error {
	var errs []error
	for i, m := range c.DataSites() {
		client := firstClient + i
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		s, err := initiator.Dial(dctx, m.ISCSI, TortureTarget, fmt.Sprintf("iqn.2026-11.io.metrolun:torture-final-%d", i), initiator.Options{})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("final read at %s: %w", m.Name, err))
			continue
		}
		for lba := first; lba < first+uint64(n); lba++ {
			op := checker.Op{Client: client, Site: m.Name, Block: lba, Kind: checker.Read, Call: h.Now()}
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			data, err := s.ReadBlocks(rctx, 0, lba, 1)
			cancel()
			op.Return = h.Now()
			isLost := inRanges(lost, int64(lba)*int64(max(m.BlockSize, 512)))
			var se *initiator.SCSIError
			switch {
			case isLost && errors.As(err, &se) && se.SenseKey == initiator.SenseMediumError:
				op.Outcome, op.Err = checker.Failed, err.Error()
			case isLost:
				errs = append(errs, fmt.Errorf("final read of block %d at %s, in a range reported lost: %v, want MEDIUM ERROR", lba, m.Name, err))
				if err == nil {
					op.Outcome = checker.OK
					op.Value, op.Corrupt = checker.ReadValue(lba, data)
				} else {
					op.Outcome, op.Err = checker.Failed, err.Error()
				}
			case err != nil:
				op.Outcome, op.Err = checker.Failed, err.Error()
				if initiator.Indeterminate(err) {
					op.Outcome = checker.Indeterminate
				}
				errs = append(errs, fmt.Errorf("final read of block %d at %s: %w", lba, m.Name, err))
			default:
				op.Outcome = checker.OK
				op.Value, op.Corrupt = checker.ReadValue(lba, data)
			}
			h.Add(op)
		}
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		s.Logout(lctx)
		cancel()
		s.Close()
	}
	return errors.Join(errs...)
}

// LostRanges returns the byte ranges every data site reports lost
// (status lost_ranges: a failed write-back at a writer that had no in-sync
// replica to hand over to; reads there fail), and an error when the sites
// do not report the same ones (I4: a lost range must read as lost at
// every site) or one reports more than status lists.
func (c *TortureCluster) LostRanges(ctx context.Context) ([][2]int64, error) {
	reps, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	var first [][2]int64
	firstName := ""
	for _, r := range reps {
		if r.Role != "data" {
			continue
		}
		if r.Status == nil || r.Status.Site == nil {
			return nil, fmt.Errorf("%s: no site status", r.Name)
		}
		st := r.Status.Site
		if len(st.LostRanges) >= 16 {
			return st.LostRanges, fmt.Errorf("%s reports %d lost regions, more ranges than its status lists", r.Name, st.LostRegions)
		}
		if firstName == "" {
			first, firstName = st.LostRanges, r.Name
			continue
		}
		if !slices.Equal(first, st.LostRanges) {
			return first, fmt.Errorf("I4: %s reports lost ranges %v, %s %v", firstName, first, r.Name, st.LostRanges)
		}
	}
	return first, nil
}

func inRanges(rs [][2]int64, off int64) bool {
	for _, r := range rs {
		if off >= r[0] && off < r[1] {
			return true
		}
	}
	return false
}

// sentinelLBAs are blocks outside the workload's that WriteSentinels
// fills before a run: a site whose image was replaced and that was
// resynced from a dirty bitmap instead of copied in full lacks them.
func (c *TortureCluster) sentinelLBAs() []uint64 {
	bs := uint64(max(c.DataSites()[0].BlockSize, 512))
	n := uint64(c.cfg.Size) / bs
	return []uint64{0, 100, n / 2, n - 1}
}

func sentinelBlock(lba uint64, bs int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("metrolun torture sentinel lba=%d.", lba)), bs)[:bs]
}

// WriteSentinels writes the sentinel blocks through the writer (FUA),
// trying for up to 30s: every in-sync site then holds them.
func (c *TortureCluster) WriteSentinels(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		if last = c.writeSentinels(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("torture: writing the sentinel blocks: %w", last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *TortureCluster) writeSentinels(ctx context.Context) error {
	w, err := c.PollWriters(ctx)
	if len(w) != 1 {
		return fmt.Errorf("writers %v (%v)", w, err)
	}
	m := c.Member(w[0])
	s, err := initiator.Dial(ctx, m.ISCSI, TortureTarget, "iqn.2026-11.io.metrolun:torture-sentinel", initiator.Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	bs := int(max(m.BlockSize, 512))
	for _, lba := range c.sentinelLBAs() {
		if err := s.WriteBlocks(ctx, 0, lba, sentinelBlock(lba, bs), true); err != nil {
			return fmt.Errorf("block %d at %s: %w", lba, m.Name, err)
		}
	}
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	s.Logout(lctx)
	cancel()
	return nil
}

// CheckSentinels checks that every data site's backing file holds the
// sentinel blocks.
func (c *TortureCluster) CheckSentinels() error {
	var errs []error
	for _, m := range c.DataSites() {
		f, err := os.Open(m.Backing)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		bs := int(max(m.BlockSize, 512))
		for _, lba := range c.sentinelLBAs() {
			b := make([]byte, bs)
			if _, err := f.ReadAt(b, int64(lba)*int64(bs)); err != nil || !bytes.Equal(b, sentinelBlock(lba, bs)) {
				errs = append(errs, fmt.Errorf("%s lacks the sentinel block %d written before the run (%v): a copy that missed it", m.Name, lba, errOrNil(err)))
			}
		}
		f.Close()
	}
	return errors.Join(errs...)
}

func errOrNil(err error) string {
	if err == nil {
		return "other bytes"
	}
	return err.Error()
}

// BuildMetrolunTags builds ./cmd/metrolun with build tags into
// dir/name. Unlike BuildMetrolun it never uses $METROLUN_BIN: the tags
// are the point.
func BuildMetrolunTags(ctx context.Context, dir, name string, tags ...string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, name)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", strings.Join(tags, ","), "-o", out, "github.com/metrolun/metrolun/cmd/metrolun")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -tags %s: %w\n%s", strings.Join(tags, ","), err, b)
	}
	return out, nil
}
