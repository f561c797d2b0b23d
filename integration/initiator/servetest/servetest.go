// Package servetest runs a single `metrolun serve` process on 127.0.0.1
// for tests: it builds the binary once per test binary (or takes
// $METROLUN_BIN), writes a config with one target and one sparse LUN,
// starts the process in a process group of its own and stops it in
// t.Cleanup.
//
// It deliberately imports nothing else from this module, so that any
// package (the integration package included) can use it in tests without
// an import cycle.
package servetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DefaultIQN is the target name Start uses unless told otherwise.
const DefaultIQN = "iqn.2026-11.io.metrolun:servetest"

var (
	binDir    string
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// Main runs the tests and removes the binary Binary built. Use it from
// TestMain: os.Exit(servetest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	return code
}

// Binary returns the metrolun binary: $METROLUN_BIN when set, else a
// `go build` of ./cmd/metrolun made once per test binary. A failed
// build fails the test.
func Binary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() { buildBin, buildErr = build() })
	if buildErr != nil {
		tb.Fatalf("no metrolun binary: %v", buildErr)
	}
	return buildBin
}

func build() (string, error) {
	if bin := os.Getenv("METROLUN_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return "", err
		}
		if fi, err := os.Stat(abs); err != nil || fi.IsDir() {
			return "", fmt.Errorf("METROLUN_BIN=%s is not a file", bin)
		}
		return abs, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "metrolun-servetest-")
	if err != nil {
		return "", err
	}
	binDir = dir
	out := filepath.Join(dir, "metrolun")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/metrolun/metrolun/cmd/metrolun")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build github.com/metrolun/metrolun/cmd/metrolun: %w\n%s", err, b)
	}
	return out, nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/metrolun/metrolun\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod of github.com/metrolun/metrolun not found above the working directory")
		}
		dir = parent
	}
}

// Options describe the one target and LUN to serve.
type Options struct {
	// Name of the member (default "site-a").
	Name string
	// IQN of the target (default DefaultIQN).
	IQN string
	// LUN number (default 0).
	LUN uint64
	// Size of the sparse LUN (default "64MiB").
	Size string
	// BlockSize (default 512).
	BlockSize int
	// ISCSI holds extra lines for the iscsi block, e.g.
	// "nop_interval = 1\nfirst_burst_length = 8192".
	ISCSI string
	// Dir is the data directory; empty means a new tb.TempDir().
	Dir string
}

// Server is a running `metrolun serve`.
type Server struct {
	Addr   string
	IQN    string
	LUN    uint64
	Dir    string
	Config string
	Log    string
	PID    int

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// Start writes the config, starts `metrolun serve` and waits (bounded)
// until its portal accepts connections. The process is stopped in
// tb.Cleanup.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	bin := Binary(tb)
	if opts.Name == "" {
		opts.Name = "site-a"
	}
	if opts.IQN == "" {
		opts.IQN = DefaultIQN
	}
	if opts.Size == "" {
		opts.Size = "64MiB"
	}
	if opts.BlockSize == 0 {
		opts.BlockSize = 512
	}
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	port, err := freePort()
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{
		Addr:   fmt.Sprintf("127.0.0.1:%d", port),
		IQN:    opts.IQN,
		LUN:    opts.LUN,
		Dir:    opts.Dir,
		Config: filepath.Join(opts.Dir, "metrolun.hcl"),
		Log:    filepath.Join(opts.Dir, "serve.log"),
		exited: make(chan struct{}),
	}
	cfg := fmt.Sprintf(`name = %q
data_dir = %q
log_level = "debug"
iscsi {
  listen = [%q]
%s
}
target %q {
  lun "%d" {
    path = %q
    size = %q
    block_size = %d
  }
}
`, opts.Name, filepath.Join(opts.Dir, "state"), s.Addr, indent(opts.ISCSI), opts.IQN, opts.LUN,
		filepath.Join(opts.Dir, "lun.img"), opts.Size, opts.BlockSize)
	if err := os.WriteFile(s.Config, []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
	logf, err := os.Create(s.Log)
	if err != nil {
		tb.Fatal(err)
	}
	defer logf.Close()
	s.cmd = exec.Command(bin, "serve", "--config", s.Config)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		tb.Fatalf("start %s serve: %v", bin, err)
	}
	s.PID = s.cmd.Process.Pid
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	tb.Cleanup(func() { s.Kill() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-s.exited:
			tb.Fatalf("metrolun serve exited before it listened (%v):\n%s", s.waitErr, s.LogTail(20))
		default:
		}
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
			return s
		}
		if time.Now().After(deadline) {
			tb.Fatalf("metrolun serve did not listen on %s within 30s:\n%s", s.Addr, s.LogTail(20))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		b.WriteString("  " + strings.TrimSpace(l) + "\n")
	}
	return b.String()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Exited is closed when the process has exited.
func (s *Server) Exited() <-chan struct{} { return s.exited }

// Terminate sends SIGTERM (a clean shutdown: in-flight commands finish,
// initiators are asked to log out) and waits up to timeout for the exit.
func (s *Server) Terminate(timeout time.Duration) error {
	s.signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return s.waitErr
	case <-time.After(timeout):
		return fmt.Errorf("metrolun serve (pid %d) still running %v after SIGTERM", s.PID, timeout)
	}
}

// Freeze stops the process group with SIGSTOP (connections stay open,
// nothing is answered); Thaw resumes it with SIGCONT.
func (s *Server) Freeze() { s.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server.
func (s *Server) Thaw() { s.signal(syscall.SIGCONT) }

// Kill sends SIGKILL to the process group and waits (bounded) for the
// exit. It is safe to call more than once.
func (s *Server) Kill() {
	s.signal(syscall.SIGKILL)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
	}
}

func (s *Server) signal(sig syscall.Signal) {
	select {
	case <-s.exited:
		return
	default:
	}
	if s.PID > 0 {
		syscall.Kill(-s.PID, sig)
	}
}

// LogText is the process's output so far.
func (s *Server) LogText() string {
	b, _ := os.ReadFile(s.Log)
	return string(b)
}

// LogTail returns the last n lines of the log.
func (s *Server) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(s.LogText(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
