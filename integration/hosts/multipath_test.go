package hosts

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/hosts/stamp"
)

// Bounds on the host's pause (no write completed in the guest) after a
// fault, with the Recommended settings; overridable for experiments. The
// aim is under 2 s after kill -9 and it is met in most kills (see
// docs/hosts-linux.md), but the pause is mostly the cluster's own
// takeover (up to 2.0 s at the target, README), which a loaded machine
// stretches (3.07 s once on 2 cores shared by the TCG guest, the
// cluster and other work at a load of 15, with CI's `make test`); the
// bounds catch the initiator settings going wrong (5.2 s and more after
// a kill, 15.5 s after a silent loss with Debian's defaults), not a
// second of noise. A silent loss costs the host at least 2 s, NOP-Out
// after 1 s of quiet and 1 s to answer, the shortest the kernel allows
// (docs/hosts-linux.md), plus the retry at the other site; 5 s still
// catches a NOP-Out timeout of 0, which becomes 5 s (6.1 s measured).
var (
	maxKillPause   = envDuration("METROLUN_HOSTS_MAX_KILL_PAUSE", 4*time.Second)
	maxSilentPause = envDuration("METROLUN_HOSTS_MAX_SILENT_PAUSE", 5*time.Second)
)

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

// settingsFromEnv lets an experiment change initiator timeouts without
// editing Recommended: METROLUN_HOSTS_SETTINGS=debian starts from
// DebianDefaults, and METROLUN_HOSTS_FAST_IO_FAIL_TMO=5 (and the other
// names below) changes one value.
func settingsFromEnv() Settings {
	var s Settings
	if os.Getenv("METROLUN_HOSTS_SETTINGS") == "debian" {
		s = DebianDefaults
	}
	for _, f := range []struct {
		dst  *string
		name string
	}{
		{&s.FindMultipaths, "FIND_MULTIPATHS"},
		{&s.PollingInterval, "POLLING_INTERVAL"},
		{&s.FastIOFailTmo, "FAST_IO_FAIL_TMO"},
		{&s.DevLossTmo, "DEV_LOSS_TMO"},
		{&s.NoPathRetry, "NO_PATH_RETRY"},
		{&s.ReplacementTimeout, "REPLACEMENT_TIMEOUT"},
		{&s.NoopOutInterval, "NOOP_OUT_INTERVAL"},
		{&s.NoopOutTimeout, "NOOP_OUT_TIMEOUT"},
	} {
		if v := os.Getenv("METROLUN_HOSTS_" + f.name); v != "" {
			*f.dst = v
		}
	}
	return s.withDefaults()
}

