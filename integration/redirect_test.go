package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
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
		hook = func(initiator, tgt string) (string, bool, bool) {
			to, permanent, ok := redirect(initiator, tgt)
			if !ok {
				logins.Add(1)
			}
			return to, permanent, ok
		}
	} else {
		// A hook that never redirects sees every normal login.
		hook = func(string, string) (string, bool, bool) { logins.Add(1); return "", false, false }
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
			addrA, loginsA := startRedirectSite(t, "SITE-A", func(initiator, tgt string) (string, bool, bool) {
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
