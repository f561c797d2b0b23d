package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/initiator"
)

// statusNames lists the members `metrolun status` reports.
func statusNames(t *testing.T, ctx context.Context, bin, dir string) []string {
	t.Helper()
	ms, err := ClusterStatus(ctx, bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range ms {
		names = append(names, m.Name)
	}
	return names
}

// syncCache sends SYNCHRONIZE CACHE through url: every in-sync site has
// every acknowledged write on stable storage when it returns.
func syncCache(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	portal, iqn, err := ParseISCSIURL(url)
	if err != nil {
		t.Fatal(err)
	}
	s, err := initiator.Dial(ctx, portal, iqn, "iqn.2026-11.io.metrolun:flush", initiator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SyncCache(ctx, 0); err != nil {
		t.Fatalf("synchronize cache through %s: %v", url, err)
	}
}

// TestMembershipAddRemoveSite: on a real two-site demo (and witness), while
// a prober writes through site-a (the writer):
//   - site-c, started with join = true, is added with `metrolun member
//     add`; `metrolun status` lists it from the Raft state, it is resynced
//     and joins the in-sync set; every acknowledged write reads back
//     through site-c, no write failed, and the three backing files are
//     byte-identical after a flush (I1, I4);
//   - then, while a prober writes through site-c, `metrolun member remove`
//     refuses the writer and removes site-b; writes go on, none fails, and
//     `metrolun status` no longer lists site-b, even after it is stopped;
//   - SendTargets at the old sites lists site-c's portal, and at the
//     others no longer site-b's; site-c can be promoted to writer with no
//     failed write through site-a.
func TestMembershipAddRemoveSite(t *testing.T) {
	bin := metrolunBin(t)
	base, err := ClusterBasePort(4)
	if err != nil {
		t.Fatal(err)
	}
	d := StartDemoT(t, DemoOptions{Bin: bin, Size: "64MiB",
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
	ctx := t.Context()
	run := func(args ...string) (string, error) {
		res, err := RunTool(ctx, 90*time.Second, nil, bin, args...)
		return strings.TrimSpace(res.Stdout), err
	}
	ms, err := ClusterStatus(ctx, bin, d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if Writer(ms) != "site-a" {
		if _, err := run("promote", "site-a", "--dir", d.Dir); err != nil {
			t.Fatalf("promote site-a: %v", err)
		}
	}
	a, b := member(d, "site-a"), member(d, "site-b")

	p1, err := StartProber(ctx, "site-a", a.ISCSI, 0, 2048)
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Stop()
	until(t, "50 writes through site-a", 60*time.Second, func() bool { return len(p1.Acked()) >= 50 })

	// site-c joins.
	c, err := WriteExtraSite(d, "site-c", "127.0.0.4", base)
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := RestartMember(d, "site-c")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopMember(cmd) })
	if err := WaitTCP(c.Admin, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if names := statusNames(t, ctx, bin, d.Dir); slices.Contains(names, "site-c") {
		t.Fatalf("site-c is listed before it was added: %v", names)
	}
	// Asked with its own config, the cluster shows site-c as waiting.
	if out, err := run("status", "--config", c.Config); err != nil || !strings.Contains(out, "waiting to be added") {
		t.Fatalf("status --config site-c's before the add: %v\n%s", err, out)
	}
	added := time.Now()
	out, err := run("member", "add", "site-c", "--config", c.Config)
	if err != nil {
		t.Fatalf("member add site-c: %v; log: %s", err, tailFile(filepath.Join(d.Dir, "site-c-restart.log"), 10))
	}
	t.Logf("member add: %s", out)
	if names := statusNames(t, ctx, bin, d.Dir); !slices.Contains(names, "site-c") {
		t.Fatalf("status after the add does not list site-c: %v", names)
	}
	if err := WaitInSync(ctx, bin, d.Dir, "site-c", 90*time.Second); err != nil {
		t.Fatalf("%v; log: %s", err, tailFile(filepath.Join(d.Dir, "site-c-restart.log"), 10))
	}
	inSync := time.Now()
	t.Logf("site-c in sync %v after the add", inSync.Sub(added).Round(time.Millisecond))
	until(t, "writes through site-a after site-c joined", 30*time.Second, func() bool {
		_, ok := p1.FirstAckIssuedAfter(inSync)
		return ok
	})
	if out, err := run("status", "--dir", d.Dir); err == nil {
		t.Logf("metrolun status:\n%s", out)
	}
	n, err := p1.Verify(ctx, c.ISCSI)
	if err != nil {
		t.Fatalf("reading acknowledged writes through site-c: %v", err)
	}
	p1.Stop()
	if e := p1.Errors(); e != 0 {
		t.Fatalf("%d writes through site-a failed while site-c joined", e)
	}
	t.Logf("%d writes through site-a, all acknowledged; the latest of %d blocks read back through site-c", len(p1.Acked()), n)
	// Initiators at the old sites are told of the new one (one device,
	// one more path).
	portalC, _, _ := ParseISCSIURL(c.ISCSI)
	if !sendTargetsLists(t, ctx, a.ISCSI, portalC) {
		t.Fatalf("SendTargets at site-a does not list site-c's portal %s", portalC)
	}
	syncCache(t, ctx, a.ISCSI)
	imgA := filepath.Join(d.Dir, "site-a", "lun0.img")
	same(t, imgA, filepath.Join(d.Dir, "site-b", "lun0.img"))
	same(t, imgA, c.Image)

	// A site whose LU is not the cluster's is refused before it counts:
	// site-d's config has 4096-byte blocks (it need not run).
	dcfg, err := WriteExtraSite(d, "site-d", "127.0.0.5", base)
	if err != nil {
		t.Fatal(err)
	}
	if err := rewriteFile(dcfg.Config, "block_size = 512", "block_size = 4096"); err != nil {
		t.Fatal(err)
	}
	if _, err := run("member", "add", "site-d", "--config", dcfg.Config); err == nil || !strings.Contains(err.Error(), "block size 4096") {
		t.Fatalf("member add of a site with another LU: %v, want a refusal naming the block size", err)
	} else {
		t.Logf("member add site-d (4096-byte blocks): %v", err)
	}

	// site-b leaves while writes go on through site-c.
	p2, err := StartProber(ctx, "site-c", c.ISCSI, 2048*8, 2048)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Stop()
	until(t, "20 writes through site-c", 60*time.Second, func() bool { return len(p2.Acked()) >= 20 })
	if _, err := run("member", "remove", "site-a", "--dir", d.Dir); err == nil || !strings.Contains(err.Error(), "writer") {
		t.Fatalf("removing the writer: %v, want a refusal naming the writer", err)
	}
	removing := time.Now()
	out, err = run("member", "remove", "site-b", "--dir", d.Dir)
	if err != nil {
		t.Fatalf("member remove site-b: %v", err)
	}
	t.Logf("member remove: %s", out)
	until(t, "writes through site-c after the removal", 30*time.Second, func() bool {
		_, ok := p2.FirstAckIssuedAfter(removing)
		return ok
	})
	if names := statusNames(t, ctx, bin, d.Dir); slices.Contains(names, "site-b") || !slices.Contains(names, "site-c") {
		t.Fatalf("status after removing site-b: %v", names)
	}
	// The removed site stops by itself (it learns of its removal from the
	// others); the cluster does not miss it.
	until(t, "the removed site-b stops by itself", 30*time.Second, func() bool {
		return syscall.Kill(b.PID, 0) == syscall.ESRCH
	})
	stopped := time.Now()
	t.Logf("site-b stopped %v after member remove began", stopped.Sub(removing).Round(time.Millisecond))
	until(t, "writes through site-c after site-b stopped", 30*time.Second, func() bool {
		op, ok := p2.FirstAckIssuedAfter(stopped)
		return ok && len(p2.Acked()) > 0 && op.End.After(stopped)
	})
	ms, err = ClusterStatus(ctx, bin, d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == "site-b" {
			t.Fatalf("status lists the removed site-b: %+v", m)
		}
	}
	if !InSync(ms, "site-c") || Writer(ms) != "site-a" {
		t.Fatalf("after the removal: writer %q, site-c in sync %v", Writer(ms), InSync(ms, "site-c"))
	}
	p2.Stop()
	if e := p2.Errors(); e != 0 {
		t.Fatalf("%d writes through site-c failed while site-b left", e)
	}
	for _, p := range []*Prober{p1, p2} {
		if _, err := p.Verify(ctx, a.ISCSI); err != nil {
			t.Fatalf("reading back through site-a: %v", err)
		}
	}
	t.Logf("%d writes through site-c while site-b left, none failed", len(p2.Acked()))
	portalB, _, _ := ParseISCSIURL(b.ISCSI)
	if sendTargetsLists(t, ctx, c.ISCSI, portalB) {
		t.Fatalf("SendTargets at site-c still lists the removed site-b's portal %s", portalB)
	}

	// The added site can be the writer: site-a then forwards to it, at
	// the address only the Raft state gives.
	p3, err := StartProber(ctx, "site-a", a.ISCSI, 2*2048*8, 512)
	if err != nil {
		t.Fatal(err)
	}
	defer p3.Stop()
	until(t, "10 writes through site-a", 60*time.Second, func() bool { return len(p3.Acked()) >= 10 })
	if out, err := run("promote", "site-c", "--dir", d.Dir); err != nil {
		t.Fatalf("promote site-c: %v", err)
	} else {
		t.Logf("promote: %s", out)
	}
	promoted := time.Now()
	until(t, "writes through site-a to the writer site-c", 30*time.Second, func() bool {
		_, ok := p3.FirstAckIssuedAfter(promoted)
		return ok
	})
	p3.Stop()
	if e := p3.Errors(); e != 0 {
		t.Fatalf("%d writes through site-a failed while the writer moved to site-c", e)
	}
	if w := Writer(mustStatus(t, ctx, bin, d.Dir)); w != "site-c" {
		t.Fatalf("writer %q after promote site-c", w)
	}
	if _, err := p3.Verify(ctx, c.ISCSI); err != nil {
		t.Fatal(err)
	}
	syncCache(t, ctx, c.ISCSI)
	same(t, imgA, c.Image)
}

func mustStatus(t *testing.T, ctx context.Context, bin, dir string) []MemberStatus {
	t.Helper()
	ms, err := ClusterStatus(ctx, bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// sendTargetsLists reports whether a SendTargets discovery at the site of
// url lists portal (host:port) among the target's addresses.
func sendTargetsLists(t *testing.T, ctx context.Context, url, portal string) bool {
	t.Helper()
	at, _, err := ParseISCSIURL(url)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := initiator.Discover(ctx, at, "iqn.2026-11.io.metrolun:discover")
	if err != nil {
		t.Fatalf("SendTargets at %s: %v", at, err)
	}
	for _, tg := range ts {
		for _, a := range tg.Addresses {
			if strings.HasPrefix(a, portal+",") {
				return true
			}
		}
	}
	return false
}

// rewriteFile replaces old with new in the file at path, which must hold
// old.
func rewriteFile(path, old, new string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), old) {
		return fmt.Errorf("%s does not hold %q", path, old)
	}
	return os.WriteFile(path, []byte(strings.Replace(string(b), old, new, 1)), 0o644)
}

// TestLUNMismatchStops: a data site restarted with a config whose LU is
// not the one the cluster recorded (here 4096-byte blocks instead of 512)
// stops with the difference in its log instead of serving a device
// that initiators would take for the same LU; put back, it rejoins.
func TestLUNMismatchStops(t *testing.T) {
	bin := metrolunBin(t)
	base, err := ClusterBasePort(3)
	if err != nil {
		t.Fatal(err)
	}
	d := StartDemoT(t, DemoOptions{Bin: bin, Size: "16MiB",
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
	ctx := t.Context()
	ms := mustStatus(t, ctx, bin, d.Dir)
	other := "site-b"
	if Writer(ms) == "site-b" {
		other = "site-a"
	}
	m := member(d, other)
	if err := syscall.Kill(m.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	until(t, other+" stopped", 30*time.Second, func() bool { return syscall.Kill(m.PID, 0) == syscall.ESRCH })
	cfg := filepath.Join(d.Dir, other, "metrolun.hcl")
	if err := rewriteFile(cfg, "block_size = 512", "block_size = 4096"); err != nil {
		t.Fatal(err)
	}
	cmd, err := RestartMember(d, other)
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err == nil {
			t.Fatalf("%s with another block size exited with status 0", other)
		}
	case <-time.After(30 * time.Second):
		StopMember(cmd)
		t.Fatalf("%s with another block size still runs after 30 s; log: %s", other, tailFile(filepath.Join(d.Dir, other+"-restart.log"), 10))
	}
	logText, _ := os.ReadFile(filepath.Join(d.Dir, other+"-restart.log"))
	if !strings.Contains(string(logText), "differs from the cluster's: block size 4096 (the cluster's is 512)") {
		t.Fatalf("%s's log does not say why it stopped: %s", other, tailFile(filepath.Join(d.Dir, other+"-restart.log"), 10))
	}
	t.Logf("%s stopped: %s", other, tailFile(filepath.Join(d.Dir, other+"-restart.log"), 1))

	// Put back, it rejoins the in-sync set.
	if err := rewriteFile(cfg, "block_size = 4096", "block_size = 512"); err != nil {
		t.Fatal(err)
	}
	cmd, err = RestartMember(d, other)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopMember(cmd) })
	if err := WaitInSync(ctx, bin, d.Dir, other, 60*time.Second); err != nil {
		t.Fatal(err)
	}
}
