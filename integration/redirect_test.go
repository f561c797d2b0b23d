package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/integration/initiator"
	"github.com/metrolun/metrolun/replica"
	"github.com/metrolun/metrolun/target"
)

const redirectTarget = "iqn.2026-11.io.metrolun:redirect"

// startRedirectSite runs an in-process target server on a free loopback
// port with one 4 MiB LUN whose INQUIRY product names the site, and
// counts the logins it answers without redirecting.
func startRedirectSite(t *testing.T, product string, redirect target.RedirectFunc) (addr string, logins *atomic.Int64) {
	t.Helper()
	vol, err := replica.OpenLocal(filepath.Join(t.TempDir(), "lun0.img"), 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	logins = &atomic.Int64{}
	var hook target.RedirectFunc
	if redirect != nil {
		hook = func(initiator, tgt, isid string) (string, bool, bool) {
			to, permanent, ok := redirect(initiator, tgt, isid)
			if !ok {
				logins.Add(1)
			}
			return to, permanent, ok
		}
	} else {
		// A hook that never redirects sees every normal login.
		hook = func(string, string, string) (string, bool, bool) { logins.Add(1); return "", false, false }
	}
	srv := target.NewServer(target.Config{Redirect: hook})
	if err := srv.AddTarget(target.TargetConfig{
		Name: redirectTarget,
		LUNs: []target.LUNConfig{{ID: 0, Volume: vol, Product: product, Serial: strings.ToLower(product)}},
	}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(Loopback, "0"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown %s: %v", product, err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("serve %s: %v", product, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("serve %s did not return after shutdown", product)
		}
	})
	return l.Addr().String(), logins
}

// TestLoginRedirectLibiscsi: libiscsi follows a login redirect (RFC 7143
// section 11.13.5). Site A sends every normal login to site B; iscsi-inq
// pointed at A must print B's INQUIRY data, and B must have seen the
// login. libiscsi 1.19 follows only "target moved temporarily" (0x0101);
// a permanent redirect (0x0102) it reports as a failed login naming the
// status, which is checked too (following it would also pass).
func TestLoginRedirectLibiscsi(t *testing.T) {
	requireTool(t, "iscsi-inq")
	addrB, loginsB := startRedirectSite(t, "SITE-B", nil)
	for _, permanent := range []bool{false, true} {
		t.Run(fmt.Sprintf("permanent=%v", permanent), func(t *testing.T) {
			var asked atomic.Int64
			addrA, loginsA := startRedirectSite(t, "SITE-A", func(initiator, tgt, _ string) (string, bool, bool) {
				asked.Add(1)
				return addrB, permanent, tgt == redirectTarget
			})
			before := loginsB.Load()
			url := fmt.Sprintf("iscsi://%s/%s/0", addrA, redirectTarget)
			res, err := RunTool(context.Background(), 30*time.Second, nil, "iscsi-inq", "-i", "iqn.2026-11.io.metrolun:client", url)
			if err != nil && permanent && strings.Contains(res.Stdout+res.Stderr, "moved permanently") {
				if asked.Load() == 0 || loginsA.Load() != 0 || loginsB.Load() != before {
					t.Fatalf("logins at A %d, at B %d more; want none", loginsA.Load(), loginsB.Load()-before)
				}
				return
			}
			if err != nil {
				t.Fatalf("iscsi-inq %s: %v\n%s%s", url, err, res.Stdout, res.Stderr)
			}
			if !strings.Contains(res.Stdout, "SITE-B") || strings.Contains(res.Stdout, "SITE-A") {
				t.Fatalf("iscsi-inq at site A did not get site B's answer:\n%s", res.Stdout)
			}
			if asked.Load() == 0 || loginsA.Load() != 0 {
				t.Fatalf("site A: hook asked %d times, %d logins served; want >0 and 0", asked.Load(), loginsA.Load())
			}
			if loginsB.Load() == before {
				t.Fatal("site B saw no login")
			}
		})
	}
}

