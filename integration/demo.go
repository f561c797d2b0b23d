package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Member is one process of a running demo, as demo.json lists it.
type Member struct {
	Name string `json:"name"`
	// Role is "data", "witness" or "mirror-floor" (the echo of `demo
	// --mirror-floor`, a measuring aid).
	Role string `json:"role"`
	PID  int    `json:"pid"`
	// ISCSI is the member's LUN URL
	// (iscsi://127.0.0.1:3260/iqn.2026-11.io.metrolun:demo/0); a witness
	// has none.
	ISCSI string `json:"iscsi,omitempty"`
}

// DemoFile is DIR/demo.json, written by `metrolun demo` once it is ready.
type DemoFile struct {
	Members []Member `json:"members"`
	// Writer is the data site that held the writer lease when the demo
	// became ready; empty for a single site.
	Writer string `json:"writer,omitempty"`
}

// DataMembers returns the members that serve iSCSI, in file order.
func (d DemoFile) DataMembers() []Member {
	var out []Member
	for _, m := range d.Members {
		if m.Role == "data" {
			out = append(out, m)
		}
	}
	return out
}

// ParseDemoFile decodes and checks demo.json: at least one data member,
// every member with a name, a known role and a pid, every data member with
// an iscsi:// URL on loopback.
func ParseDemoFile(b []byte) (DemoFile, error) {
	var d DemoFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return d, fmt.Errorf("demo.json: %w", err)
	}
	if len(d.DataMembers()) == 0 {
		return d, errors.New("demo.json: no member with role \"data\"")
	}
	for i, m := range d.Members {
		where := fmt.Sprintf("demo.json: members[%d] (%q)", i, m.Name)
		if m.Name == "" {
			return d, fmt.Errorf("%s: empty name", where)
		}
		if m.PID <= 0 {
			return d, fmt.Errorf("%s: pid %d", where, m.PID)
		}
		switch m.Role {
		case "data":
			u, err := url.Parse(m.ISCSI)
			if err != nil || u.Scheme != "iscsi" {
				return d, fmt.Errorf("%s: iscsi %q is not an iscsi:// URL", where, m.ISCSI)
			}
			if !strings.HasPrefix(u.Hostname(), "127.") {
				return d, fmt.Errorf("%s: iscsi %q is not on 127.0.0.0/8", where, m.ISCSI)
			}
		case "witness", "mirror-floor":
			if m.ISCSI != "" {
				return d, fmt.Errorf("%s: a %s has no iscsi URL, got %q", where, m.Role, m.ISCSI)
			}
		default:
			return d, fmt.Errorf("%s: role %q is neither data, witness nor mirror-floor", where, m.Role)
		}
	}
	return d, nil
}

// DemoOptions says how to run `metrolun demo`.
type DemoOptions struct {
	// Bin is the metrolun binary (see BuildMetrolun).
	Bin string
	// Dir is passed as --dir; it is created if missing.
	Dir string
	// Port is passed as --port; 0 picks a free loopback port.
	Port int
	// Size is passed as --size (e.g. "1GiB") when not empty.
	Size string
	// Args are appended to the command line.
	Args []string
	// ReadyTimeout bounds the wait for demo.json; 0 means 30s.
	ReadyTimeout time.Duration
	// StopTimeout bounds the wait after SIGTERM; 0 means 30s (the demo
	// itself gives each member 25s to stop before it kills it).
	StopTimeout time.Duration
	// Log receives the demo's stdout and stderr; empty means Dir+".log".
	Log string
	// Wrap, if set, is a command that runs the demo (it must exec it, so
	// that the demo keeps its pid): e.g. ip netns exec NS.
	Wrap []string
	// Env is added to the demo's environment.
	Env []string
}

// Demo is a running `metrolun demo`.
type Demo struct {
	File DemoFile
	Dir  string
	Log  string
	// PID is the demo process, leader of its own process group.
	PID int

	bin         string
	stopTimeout time.Duration
	cmd         *exec.Cmd
	exited      chan struct{}
	stopped     bool
	stopErr     error
}

