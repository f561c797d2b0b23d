package hosts

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/integration"
	"github.com/metrolun/metrolun/integration/proxy"
)

// Site is one data site of the cluster as the guest reaches it.
type Site struct {
	Name string
	// Portal is the site's own iSCSI portal on the host's loopback.
	Portal string
	// Group is its target port group (portal_group).
	Group int
	// Image is its LUN's backing file.
	Image string
	// Proxy stands between the guest and Portal; the guest logs in to
	// 10.0.2.2:GuestPort. It is nil while the portal is closed.
	Proxy     *proxy.Proxy
	GuestPort int

	mu sync.Mutex
}

// Cluster is a two-site `metrolun demo` (two data sites and a witness, real
// processes on 127.0.0.1-3) with a proxy per site for the guest.
type Cluster struct {
	Bin    string
	Demo   *integration.Demo
	Sites  []*Site
	Target string

	mu       sync.Mutex
	restarts []*exec.Cmd
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// StartCluster builds metrolun (once per test binary, or $METROLUN_BIN),
// starts the demo on free ports with a LUN of size, and a proxy in front
// of each data site. Everything stops when the test ends.
func StartCluster(t testing.TB, size string) *Cluster {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "metrolun-hosts-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath, binErr = integration.BuildMetrolun(context.Background(), dir)
	})
	if binErr != nil {
		t.Fatalf("no metrolun binary: %v", binErr)
	}
	base, err := integration.ClusterBasePort(3)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Bin: binPath}
	c.Demo = integration.StartDemoT(t, integration.DemoOptions{Bin: binPath, Size: size,
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, cmd := range c.restarts {
			integration.StopMember(cmd)
		}
	})
	for _, m := range c.Demo.File.DataMembers() {
		portal, iqn, err := integration.ParseISCSIURL(m.ISCSI)
		if err != nil {
			t.Fatal(err)
		}
		c.Target = iqn
		cfg, err := conf.Load(filepath.Join(c.Demo.Dir, m.Name, "metrolun.hcl"))
		if err != nil {
			t.Fatal(err)
		}
		p, err := proxy.New("127.0.0.1:0", portal)
		if err != nil {
			t.Fatal(err)
		}
		_, port, err := net.SplitHostPort(p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		guestPort, _ := strconv.Atoi(port)
		c.Sites = append(c.Sites, &Site{
			Name: m.Name, Portal: portal, Group: cfg.ISCSI.PortalGroup,
			Image: cfg.Targets[0].LUNs[0].Path, Proxy: p,
			GuestPort: guestPort,
		})
	}
	t.Cleanup(func() {
		for _, s := range c.Sites {
			if p := s.proxy(); p != nil {
				p.Close()
			}
		}
	})
	if len(c.Sites) != 2 {
		t.Fatalf("demo has %d data sites, want 2", len(c.Sites))
	}
	return c
}

func (s *Site) proxy() *proxy.Proxy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Proxy
}

// ClosePortal takes the site's portal away from the guest while the site
// is down: its proxy stops listening, so the guest's reconnects are
// refused, as by a host whose target process is gone. A proxy left
// listening would accept each reconnect and close it at once (its
// upstream refuses), which no real portal does, and open-iscsi 2.1.8
// then leaves the session in REOPEN for good ("can't bind conn ... to
// session, retcode -107": the socket was closed between connect and
// bind).
func (s *Site) ClosePortal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Proxy != nil {
		s.Proxy.Close()
		s.Proxy = nil
	}
}

// OpenPortal listens for the guest on the site's port again.
func (s *Site) OpenPortal() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Proxy != nil {
		return nil
	}
	p, err := proxy.New(net.JoinHostPort("127.0.0.1", strconv.Itoa(s.GuestPort)), s.Portal)
	if err != nil {
		return fmt.Errorf("listen for the guest on %s's port %d again: %w", s.Name, s.GuestPort, err)
	}
	s.Proxy = p
	return nil
}

// Site returns the named site.
func (c *Cluster) Site(name string) *Site {
	for _, s := range c.Sites {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// SiteByPort returns the site whose proxy the guest reaches at port.
func (c *Cluster) SiteByPort(port int) *Site {
	for _, s := range c.Sites {
		if s.GuestPort == port {
			return s
		}
	}
	return nil
}

// Other returns the data site that is not name.
func (c *Cluster) Other(name string) *Site {
	for _, s := range c.Sites {
		if s.Name != name {
			return s
		}
	}
	return nil
}

// Writer asks the cluster (`metrolun status`) which site is the writer,
// waiting up to d for one.
func (c *Cluster) Writer(ctx context.Context, d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	for {
		ms, err := integration.ClusterStatus(ctx, c.Bin, c.Demo.Dir)
		if err == nil {
			if w := integration.Writer(ms); w != "" {
				return w, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no writer within %v (last status error: %v)", d, err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// PID is the site's current process.
func (c *Cluster) PID(name string) int {
	for _, m := range c.Demo.File.Members {
		if m.Name == name {
			return m.PID
		}
	}
	return 0
}

// Signal sends sig to the site's process.
func (c *Cluster) Signal(name string, sig syscall.Signal) error {
	pid := c.PID(name)
	if pid <= 0 {
		return fmt.Errorf("no process for %s", name)
	}
	return syscall.Kill(pid, sig)
}

// WaitGone waits (bounded) until the site's process has exited.
func (c *Cluster) WaitGone(name string, d time.Duration) error {
	pid := c.PID(name)
	for deadline := time.Now().Add(d); ; {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || zombie(b) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (pid %d) still running after %v", name, pid, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func zombie(stat []byte) bool {
	for i := len(stat) - 1; i > 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X')
		}
	}
	return false
}

// Restart starts a killed site again from its config, as an operator
// would (`metrolun serve --config DIR/SITE/metrolun.hcl`), and waits up to
// d for it to be back in sync.
func (c *Cluster) Restart(ctx context.Context, name string, d time.Duration) (time.Duration, error) {
	cmd, err := integration.RestartMember(c.Demo, name)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.restarts = append(c.restarts, cmd)
	c.mu.Unlock()
	start := time.Now()
	if err := integration.WaitInSync(ctx, c.Bin, c.Demo.Dir, name, d); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// GrepLogs returns up to n lines holding pattern from the demo's log and
// the logs of members restarted by hand.
func (c *Cluster) GrepLogs(pattern string, n int) string {
	files := []string{c.Demo.Log}
	more, _ := filepath.Glob(filepath.Join(c.Demo.Dir, "*-restart.log"))
	files = append(files, more...)
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, pattern) {
				out = append(out, filepath.Base(f)+": "+line)
			}
		}
	}
	if len(out) > n {
		out = append([]string{fmt.Sprintf("(%d more before)", len(out)-n)}, out[len(out)-n:]...)
	}
	if len(out) == 0 {
		return "(none)"
	}
	return strings.Join(out, "\n")
}

// WriterSince finds in the members' logs the first site that became the
// writer after t0 ("raft: writer: term=..." at a member taking over,
// after it waited out the previous writer's lease), and how long after
// t0; ok is false when none did.
func (c *Cluster) WriterSince(t0 time.Time) (site string, after time.Duration, ok bool) {
	files := []string{c.Demo.Log}
	more, _ := filepath.Glob(filepath.Join(c.Demo.Dir, "*-restart.log"))
	files = append(files, more...)
	var first time.Time
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			s, at, found := writerLine(line)
			if found && at.After(t0) && (first.IsZero() || at.Before(first)) {
				site, first = s, at
			}
		}
	}
	if first.IsZero() {
		return "", 0, false
	}
	return site, first.Sub(t0), true
}
