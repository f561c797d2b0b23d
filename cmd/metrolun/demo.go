package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/raftlog"
)

const demoTarget = "iqn.2026-11.io.metrolun:demo"

// DemoFile is DIR/demo.json: what scripts and tests need to reach and
// disturb a demo cluster.
type DemoFile struct {
	Members []DemoMember `json:"members"`
	// Writer is the data site that held the writer lease when the demo
	// became ready (a benchmark picks the writer's and a forwarding
	// site's URL from it); empty for a single site.
	Writer string `json:"writer,omitempty"`
}

// DemoMember is one member process of a demo cluster.
type DemoMember struct {
	Name  string `json:"name"`
	Role  string `json:"role"`
	PID   int    `json:"pid"`
	ISCSI string `json:"iscsi,omitempty"`
}

type demoOptions struct {
	dir      string
	addr     string
	port     int
	size     string
	sites    int
	witness  bool
	basePort int
	logLevel string
	// resyncBandwidth caps every site's resync (resync_bandwidth), "" or
	// "0" for none: a slow resync that a person or a test can watch.
	resyncBandwidth string
	// plaintext runs Raft and replication over plain TCP (to measure
	// what TLS costs); TLS stays the default.
	plaintext bool
	// mirrorFloor ("tls", "plain", "tls-reader", "tls-spawn" or "") adds
	// a mirror floor echo to a single site (mirrorfloor.go): a measuring
	// aid.
	mirrorFloor string
}