// StartDemo runs `metrolun demo --dir DIR --addr 127.0.0.1 --port PORT`
// in a process group of its own and waits (bounded) until it has written
// a valid DIR/demo.json. On any error the process group is killed.
func StartDemo(ctx context.Context, opts DemoOptions) (_ *Demo, err error) {
	if opts.Bin == "" {
		return nil, errors.New("DemoOptions.Bin is empty")
	}
	if opts.Dir == "" {
		return nil, errors.New("DemoOptions.Dir is empty")
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 30 * time.Second
	}
	if opts.Log == "" {
		opts.Log = filepath.Clean(opts.Dir) + ".log"
	}
	if opts.Port == 0 {
		if opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	jsonPath := filepath.Join(opts.Dir, "demo.json")
	// A demo.json left by an earlier run must not pass for readiness.
	if err := os.Remove(jsonPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}

	args := []string{"demo", "--dir", opts.Dir, "--addr", Loopback, "--port", strconv.Itoa(opts.Port)}
	if opts.Size != "" {
		args = append(args, "--size", opts.Size)
	}
	if !slices.Contains(opts.Args, "--sites") {
		// The harness's default is one standalone site; cluster tests ask
		// for more.
		args = append(args, "--sites", "1")
	}
	args = append(args, opts.Args...)

	logf, err := os.Create(opts.Log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	d := &Demo{Dir: opts.Dir, Log: opts.Log, bin: opts.Bin, stopTimeout: opts.StopTimeout, exited: make(chan struct{})}
	if len(opts.Wrap) > 0 {
		d.cmd = exec.Command(opts.Wrap[0], append(append(slices.Clone(opts.Wrap[1:]), opts.Bin), args...)...)
	} else {
		d.cmd = exec.Command(opts.Bin, args...)
	}
	if len(opts.Env) > 0 {
		d.cmd.Env = append(os.Environ(), opts.Env...)
	}
	d.cmd.Stdout = logf
	d.cmd.Stderr = logf
	d.cmd.SysProcAttr = groupAttr()
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", opts.Bin, err)
	}
	d.PID = d.cmd.Process.Pid
	go func() {
		d.cmd.Wait()
		close(d.exited)
	}()
	defer func() {
		if err != nil {
			d.Stop()
		}
	}()

	deadline := time.Now().Add(opts.ReadyTimeout)
	var lastErr error
	for {
		select {
		case <-d.exited:
			return nil, fmt.Errorf("metrolun demo exited before it was ready (%v): %s", d.cmd.ProcessState, tailFile(d.Log, 10))
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		b, err := os.ReadFile(jsonPath)
		if err == nil {
			// The file may be caught half written; only a parse that
			// still fails at the deadline counts.
			if d.File, lastErr = ParseDemoFile(b); lastErr == nil {
				return d, nil
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			lastErr = err
		}
		if time.Now().After(deadline) {
			if lastErr == nil {
				lastErr = fmt.Errorf("%s not written", jsonPath)
			}
			return nil, fmt.Errorf("metrolun demo not ready within %v: %v; log: %s", opts.ReadyTimeout, lastErr, tailFile(d.Log, 10))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Alive reports an error when the demo process or one of its members has
// exited.
func (d *Demo) Alive() error {
	select {
	case <-d.exited:
		return fmt.Errorf("metrolun demo (pid %d) exited: %v; log: %s", d.PID, d.cmd.ProcessState, tailFile(d.Log, 10))
	default:
	}
	for _, m := range d.File.Members {
		if m.PID != d.PID && !processAlive(m.PID) {
			return fmt.Errorf("member %s (pid %d) is gone; log: %s", m.Name, m.PID, tailFile(d.Log, 10))
		}
	}
	return nil
}

// Stop sends SIGTERM to the demo's process group and waits up to
// StopTimeout for the demo to exit; then it SIGKILLs the group. Members
// still alive after that (a member that left the group) are killed too.
// The error says what had to be forced: a clean demo stops on SIGTERM and
// leaves nothing behind. Stop is safe to call more than once.
func (d *Demo) Stop() error {
	if d.stopped {
		return d.stopErr
	}
	d.stopped = true
	var errs []error
	select {
	case <-d.exited:
	default:
		killGroup(d.PID, syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(d.stopTimeout):
			errs = append(errs, fmt.Errorf("metrolun demo (pid %d) did not exit within %v of SIGTERM; killed", d.PID, d.stopTimeout))
		}
	}
	// Whatever is left in the group was started by the demo and not
	// stopped by it.
	killGroup(d.PID, syscall.SIGKILL)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		errs = append(errs, fmt.Errorf("metrolun demo (pid %d) survived SIGKILL for 10s", d.PID))
	}
	// Members run in process groups of their own (so a test can kill one
	// site), so the group kill above does not reach them.
	for _, m := range d.File.Members {
		if m.PID == d.PID || !processAlive(m.PID) || !isProcessOf(m.PID, d.bin) {
			continue
		}
		errs = append(errs, fmt.Errorf("member %s (pid %d) outlived the demo; killed", m.Name, m.PID))
		syscall.Kill(m.PID, syscall.SIGKILL)
		for deadline := time.Now().Add(5 * time.Second); processAlive(m.PID) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
	}
	d.stopErr = errors.Join(errs...)
	return d.stopErr
}

// StartDemoT starts a demo for a test, fails the test if it does not
// become ready, and stops it in t.Cleanup (reporting a demo that had to be
// killed as a test error).
func StartDemoT(tb testing.TB, opts DemoOptions) *Demo {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = filepath.Join(tb.TempDir(), "demo")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := StartDemo(ctx, opts)
	if err != nil {
		tb.Fatalf("start metrolun demo: %v", err)
	}
	tb.Cleanup(func() {
		if err := d.Stop(); err != nil {
			tb.Errorf("stop metrolun demo: %v", err)
		}
	})
	return d
}

// processAlive is true for a process that exists and is not a zombie.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// itself contain spaces or parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

// isProcessOf guards against a recycled pid: only a process running the
// given binary (or mentioning it on its command line) is ours to kill.
func isProcessOf(pid int, bin string) bool {
	want, _ := filepath.Abs(bin)
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == want {
		return true
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmdline, []byte(filepath.Base(bin)))
}

// BuildMetrolun returns the metrolun binary to test: $METROLUN_BIN when
// set, else a fresh `go build` of ./cmd/metrolun into dir.
func BuildMetrolun(ctx context.Context, dir string) (string, error) {
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
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "metrolun")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/metrolun/metrolun/cmd/metrolun")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build github.com/metrolun/metrolun/cmd/metrolun: %w\n%s", err, b)
	}
	return out, nil
}
