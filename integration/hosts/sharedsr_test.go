package hosts

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration"
	"github.com/metrolun/metrolun/integration/hosts/stamp"
)

// TestXenSharedSR is the pattern of a Xen or XCP-ng pool whose shared SR
// is LVM over iSCSI (lvmoiscsi), stretched over two sites: two hosts,
// host 1 near site-a and host 2 near site-b, each logged in to its own
// site only, under its own initiator name. Host 1 (the pool master)
// finds the LUN by its SCSI id (/dev/disk/by-id), puts one volume group
// on it and creates the LVs (the VDIs); host 2 finds the same SCSI id,
// sees the LVs, activates one and writes the stamped workload to it.
// Host 1 then extends an LV and adds another; host 2 sees both after a
// refresh, as XAPI's slaves do. Metadata written through one site is read
// through the other. The writer is then site-a, host 1's site, and is
// killed under host 2's workload: host 2's writes pause and go on, none
// fails. After site-a is back in sync every acknowledged block is read
// back on host 2, on host 1 (through site-a) and in both sites' images.
func TestXenSharedSR(t *testing.T) {
	enabled(t)
	ctx := context.Background()
	started := time.Now()
	c := StartCluster(t, "256MiB")
	// A single path is a map of its own (greedy), so that the LUN is
	// the same dm device, found by the same id, on both hosts.
	settings := settingsFromEnv()
	settings.FindMultipaths = "greedy"
	type host struct {
		name string
		iqn  string
		site *Site
		vm   *VM
		sh   string
		dev  string
		wwid string
	}
	hosts := []*host{
		{name: "host 1", iqn: "iqn.2026-11.io.metrolun:xen-host1", site: c.Sites[0]},
		{name: "host 2", iqn: "iqn.2026-11.io.metrolun:xen-host2", site: c.Sites[1]},
	}
	for _, h := range hosts {
		h.sh = NewShare(t, settings)
		h.vm = BootT(t, h.sh)
		t.Logf("%s booted in %v", h.name, h.vm.Booted.Round(time.Millisecond))
		// The guests share one image and so one initiator name; each
		// host logs in under its own through an iSCSI interface.
		portal := fmt.Sprintf("10.0.2.2:%d", h.site.GuestPort)
		script := fmt.Sprintf(`set -e
iscsiadm -m iface -I xen -o new >/dev/null
iscsiadm -m iface -I xen -o update -n iface.initiatorname -v %s >/dev/null
iscsiadm -m node -o new -T %s -p %s -I xen >/dev/null
iscsiadm -m node -T %s -p %s -I xen --login`, h.iqn, c.Target, portal, c.Target, portal)
		if out, err := h.vm.Run(ctx, 60*time.Second, script); err != nil {
			t.Fatalf("%s: login to %s: %v\n%s", h.name, h.site.Name, err, out)
		}
		ps := waitPaths(t, h.vm, c, 60*time.Second, func(ps []Path) error {
			if len(ps) != 1 || ps[0].Map == "" || ps[0].DMState != "active" || ps[0].Checker != "ready" {
				return fmt.Errorf("want one path in a map, active and ready: %+v", ps)
			}
			if ps[0].Port != h.site.GuestPort {
				return fmt.Errorf("path to port %d, want %s's %d", ps[0].Port, h.site.Name, h.site.GuestPort)
			}
			return nil
		})
		h.wwid = ps[0].WWID
		h.dev = "/dev/disk/by-id/dm-uuid-mpath-" + h.wwid
		if _, err := h.vm.Run(ctx, 30*time.Second, "udevadm settle; test -b "+h.dev); err != nil {
			t.Fatalf("%s: no %s: %v", h.name, h.dev, err)
		}
	}
	h1, h2 := hosts[0], hosts[1]
	if h1.wwid == "" || h1.wwid != h2.wwid {
		t.Fatalf("the hosts see SCSI ids %q (via %s) and %q (via %s): one LUN must have one id everywhere", h1.wwid, h1.site.Name, h2.wwid, h2.site.Name)
	}
	t.Logf("both hosts see the LUN as %s", h1.dev)
	run := func(h *host, d time.Duration, script string) string {
		t.Helper()
		out, err := h.vm.Run(ctx, d, "set -e\n"+script)
		if err != nil {
			t.Fatalf("%s: %v\n%s", h.name, err, out)
		}
		return strings.TrimSpace(out)
	}
	lvs := func(h *host) string {
		return run(h, time.Minute, "lvs --noheadings --units m --nosuffix -o lv_name,lv_size sr | tr -s ' ' | sed 's/^ //' | sort")
	}

	// Host 1, the master, makes the SR and its first VDIs.
	run(h1, 2*time.Minute, `pvcreate -ff -y `+h1.dev+` >/dev/null
vgcreate sr `+h1.dev+` >/dev/null
lvcreate -y -an -Zn -L 32M -n vdi1 sr >/dev/null
lvcreate -y -an -Zn -L 16M -n vdi2 sr >/dev/null`)
	want := "vdi1 32.00\nvdi2 16.00"
	if got := lvs(h2); got != want {
		t.Fatalf("host 2 (through %s) lists LVs %q, want %q as host 1 made them through %s", h2.site.Name, got, want, h1.site.Name)
	}
	run(h2, time.Minute, "lvchange -ay sr/vdi1 sr/vdi2")
	// A metadata change on the master, seen on the other host after a
	// refresh, as XAPI's slaves refresh an LV before they use it.
	run(h1, time.Minute, "lvextend -y -L 24M sr/vdi2 >/dev/null; lvcreate -y -an -Zn -L 8M -n vdi3 sr >/dev/null")
	want = "vdi1 32.00\nvdi2 24.00\nvdi3 8.00"
	if got := lvs(h2); got != want {
		t.Fatalf("host 2 lists LVs %q after host 1's changes, want %q", got, want)
	}
	run(h2, time.Minute, "lvchange --refresh sr/vdi2")
	if got := run(h2, time.Minute, "blockdev --getsize64 /dev/sr/vdi2"); got != strconv.Itoa(24<<20) {
		t.Fatalf("host 2's vdi2 after the refresh: %s bytes, want %d", got, 24<<20)
	}
	t.Logf("host 2 sees host 1's LVs, an extension and a new LV (through %s, made through %s)", h2.site.Name, h1.site.Name)

	// Where vdi1 lies on the LUN, for checking the sites' images.
	table := run(h2, time.Minute, "dmsetup table sr-vdi1")
	lvStart, err := linearStart(table)
	if err != nil {
		t.Fatal(err)
	}

	// Site-a, host 1's site, is the writer when it is killed.
	if w, err := c.Writer(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	} else if w != h1.site.Name {
		if _, err := integration.RunTool(ctx, 60*time.Second, nil, c.Bin, "promote", h1.site.Name, "--dir", c.Demo.Dir); err != nil {
			t.Fatalf("promote %s: %v", h1.site.Name, err)
		}
	}
	const blocks, workers = 4096, 4 // 16 MiB of vdi1
	load, err := StartLoad(ctx, h2.vm, h2.sh, "/dev/sr/vdi1", 0, blocks, workers)
	if err != nil {
		t.Fatal(err)
	}
	if err := load.WaitWrites(200, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := waitWriterIs(ctx, c, h1.site.Name, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := c.Signal(h1.site.Name, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.Site(h1.site.Name).ClosePortal()
	pause, err := load.PauseAfter(t0, 3*time.Second, 90*time.Second)
	if err != nil {
		t.Fatalf("after kill -9 of %s: %v", h1.site.Name, err)
	}
	t.Logf("kill -9 of writer %s: host 2 (at %s) paused %v", h1.site.Name, h2.site.Name, pause.Round(time.Millisecond))
	if err := c.WaitGone(h1.site.Name, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	resync, err := c.Restart(ctx, h1.site.Name, 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Site(h1.site.Name).OpenPortal(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s back in sync %v after its restart", h1.site.Name, resync.Round(time.Millisecond))
	if err := load.WaitWrites(load.Writes()+100, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	j, err := load.Stop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if errs := load.Errors(); len(errs) > 0 {
		t.Errorf("host 2 saw %d failed writes: %s", len(errs), strings.Join(errs[:min(len(errs), 5)], "; "))
	}
	t.Logf("host 2's workload: %d writes acknowledged, %d failed", j.Writes, j.Errors)
	out := run(h2, 5*time.Minute, "/mnt/share/agent verify -dev /dev/sr/vdi1 -journal /mnt/share/journal.json")
	t.Logf("host 2: %s", out)

	// Host 1 reads host 2's blocks through site-a once its path is back.
	waitPaths(t, h1.vm, c, 90*time.Second, func(ps []Path) error {
		if len(ps) != 1 || ps[0].DMState != "active" || ps[0].Checker != "ready" {
			return fmt.Errorf("host 1's path to %s not back: %+v", h1.site.Name, ps)
		}
		return nil
	})
	b, err := os.ReadFile(load.Journal)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h1.sh, "journal.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	out = run(h1, 5*time.Minute, "lvchange -ay sr/vdi1 && /mnt/share/agent verify -dev /dev/sr/vdi1 -journal /mnt/share/journal.json")
	t.Logf("host 1: %s", out)
	for _, s := range c.Sites {
		f, err := os.Open(s.Image)
		if err != nil {
			t.Fatal(err)
		}
		res := j.Verify(io.NewSectionReader(f, lvStart, 32<<20), make([]byte, stamp.BlockSize))
		f.Close()
		if err := res.Err(); err != nil {
			t.Errorf("vdi1 in %s's image: %v", s.Name, err)
		} else {
			t.Logf("vdi1 in %s's image: %s", s.Name, res)
		}
	}
	t.Logf("total %v", time.Since(started).Round(time.Second))
	if pause > maxKillPause {
		t.Errorf("host 2 saw no write complete for %v after the writer's kill -9, more than %v", pause.Round(time.Millisecond), maxKillPause)
	}
}

// linearStart reads the byte offset on the underlying device of a
// one-segment linear dm table ("0 65536 linear 253:0 2048").
func linearStart(table string) (int64, error) {
	f := strings.Fields(table)
	if len(f) != 5 || f[2] != "linear" || strings.Contains(table, "\n") {
		return 0, fmt.Errorf("dm table %q: want one linear segment", table)
	}
	sectors, err := strconv.ParseInt(f[4], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("dm table %q: %w", table, err)
	}
	return sectors * 512, nil
}
