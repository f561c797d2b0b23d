package hosts

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/hosts/agent"
	"github.com/metrolun/metrolun/integration/hosts/stamp"
)

// A migratable guest is the host tests' Debian guest booted so that
// QEMU can live-migrate it from one process to another on this host:
//
//   - its root is a qcow2 overlay on root.img that every QEMU opens (the
//     shared storage of a same-host migration; snapshot=on would give
//     each QEMU a private overlay);
//   - its data disk is the cluster's LUN through QEMU's own iSCSI
//     initiator (libiscsi: -blockdev driver=iscsi), at the site the QEMU
//     stands beside, with that host's initiator name;
//   - the control channel migrates with the guest: QEMU's user network
//     forwards the guest's connections to 10.0.2.100:7000 (guestfwd) to
//     a socket chardev connected to the harness, and those sockets are
//     the only TCP state libslirp saves in the migration stream. Each
//     QEMU connects its own chardev; the harness reads each to its end
//     (the QEMU quits after handing over) before the next, and writes to
//     the QEMU that runs the guest.
//
// The guest's init runs the agent from the 9p share and dials 10.0.2.2,
// neither of which migrates (QEMU blocks migration while the 9p export is
// mounted). So after boot the agent copies itself to /tmp (tmpfs, in the
// guest's RAM), replaces itself with the copy (agent op "exec": same pid,
// which the init waits on) dialling 10.0.2.100:7000, and the share is
// unmounted.

// migrateCtlAddr is where the guest's agent dials after boot: QEMU's
// guestfwd sends it to the harness.
const migrateCtlAddr = "10.0.2.100:7000"

// Migration settings for a guest under TCG on a loaded 2-core host: the
// bandwidth bound is loopback's, not a WAN's (QEMU's default is 32 MiB/s,
// which with 512 MiB of guest RAM spends seconds on pages that are
// mostly zero), and the downtime limit is QEMU's default.
const (
	migrateMaxBandwidth = 1 << 30 // bytes/s
	migrateDowntimeMS   = 300
	migrateTimeout      = 3 * time.Minute
	migrateGuestMemMB   = 512
)

// DataSerial is the serial of the guest's iSCSI data disk
// (/sys/block/vdX/serial).
const DataSerial = "metrolun-data"

// MigratableGuest is a guest that moves between QEMU processes.
type MigratableGuest struct {
	// VM is the control channel to the guest's agent; it survives
	// migrations.
	VM *VM

	dir, guest, share, overlay, appendLine string
	cluster                                *Cluster
	relay                                  *ctlRelay
	stopOnError                            bool // werror=stop,rerror=stop on the data disk

	mu    sync.Mutex
	cur   *qemuProc
	procs []*qemuProc
	n     int
	taps  map[string]*wireTap // by site
	done  *completions
}

// qemuProc is one QEMU process of a migratable guest.
type qemuProc struct {
	Name string
	Site *Site
	IQN  string
	Log  string

	cmd    *exec.Cmd
	exited chan struct{}
	qmp    *QMP
	ctl    net.Conn // its guestfwd chardev, accepted from it
}

// MigrationResult is what one live migration cost.
type MigrationResult struct {
	From, To string // QEMU names: "qemu1@site-a"
	// Downtime is QEMU's figure (query-migrate on the source: from
	// stopping the guest to the last byte sent).
	Downtime time.Duration
	// Paused is from the source's STOP event to the destination's
	// RESUME event (QEMU's timestamps, the host's clock): how long the
	// guest did not run at all.
	Paused time.Duration
	// Total is query-migrate's total-time; Setup its setup-time.
	Total, Setup time.Duration
	// RAM is what the migration stream carried for RAM, in bytes
	// (ram.transferred), and Passes the dirty-sync count.
	RAM    int64
	Passes int64
	// Started, Stopped and Completed are on the host's clock: the
	// migrate command, the source's STOP and the destination's RESUME.
	Started, Stopped, Completed time.Time
}

