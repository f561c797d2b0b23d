package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TgtdOptions describes one reference target: Debian's tgtd (1.0.85)
// serving one LUN backed by a sparse file.
type TgtdOptions struct {
	// Port is the iSCSI portal port on 127.0.0.1; 0 picks a free one.
	Port int
	// IQN is the target name; empty means "iqn.2026-11.io.metrolun:tgtd".
	IQN string
	// Size of the LUN in bytes; 0 means 1 GiB.
	Size int64
	// BlockSize is the logical block size; 0 keeps tgtd's 512.
	BlockSize int
	// FullyProvisioned turns thin provisioning off. By default the LUN
	// reports LBPME=1 (thin_provisioning=1), as metrolun's sparse LUNs do,
	// so UNMAP, WRITE SAME with UNMAP and GET LBA STATUS get tested.
	FullyProvisioned bool
	// Dir holds the backing file and tgtd's log. Empty means a new
	// temporary directory that Stop removes.
	Dir string
	// StartTimeout bounds the wait for tgtd to answer tgtadm; 0 means 15s.
	StartTimeout time.Duration
}

// Tgtd is a running tgtd with one target and one LUN.
type Tgtd struct {
	// URL is the LUN as libiscsi and qemu name it:
	// iscsi://127.0.0.1:PORT/IQN/1.
	URL string
	// Portal is "127.0.0.1:PORT".
	Portal string
	IQN    string
	// LUN is 1: tgtd keeps LUN 0 for its controller device.
	LUN     int
	Size    int64
	Backing string
	Log     string
	PID     int

	ipcPrefix string
	ipcDir    string
	ownDir    string
	cmd       *exec.Cmd
	exited    chan struct{}
}

