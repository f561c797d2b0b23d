package integration

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/integration/initiator"
	"github.com/metrolun/metrolun/integration/proxy"
)

// TestClusterHostsView (issue 14): `metrolun hosts` lists every initiator
// logged in anywhere in the cluster with its paths per site, the ALUA
// state each path reports and the NOP-In round trip of each. A host
// whose path to the writer's site crosses a 15 ms (each way) link is
// flagged as nearest to the other site; a host with one path is flagged
// as having one site only; the metrics say the same; /v1/hosts refuses a
// caller without a credential.
func TestClusterHostsView(t *testing.T) {
	d := startCluster(t)
	ctx := t.Context()
	bin := metrolunBin(t)
	ms, err := ClusterStatus(ctx, bin, d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	w := Writer(ms)
	o := map[string]string{"site-a": "site-b", "site-b": "site-a"}[w]
	if w == "" {
		t.Fatalf("no writer: %+v", ms)
	}
	portalW, iqn, _ := ParseISCSIURL(member(d, w).ISCSI)
	portalO, _, _ := ParseISCSIURL(member(d, o).ISCSI)
	far, err := proxy.New(Loopback+":0", portalW)
	if err != nil {
		t.Fatal(err)
	}
	defer far.Close()
	far.Set(proxy.Shape{Latency: 15 * time.Millisecond}, proxy.Shape{Latency: 15 * time.Millisecond})

	const host, single = "iqn.2026-11.io.metrolun:two-paths", "iqn.2026-11.io.metrolun:one-path"
	dial := func(portal, name string) *initiator.Session {
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		s, err := initiator.Dial(dctx, portal, iqn, name, initiator.Options{})
		if err != nil {
			t.Fatalf("%s at %s: %v", name, portal, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	hw, _ := dial(far.Addr(), host), dial(portalO, host)
	dial(portalO, single)
	// A real initiator too: libiscsi (qemu-io, waiting in its sleep
	// command) must answer the pings.
	requireTool(t, "qemu-io")
	const qemuName = "iqn.2008-11.org.linux-kvm" // qemu's default
	qctx, stopQemu := context.WithCancel(ctx)
	qemuDone := make(chan struct{})
	go func() {
		defer close(qemuDone)
		RunTool(qctx, 2*time.Minute, nil, "qemu-io", "-f", "raw", "-c", "sleep 120000", member(d, o).ISCSI)
	}()
	defer func() { stopQemu(); <-qemuDone }()

	hostsJSON := func() (admin.HostsResponse, error) {
		var r admin.HostsResponse
		out, err := exec.CommandContext(ctx, bin, "hosts", "--json", "--dir", d.Dir).Output()
		if err == nil {
			err = json.Unmarshal(out, &r)
		}
		return r, err
	}
	find := func(r admin.HostsResponse, name string) *admin.Host {
		for i := range r.Hosts {
			if r.Hosts[i].Initiator == name {
				return &r.Hosts[i]
			}
		}
		return nil
	}
	// The target pings every nop_interval (5 s by default).
	var r admin.HostsResponse
	// A loaded machine may delay one answer; the smoothed round trips
	// must come to show the proxy.
	until(t, "both of the host's paths have a round trip, the far one the longer", 60*time.Second, func() bool {
		r, err = hostsJSON()
		h := find(r, host)
		if err != nil || h == nil || len(h.Paths) != 2 || find(r, single) == nil {
			return false
		}
		rtt := map[string]time.Duration{}
		for _, p := range h.Paths {
			rtt[p.Site] = p.RTT
		}
		q := find(r, qemuName)
		return rtt[o] > 0 && rtt[w] > 0 && h.Nearest == o && q != nil && len(q.Paths) == 1 && q.Paths[0].RTT > 0
	})
	if q := find(r, qemuName); q.Paths[0].Answers == 0 || q.Paths[0].Site != o {
		t.Errorf("qemu-io's session: %+v", q.Paths[0])
	}
	h, s := find(r, host), find(r, single)
	if len(r.Unheard) != 0 || strings.Join(h.Sites, ",") != "site-a,site-b" || h.OneSite {
		t.Fatalf("host: %+v (unheard %v)", h, r.Unheard)
	}
	for _, p := range h.Paths {
		switch {
		case p.Site == w && (p.State != "active/optimized" || p.RTT < 25*time.Millisecond):
			t.Errorf("path to the writer %s through the 30 ms link: %+v", w, p)
		case p.Site == o && p.State != "active/non-optimized":
			t.Errorf("direct path to %s: %+v", o, p)
		}
	}
	if h.Preferred != w || h.PreferredBy != "writer" || h.Nearest != o || !h.NotNearest {
		t.Errorf("host: preferred %s (%s), nearest %s, not-nearest %v; want %s (writer), %s, true", h.Preferred, h.PreferredBy, h.Nearest, h.NotNearest, w, o)
	}
	if !s.OneSite || len(s.Paths) != 1 || s.Paths[0].Site != o || s.NotNearest {
		t.Errorf("single-path host: %+v", s)
	}
	t.Logf("%s: %s %v, %s %v", host, h.Paths[0].Site, h.Paths[0].RTT, h.Paths[1].Site, h.Paths[1].RTT)

	out, err := exec.CommandContext(ctx, bin, "hosts", "--dir", d.Dir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ONE SITE ONLY") || !strings.Contains(string(out), "NEAREST IS "+o) {
		t.Fatalf("metrolun hosts: %v\n%s", err, out)
	}
	t.Logf("metrolun hosts:\n%s", out)

	client, eps, err := DemoClient(d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var epO admin.Endpoint
	for _, ep := range eps {
		if ep.Name == o {
			epO = ep
		}
	}
	var metrics []byte
	if err := client.Do(ctx, epO, http.MethodGet, admin.PathMetrics, nil, &metrics); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		`metrolun_host_one_site{initiator="` + single + `"} 1`,
		`metrolun_host_not_nearest{initiator="` + host + `"} 1`,
		`metrolun_host_sessions{initiator="` + host + `",site="` + w + `"} 1`,
		`metrolun_session_alua_state{initiator="` + single + `",isid="`,
		`metrolun_session_rtt_seconds{initiator="` + host + `",isid="`,
	} {
		if !strings.Contains(string(metrics), line) {
			t.Errorf("metrics at %s lack %s", o, line)
		}
	}
	// The CA only: no token, no client certificate.
	anonTLS := client.TLS.Clone()
	anonTLS.Certificates = nil
	anon := &admin.Client{TLS: anonTLS}
	var ae *admin.Error
	if _, err := anon.Hosts(ctx, epO); !errors.As(err, &ae) || ae.Code != http.StatusUnauthorized {
		t.Errorf("/v1/hosts without a credential: %v, want 401", err)
	}
	if _, err := anon.Sessions(ctx, epO); !errors.As(err, &ae) || ae.Code != http.StatusUnauthorized {
		t.Errorf("/v1/sessions without a credential: %v, want 401", err)
	}

	// The host's path to the writer ends: one site only from then on.
	hw.Close()
	until(t, "the host is down to one site", 20*time.Second, func() bool {
		r, err := hostsJSON()
		h := find(r, host)
		return err == nil && h != nil && h.OneSite && len(h.Paths) == 1 && h.Paths[0].Site == o
	})
}

// TestPreferAuto (issue 14): with `prefer { initiator = "*"  site =
// "auto" }` at every site, a host whose path to the writer's site crosses
// a 15 ms (each way) link and whose path to the other site is direct
// sees the other site active/optimized at both sites once its round
// trips are measured, while an initiator with no measured paths still
// sees the writer's; `metrolun hosts` says "auto" and does not flag it.
func TestPreferAuto(t *testing.T) {
	d := startCluster(t)
	ctx := t.Context()
	bin := metrolunBin(t)
	for _, name := range []string{"site-a", "site-b"} {
		restartWithPrefer(t, d, bin, member(d, name), "*", "auto")
		if err := WaitInSync(ctx, bin, d.Dir, name, 60*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	var w string
	until(t, "a writer", 30*time.Second, func() bool {
		ms, err := ClusterStatus(ctx, bin, d.Dir)
		w = Writer(ms)
		return err == nil && w != "" && InSync(ms, "site-a") && InSync(ms, "site-b")
	})
	o := map[string]string{"site-a": "site-b", "site-b": "site-a"}[w]
	group := map[string]uint16{"site-a": 1, "site-b": 2}
	portalW, iqn, _ := ParseISCSIURL(member(d, w).ISCSI)
	portalO, _, _ := ParseISCSIURL(member(d, o).ISCSI)
	far, err := proxy.New(Loopback+":0", portalW)
	if err != nil {
		t.Fatal(err)
	}
	defer far.Close()
	far.Set(proxy.Shape{Latency: 15 * time.Millisecond}, proxy.Shape{Latency: 15 * time.Millisecond})
	const host = "iqn.2026-11.io.metrolun:auto-host"
	var sessions []*initiator.Session
	for _, portal := range []string{far.Addr(), portalO} {
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		s, err := initiator.Dial(dctx, portal, iqn, host, initiator.Options{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		sessions = append(sessions, s)
	}
	optimized := func(gs []tpgDesc) uint16 {
		for _, g := range gs {
			if g.State == aluaOptimized {
				return g.ID
			}
		}
		return 0
	}
	// Both of the host's paths (the target pings every 5 s, the sites
	// exchange session lists every second).
	until(t, "the host's optimized group moves to "+o+" on both paths", 40*time.Second, func() bool {
		for _, s := range sessions {
			gs, err := rtpgOn(ctx, s)
			if err != nil || optimized(gs) != group[o] {
				return false
			}
		}
		return true
	})
	gs, err := reportTPG(ctx, portalO, iqn, "iqn.2026-11.io.metrolun:auto-unmeasured")
	if err != nil || optimized(gs) != group[w] {
		t.Fatalf("an initiator without measured paths at %s: %v (%v), want the writer %s optimized", o, gs, err, w)
	}
	out, err := exec.CommandContext(ctx, bin, "hosts", "--json", "--dir", d.Dir).Output()
	var r admin.HostsResponse
	if err == nil {
		err = json.Unmarshal(out, &r)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range r.Hosts {
		if h.Initiator == host && (h.Preferred != o || h.PreferredBy != "auto" || h.NotNearest || h.Nearest != o) {
			t.Fatalf("metrolun hosts: %+v", h)
		}
	}
}