// StartMigratableGuest boots the guest in a first QEMU ("qemu1") beside
// site, its data disk the LUN at that site with initiator name iqn, and
// moves its agent onto the migratable channel. With stopOnError every
// QEMU of the guest stops it on an I/O error of the data disk instead of
// failing the request (werror=stop,rerror=stop; see ResumeOnIOError).
// Everything stops when the test ends.
func StartMigratableGuest(t testing.TB, c *Cluster, share string, site *Site, iqn string, stopOnError bool) (*MigratableGuest, error) {
	ctx := context.Background()
	dir := GuestDir()
	for _, f := range []string{"vmlinuz", "initrd.img", "root.img"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("guest not built: %s missing (run scripts/build-guest.sh, or make hosts): %w", f, err)
		}
	}
	g := &MigratableGuest{dir: t.TempDir(), guest: dir, share: share, cluster: c, taps: map[string]*wireTap{}, done: &completions{}, stopOnError: stopOnError}
	t.Cleanup(g.Stop)
	g.overlay = filepath.Join(g.dir, "root.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", filepath.Join(dir, "root.img"), g.overlay).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("qemu-img create the root overlay: %v: %s", err, out)
	}
	boot, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer boot.Close()
	g.appendLine = "console=ttyS0 root=/dev/vda rw init=/sbin/metrolun-init quiet loglevel=4 panic=-1 net.ifnames=0 metrolun.ctl=" + strconv.Itoa(boot.Addr().(*net.TCPAddr).Port)
	start := time.Now()
	p, err := g.startQEMU(ctx, site, iqn, false)
	if err != nil {
		return nil, err
	}
	// The init's agent, from the share, over 10.0.2.2.
	conn, err := acceptWithin(boot, 5*time.Minute, p.exited)
	if err != nil {
		return nil, fmt.Errorf("guest's agent did not connect: %w; console: %s", err, tail(p.Log, 15))
	}
	first := attachVM(conn, p.Log)
	defer first.Stop()
	if _, err := first.Run(ctx, time.Minute, fmt.Sprintf("cp /mnt/share/agent /tmp/agent && date -s @%.3f >/dev/null", float64(time.Now().UnixNano())/1e9)); err != nil {
		return nil, err
	}
	g.relay = newCtlRelay(p.ctl)
	g.VM = attachVM(g.relay.host, p.Log)
	if _, err := first.call(ctx, agent.Request{Op: "exec", Argv: []string{"/tmp/agent", "agent", "-connect", migrateCtlAddr}}, 30*time.Second); err != nil {
		return nil, fmt.Errorf("moving the agent to /tmp: %w", err)
	}
	// Sent before the new agent dials: QEMU holds it until the guest's
	// connection exists.
	if out, err := g.VM.Run(ctx, time.Minute, "umount /mnt/share && echo unmounted"); err != nil || !strings.Contains(out, "unmounted") {
		return nil, fmt.Errorf("unmount the share (QEMU refuses to migrate while it is mounted): %v %s", err, out)
	}
	g.VM.Booted = time.Since(start)
	return g, nil
}

