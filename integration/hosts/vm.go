// Package hosts drives metrolun from a real Linux host: a Debian guest
// (scripts/build-guest.sh) booted under qemu-system-x86_64 with the
// kernel's iSCSI initiator (open-iscsi), dm-multipath and LVM, against a
// cluster of real metrolun processes on the host's loopback.
//
// The guest reaches the host only through QEMU's user network, where
// 10.0.2.2 is the host's 127.0.0.1; the harness puts a proxy
// (integration/proxy) on 127.0.0.1 in front of each site's portal, so
// each site is one portal 10.0.2.2:PORT in the guest, and a site's path
// can be cut silently. The guest's init dials the harness back (package
// agent) and runs what the test asks.
//
// The tests run only with METROLUN_HOSTS=1 (`make hosts`): a boot under
// TCG and the failovers take minutes. When enabled and the guest is not
// built, they fail.
package hosts

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/metrolun/metrolun/integration/hosts/agent"
)

// GuestDir is where scripts/build-guest.sh puts the guest:
// $METROLUN_GUEST_DIR, else $XDG_CACHE_HOME/metrolun-guest, else
// $HOME/.cache/metrolun-guest.
func GuestDir() string {
	if d := os.Getenv("METROLUN_GUEST_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "metrolun-guest")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "metrolun-guest")
}

// VMOptions says how to boot the guest.
type VMOptions struct {
	// Dir holds vmlinuz, initrd.img and root.img (GuestDir()).
	Dir string
	// Share is the host directory the guest mounts at /mnt/share; it
	// must hold the agent as "agent", and may hold etc/iscsid.conf and
	// etc/multipath.conf, which the guest's init installs before it
	// starts iscsid and multipathd.
	Share string
	// Log receives the serial console.
	Log string
	// BootTimeout bounds the wait for the agent; 0 means 5 minutes.
	BootTimeout time.Duration
	// MemoryMB is the guest's memory; 0 means 1024.
	MemoryMB int
	// CPUs is the guest's CPU count; 0 means 2.
	CPUs int
}

// VM is a running guest with its agent connected.
type VM struct {
	// Booted is how long from starting QEMU until the agent connected.
	Booted time.Duration
	Log    string

	cmd    *exec.Cmd
	exited chan struct{}
	conn   net.Conn

	wmu  sync.Mutex
	enc  *json.Encoder
	mu   sync.Mutex
	next uint64
	wait map[uint64]chan agent.Message
	proc map[string]chan agent.Message
	err  error // why the connection ended
	done chan struct{}
}

// Boot starts QEMU (TCG: no KVM here) with the guest's kernel, initrd and
// a copy-on-write view of its root image, and waits (bounded) until the
// guest's agent has dialled in. The root image is never changed
// (snapshot=on), so guests can run side by side. Stop kills QEMU.
func Boot(ctx context.Context, o VMOptions) (_ *VM, err error) {
	for _, f := range []string{"vmlinuz", "initrd.img", "root.img"} {
		if _, err := os.Stat(filepath.Join(o.Dir, f)); err != nil {
			return nil, fmt.Errorf("guest not built: %s missing (run scripts/build-guest.sh, or make hosts): %w", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(o.Share, "agent")); err != nil {
		return nil, fmt.Errorf("no agent in the share: %w", err)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, errors.New("qemu-system-x86_64 not found: install qemu-system-x86 (scripts/install-guest-deps.sh)")
	}
	if o.BootTimeout == 0 {
		o.BootTimeout = 5 * time.Minute
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 1024
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	logf, err := os.Create(o.Log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := []string{
		"-accel", "tcg,thread=multi",
		"-machine", "pc", "-cpu", "max",
		"-smp", strconv.Itoa(o.CPUs), "-m", strconv.Itoa(o.MemoryMB),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-serial", "stdio",
		"-kernel", filepath.Join(o.Dir, "vmlinuz"),
		"-initrd", filepath.Join(o.Dir, "initrd.img"),
		"-append", "console=ttyS0 root=/dev/vda rw init=/sbin/metrolun-init quiet loglevel=4 panic=-1 net.ifnames=0 metrolun.ctl=" + strconv.Itoa(port),
		"-drive", "file=" + filepath.Join(o.Dir, "root.img") + ",if=virtio,format=raw,snapshot=on",
		"-netdev", "user,id=n0,net=10.0.2.0/24",
		"-device", "virtio-net-pci,netdev=n0,romfile=",
		"-virtfs", "local,path=" + o.Share + ",mount_tag=share,security_model=none,id=share",
	}
	vm := &VM{Log: o.Log, exited: make(chan struct{}), wait: map[uint64]chan agent.Message{},
		proc: map[string]chan agent.Message{}, done: make(chan struct{})}
	vm.cmd = exec.Command(qemu, args...)
	vm.cmd.Stdin = nil
	vm.cmd.Stdout, vm.cmd.Stderr = logf, logf
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := vm.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	go func() { vm.cmd.Wait(); close(vm.exited) }()
	defer func() {
		if err != nil {
			vm.Stop()
		}
	}()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	select {
	case vm.conn = <-accepted:
	case <-vm.exited:
		return nil, fmt.Errorf("qemu exited before the guest's agent connected (%v); console: %s", vm.cmd.ProcessState, tail(o.Log, 15))
	case <-time.After(o.BootTimeout):
		return nil, fmt.Errorf("guest's agent did not connect within %v; console: %s", o.BootTimeout, tail(o.Log, 15))
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	vm.Booted = time.Since(start)
	vm.enc = json.NewEncoder(vm.conn)
	go vm.read()
	return vm, nil
}

func (vm *VM) read() {
	sc := bufio.NewScanner(vm.conn)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var m agent.Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			vm.fail(fmt.Errorf("bad message from the guest: %w", err))
			return
		}
		vm.mu.Lock()
		if m.Proc != "" {
			if ch := vm.proc[m.Proc]; ch != nil {
				// A reader that falls behind by this much has stopped
				// reading; dropping is then better than stalling every
				// other answer.
				select {
				case ch <- m:
				default:
				}
			}
		} else if ch := vm.wait[m.ID]; ch != nil {
			ch <- m
			delete(vm.wait, m.ID)
		}
		vm.mu.Unlock()
	}
	err := sc.Err()
	if err == nil {
		err = errors.New("the guest closed the control connection")
	}
	vm.fail(err)
}

func (vm *VM) fail(err error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.err == nil {
		vm.err = err
		close(vm.done)
	}
}

func (vm *VM) call(ctx context.Context, req agent.Request, timeout time.Duration) (agent.Message, error) {
	ch := make(chan agent.Message, 1)
	vm.mu.Lock()
	if vm.err != nil {
		vm.mu.Unlock()
		return agent.Message{}, vm.err
	}
	vm.next++
	req.ID = vm.next
	vm.wait[req.ID] = ch
	vm.mu.Unlock()
	vm.wmu.Lock()
	err := vm.enc.Encode(req)
	vm.wmu.Unlock()
	if err != nil {
		return agent.Message{}, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m := <-ch:
		if m.Err != "" {
			return m, fmt.Errorf("guest: %s: %s", strings.Join(req.Argv, " "), m.Err)
		}
		return m, nil
	case <-vm.done:
		return agent.Message{}, vm.err
	case <-t.C:
		return agent.Message{}, fmt.Errorf("guest: no answer to %q within %v", strings.Join(req.Argv, " "), timeout)
	case <-ctx.Done():
		return agent.Message{}, ctx.Err()
	}
}

// Run runs a shell command line in the guest (bash -c) with a time limit
// and returns its stdout; a non-zero exit status is an error that
// carries its output.
func (vm *VM) Run(ctx context.Context, timeout time.Duration, script string) (string, error) {
	req := agent.Request{Op: "run", Argv: []string{"/bin/bash", "-c", script}, TimeoutMS: timeout.Milliseconds()}
	m, err := vm.call(ctx, req, timeout+10*time.Second)
	if err != nil {
		return m.Stdout, err
	}
	if m.Exit != 0 {
		return m.Stdout, fmt.Errorf("guest: %q exited %d: %s", script, m.Exit, strings.TrimSpace(m.Stderr+" "+m.Stdout))
	}
	return m.Stdout, nil
}

// Start starts a background process in the guest; its output lines and
// its exit arrive on the returned channel.
func (vm *VM) Start(ctx context.Context, name string, argv ...string) (<-chan agent.Message, error) {
	ch := make(chan agent.Message, 4096)
	vm.mu.Lock()
	vm.proc[name] = ch
	vm.mu.Unlock()
	if _, err := vm.call(ctx, agent.Request{Op: "start", Name: name, Argv: argv}, 30*time.Second); err != nil {
		return nil, err
	}
	return ch, nil
}

// Signal signals a process started with Start.
func (vm *VM) Signal(ctx context.Context, name string, sig syscall.Signal) error {
	_, err := vm.call(ctx, agent.Request{Op: "signal", Name: name, Signal: int(sig)}, 30*time.Second)
	return err
}

// Stop kills QEMU (the guest has nothing to save: its root is a
// snapshot) and waits for it.
func (vm *VM) Stop() {
	if vm.conn != nil {
		vm.conn.Close()
	}
	if vm.cmd.Process != nil {
		syscall.Kill(-vm.cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-vm.exited:
	case <-time.After(10 * time.Second):
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no console log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