// TestClusterRedirectsFromFencedSite: on a real two-site demo, a data site
// that cannot serve (here fenced, so out of the in-sync set) sends new
// logins to the writer's site: the Go initiator sees the temporary
// redirect, and qemu-io pointed at the fenced site's URL follows it,
// writes and reads a pattern there, which then reads back through the
// writer. Unfenced and back in sync, the site takes logins itself again.
func TestClusterRedirectsFromFencedSite(t *testing.T) {
	bin := metrolunBin(t)
	d := startCluster(t)
	ctx := t.Context()
	if w := Writer(mustStatus(t, ctx, bin, d.Dir)); w != "site-a" {
		if res, err := RunTool(ctx, 60*time.Second, nil, bin, "promote", "site-a", "--dir", d.Dir); err != nil {
			t.Fatalf("promote site-a: %v %s", err, res.Stderr)
		}
	}
	a, b := member(d, "site-a"), member(d, "site-b")
	portalB, iqn, err := ParseISCSIURL(b.ISCSI)
	if err != nil {
		t.Fatal(err)
	}
	portalA, _, _ := ParseISCSIURL(a.ISCSI)
	dialB := func() error {
		s, err := initiator.Dial(ctx, portalB, iqn, "iqn.2026-11.io.metrolun:redirect-probe", initiator.Options{})
		if err == nil {
			s.Close()
		}
		return err
	}
	if err := dialB(); err != nil {
		t.Fatalf("login at site-b while in sync: %v", err)
	}
	atLeader(t, d, func(c *admin.Client, ep admin.Endpoint) error {
		_, err := c.Fence(ctx, ep, "site-b", 120*time.Second)
		return err
	})
	var le *initiator.LoginError
	until(t, "site-b redirects logins", 30*time.Second, func() bool {
		err := dialB()
		return errors.As(err, &le) && le.Class == 1 && le.Detail == 1
	})
	t.Logf("login at fenced site-b: %v", le)
	if err := qemuIO(ctx, b.ISCSI, "write -P 0x5a 1M 64k", "read -P 0x5a 1M 64k"); err != nil {
		t.Fatalf("qemu-io at the fenced site-b's URL: %v", err)
	}
	if err := qemuIO(ctx, a.ISCSI, "read -P 0x5a 1M 64k"); err != nil {
		t.Fatalf("the redirected write read through site-a (%s): %v", portalA, err)
	}
	atLeader(t, d, func(c *admin.Client, ep admin.Endpoint) error {
		_, err := c.Unfence(ctx, ep, "site-b")
		return err
	})
	if err := WaitInSync(ctx, bin, d.Dir, "site-b", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	until(t, "site-b takes logins again", 30*time.Second, func() bool { return dialB() == nil })
	if err := qemuIO(ctx, b.ISCSI, "read -P 0x5a 1M 64k"); err != nil {
		t.Fatalf("reading at site-b after it is back: %v", err)
	}
}

// atLeader calls fn at the demo d's Raft leader with the demo's
// credential, following the leader while it moves.
func atLeader(t *testing.T, d *Demo, fn func(*admin.Client, admin.Endpoint) error) {
	t.Helper()
	client, eps, err := DemoClient(d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := client.AtLeader(ctx, eps, 60, func(ep admin.Endpoint) error { return fn(client, ep) }); err != nil {
		t.Fatal(err)
	}
}

// TestRedirectKeepsMultipathHostAtItsSite (issue 14): a host with
// dm-multipath holds one session per site. Site-a is killed, the host
// writes on through site-b, and site-a restarts and resyncs (slowly:
// --resync-bandwidth). The host's login at site-a during the resync (its
// path back, with the ISID it had there) must stay at site-a, whose port
// group reports unavailable or transitioning on that path until it is in
// sync and then active: a redirect to site-b would leave the host with
// both paths at site-b while multipath believes it has one per site.
// A single-path client (a new initiator, and qemu-io at site-a's URL) is
// still sent to site-b during the resync.
func TestRedirectKeepsMultipathHostAtItsSite(t *testing.T) {
	requireTool(t, "qemu-io")
	base, err := ClusterBasePort(3)
	if err != nil {
		t.Fatal(err)
	}
	bin := metrolunBin(t)
	d := StartDemoT(t, DemoOptions{Bin: bin, Size: "64MiB",
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base), "--resync-bandwidth", "4MiB"}})
	ctx := t.Context()
	a, b := member(d, "site-a"), member(d, "site-b")
	portalA, iqn, err := ParseISCSIURL(a.ISCSI)
	if err != nil {
		t.Fatal(err)
	}
	portalB, _, _ := ParseISCSIURL(b.ISCSI)
	const host = "iqn.2026-11.io.metrolun:multipath-host"
	isidA, isidB := [6]byte{0x80, 0, 0, 0, 0x0a, 1}, [6]byte{0x80, 0, 0, 0, 0x0b, 1}
	dial := func(portal, name string, isid [6]byte) (*initiator.Session, error) {
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		return initiator.Dial(dctx, portal, iqn, name, initiator.Options{ISID: isid})
	}
	// The host's two paths, one per site, as dm-multipath holds them.
	sb, err := dial(portalB, host, isidB)
	if err != nil {
		t.Fatalf("host's path to site-b: %v", err)
	}
	defer sb.Close()
	sa, err := dial(portalA, host, isidA)
	if err != nil {
		t.Fatalf("host's path to site-a: %v", err)
	}
	defer sa.Close()

	if err := syscall.Kill(a.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sa.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the host's session at the killed site-a did not end")
	}
	// site-b takes over; the host writes on through it, 48 MiB that
	// site-a misses (12 s of resync at 4 MiB/s).
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + 3)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for mib := uint64(8); mib < 56; mib++ {
		for {
			err := sb.WriteBlocks(wctx, 0, mib<<11, chunk, false)
			if err == nil {
				break
			}
			// Held or NOT READY while site-b takes over the writer role.
			var se *initiator.SCSIError
			if !errors.As(err, &se) || wctx.Err() != nil {
				t.Fatalf("host write through site-b at %d MiB: %v", mib, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	cmd, err := RestartMember(d, "site-a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopMember(cmd) })
	client, eps, err := DemoClient(d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var epA admin.Endpoint
	for _, ep := range eps {
		if ep.Name == "site-a" {
			epA = ep
		}
	}
	// Only once site-a's own committed view has site-b as writer and
	// itself out of the in-sync set would the old policy redirect.
	until(t, "site-a sees site-b as writer and itself out of sync", 30*time.Second, func() bool {
		st, err := client.Status(ctx, epA)
		return err == nil && st.Raft.Writer == "site-b" && !slices.Contains(st.Raft.InSync, "site-a")
	})
	if err := WaitTCP(portalA, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// The host's path back, with the ISID it had at site-a.
	sa, err = dial(portalA, host, isidA)
	if err != nil {
		t.Fatalf("the multipath host's login at site-a during the resync: %v (it has a path to site-b already; it must stay at site-a)", err)
	}
	defer sa.Close()
	groups, err := rtpgOn(ctx, sa)
	if err != nil {
		t.Fatal(err)
	}
	if g := findGroup(groups, 1); g == nil || (g.State != aluaUnavailable && g.State != aluaTransitioning) {
		t.Fatalf("RTPG on the host's path at resyncing site-a: %v; want group 1 unavailable or transitioning", groups)
	}
	t.Logf("host's path at site-a during resync: %v", groups)

	// A single-path client is still sent where the LU is served. (Until
	// site-a has had site-b's session list it keeps logins; the client
	// then tries again, as it would after NOT READY.)
	var le *initiator.LoginError
	until(t, "a single-path client's login at resyncing site-a is redirected to "+portalB, 15*time.Second, func() bool {
		s, err := dial(portalA, "iqn.2026-11.io.metrolun:single-path", [6]byte{})
		if err == nil {
			s.Close()
			return false
		}
		if !errors.As(err, &le) || le.Class != 1 || le.Detail != 1 || le.TargetAddress != portalB {
			t.Fatalf("a single-path client's login at resyncing site-a: %v; want a temporary redirect to %s", err, portalB)
		}
		return true
	})
	if err := qemuIO(ctx, a.ISCSI, "read -P 0x03 8M 1"); err != nil {
		t.Fatalf("qemu-io at resyncing site-a's URL: %v", err)
	}
	// All of this happened during the resync, or the test proved nothing.
	if ms, err := ClusterStatus(ctx, bin, d.Dir); err != nil || InSync(ms, "site-a") {
		t.Fatalf("site-a was in sync before the checks ended (status error %v): the test missed the resync window", err)
	}

	if err := WaitInSync(ctx, bin, d.Dir, "site-a", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	until(t, "the host's path at site-a reports active", 30*time.Second, func() bool {
		groups, err = rtpgOn(ctx, sa)
		g := findGroup(groups, 1)
		return err == nil && g != nil && (g.State == aluaOptimized || g.State == aluaNonOptimized)
	})
	t.Logf("host's path at site-a in sync: %v", groups)
	got, err := sa.ReadBlocks(ctx, 0, 55<<11, 2048)
	if err != nil || !bytes.Equal(got, chunk) {
		t.Fatalf("reading at site-a what the host wrote through site-b: %v", err)
	}
	if err := sb.TestUnitReady(ctx, 0); err != nil {
		t.Fatalf("the host's path at site-b: %v", err)
	}
}

// rtpgOn issues REPORT TARGET PORT GROUPS on an open session.
func rtpgOn(ctx context.Context, s *initiator.Session) ([]tpgDesc, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	b, err := s.Command(ctx, 0, []byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0}, 4096, nil)
	if err != nil {
		return nil, err
	}
	return decodeTPG(b)
}

func findGroup(gs []tpgDesc, id uint16) *tpgDesc {
	for i := range gs {
		if gs[i].ID == id {
			return &gs[i]
		}
	}
	return nil
}