// startQEMU starts the next QEMU of the guest beside site; incoming
// makes it wait for a migration (-incoming defer; Migrate says where).
func (g *MigratableGuest) startQEMU(ctx context.Context, site *Site, iqn string, incoming bool) (_ *qemuProc, err error) {
	g.mu.Lock()
	g.n++
	name := fmt.Sprintf("qemu%d@%s", g.n, site.Name)
	g.mu.Unlock()
	ctlLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ctlLn.Close()
	tap, err := g.tap(site)
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(tap.Addr())
	if err != nil {
		return nil, err
	}
	p := &qemuProc{Name: name, Site: site, IQN: iqn, Log: filepath.Join(g.dir, name+".log"), exited: make(chan struct{})}
	qmpPath := filepath.Join(g.dir, name+".qmp")
	args := []string{
		"-name", name,
		"-accel", "tcg,thread=multi",
		"-machine", "pc", "-cpu", "max",
		"-smp", "2", "-m", strconv.Itoa(migrateGuestMemMB),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-serial", "stdio",
		"-kernel", filepath.Join(g.guest, "vmlinuz"),
		"-initrd", filepath.Join(g.guest, "initrd.img"),
		"-append", g.appendLine,
		"-drive", "file=" + g.overlay + ",if=none,id=root,format=qcow2",
		"-device", "virtio-blk-pci,drive=root,id=vroot,addr=0x4",
		// The LUN through libiscsi, as docs/live-migration.md recommends:
		// the host's own initiator name, no host cache (cache=none), the
		// guest told of a write cache so that its flushes reach the LUN.
		// No header digest: the wire tap reads the PDUs.
		"-blockdev", "driver=iscsi,node-name=data,transport=tcp,portal=" + net.JoinHostPort(host, port) +
			",target=" + g.cluster.Target + ",lun=0,initiator-name=" + iqn + ",header-digest=none,cache.direct=on,cache.no-flush=off",
		"-device", "virtio-blk-pci,drive=data,id=vdata,serial=" + DataSerial + ",write-cache=on,addr=0x5" + g.errorPolicy(),
		"-netdev", "user,id=n0,net=10.0.2.0/24,guestfwd=tcp:" + migrateCtlAddr + "-tcp:" + ctlLn.Addr().String(),
		"-device", "virtio-net-pci,netdev=n0,romfile=,addr=0x3",
		"-virtfs", "local,path=" + g.share + ",mount_tag=share,security_model=none,id=share",
		"-qmp", "unix:" + qmpPath + ",server=on,wait=off",
	}
	if incoming {
		args = append(args, "-incoming", "defer")
	}
	logf, err := os.Create(p.Log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	p.cmd = exec.Command("qemu-system-x86_64", args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	g.mu.Lock()
	g.procs = append(g.procs, p)
	g.mu.Unlock()
	defer func() {
		if err != nil {
			p.stop()
		}
	}()
	// QEMU connects the guestfwd chardev while it sets up the network,
	// before its monitor answers.
	if p.ctl, err = acceptWithin(ctlLn, time.Minute, p.exited); err != nil {
		return nil, fmt.Errorf("%s did not connect its control chardev: %w; log: %s", name, err, tail(p.Log, 10))
	}
	if p.qmp, err = DialQMP(ctx, qmpPath, time.Minute); err != nil {
		return nil, fmt.Errorf("%s: %w; log: %s", name, err, tail(p.Log, 10))
	}
	return p, nil
}

func (g *MigratableGuest) errorPolicy() string {
	if g.stopOnError {
		return ",werror=stop,rerror=stop"
	}
	return ""
}

// acceptWithin accepts one connection on ln, up to d, unless exited
// closes first.
func acceptWithin(ln net.Listener, d time.Duration, exited <-chan struct{}) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-exited:
		return nil, errors.New("QEMU exited")
	case <-time.After(d):
		return nil, fmt.Errorf("no connection within %v", d)
	}
}

// Current is the QEMU running the guest.
func (g *MigratableGuest) Current() *qemuProc {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cur == nil && len(g.procs) > 0 {
		return g.procs[0]
	}
	return g.cur
}

// Migrate live-migrates the guest to a new QEMU beside site whose data
// disk is the LUN at that site (initiator name iqn): the destination
// starts with -incoming, the source migrates to it over loopback
// (query-migrate polled until completed, at most migrateTimeout; no
// block migration, the LUN is shared storage: QEMU flushes and releases
// it at the source before the destination takes it), and the source
// quits once the guest runs at the destination.
func (g *MigratableGuest) Migrate(ctx context.Context, site *Site, iqn string) (MigrationResult, error) {
	dst, err := g.Prepare(ctx, site, iqn)
	if err != nil {
		return MigrationResult{}, err
	}
	return g.MigrateTo(ctx, dst)
}