// StartTgtd starts tgtd in the foreground in its own process group.
//
// tgtd listens on 0.0.0.0:3260 and controls itself through
// /var/run/tgtd/socket.0 by default. Here the portal is set with
// "--iscsi portal=127.0.0.1:PORT" and the control socket is moved to a
// private path with the TGT_IPC_SOCKET environment variable (read by both
// tgtd and tgtadm in 1.0.85), so several tgtds run side by side and next to
// a system tgtd. tgtd ignores SIGTERM (its handler is empty), so Stop kills.
func StartTgtd(ctx context.Context, opts TgtdOptions) (_ *Tgtd, err error) {
	tgtdPath, err := Tool("tgtd")
	if err != nil {
		return nil, err
	}
	if _, err := Tool("tgtadm"); err != nil {
		return nil, err
	}
	if opts.IQN == "" {
		opts.IQN = "iqn.2026-11.io.metrolun:tgtd"
	}
	if opts.Size == 0 {
		opts.Size = 1 << 30
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 15 * time.Second
	}
	if opts.Port == 0 {
		if opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	t := &Tgtd{IQN: opts.IQN, LUN: 1, Size: opts.Size, exited: make(chan struct{})}
	t.Portal = net.JoinHostPort(Loopback, strconv.Itoa(opts.Port))
	t.URL = fmt.Sprintf("iscsi://%s/%s/%d", t.Portal, t.IQN, t.LUN)
	defer func() {
		if err != nil {
			t.Stop()
		}
	}()

	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "metrolun-tgtd-"); err != nil {
			return nil, err
		}
		t.ownDir = dir
	}
	// A unix socket path must fit in 108 bytes; test temp dirs can be
	// longer, so the socket gets a short directory of its own.
	if t.ipcDir, err = os.MkdirTemp("", "tgtipc-"); err != nil {
		return nil, err
	}
	t.ipcPrefix = filepath.Join(t.ipcDir, "s")

	t.Backing = filepath.Join(dir, fmt.Sprintf("tgtd-%d.img", opts.Port))
	f, err := os.OpenFile(t.Backing, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(opts.Size) // sparse: no block is allocated yet
	f.Close()
	if err != nil {
		return nil, err
	}

	t.Log = filepath.Join(dir, fmt.Sprintf("tgtd-%d.log", opts.Port))
	logf, err := os.Create(t.Log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	t.cmd = exec.Command(tgtdPath, "-f", "--iscsi", "portal="+t.Portal)
	t.cmd.Env = append(os.Environ(), "TGT_IPC_SOCKET="+t.ipcPrefix)
	t.cmd.Stdout = logf
	t.cmd.Stderr = logf
	t.cmd.SysProcAttr = groupAttr()
	if err := t.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start tgtd: %w", err)
	}
	t.PID = t.cmd.Process.Pid
	go func() {
		t.cmd.Wait()
		close(t.exited)
	}()

	// tgtd has no readiness signal: poll its control socket, then its portal.
	deadline := time.Now().Add(opts.StartTimeout)
	for {
		_, err = t.Admin(ctx, "--mode", "target", "--op", "show")
		if err == nil {
			break
		}
		select {
		case <-t.exited:
			return nil, fmt.Errorf("tgtd exited at start: %s", tailFile(t.Log, 5))
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("tgtd did not answer tgtadm within %v: %v; log: %s", opts.StartTimeout, err, tailFile(t.Log, 5))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := WaitTCP(t.Portal, time.Until(deadline)); err != nil {
		return nil, fmt.Errorf("tgtd portal: %w; log: %s", err, tailFile(t.Log, 5))
	}

	lunNew := []string{"--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", t.Backing}
	if opts.BlockSize != 0 {
		lunNew = append(lunNew, "--blocksize", strconv.Itoa(opts.BlockSize))
	}
	steps := [][]string{
		{"--mode", "target", "--op", "new", "--tid", "1", "--targetname", t.IQN},
		lunNew,
		{"--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"},
	}
	if !opts.FullyProvisioned {
		steps = append(steps, []string{"--mode", "logicalunit", "--op", "update", "--tid", "1", "--lun", "1", "--params", "thin_provisioning=1"})
	}
	for _, s := range steps {
		if _, err := t.Admin(ctx, s...); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Admin runs tgtadm against this tgtd (with --lld iscsi) and returns its
// output.
func (t *Tgtd) Admin(ctx context.Context, args ...string) (string, error) {
	res, err := RunTool(ctx, 10*time.Second, []string{"TGT_IPC_SOCKET=" + t.ipcPrefix},
		"tgtadm", append([]string{"--lld", "iscsi"}, args...)...)
	return res.Stdout, err
}

// Stop kills tgtd's process group, waits for it (bounded) and removes the
// directories StartTgtd created. It is safe to call more than once.
func (t *Tgtd) Stop() error {
	var err error
	if t.cmd != nil && t.cmd.Process != nil {
		killGroup(t.PID, syscall.SIGKILL)
		select {
		case <-t.exited:
		case <-time.After(10 * time.Second):
			err = fmt.Errorf("tgtd (pid %d) still running 10s after SIGKILL", t.PID)
		}
	}
	if t.ipcDir != "" {
		os.RemoveAll(t.ipcDir)
		t.ipcDir = ""
	}
	if t.ownDir != "" {
		os.RemoveAll(t.ownDir)
		t.ownDir = ""
	}
	return err
}

// StartTgtdT starts tgtd for a test and stops it in t.Cleanup. It fails
// the test (never skips) when tgtd is missing or does not start.
func StartTgtdT(tb testing.TB, opts TgtdOptions) *Tgtd {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t, err := StartTgtd(ctx, opts)
	if err != nil {
		tb.Fatalf("start reference tgtd: %v", err)
	}
	tb.Cleanup(func() {
		if err := t.Stop(); err != nil {
			tb.Errorf("stop tgtd: %v", err)
		}
	})
	return t
}

// tgtdVersion returns tgtd's version string, e.g. "1.0.85".
func tgtdVersion(ctx context.Context) (string, error) {
	res, err := RunTool(ctx, 10*time.Second, nil, "tgtd", "-V")
	if err != nil && res.Stdout == "" {
		return "", err
	}
	return strings.TrimSpace(res.Stdout + res.Stderr), nil
}