func demoCmd() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo --dir DIR",
		Short: "Run a local cluster on loopback with no config to write",
		Long: `demo creates a sparse LUN under DIR, writes a config file per member,
starts each member as its own process on loopback, prints the iSCSI URLs and
writes DIR/demo.json once every member serves. It runs until interrupted,
then stops everything it started.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "", "directory for configs, LUN images and demo.json (required)")
	f.StringVar(&o.addr, "addr", "127.0.0.1", "address of the first site; later sites use the next addresses")
	f.IntVar(&o.port, "port", 3260, "iSCSI port of every site")
	f.StringVar(&o.size, "size", "1GiB", "LUN size")
	f.IntVar(&o.sites, "sites", 2, "number of data sites (1: a single standalone site)")
	f.BoolVar(&o.witness, "witness", true, "with several sites, also run a witness (a Raft voter without data)")
	f.IntVar(&o.basePort, "cluster-port", conf.DefaultRaftPort, "first of the three cluster ports of every member (Raft, replication, admin)")
	f.StringVar(&o.logLevel, "log-level", "info", "log level of the members")
	f.StringVar(&o.resyncBandwidth, "resync-bandwidth", "", `resync_bandwidth of every site in bytes per second, e.g. "4MiB" (default unlimited)`)
	f.BoolVar(&o.plaintext, "plaintext", false, "Raft and replication over plain TCP, unauthenticated (to measure what TLS costs; TLS is the default)")
	f.StringVar(&o.mirrorFloor, "mirror-floor", "", `measuring aid (bench-mirror): with --sites 1, "tls", "plain", "tls-reader" (acks handed over by a reader goroutine) or "tls-spawn" (writes never inline on the iSCSI reader) also sends every write to a mirror floor echo process and waits for its ack`)
	f.MarkHidden("mirror-floor")
	return cmd
}

func runDemo(o demoOptions) error {
	if o.dir == "" {
		return errors.New("--dir DIR is required")
	}
	if o.sites < 1 || o.sites > 26 {
		return fmt.Errorf("--sites %d: want 1 to 26", o.sites)
	}
	if o.mirrorFloor != "" && (o.sites != 1 || !slices.Contains([]string{"tls", "plain", "tls-reader", "tls-spawn"}, o.mirrorFloor)) {
		return errMirrorFloor
	}
	size, err := conf.ParseSize(o.size)
	if err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	ip := net.ParseIP(o.addr)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--addr %q: the demo runs on loopback only", o.addr)
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	os.Remove(filepath.Join(dir, "demo.json"))
	self, err := os.Executable()
	if err != nil {
		return err
	}

	type member struct {
		DemoMember
		cmd    *exec.Cmd
		portal string
		exited chan error
	}
	var members []*member
	stopAll := func() {
		for _, m := range members {
			if m.cmd.Process != nil {
				m.cmd.Process.Signal(syscall.SIGTERM)
			}
		}
		for _, m := range members {
			select {
			case <-m.exited:
			case <-time.After(25 * time.Second):
				m.cmd.Process.Kill()
				<-m.exited
			}
		}
	}
	configs, err := demoConfigs(o, dir, size)
	if err != nil {
		return err
	}
	if len(configs) > 1 {
		if err := demoToken(filepath.Join(dir, conf.AdminTokenFileName)); err != nil {
			return err
		}
		if !o.plaintext {
			if err := demoPKI(dir, configs); err != nil {
				return err
			}
		}
	}
	var floorArgs []string
	if o.mirrorFloor != "" {
		// The echo is a member of its own (its CPU is the mirror's),
		// listening before the site that dials it at start.
		listen := net.JoinHostPort(o.addr, strconv.Itoa(o.basePort))
		args := []string{"mirror-floor-echo", "--listen", listen,
			"--image", filepath.Join(dir, "mirror-floor.img"), "--size", strconv.FormatInt(size, 10)}
		floorArgs = []string{"--mirror-floor-echo", listen}
		if o.mirrorFloor != "plain" {
			cert := filepath.Join(dir, "mirror-floor.pem")
			os.Remove(cert)
			args = append(args, "--tls-cert", cert)
			floorArgs = append(floorArgs, "--mirror-floor-cert", cert)
		}
		switch o.mirrorFloor {
		case "tls-reader":
			floorArgs = append(floorArgs, "--mirror-floor-mode", "reader")
		case "tls-spawn":
			floorArgs = append(floorArgs, "--mirror-floor-mode", "spawn")
		}
		cmd := exec.Command(self, args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start the mirror floor echo: %w", err)
		}
		m := &member{DemoMember: DemoMember{Name: "mirror-floor-echo", Role: "mirror-floor", PID: cmd.Process.Pid},
			cmd: cmd, portal: listen, exited: make(chan error, 1)}
		go func() { m.exited <- cmd.Wait() }()
		members = append(members, m)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := waitListening(ctx, listen, m.exited)
		cancel()
		if err != nil {
			stopAll()
			return fmt.Errorf("mirror floor echo: %w", err)
		}
	}
	pprofHost, pprofPort := demoPprof()
	for _, cfg := range configs {
		if err := cfg.Validate(); err != nil {
			return err
		}
		if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
			return err
		}
		path := filepath.Join(cfg.DataDir, "metrolun.hcl")
		if err := os.WriteFile(path, []byte(renderConfig(cfg)), 0o644); err != nil {
			return err
		}
		cmd := exec.Command(self, append([]string{"serve", "--config", path}, floorArgs...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if pprofHost != "" {
			// One profiling port per member: the first member gets
			// METROLUN_PPROF's, the next ones the ports after it.
			cmd.Env = append(os.Environ(), "METROLUN_PPROF="+net.JoinHostPort(pprofHost, strconv.Itoa(pprofPort)))
			pprofPort++
		}
		// Members get their own process group so that a test can kill one
		// without touching the others.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			stopAll()
			return fmt.Errorf("start %s: %w", cfg.Name, err)
		}
		m := &member{
			DemoMember: DemoMember{Name: cfg.Name, Role: cfg.Role, PID: cmd.Process.Pid},
			cmd:        cmd, exited: make(chan error, 1),
		}
		if cfg.Role == conf.RoleData {
			m.portal = cfg.ISCSI.Listen[0]
			m.ISCSI = fmt.Sprintf("iscsi://%s/%s/0", m.portal, demoTarget)
		} else {
			m.portal = cfg.Cluster.AdminListen
		}
		go func() { m.exited <- cmd.Wait() }()
		members = append(members, m)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range members {
		if err := waitListening(ctx, m.portal, m.exited); err != nil {
			stopAll()
			return fmt.Errorf("%s did not start: %w", m.Name, err)
		}
	}
	var df DemoFile
	if len(configs) > 1 {
		// Ready means a writer holds its lease and every site serves.
		if df.Writer, err = waitWriter(ctx, dir, configs); err != nil {
			stopAll()
			return err
		}
	}
	for _, m := range members {
		df.Members = append(df.Members, m.DemoMember)
	}
	b, _ := json.MarshalIndent(df, "", "  ")
	tmp := filepath.Join(dir, ".demo.json.tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		stopAll()
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "demo.json")); err != nil {
		stopAll()
		return err
	}
	fmt.Println("metrolun demo is ready. iSCSI URLs:")
	var first string
	for _, m := range members {
		if m.ISCSI == "" && m.Role == "mirror-floor" {
			continue
		}
		if first == "" {
			first = m.ISCSI
		}
		fmt.Printf("  %s  %s\n", m.Name, m.ISCSI)
	}
	fmt.Printf("Try: qemu-img info %s\n", first)
	if len(configs) > 1 {
		fmt.Printf("     metrolun status --dir %s   (the admin token is in %s)\n", dir, filepath.Join(dir, conf.AdminTokenFileName))
	}
	fmt.Println("Stop with Ctrl-C.")

	cases := make(chan string, len(members))
	for _, m := range members {
		go func() {
			err := <-m.exited
			m.exited <- err // keep it readable for stopAll
			cases <- fmt.Sprintf("%s (pid %d) exited: %v", m.Name, m.PID, err)
		}()
	}
	for alive := len(members); alive > 0; {
		select {
		case s := <-sig:
			fmt.Printf("received %s, stopping members\n", s)
			stopAll()
			os.Remove(filepath.Join(dir, "demo.json"))
			return nil
		case msg := <-cases:
			// A member that dies is reported; the demo keeps running so
			// that a test or an operator can restart it.
			fmt.Fprintln(os.Stderr, "metrolun demo:", msg)
			alive--
		}
	}
	os.Remove(filepath.Join(dir, "demo.json"))
	return errors.New("every member has exited")
}

// demoConfigs returns the members' configs: one standalone site, or
// several sites and a witness on the addresses from --addr on
// (127.0.0.1, 127.0.0.2, ... by default).
func demoConfigs(o demoOptions, dir string, size int64) ([]*conf.Config, error) {
	if o.sites == 1 {
		cfg := conf.Default(dir)
		cfg.LogLevel = o.logLevel
		cfg.ISCSI.Listen = []string{net.JoinHostPort(o.addr, strconv.Itoa(o.port))}
		cfg.Targets[0].LUNs[0].Size = size
		return []*conf.Config{cfg}, nil
	}
	first, err := netip.ParseAddr(o.addr)
	if err != nil {
		return nil, fmt.Errorf("--addr %q: %v", o.addr, err)
	}
	n := o.sites
	if o.witness {
		n++
	}
	if _, err := conf.DemoAddrs(first, n); err != nil {
		return nil, fmt.Errorf("--addr %s: %v (every member takes the next address)", o.addr, err)
	}
	var bw int64
	if o.resyncBandwidth != "" {
		var err error
		if bw, err = conf.ParseSize(o.resyncBandwidth); err != nil || bw < 0 {
			return nil, fmt.Errorf("--resync-bandwidth %q: want a size such as 4MiB", o.resyncBandwidth)
		}
	}
	configs := conf.DefaultClusterAt(dir, first, o.sites, o.witness, o.port, o.basePort)
	for _, c := range configs {
		c.LogLevel = o.logLevel
		c.Cluster.ResyncBandwidth = bw
		if o.plaintext {
			c.Cluster.TLS, c.Cluster.Plaintext = nil, true
		}
		for ti := range c.Targets {
			for li := range c.Targets[ti].LUNs {
				c.Targets[ti].LUNs[li].Size = size
			}
		}
	}
	return configs, nil
}

// demoPprof reads METROLUN_PPROF (host:port) for the demo's members:
// each member gets its own port from there on ("" when unset or not
// host:port).
func demoPprof() (string, int) {
	host, p, err := net.SplitHostPort(os.Getenv("METROLUN_PPROF"))
	port, perr := strconv.Atoi(p)
	if err != nil || perr != nil || port <= 0 {
		return "", 0
	}
	return host, port
}

// demoOperator names the operator certificate `metrolun demo` makes.
const demoOperator = "operator"

// demoPKI makes DIR/pki, once: the cluster CA, a certificate per member
// (the files conf.DemoCertFiles names) and an operator's. A demo
// restarted on the same DIR keeps them, so its members keep trusting each
// other.
func demoPKI(dir string, configs []*conf.Config) error {
	ca, _, _ := conf.DemoCertFiles(dir, "")
	pki := filepath.Dir(ca)
	if _, err := os.Stat(ca); errors.Is(err, os.ErrNotExist) {
		if err := pkiInit(pki, defaultCADays); err != nil {
			return err
		}
	}
	issue := func(name, role string) error {
		if _, err := os.Stat(filepath.Join(pki, name+".pem")); err == nil {
			return nil
		}
		return pkiIssue(pki, name, role, nil, defaultCertDays)
	}
	for _, c := range configs {
		if err := issue(c.Name, c.Role); err != nil {
			return err
		}
	}
	return issue(demoOperator, raftlog.RoleOperator)
}

// waitWriter polls the members' admin endpoints until one reports that
// it is the writer with a lease, and returns its name.
func waitWriter(ctx context.Context, dir string, configs []*conf.Config) (string, error) {
	eps := endpoints(configs[0].Cluster.Members)
	// As `metrolun status --dir DIR` would.
	client, err := (&clusterFlags{dir: dir}).client(configs[0], dir)
	if err != nil {
		return "", err
	}
	for {
		for _, r := range client.Gather(ctx, eps) {
			if r.Status != nil && r.Status.Site != nil && r.Status.Site.Role == "writer" {
				return r.Name, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no writer elected: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// demoToken returns the demo's admin token, kept in path (mode 0600) so
// that members restarted by hand and `metrolun ... --dir` find it; a
// missing or unusable one is replaced by a new random token.
func demoToken(path string) error {
	if tok, err := admin.ReadTokenFile(path); err == nil && len(tok) >= 32 {
		return nil
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	tmp := path + ".tmp"
	os.Remove(tmp)
	if err := os.WriteFile(tmp, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// waitListening polls until addr accepts TCP connections.
func waitListening(ctx context.Context, addr string, exited chan error) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("process exited: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("%s not listening: %w", addr, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// renderConfig writes cfg as an HCL file that conf.Load reads back.
func renderConfig(c *conf.Config) string {
	var b strings.Builder
	q := func(s string) string { return strconv.Quote(strings.ReplaceAll(s, "${", "$${")) }
	fmt.Fprintf(&b, "# written by metrolun demo\nname = %s\nrole = %s\ndata_dir = %s\nlog_level = %s\n\n", q(c.Name), q(c.Role), q(c.DataDir), q(c.LogLevel))
	fmt.Fprintf(&b, "iscsi {\n  listen = [")
	for i, l := range c.ISCSI.Listen {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(q(l))
	}
	fmt.Fprintf(&b, "]\n  portal_group = %d\n}\n", c.ISCSI.PortalGroup)
	if cl := c.Cluster; cl != nil {
		fmt.Fprintf(&b, "\ncluster {\n  raft_listen = %s\n", q(cl.RaftListen))
		if cl.ReplicationListen != "" {
			fmt.Fprintf(&b, "  replication_listen = %s\n", q(cl.ReplicationListen))
		}
		if cl.AdminListen != "" {
			fmt.Fprintf(&b, "  admin_listen = %s\n", q(cl.AdminListen))
		}
		if cl.AdminTokenFile != "" {
			fmt.Fprintf(&b, "  admin_token_file = %s\n", q(cl.AdminTokenFile))
		}
		if cl.AdminPublicMetrics {
			b.WriteString("  admin_public_metrics = true\n")
		}
		if cl.AdminInsecure {
			b.WriteString("  admin_insecure = true\n")
		}
		fmt.Fprintf(&b, "  lease = %s\n  election_timeout = %s\n  replica_timeout = %s\n", q(cl.Lease.String()), q(cl.ElectionTimeout.String()), q(cl.ReplicaTimeout.String()))
		if cl.ResyncBandwidth > 0 {
			fmt.Fprintf(&b, "  resync_bandwidth = %d\n", cl.ResyncBandwidth)
		}
		if t := cl.TLS; t != nil {
			fmt.Fprintf(&b, "\n  tls {\n    ca = %s\n    cert = %s\n    key = %s\n  }\n", q(t.CA), q(t.Cert), q(t.Key))
		} else if cl.Plaintext {
			b.WriteString("  plaintext = true\n")
		}
		for _, m := range cl.Members {
			fmt.Fprintf(&b, "\n  member %s {\n    role = %s\n    raft = %s\n", q(m.Name), q(m.Role), q(m.Raft))
			if m.Replication != "" {
				fmt.Fprintf(&b, "    replication = %s\n", q(m.Replication))
			}
			if m.Admin != "" {
				fmt.Fprintf(&b, "    admin = %s\n", q(m.Admin))
			}
			if len(m.ISCSI) > 0 {
				var ps []string
				for _, p := range m.ISCSI {
					ps = append(ps, q(p))
				}
				fmt.Fprintf(&b, "    iscsi = [%s]\n", strings.Join(ps, ", "))
			}
			if m.Role == conf.RoleData && m.PortalGroup > 0 {
				fmt.Fprintf(&b, "    portal_group = %d\n", m.PortalGroup)
			}
			b.WriteString("  }\n")
		}
		b.WriteString("}\n")
	}
	for _, t := range c.Targets {
		fmt.Fprintf(&b, "\ntarget %s {\n", q(t.Name))
		for _, l := range t.LUNs {
			fmt.Fprintf(&b, "  lun \"%d\" {\n    path = %s\n    size = %d\n    block_size = %d\n    thin = %t\n  }\n", l.ID, q(l.Path), l.Size, l.BlockSize, l.Thin)
		}
		b.WriteString("}\n")
	}
	return b.String()
}