// Prepare starts the QEMU a migration goes to: beside site, with the LUN
// there as its data disk (initiator name iqn), waiting for the guest.
func (g *MigratableGuest) Prepare(ctx context.Context, site *Site, iqn string) (*qemuProc, error) {
	return g.startQEMU(ctx, site, iqn, true)
}

// MigrateTo migrates the guest to dst (from Prepare); see Migrate.
func (g *MigratableGuest) MigrateTo(ctx context.Context, dst *qemuProc) (MigrationResult, error) {
	src := g.Current()
	res := MigrationResult{From: src.Name, To: dst.Name}
	fail := func(err error) (MigrationResult, error) {
		src.qmp.Execute(ctx, 10*time.Second, "migrate_cancel", nil, nil)
		dst.stop()
		return res, fmt.Errorf("migrate %s -> %s: %w; destination log: %s", src.Name, dst.Name, err, tail(dst.Log, 10))
	}
	if err := dst.qmp.Execute(ctx, 30*time.Second, "migrate-incoming", map[string]any{"uri": "tcp:127.0.0.1:0"}, nil); err != nil {
		return fail(err)
	}
	var in struct {
		SocketAddress []struct {
			Host string `json:"host"`
			Port string `json:"port"`
		} `json:"socket-address"`
	}
	if err := dst.qmp.Execute(ctx, 30*time.Second, "query-migrate", nil, &in); err != nil {
		return fail(err)
	}
	if len(in.SocketAddress) == 0 {
		return fail(errors.New("the destination names no listening address (query-migrate socket-address)"))
	}
	uri := "tcp:" + net.JoinHostPort(in.SocketAddress[0].Host, in.SocketAddress[0].Port)
	if err := src.qmp.Execute(ctx, 30*time.Second, "migrate-set-parameters", map[string]any{
		"max-bandwidth": migrateMaxBandwidth, "downtime-limit": migrateDowntimeMS}, nil); err != nil {
		return fail(err)
	}
	res.Started = time.Now()
	if err := src.qmp.Execute(ctx, 30*time.Second, "migrate", map[string]any{"uri": uri}, nil); err != nil {
		return fail(err)
	}
	var st struct {
		Status    string `json:"status"`
		TotalTime int64  `json:"total-time"`
		Downtime  int64  `json:"downtime"`
		SetupTime int64  `json:"setup-time"`
		ErrorDesc string `json:"error-desc"`
		RAM       struct {
			Transferred    int64 `json:"transferred"`
			DirtySyncCount int64 `json:"dirty-sync-count"`
		} `json:"ram"`
	}
	for deadline := time.Now().Add(migrateTimeout); ; {
		if err := src.qmp.Execute(ctx, 30*time.Second, "query-migrate", nil, &st); err != nil {
			return fail(err)
		}
		if st.Status == "completed" {
			break
		}
		if st.Status == "failed" || st.Status == "cancelled" {
			return fail(fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc))
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("not completed within %v (status %s, %d bytes of RAM sent)", migrateTimeout, st.Status, st.RAM.Transferred))
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	res.Downtime = time.Duration(st.Downtime) * time.Millisecond
	res.Total = time.Duration(st.TotalTime) * time.Millisecond
	res.Setup = time.Duration(st.SetupTime) * time.Millisecond
	res.RAM, res.Passes = st.RAM.Transferred, st.RAM.DirtySyncCount
	stop, err := src.qmp.WaitEvent(ctx, "STOP", res.Started.Add(-time.Second), 10*time.Second)
	if err != nil {
		return fail(err)
	}
	// The destination runs the guest once it has loaded the state
	// (autostart); its RESUME is the end of the pause.
	resume, err := dst.qmp.WaitEvent(ctx, "RESUME", res.Started.Add(-time.Second), time.Minute)
	if err != nil {
		return fail(err)
	}
	res.Paused = resume.Time.Sub(stop.Time)
	res.Stopped, res.Completed = stop.Time, resume.Time
	// From here the guest talks through the destination: the source's
	// chardev is read to its end (the source quits), then the
	// destination's.
	g.relay.next(dst.ctl)
	g.mu.Lock()
	g.cur = dst
	g.mu.Unlock()
	if err := src.qmp.Execute(ctx, 30*time.Second, "quit", nil, nil); err != nil && !strings.Contains(err.Error(), "closed") {
		src.stop()
	}
	select {
	case <-src.exited:
	case <-time.After(30 * time.Second):
		src.stop()
	}
	return res, nil
}