// TestLinuxMultipathFailover is the Linux kernel initiator against a
// two-site cluster: one iSCSI session per site (explicit portals), the
// README's multipath.conf and iscsid.conf settings; one dm map with two
// paths and one WWID, ALUA as the writer says (multipathd, sg_rtpg, the
// kernel, and VPD 83h naming each path's own port group); then a stamped
// O_DIRECT workload on the map (16 MiB, 4 writes in flight) through
// kill -9 of the writer, a restart by hand, kill -9 of the next writer,
// another restart, and a writer that vanishes silently (frozen with
// SIGSTOP, its path blackholed), each time until the site is in sync and
// its path is back; every acknowledged block is then read back in the
// guest and in both sites' images, and LVM is put on the map. It reports
// the host's pause after each fault and fails above the bounds. Before
// the workload both paths stay idle for METROLUN_HOSTS_IDLE (20s), and
// no connection may fail meanwhile: the NOP-Out settings must not fail
// a healthy quiet path. METROLUN_HOSTS_KILLS (2) and
// METROLUN_HOSTS_SILENT (1) set the number of each fault; after each
// silent loss the guest's kernel log says how long after the dead
// connection's last received byte libiscsi declared it dead.
func TestLinuxMultipathFailover(t *testing.T) {
	enabled(t)
	ctx := context.Background()
	started := time.Now()
	c := StartCluster(t, "256MiB")
	settings := settingsFromEnv()
	share := NewShare(t, settings)
	vm := BootT(t, share)
	t.Logf("guest booted in %v; settings %+v", vm.Booted.Round(time.Millisecond), settings)
	syncGuestClock(t, vm)
	loginEachSite(t, vm, c)
	paths := waitBothPathsActive(t, vm, c)
	mapName, wwid := checkOneMap(t, paths)
	dev := "/dev/mapper/" + mapName
	t.Logf("multipath map %s (WWID %s), paths %+v", mapName, wwid, paths)
	logTimeouts(t, vm)
	if out, err := vm.Run(ctx, 30*time.Second, "multipath -ll; sg_inq -p 0x83 /dev/"+paths[0].Dev+"; sg_rtpg -d /dev/"+paths[0].Dev+"; /lib/udev/scsi_id -g -u -d /dev/"+paths[0].Dev); err == nil {
		t.Logf("multipath -ll, VPD 83h, RTPG, scsi_id:\n%s", out)
	}

	checkALUA(t, vm, c, 30*time.Second)
	hz := guestHZ(t, vm)
	checkIdlePaths(t, vm, c, envDuration("METROLUN_HOSTS_IDLE", 20*time.Second))

	// The workload: 16 MiB of 4 KiB blocks, 4 writes in flight.
	const offset, blocks, workers = 1 << 20, 4096, 4
	load, err := StartLoad(ctx, vm, share, dev, offset, blocks, workers)
	if err != nil {
		t.Fatal(err)
	}
	if err := load.WaitWrites(200, 60*time.Second); err != nil {
		t.Fatal(err)
	}

	type result struct {
		fault  string
		pause  time.Duration
		resync time.Duration
	}
	var results []result
	kills := 2
	if n, err := strconv.Atoi(os.Getenv("METROLUN_HOSTS_KILLS")); err == nil && n >= 0 {
		kills = n
	}
	for round := 0; round < kills; round++ {
		w := writerUnderLoad(t, c, load)
		t0 := time.Now()
		if err := c.Signal(w, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		c.Site(w).ClosePortal()
		pause, err := load.PauseAfter(t0, 3*time.Second, 90*time.Second)
		if err != nil {
			t.Fatalf("after kill -9 of %s: %v", w, err)
		}
		t.Logf("kill -9 of writer %s: host pause %v", w, pause.Round(time.Millisecond))
		if err := c.WaitGone(w, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		resync, err := c.Restart(ctx, w, 3*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Site(w).OpenPortal(); err != nil {
			t.Fatal(err)
		}
		results = append(results, result{fault: "kill -9 of writer " + w, pause: pause, resync: resync})
		waitPathBack(t, vm, c, w, settings)
	}

	silent := 1
	if n, err := strconv.Atoi(os.Getenv("METROLUN_HOSTS_SILENT")); err == nil && n >= 0 {
		silent = n
	}
	seen := len(kernelPingTimeouts(t, vm))
	var declared []string
	for range silent {
		w, pause, resync, d := silentRound(t, c, vm, load, settings, hz, &seen)
		results = append(results, result{fault: "writer " + w + " vanished silently", pause: pause, resync: resync})
		declared = append(declared, d)
	}
	if err := load.WaitWrites(load.Writes()+100, 60*time.Second); err != nil {
		t.Fatal(err)
	}

	j, err := load.Stop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if errs := load.Errors(); len(errs) > 0 {
		t.Errorf("the host saw %d failed writes (multipath should have queued or retried them): %s", len(errs), strings.Join(errs[:min(len(errs), 5)], "; "))
	}
	out, err := vm.Run(ctx, 5*time.Minute, "/mnt/share/agent verify -dev "+dev+" -journal /mnt/share/journal.json")
	t.Logf("guest: %s", strings.TrimSpace(out))
	if err != nil {
		t.Errorf("read back in the guest: %v", err)
	}
	for _, s := range c.Sites {
		if err := verifyImage(s.Image, j); err != nil {
			t.Errorf("at %s: %v", s.Name, err)
		}
	}
	t.Logf("workload: %d writes acknowledged, %d failed", j.Writes, j.Errors)
	t.Logf("%-40s %12s %12s", "FAULT", "HOST PAUSE", "BACK IN SYNC")
	for _, r := range results {
		t.Logf("%-40s %12v %12v", r.fault, r.pause.Round(time.Millisecond), r.resync.Round(time.Millisecond))
	}
	for i, d := range declared {
		t.Logf("silent loss %d, the guest's kernel: %s", i+1, d)
	}
	var killed, vanished []time.Duration
	for _, r := range results {
		if strings.Contains(r.fault, "silently") {
			vanished = append(vanished, r.pause)
		} else {
			killed = append(killed, r.pause)
		}
	}
	t.Logf("host pause after kill -9: %s; after a silent loss: %s", pauseSummary(killed), pauseSummary(vanished))
	checkLVM(t, vm, mapName)
	t.Logf("total %v", time.Since(started).Round(time.Second))
	for _, r := range results {
		limit := maxKillPause
		if strings.Contains(r.fault, "silently") {
			limit = maxSilentPause
		}
		if r.pause > limit {
			t.Errorf("%s: the host saw no write complete for %v, more than %v", r.fault, r.pause.Round(time.Millisecond), limit)
		}
	}
}

// syncGuestClock sets the guest's clock from the host's. The guest's
// clock starts from the RTC (whole seconds); the gap reports are matched
// by arrival, but logs are easier to read when the clocks agree.
func syncGuestClock(t *testing.T, vm *VM) {
	t.Helper()
	if _, err := vm.Run(context.Background(), 10*time.Second, fmt.Sprintf("date -s @%.3f >/dev/null", float64(time.Now().UnixNano())/1e9)); err != nil {
		t.Fatal(err)
	}
}

// loginEachSite logs the guest in to each site's own portal (explicit
// portals, one session per site) and logs the kernel's ALUA view after
// each login.
func loginEachSite(t *testing.T, vm *VM, c *Cluster) {
	t.Helper()
	ctx := context.Background()
	for _, s := range c.Sites {
		portal := fmt.Sprintf("10.0.2.2:%d", s.GuestPort)
		script := fmt.Sprintf("iscsiadm -m node -o new -T %s -p %s >/dev/null && iscsiadm -m node -T %s -p %s --login", c.Target, portal, c.Target, portal)
		if out, err := vm.Run(ctx, 60*time.Second, script); err != nil {
			t.Fatalf("login to %s at %s: %v\n%s", s.Name, portal, err, out)
		}
		// The kernel's ALUA handler keeps one state per port group for
		// all paths of a LUN and re-reads it only on a unit attention or
		// a path group switch; what it saw at each login explains a
		// priority that later disagrees with the target.
		if out, err := vm.Run(ctx, 30*time.Second, "udevadm settle; for d in /sys/block/sd*; do echo \"${d##*/}: $(cat $d/device/access_state)\"; done"); err == nil {
			t.Logf("after login to %s: kernel ALUA states %s", s.Name, strings.Join(strings.Fields(out), " "))
		}
	}
}

// logTimeouts logs the timeouts the kernel holds: multipathd sets each
// iSCSI session's recovery_tmo from fast_io_fail_tmo, and iscsid and the
// kernel replace values they refuse (a zero noop_out_timeout becomes 5),
// so the kernel's values are what counts; and what iscsid and the
// kernel said about the values they were given.
func logTimeouts(t *testing.T, vm *VM) {
	t.Helper()
	out, err := vm.Run(context.Background(), 30*time.Second, "grep -H . /sys/class/iscsi_session/session*/recovery_tmo /sys/class/iscsi_connection/connection*/ping_tmo /sys/class/iscsi_connection/connection*/recv_tmo /sys/block/sd*/device/timeout; grep -ih 'invalid.*timeo\\|timeout of zero' /run/iscsid.log; dmesg | grep -i 'timeout of zero'; true")
	if err == nil {
		t.Logf("effective timeouts:\n%s", out)
	}
}

// writerUnderLoad returns the cluster's writer once load has completed
// another 100 writes: a fault then falls on I/O in flight.
func writerUnderLoad(t *testing.T, c *Cluster, load *Load) string {
	t.Helper()
	w, err := c.Writer(context.Background(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := load.WaitWrites(load.Writes()+100, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	return w
}

// silentLoss makes the writer vanish silently, as a site does that loses
// power or its link: the writer is frozen (its peers and the guest get
// no reset, no answer) and its path through the proxy drops everything.
// It returns the site, when it vanished, the host's pause (the longest
// time no write of load completed) and how long the site, killed and
// restarted, took to be back in sync, after which its path is back in
// the guest.
func silentLoss(t *testing.T, c *Cluster, vm *VM, load *Load, settings Settings) (string, time.Time, time.Duration, time.Duration) {
	t.Helper()
	ctx := context.Background()
	w := writerUnderLoad(t, c, load)
	t0 := time.Now()
	c.Site(w).proxy().Partition(true, true)
	if err := c.Signal(w, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	pause, err := load.PauseAfter(t0, 3*time.Second, 90*time.Second)
	if err != nil {
		t.Fatalf("after %s vanished: %v", w, err)
	}
	t.Logf("writer %s vanished silently: host pause %v", w, pause.Round(time.Millisecond))
	if err := c.Signal(w, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitGone(w, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	c.Site(w).ClosePortal()
	resync, err := c.Restart(ctx, w, 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Site(w).OpenPortal(); err != nil {
		t.Fatal(err)
	}
	waitPathBack(t, vm, c, w, settings)
	return w, t0, pause, resync
}

// waitPaths polls the guest's multipath paths until ok accepts them, up
// to d, and fails the test otherwise.
// waitBothPathsActive waits (bounded) for one path per site, each in a
// multipath map, active in it and passing its checker.
func waitBothPathsActive(t *testing.T, vm *VM, c *Cluster) []Path {
	t.Helper()
	return waitPaths(t, vm, c, 60*time.Second, func(ps []Path) error {
		if len(ps) != 2 {
			return fmt.Errorf("%d paths, want 2", len(ps))
		}
		for _, p := range ps {
			if p.Map == "" || p.DMState != "active" || p.Checker != "ready" {
				return fmt.Errorf("path %s: map %q, dm %s, checker %s", p.Dev, p.Map, p.DMState, p.Checker)
			}
		}
		return nil
	})
}

func waitPaths(t *testing.T, vm *VM, c *Cluster, d time.Duration, ok func([]Path) error) []Path {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(d)
	var last error
	for {
		out, err := vm.Run(ctx, 30*time.Second, pathsScript)
		if err == nil {
			var ps []Path
			if ps, err = parsePaths(out); err == nil {
				if err = ok(ps); err == nil {
					return ps
				}
			}
		}
		last = err
		if time.Now().After(deadline) {
			sessions, _ := vm.Run(ctx, 30*time.Second, "iscsiadm -m session -P 1 | grep -E 'Target:|Portal:|State:'; echo; echo iscsid:; tail -n 25 /run/iscsid.log; echo; echo kernel:; dmesg | tail -n 25")
			t.Fatalf("multipath paths not as expected within %v: %v\nguest's sessions:\n%s\nlogins in the members' logs:\n%s", d, last, sessions, c.GrepLogs("login", 25))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkOneMap asserts one map holding both paths with one WWID, and that
// the paths lead to the two sites; it returns the map's name and WWID.
func checkOneMap(t *testing.T, ps []Path) (string, string) {
	t.Helper()
	if len(ps) != 2 {
		t.Fatalf("%d paths, want 2: %+v", len(ps), ps)
	}
	if ps[0].Map == "" || ps[0].Map != ps[1].Map {
		t.Fatalf("paths not in one multipath map: %+v", ps)
	}
	if ps[0].WWID == "" || ps[0].WWID != ps[1].WWID {
		t.Fatalf("paths with different WWIDs: %+v", ps)
	}
	if ps[0].Port == ps[1].Port || ps[0].Port <= 0 || ps[1].Port <= 0 {
		t.Fatalf("paths not one per site: %+v", ps)
	}
	return ps[0].Map, ps[0].WWID
}

// pathTo finds the path whose session goes to site.
func pathTo(ps []Path, s *Site) (Path, bool) {
	for _, p := range ps {
		if p.Port == s.GuestPort {
			return p, true
		}
	}
	return Path{}, false
}

// checkALUA asserts, within d (multipathd re-reads priorities every
// polling interval), that the writer's path is active/optimized with
// prio 50 and the other active/non-optimized with prio 10, per
// multipathd, per REPORT TARGET PORT GROUPS (sg_rtpg) and per the
// kernel's ALUA handler; and that VPD 83h of each path names its own
// site's port group.
func checkALUA(t *testing.T, vm *VM, c *Cluster, d time.Duration) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	ctx := context.Background()
	// The writer is read before and after each look at the guest, and a
	// look counts only if it did not move meanwhile (on a loaded machine
	// a lease can lapse and the writer move by itself).
	var writer string
	want := func(s *Site) (string, int) {
		if s.Name == writer {
			return "active/optimized", 50
		}
		return "active/non-optimized", 10
	}
	deadline := time.Now().Add(d)
	for {
		err := func() error {
			var err error
			if writer, err = c.Writer(ctx, 30*time.Second); err != nil {
				return err
			}
			out, err := vm.Run(ctx, 30*time.Second, pathsScript)
			if err != nil {
				return err
			}
			ps, err := parsePaths(out)
			if err != nil {
				return err
			}
			for _, s := range c.Sites {
				p, ok := pathTo(ps, s)
				if !ok {
					return fmt.Errorf("no path to %s in %+v", s.Name, ps)
				}
				state, prio := want(s)
				if p.Prio != prio || p.DMState != "active" || p.Checker != "ready" {
					return fmt.Errorf("path %s to %s: prio %d, dm %s, checker %s; want prio %d, active, ready", p.Dev, s.Name, p.Prio, p.DMState, p.Checker, prio)
				}
				inq, err := vm.Run(ctx, 30*time.Second, "sg_inq -p 0x83 /dev/"+p.Dev)
				if err != nil {
					return err
				}
				g, err := parseInqTPG(inq)
				if err != nil {
					return err
				}
				if g != s.Group {
					return fmt.Errorf("path %s to %s: VPD 83h names port group %d, want %d", p.Dev, s.Name, g, s.Group)
				}
				rtpg, err := vm.Run(ctx, 30*time.Second, "sg_rtpg -d /dev/"+p.Dev)
				if err != nil {
					return err
				}
				groups, err := parseRTPG(rtpg)
				if err != nil {
					return err
				}
				for _, o := range c.Sites {
					st, _ := want(o)
					if groups[o.Group] != st {
						return fmt.Errorf("RTPG through %s (%s): group %d (%s) %q, want %q", p.Dev, s.Name, o.Group, o.Name, groups[o.Group], st)
					}
				}
				ks, err := vm.Run(ctx, 10*time.Second, "cat /sys/block/"+p.Dev+"/device/access_state")
				if err != nil {
					return err
				}
				if strings.TrimSpace(ks) != state {
					return fmt.Errorf("path %s to %s: kernel ALUA state %q, want %q", p.Dev, s.Name, strings.TrimSpace(ks), state)
				}
			}
			if after, err := c.Writer(ctx, 30*time.Second); err != nil || after != writer {
				return fmt.Errorf("the writer moved from %s to %s while the guest was asked (%v)", writer, after, err)
			}
			return nil
		}()
		if err == nil {
			return writer, time.Since(start)
		}
		if time.Now().After(deadline) {
			diag, _ := vm.Run(ctx, 60*time.Second, `for d in /sys/block/sd*; do echo "${d##*/}: kernel $(cat $d/device/access_state) pref $(cat $d/device/preferred_path)"; sg_rtpg -d /dev/${d##*/} | grep -E 'group id|access state'; done; multipath -ll`)
			t.Fatalf("ALUA with writer %s not as expected within %v: %v\n%s", writer, d, err, diag)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitPathBack waits until the restarted site's path is active and
// ready again, in the same map, and the ALUA view follows the writer:
// multipathd refreshes a path's priority when it checks the path, every
// polling_interval to 4 times that once the path is steady, so the wait
// allows 10 polling intervals more than 30 s. It returns how long the
// ALUA view took to follow.
func waitPathBack(t *testing.T, vm *VM, c *Cluster, site string, s Settings) time.Duration {
	t.Helper()
	waitPaths(t, vm, c, 60*time.Second, func(ps []Path) error {
		if len(ps) != 2 {
			return fmt.Errorf("%d paths, want 2", len(ps))
		}
		p, ok := pathTo(ps, c.Site(site))
		if !ok {
			return fmt.Errorf("no path to %s: %+v", site, ps)
		}
		if p.DMState != "active" || p.Checker != "ready" {
			return fmt.Errorf("path %s to %s: dm %s, checker %s", p.Dev, site, p.DMState, p.Checker)
		}
		return nil
	})
	var poll int
	fmt.Sscan(s.PollingInterval, &poll)
	w, took := checkALUA(t, vm, c, 30*time.Second+time.Duration(10*poll)*time.Second)
	t.Logf("%s's path is back; the ALUA view (writer %s) followed %v later", site, w, took.Round(100*time.Millisecond))
	return took
}

// verifyImage checks every block of the journal's region in a site's
// backing file on the host.
func verifyImage(path string, j *stamp.Journal) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	res := j.Verify(f, make([]byte, stamp.BlockSize))
	if err := res.Err(); err != nil {
		return err
	}
	if res.Written == 0 {
		return fmt.Errorf("%s: the journal lists no acknowledged write", path)
	}
	return nil
}

// checkLVM puts LVM on the map, as hosts do (the workload's blocks are
// overwritten, so this runs after they are verified): a PV on the map
// and not on its sdX paths (lvm's multipath component detection), a
// logical volume written and read back with O_DIRECT.
func checkLVM(t *testing.T, vm *VM, mapName string) {
	t.Helper()
	script := `set -e
pvcreate -ff -y /dev/mapper/` + mapName + ` >/dev/null
vgcreate mlvg /dev/mapper/` + mapName + ` >/dev/null
lvcreate -y -L 16M -n lv1 mlvg >/dev/null
head -c 4194304 /dev/urandom >/tmp/pattern
dd if=/tmp/pattern of=/dev/mlvg/lv1 bs=1M oflag=direct status=none
dd if=/dev/mlvg/lv1 of=/tmp/back bs=1M count=4 iflag=direct status=none
cmp /tmp/pattern /tmp/back
echo "pvs: $(pvs --noheadings -o pv_name,vg_name | tr -s ' ')"
vgchange -an mlvg >/dev/null`
	out, err := vm.Run(context.Background(), 2*time.Minute, script)
	if err != nil {
		t.Errorf("LVM on the multipath map: %v\n%s", err, out)
		return
	}
	out = strings.TrimSpace(out)
	if !strings.Contains(out, "/dev/mapper/"+mapName+" mlvg") || strings.Contains(out, "/dev/sd") {
		t.Errorf("LVM's PV should be the map alone: %s", out)
	}
	t.Logf("LVM on the map: 4 MiB written and read back through an LV; %s", out)
}

// pauseSummary gives the median and range of pauses, as the docs state
// them.
func pauseSummary(ps []time.Duration) string {
	if len(ps) == 0 {
		return "none"
	}
	ps = slices.Sorted(slices.Values(ps))
	return fmt.Sprintf("median %v, %v to %v (%d)", ps[len(ps)/2].Round(time.Millisecond), ps[0].Round(time.Millisecond), ps[len(ps)-1].Round(time.Millisecond), len(ps))
}
