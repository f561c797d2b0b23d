package integration

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
)

// hostileCall is one admin request made without the operator's token, or
// from a browser.
type hostileCall struct {
	what    string
	method  string
	path    string
	body    string
	headers map[string]string
	host    string // Host header; "" keeps the address dialled
	want    int    // the status a guarded member answers
}

// hostileClient is how the hostile calls reach the admin endpoints: over
// TLS when the cluster's endpoints speak it (a demo with DIR/pki), with
// no client certificate and without checking the server (it is the one
// attacking); else plain HTTP.
type hostileClient struct {
	scheme string
	hc     *http.Client
}

func newHostileClient(tlsOn bool) hostileClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	if !tlsOn {
		return hostileClient{"http", &http.Client{Timeout: 20 * time.Second, Transport: tr}}
	}
	tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	return hostileClient{"https", &http.Client{Timeout: 20 * time.Second, Transport: tr}}
}

func (h hostileCall) do(t *testing.T, hc hostileClient, addr string) (int, string) {
	t.Helper()
	var body io.Reader
	if h.body != "" {
		body = strings.NewReader(h.body)
	}
	req, err := http.NewRequestWithContext(t.Context(), h.method, hc.scheme+"://"+addr+h.path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h.headers {
		req.Header.Set(k, v)
	}
	if h.host != "" {
		req.Host = h.host
	}
	resp, err := hc.hc.Do(req)
	if err != nil {
		t.Fatalf("%s to %s: %v", h.what, addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// clusterFacts is what must not change: the members, the writer and its
// epoch, the in-sync set and the fences, from the freshest Raft view.
func clusterFacts(t *testing.T, client *admin.Client, eps []admin.Endpoint) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	reps := client.GatherCluster(ctx, eps)
	view := admin.Freshest(reps)
	if view == nil {
		t.Fatalf("no member answered the operator: %+v", reps)
	}
	var names []string
	for _, mi := range view.MemberInfo {
		names = append(names, mi.Name)
	}
	var fenced []string
	for _, f := range view.Fenced {
		fenced = append(fenced, f.Site)
	}
	return fmt.Sprintf("members %v, writer %s, epoch %d, in sync %v, fenced %v", names, view.Writer, view.Epoch, view.InSync, fenced)
}

// TestAdminRequiresCredential reproduces issue 12 item 5 on a real demo
// (two sites and a witness) with a rogue `metrolun serve` on 127.0.0.4
// waiting to be added: without the operator's token, adding the rogue as a
// member, promoting, fencing, removing a member and reading status or
// metrics are refused at every member and change nothing in the Raft
// state; a browser-style request (Origin, text/plain, a foreign Host) is
// refused even with the token; `metrolun status|promote --dir` works with
// the demo's DIR/admin.token, and refuses a wrong token clearly. With the
// demo's PKI (TLS by default) the endpoints speak HTTPS: the hostile
// calls come over TLS without a client certificate, plain HTTP is
// refused, a member's certificate reads status but may not promote, and
// the operator's certificate promotes without the token.
func TestAdminRequiresCredential(t *testing.T) {
	bin := metrolunBin(t)
	base, err := ClusterBasePort(4)
	if err != nil {
		t.Fatal(err)
	}
	d := StartDemoT(t, DemoOptions{Bin: bin, Size: "16MiB",
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
	ctx := t.Context()

	// The operator's view, to check that nothing changed: the demo's
	// token, and its CA to check the members over HTTPS, found as
	// `metrolun status --dir` finds them. (A build without admin
	// authentication writes no token: then none is sent.)
	operator, err := admin.NewClient(admin.Credential{Dir: d.Dir})
	if err != nil {
		t.Logf("no demo credential (%v): reading state without one", err)
		operator = &admin.Client{}
	}
	token := operator.Token
	tlsOn := operator.TLS != nil
	if !tlsOn {
		t.Logf("the demo has no %s: its admin endpoints speak plain HTTP", filepath.Join(d.Dir, "pki", "ca.pem"))
	}
	hostile := newHostileClient(tlsOn)
	var eps []admin.Endpoint
	for _, m := range d.File.Members {
		eps = append(eps, admin.Endpoint{Name: m.Name, Role: m.Role, Admin: demoAdminAddr(t, d, m.Name)})
	}
	before := clusterFacts(t, operator, eps)
	t.Logf("before: %s", before)
	writer := admin.SiteWriter(operator.Gather(ctx, eps))
	other := "site-a"
	if writer == "site-a" {
		other = "site-b"
	}

	// A rogue member, started as the issue describes: it waits to be
	// added and would then receive a full copy of the LUN.
	rogue, err := WriteExtraSite(d, "rogue", "127.0.0.4", base)
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := RestartMember(d, "rogue")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopMember(cmd) })
	if err := WaitTCP(rogue.Admin, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	rogueJSON, _ := json.Marshal(admin.AddMemberRequest{Name: "rogue", Role: "data", Raft: strings.Replace(rogue.Admin, ":"+strconv.Itoa(base+2), ":"+strconv.Itoa(base), 1),
		Replication: strings.Replace(rogue.Admin, ":"+strconv.Itoa(base+2), ":"+strconv.Itoa(base+1), 1), Admin: rogue.Admin})

	jsonCT := map[string]string{"Content-Type": "application/json"}
	wrong := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + strings.Repeat("0", 64)}
	withToken := func(h map[string]string) map[string]string {
		out := map[string]string{"Authorization": "Bearer " + token}
		for k, v := range h {
			out[k] = v
		}
		return out
	}
	// The paths carry the request in the query too, as the API without
	// authentication took it, so that such a build acts on them.
	calls := []hostileCall{
		{what: "add a rogue member", method: "POST", path: "/v1/members", body: string(rogueJSON), headers: jsonCT, want: 401},
		{what: "promote", method: "POST", path: "/v1/promote?site=" + other, body: `{"site":"` + other + `"}`, headers: jsonCT, want: 401},
		{what: "fence the writer", method: "POST", path: "/v1/fence?site=" + writer + "&for=120s", body: `{"site":"` + writer + `","for":"120s"}`, headers: jsonCT, want: 401},
		{what: "remove a member", method: "DELETE", path: "/v1/members/" + other, body: `{}`, headers: jsonCT, want: 401},
		{what: "promote with a wrong token", method: "POST", path: "/v1/promote?site=" + other, body: `{"site":"` + other + `"}`, headers: wrong, want: 401},
		{what: "read status", method: "GET", path: "/v1/status", want: 401},
		{what: "read metrics", method: "GET", path: "/metrics", want: 401},
		{what: "read sessions", method: "GET", path: "/v1/sessions", want: 401},
		{what: "read hosts", method: "GET", path: "/v1/hosts", want: 401},
		// A page in an operator's browser: a simple cross-origin POST
		// (text/plain, Origin set). Refused even if it had the token.
		{what: "browser promote", method: "POST", path: "/v1/promote?site=" + other, body: `{"site":"` + other + `"}`,
			headers: withToken(map[string]string{"Origin": "http://evil.example", "Content-Type": "text/plain"}), want: 403},
		{what: "text/plain fence", method: "POST", path: "/v1/fence?site=" + writer + "&for=120s", body: `{"site":"` + writer + `","for":"120s"}`,
			headers: withToken(map[string]string{"Content-Type": "text/plain"}), want: 415},
		{what: "DNS rebinding", method: "POST", path: "/v1/fence?site=" + writer + "&for=120s", body: `{"site":"` + writer + `","for":"120s"}`,
			headers: withToken(jsonCT), host: "evil.example:" + strconv.Itoa(base+2), want: 403},
	}
	for _, c := range calls {
		for _, ep := range eps {
			code, body := c.do(t, hostile, ep.Admin)
			if code != c.want {
				t.Errorf("%s at %s: got %d %s, want %d", c.what, ep.Name, code, strings.TrimSpace(body), c.want)
			} else if !json.Valid([]byte(body)) || !strings.Contains(body, `"error"`) {
				t.Errorf("%s at %s: refusal is not a JSON error: %s", c.what, ep.Name, body)
			}
		}
	}
	if tlsOn {
		// Plain HTTP on an HTTPS endpoint is no way around it.
		plain := newHostileClient(false)
		for _, ep := range eps {
			if code, body := (hostileCall{what: "plain HTTP status", method: "GET", path: "/v1/status"}).do(t, plain, ep.Admin); code == http.StatusOK {
				t.Errorf("plain HTTP status at %s answered: %s", ep.Name, body)
			}
		}
		// A member's certificate reads the state but changes nothing.
		member := certClient(t, operator, filepath.Join(d.Dir, "pki"), "site-a")
		if _, err := member.Status(ctx, eps[0]); err != nil {
			t.Errorf("status with site-a's certificate: %v", err)
		}
		for _, ep := range eps {
			var ae *admin.Error
			if _, err := member.Promote(ctx, ep, other); !errors.As(err, &ae) || ae.Code != http.StatusForbidden {
				t.Errorf("promote at %s with site-a's certificate and no token: %v, want 403", ep.Name, err)
			}
		}
	}
	if after := clusterFacts(t, operator, eps); after != before {
		t.Fatalf("requests without the operator's credential changed the cluster:\nbefore: %s\nafter:  %s", before, after)
	}
	if rs, err := operator.Status(ctx, admin.Endpoint{Name: "rogue", Admin: rogue.Admin}); err == nil && rs.Raft.CommitIndex != 0 {
		t.Errorf("the rogue member has Raft state (commit index %d): it was let in", rs.Raft.CommitIndex)
	}
	StopMember(cmd)

	// The commands find the token with --dir.
	run := func(env []string, args ...string) (string, error) {
		res, err := RunTool(ctx, 90*time.Second, env, bin, args...)
		return strings.TrimSpace(res.Stdout + res.Stderr), err
	}
	if out, err := run(nil, "status", "--dir", d.Dir); err != nil || !strings.Contains(out, "writer: "+writer) {
		t.Fatalf("status --dir: %v\n%s", err, out)
	}
	bad := filepath.Join(t.TempDir(), "wrong.token")
	if err := os.WriteFile(bad, []byte(strings.Repeat("1", 64)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run([]string{"METROLUN_ADMIN_TOKEN_FILE=" + bad}, "promote", other, "--dir", d.Dir); err == nil || !strings.Contains(out, "wrong admin token") {
		t.Fatalf("promote with a wrong token: %v\n%s", err, out)
	}
	if out, err := run(nil, "promote", other, "--dir", d.Dir); err != nil {
		t.Fatalf("promote %s --dir: %v\n%s", other, err, out)
	}
	until(t, other+" is the writer", 30*time.Second, func() bool {
		return admin.SiteWriter(operator.Gather(ctx, eps)) == other
	})
	if facts := clusterFacts(t, operator, eps); !strings.HasPrefix(facts, "members [site-a site-b witness], writer "+other+",") {
		t.Fatalf("after promote: %s", facts)
	}
	if !tlsOn {
		return
	}

	// The operator's certificate is a credential of its own: it moves
	// the writer back without the token.
	byCert := certClient(t, operator, filepath.Join(d.Dir, "pki"), "operator")
	pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := byCert.AtLeader(pctx, eps, 60, func(ep admin.Endpoint) error {
		_, err := byCert.Promote(pctx, ep, writer)
		return err
	}); err != nil {
		t.Fatalf("promote %s with the operator's certificate: %v", writer, err)
	}
	until(t, writer+" is the writer again", 30*time.Second, func() bool {
		return admin.SiteWriter(byCert.Gather(ctx, eps)) == writer
	})
}

// certClient is an admin client that presents the certificate NAME of
// pki (NAME.pem, NAME-key.pem) and no token, and checks the members
// against the operator's CA.
func certClient(t *testing.T, operator *admin.Client, pki, name string) *admin.Client {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(pki, name+".pem"), filepath.Join(pki, name+"-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return &admin.Client{TLS: &tls.Config{RootCAs: operator.TLS.RootCAs, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}}
}

// demoAdminAddr reads member name's admin address from its config.
func demoAdminAddr(t *testing.T, d *Demo, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.Dir, name, "metrolun.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "admin_listen = "); ok {
			s, err := strconv.Unquote(v)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
	t.Fatalf("%s's config has no admin_listen", name)
	return ""
}