// IOErrorStops is what ResumeOnIOError did.
type IOErrorStops struct {
	// Events is the count of BLOCK_IO_ERROR events (one per failed
	// request: what the guest would have seen fail without werror=stop),
	// Resumes the count of cont commands.
	Events, Resumes int
	// Stopped is the total time the guest stood stopped on errors (the
	// first error of a stop to its cont, QEMU's clock).
	Stopped time.Duration
	// First is when the first error was reported (zero for none), and
	// Reasons the errors' reasons, one of each.
	First   time.Time
	Reasons []string
}

// ResumeOnIOError acts as a management layer would for a guest started
// with stopOnError: whenever QEMU stops the guest on an I/O error of its
// disk, it resumes it after delay (cont), which retries the failed
// requests. It runs until the returned function is called, which says
// what it did.
func (g *MigratableGuest) ResumeOnIOError(ctx context.Context, delay time.Duration) func() IOErrorStops {
	ctx, cancel := context.WithCancel(ctx)
	var (
		mu  sync.Mutex
		res IOErrorStops
		wg  sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		since := time.Now()
		for ctx.Err() == nil {
			q := g.Current().qmp
			e, err := q.WaitEvent(ctx, "BLOCK_IO_ERROR", since, 200*time.Millisecond)
			if err != nil {
				continue
			}
			// Every request that failed before the cont counts; they
			// arrive within a moment of each other.
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			n := 0
			last := e.Time
			var reasons []string
			for _, ev := range q.eventsSince(since) {
				if ev.Name == "BLOCK_IO_ERROR" {
					n++
					last = ev.Time
					var d struct {
						Operation string `json:"operation"`
						Reason    string `json:"reason"`
					}
					json.Unmarshal(ev.Data, &d)
					if r := d.Operation + ": " + d.Reason; !slices.Contains(reasons, r) {
						reasons = append(reasons, r)
					}
				}
			}
			if err := q.Execute(ctx, 10*time.Second, "cont", nil, nil); err != nil {
				continue
			}
			mu.Lock()
			if res.First.IsZero() {
				res.First = e.Time
			}
			for _, r := range reasons {
				if !slices.Contains(res.Reasons, r) {
					res.Reasons = append(res.Reasons, r)
				}
			}
			res.Events += n
			res.Resumes++
			res.Stopped += time.Since(e.Time)
			mu.Unlock()
			since = last.Add(time.Microsecond)
		}
	}()
	return func() IOErrorStops {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return res
	}
}

// DataDev finds the guest's iSCSI data disk by its serial.
func (g *MigratableGuest) DataDev(ctx context.Context) (string, error) {
	out, err := g.VM.Run(ctx, 30*time.Second, `for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = "`+DataSerial+`" ] && echo /dev/${d##*/}; done`)
	if err != nil {
		return "", err
	}
	dev := strings.TrimSpace(out)
	if dev == "" || strings.Contains(dev, "\n") {
		return "", fmt.Errorf("no single disk with serial %s in the guest: %q", DataSerial, out)
	}
	return dev, nil
}

