package integration

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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
