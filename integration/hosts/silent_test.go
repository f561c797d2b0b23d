package hosts

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// silentRound is one silent loss of the writer (silentLoss) with what
// the guest's kernel said about it: how long after the dead
// connection's last received byte, and after its NOP-Out, libiscsi
// declared the connection dead (the part of the host's pause that the
// initiator's NOP-Out settings decide), and when the cluster's new
// writer took over (the part the cluster decides; the two overlap).
// seen is the number of ping timeouts in the kernel log before, updated.
func silentRound(t *testing.T, c *Cluster, vm *VM, load *Load, settings Settings, hz int, seen *int) (site string, pause, resync time.Duration, declared string) {
	t.Helper()
	site, t0, pause, resync := silentLoss(t, c, vm, load, settings)
	declared = "no ping timeout in the kernel log"
	if ps := kernelPingTimeouts(t, vm); len(ps) > *seen {
		var ds []string
		for _, p := range ps[*seen:] {
			ds = append(ds, fmt.Sprintf("%s dead %v after its last receive, %v after its NOP-Out (recv_tmo %d, ping_tmo %d)", p.Conn, p.SinceRecv(hz), p.SincePing(hz), p.RecvTmo, p.PingTmo))
		}
		declared = strings.Join(ds, "; ")
		*seen = len(ps)
	}
	if w, after, ok := c.WriterSince(t0); ok {
		declared += fmt.Sprintf("; the cluster's new writer %s took over %v after the loss", w, after.Round(time.Millisecond))
	}
	t.Logf("writer %s vanished silently: host pause %v; kernel: %s", site, pause.Round(time.Millisecond), declared)
	return site, pause, resync, declared
}

// guestHZ is the guest kernel's jiffies per second (CONFIG_HZ), to read
// libiscsi's timer figures.
func guestHZ(t *testing.T, vm *VM) int {
	t.Helper()
	out, err := vm.Run(context.Background(), 10*time.Second, "sed -n 's/^CONFIG_HZ=//p' /boot/config-$(uname -r)")
	if err != nil {
		t.Fatal(err)
	}
	hz, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || hz <= 0 {
		t.Fatalf("the guest kernel's HZ: %q (%v)", out, err)
	}
	return hz
}

// kernelPingTimeouts reads libiscsi's ping timeout lines from the
// guest's kernel log.
func kernelPingTimeouts(t *testing.T, vm *VM) []PingTimeout {
	t.Helper()
	out, err := vm.Run(context.Background(), 30*time.Second, "dmesg | grep 'ping timeout of' || true")
	if err != nil {
		t.Fatal(err)
	}
	return parsePingTimeouts(out)
}

// checkIdlePaths leaves both paths without I/O for d and fails if any
// connection failed meanwhile (a ping timeout or any connection error in
// the guest's kernel log, a path no longer active and ready) or a site
// dropped a connection for want of NOP-In answers.
func checkIdlePaths(t *testing.T, vm *VM, c *Cluster, d time.Duration) {
	t.Helper()
	if d <= 0 {
		return
	}
	ctx := context.Background()
	const errs = "dmesg | grep -cE 'ping timeout of|detected conn error|session recovery timed out' || true"
	before, err := vm.Run(ctx, 30*time.Second, errs)
	if err != nil {
		t.Fatal(err)
	}
	dropsBefore := c.GrepLogs("initiator stopped answering NOP-In", 5)
	// The wait is the test: it gives the initiator's timers and the
	// target's keepalive d of quiet to fail a path in.
	time.Sleep(d)
	after, err := vm.Run(ctx, 30*time.Second, errs)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(after) != strings.TrimSpace(before) {
		log, _ := vm.Run(ctx, 30*time.Second, "dmesg | grep -E 'connection|session' | tail -n 20")
		t.Fatalf("a connection failed while both sites were up and the paths idle (%s -> %s failures in the kernel log):\n%s", strings.TrimSpace(before), strings.TrimSpace(after), log)
	}
	if drops := c.GrepLogs("initiator stopped answering NOP-In", 5); drops != dropsBefore {
		t.Fatalf("a site dropped an idle connection: %s", drops)
	}
	waitBothPathsActive(t, vm, c)
	t.Logf("%v idle: no connection failed, both paths active", d)
}