// tap returns the wire tap in front of site's portal, starting it the
// first time.
func (g *MigratableGuest) tap(site *Site) (*wireTap, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t := g.taps[site.Name]; t != nil {
		return t, nil
	}
	t, err := newWireTap(site.Portal, g.done)
	if err != nil {
		return nil, err
	}
	g.taps[site.Name] = t
	return t, nil
}

// LongestIOGap is the longest time up to to (the host's clock) in which
// no write of the guest's disk completed at any site, among the
// stretches that end after from (the one under way at from included), as
// seen on the wire between its QEMUs and the sites' portals: the gap,
// when it began, and how many writes completed in [from, to]. It is an
// error when a tap lost track of the PDUs (a figure from a misread
// stream would be wrong, not rough).
func (g *MigratableGuest) LongestIOGap(from, to time.Time) (IOGap, error) {
	return g.done.longestGap(from, to)
}

// Stop kills every QEMU of the guest.
func (g *MigratableGuest) Stop() {
	if g.VM != nil {
		g.VM.Stop()
	}
	if g.relay != nil {
		g.relay.Close()
	}
	g.mu.Lock()
	procs := append([]*qemuProc(nil), g.procs...)
	g.mu.Unlock()
	for _, p := range procs {
		p.stop()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, t := range g.taps {
		t.Close()
	}
}

func (p *qemuProc) stop() {
	if p.qmp != nil {
		p.qmp.Close()
	}
	if p.ctl != nil {
		p.ctl.Close()
	}
	if p.cmd != nil && p.cmd.Process != nil {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
}

// attachVM makes a VM of a control connection that no one QEMU owns (the
// migratable guest's): Stop closes the connection only.
func attachVM(conn net.Conn, log string) *VM {
	exited := make(chan struct{})
	close(exited)
	vm := &VM{Log: log, cmd: &exec.Cmd{}, exited: exited, conn: conn, wait: map[uint64]chan agent.Message{},
		proc: map[string]chan agent.Message{}, done: make(chan struct{})}
	vm.enc = json.NewEncoder(conn)
	go vm.read()
	return vm
}

// ctlRelay joins the guestfwd chardevs of a guest's QEMUs into one
// connection for the harness (host): what the guest sends is read from
// each chardev to its end, in the order of the QEMUs, so that a line
// split across a migration arrives whole; what the harness sends goes to
// the QEMU that runs the guest. Bytes the harness sends to a source that
// has already stopped the guest are lost, so nothing is sent during a
// migration.
type ctlRelay struct {
	host, inner net.Conn // the two ends of a pipe

	mu     sync.Mutex
	cur    net.Conn
	all    []net.Conn
	conns  chan net.Conn
	closed bool
}

func newCtlRelay(first net.Conn) *ctlRelay {
	a, b := net.Pipe()
	r := &ctlRelay{host: a, inner: b, cur: first, all: []net.Conn{first}, conns: make(chan net.Conn, 16)}
	r.conns <- first
	go r.fromGuest()
	go r.toGuest()
	return r
}

func (r *ctlRelay) fromGuest() {
	for c := range r.conns {
		if _, err := io.Copy(r.inner, c); err != nil && errors.Is(err, io.ErrClosedPipe) {
			return
		}
	}
}

func (r *ctlRelay) toGuest() {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.inner.Read(buf)
		if n > 0 {
			r.mu.Lock()
			c := r.cur
			r.mu.Unlock()
			c.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// next makes c the connection of the QEMU that runs the guest now.
func (r *ctlRelay) next(c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.cur = c
	r.all = append(r.all, c)
	r.conns <- c
}

func (r *ctlRelay) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.closed = true
	close(r.conns)
	r.host.Close()
	r.inner.Close()
	for _, c := range r.all {
		c.Close()
	}
}

// StartGuestLoad runs `agent write` on dev in the guest like StartLoad,
// but from the agent's copy in /tmp with its journal at journal (a guest
// path: the share is unmounted), reporting gaps longer than gap.
func StartGuestLoad(ctx context.Context, vm *VM, name, dev, journal string, offset int64, blocks, workers int, gap time.Duration) (*Load, error) {
	l := &Load{vm: vm, changed: make(chan struct{}), finished: make(chan struct{})}
	ch, err := vm.Start(ctx, name, "/tmp/agent", "write", "-dev", dev,
		"-journal", journal, "-offset", strconv.FormatInt(offset, 10),
		"-blocks", strconv.Itoa(blocks), "-workers", strconv.Itoa(workers), "-gap", gap.String())
	if err != nil {
		return nil, err
	}
	go l.follow(ch)
	return l, nil
}

// StopGuestLoad stops a load started by StartGuestLoad (SIGTERM to the
// process called name), and fetches its journal from the guest into
// hostPath.
func StopGuestLoad(ctx context.Context, l *Load, name, journal, hostPath string) (*stamp.Journal, error) {
	if err := l.vm.Signal(ctx, name, syscall.SIGTERM); err != nil {
		return nil, err
	}
	select {
	case <-l.finished:
	case <-time.After(2 * time.Minute):
		return nil, fmt.Errorf("workload did not exit within 2m of SIGTERM; last output: %s", strings.Join(l.tailLines(), " | "))
	}
	l.mu.Lock()
	exit := l.exit
	l.mu.Unlock()
	if exit != 0 {
		return nil, fmt.Errorf("workload exited %d: %s", exit, strings.Join(l.tailLines(), " | "))
	}
	out, err := l.vm.Run(ctx, time.Minute, "cat "+journal)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(hostPath, []byte(out), 0o644); err != nil {
		return nil, err
	}
	l.Journal = hostPath
	return stamp.Load(hostPath)
}

func (l *Load) tailLines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.tail...)
}

// LongestGap is the longest write gap the guest reported whose report
// arrived in [from, to] (host clock), and how many there were.
func (l *Load) LongestGap(from, to time.Time) (time.Duration, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var longest time.Duration
	n := 0
	for _, g := range l.gaps {
		if !g.Arrived.Before(from) && !g.Arrived.After(to) {
			longest = max(longest, g.Length)
			n++
		}
	}
	return longest, n
}

// completions are the times (host clock) at which a target completed a
// write of the guest's disk.
type completions struct {
	mu     sync.Mutex
	at     []time.Time
	broken error
}

func (c *completions) add(t time.Time) {
	c.mu.Lock()
	c.at = append(c.at, t)
	c.mu.Unlock()
}

func (c *completions) fail(err error) {
	c.mu.Lock()
	if c.broken == nil {
		c.broken = err
	}
	c.mu.Unlock()
}

// IOGap is the longest stretch without a completed command in a window.
type IOGap struct {
	Length    time.Duration
	Start     time.Time
	Completed int // writes completed in the window
}

func (c *completions) longestGap(from, to time.Time) (IOGap, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return IOGap{}, c.broken
	}
	// The stretch under way at from counts too: it starts at the last
	// completion before from.
	var in []time.Time
	var before time.Time
	for _, t := range c.at {
		switch {
		case t.Before(from):
			if t.After(before) {
				before = t
			}
		case !t.After(to):
			in = append(in, t)
		}
	}
	slices.SortFunc(in, func(a, b time.Time) int { return a.Compare(b) })
	g := IOGap{Completed: len(in)}
	if !before.IsZero() {
		in = append([]time.Time{before}, in...)
	}
	for i := 1; i < len(in); i++ {
		if d := in[i].Sub(in[i-1]); d > g.Length {
			g.Length, g.Start = d, in[i-1]
		}
	}
	return g, nil
}

