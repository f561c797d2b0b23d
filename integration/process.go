// Package integration runs metrolun and reference targets as real processes
// on loopback and drives them with real iSCSI clients (libiscsi's tools,
// qemu-img). It holds the conformance runner, the benchmarks against
// Debian's tgtd, and the helpers that later cluster tests reuse.
//
// Everything started here listens on 127.0.0.0/8 only, runs in its own
// process group, and is killed by its Stop func (tests register it with
// t.Cleanup, so a failing test still cleans up).
package integration

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
	"syscall"
	"time"
)

// Loopback is the only address anything in this package listens on or
// connects to.
const Loopback = "127.0.0.1"

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1 a
// moment ago. All listeners are held until every port is chosen so the
// ports differ from each other; another process can still take one before
// the caller binds it, which the callers accept (they fail loudly).
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(Loopback, "0"))
		if err != nil {
			return nil, fmt.Errorf("pick a free loopback port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// FreePort returns one TCP port that was free on 127.0.0.1 a moment ago.
func FreePort() (int, error) {
	p, err := FreePorts(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// WaitTCP dials addr until it accepts a connection or timeout passes.
func WaitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not accept a connection within %v: %w", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Tool is the path of an external program the harness needs, or an error
// that says which package provides it.
func Tool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	// Debian puts tgtd and tgtadm in /usr/sbin, which a non-login PATH
	// may lack.
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	pkg := toolPackages[name]
	if pkg == "" {
		pkg = "the package that provides it"
	}
	return "", fmt.Errorf("%s not found: install %s (scripts/install-test-deps.sh installs every test dependency)", name, pkg)
}

var toolPackages = map[string]string{
	"iscsi-test-cu":        "libiscsi-bin",
	"iscsi-ls":             "libiscsi-bin",
	"iscsi-inq":            "libiscsi-bin",
	"iscsi-perf":           "libiscsi-bin",
	"iscsi-readcapacity16": "libiscsi-bin",
	"qemu-img":             "qemu-utils (and qemu-block-extra for iscsi:// URLs)",
	"qemu-io":              "qemu-utils (and qemu-block-extra for iscsi:// URLs)",
	"tgtd":                 "tgt",
	"tgtadm":               "tgt",
}

// groupAttr puts a child in a process group of its own, so that the group
// can be signalled as a whole, and asks the kernel to kill it if the test
// binary dies first.
func groupAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup sends sig to the process group led by pid.
func killGroup(pid int, sig syscall.Signal) error {
	if pid <= 0 {
		return fmt.Errorf("refusing to signal process group %d", pid)
	}
	err := syscall.Kill(-pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// ToolResult is what a finished external command left behind.
type ToolResult struct {
	Stdout, Stderr string
	// TimedOut is set when the command was killed because its time ran out.
	TimedOut bool
	Elapsed  time.Duration
}

// RunTool runs a client tool in its own process group with a hard time
// limit; the whole group is killed when the limit passes or ctx ends.
// It returns the output even when the command failed.
func RunTool(ctx context.Context, timeout time.Duration, env []string, name string, args ...string) (ToolResult, error) {
	path, err := Tool(name)
	if err != nil {
		return ToolResult{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = groupAttr()
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	err = cmd.Run()
	res := ToolResult{Stdout: stdout.String(), Stderr: stderr.String(), Elapsed: time.Since(start)}
	if ctx.Err() == context.DeadlineExceeded {
		res.TimedOut = true
		return res, fmt.Errorf("%s %s: timed out after %v", name, strings.Join(args, " "), timeout)
	}
	if err != nil {
		return res, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLines(res.Stderr+res.Stdout, 5))
	}
	return res, nil
}

// lastLines returns the last n non-empty lines of s, joined by " | ".
func lastLines(s string, n int) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// tailFile returns the last n non-empty lines of a log file, for errors.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return lastLines(string(b), n)
}

// ModuleRoot finds the directory holding this module's go.mod, walking up
// from the working directory (go test runs in the package directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/metrolun/metrolun")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod of github.com/metrolun/metrolun not found above the working directory")
		}
		dir = parent
	}
}