// wireTap forwards a QEMU's iSCSI connections to a site's portal and
// notes when the target completes a write: the SCSI Response PDU (RFC
// 7143 section 11.4) with status GOOD whose Initiator Task Tag is that of
// a SCSI Command PDU (section 11.3) carrying a WRITE CDB, on the host's
// clock. It
// assumes no digests (the QEMUs ask for none) and gives up, and says so,
// on a PDU it cannot frame.
type wireTap struct {
	ln       net.Listener
	upstream string
	done     *completions

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newWireTap(upstream string, done *completions) (*wireTap, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &wireTap{ln: ln, upstream: upstream, done: done}
	t.wg.Add(1)
	go t.accept()
	return t, nil
}

// Addr is the address QEMU connects to.
func (t *wireTap) Addr() string { return t.ln.Addr().String() }

func (t *wireTap) accept() {
	defer t.wg.Done()
	for {
		a, err := t.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.DialTimeout("tcp", t.upstream, 10*time.Second)
		if err != nil {
			a.Close()
			continue
		}
		t.mu.Lock()
		t.conns = append(t.conns, a, b)
		t.mu.Unlock()
		writes := &writeTags{tags: map[uint32]bool{}}
		t.wg.Add(2)
		go func() {
			defer t.wg.Done()
			t.relay(b, a, func(bhs []byte, _ time.Time) {
				// SCSI Command: CDB at bytes 32-47.
				if bhs[0]&0x3f == 0x01 && isWriteCDB(bhs[32]) {
					writes.add(binary.BigEndian.Uint32(bhs[16:20]))
				}
			})
			b.(*net.TCPConn).CloseWrite()
		}()
		go func() {
			defer t.wg.Done()
			t.relay(a, b, func(bhs []byte, at time.Time) {
				// Response byte 2, Status byte 3: a write that completed
				// is "command completed at target" with GOOD; one that
				// ended in CHECK CONDITION (QEMU may retry it) did not.
				if bhs[0]&0x3f == 0x21 && writes.take(binary.BigEndian.Uint32(bhs[16:20])) && bhs[2] == 0 && bhs[3] == 0 {
					t.done.add(at)
				}
			})
			a.(*net.TCPConn).CloseWrite()
		}()
	}
}

// isWriteCDB is true for WRITE(10), WRITE(12) and WRITE(16) (SBC-4).
func isWriteCDB(op byte) bool { return op == 0x2a || op == 0xaa || op == 0x8a }

// writeTags are the task tags of a connection's writes in flight.
type writeTags struct {
	mu   sync.Mutex
	tags map[uint32]bool
}

func (w *writeTags) add(tag uint32) {
	w.mu.Lock()
	w.tags[tag] = true
	w.mu.Unlock()
}

func (w *writeTags) take(tag uint32) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	ok := w.tags[tag]
	delete(w.tags, tag)
	return ok
}

// relay copies PDUs from src to dst, showing each header to seen (with
// the time it was read) before forwarding it.
func (t *wireTap) relay(dst, src net.Conn, seen func(bhs []byte, at time.Time)) {
	r := bufio.NewReaderSize(src, 256<<10)
	bhs := make([]byte, 48)
	for {
		if _, err := io.ReadFull(r, bhs); err != nil {
			return
		}
		at := time.Now()
		ahs := int(bhs[4]) * 4
		dlen := int(bhs[5])<<16 | int(bhs[6])<<8 | int(bhs[7])
		if dlen > 16<<20 {
			t.done.fail(fmt.Errorf("wire tap to %s: cannot frame a PDU (opcode %#x, %d data bytes): no write gap measured", t.upstream, bhs[0]&0x3f, dlen))
			dst.Write(bhs)
			io.Copy(dst, r)
			return
		}
		seen(bhs, at)
		if _, err := dst.Write(bhs); err != nil {
			return
		}
		if _, err := io.CopyN(dst, r, int64(ahs+dlen+(4-dlen%4)%4)); err != nil {
			return
		}
	}
}

// Close stops the tap and its connections.
func (t *wireTap) Close() {
	t.ln.Close()
	t.mu.Lock()
	for _, c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}
