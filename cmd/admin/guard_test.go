package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testToken = "0123456789abcdef0123456789abcdef"

// backend counts the requests that got past the guard.
type backend struct{ served int }

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.served++
	WriteJSON(w, http.StatusOK, map[string]string{"ok": r.URL.Path})
}

func newGuard(t *testing.T, public bool) *Guard {
	tok, err := NewToken(testToken)
	if err != nil {
		t.Fatal(err)
	}
	return &Guard{Auth: []Authorizer{ClientCert{}, tok}, Hosts: []string{"admin.site-a.example"}, PublicMetrics: public}
}

func TestGuard(t *testing.T) {
	type tc struct {
		name    string
		method  string
		path    string
		host    string
		headers map[string]string
		public  bool
		want    int
		wantMsg string
	}
	bearer := map[string]string{"Authorization": "Bearer " + testToken}
	withJSON := func(h map[string]string) map[string]string {
		out := map[string]string{"Content-Type": "application/json"}
		for k, v := range h {
			out[k] = v
		}
		return out
	}
	cases := []tc{
		{name: "status without token", method: "GET", path: PathStatus, want: 401, wantMsg: "no credential"},
		{name: "promote without token", method: "POST", path: PathPromote, headers: withJSON(nil), want: 401},
		{name: "members without token", method: "POST", path: PathMembers, headers: withJSON(nil), want: 401},
		{name: "delete without token", method: "DELETE", path: PathMembers + "/site-b", headers: withJSON(nil), want: 401},
		{name: "wrong token", method: "POST", path: PathFence, headers: withJSON(map[string]string{"Authorization": "Bearer " + strings.Repeat("x", 32)}), want: 401, wantMsg: "wrong admin token"},
		{name: "token prefix", method: "GET", path: PathStatus, headers: map[string]string{"Authorization": "Bearer " + testToken[:16]}, want: 401},
		{name: "basic auth", method: "GET", path: PathStatus, headers: map[string]string{"Authorization": "Basic " + testToken}, want: 401},
		{name: "status with token", method: "GET", path: PathStatus, headers: bearer, want: 200},
		{name: "promote with token", method: "POST", path: PathPromote, headers: withJSON(bearer), want: 200},
		{name: "json with charset", method: "POST", path: PathPromote, headers: withJSON(map[string]string{"Authorization": "Bearer " + testToken, "Content-Type": "application/json; charset=utf-8"}), want: 200},
		{name: "text/plain", method: "POST", path: PathPromote, headers: map[string]string{"Authorization": "Bearer " + testToken, "Content-Type": "text/plain"}, want: 415},
		{name: "form", method: "POST", path: PathMembers, headers: map[string]string{"Authorization": "Bearer " + testToken, "Content-Type": "application/x-www-form-urlencoded"}, want: 415},
		{name: "no content type", method: "DELETE", path: PathMembers + "/x", headers: bearer, want: 415},
		{name: "origin", method: "POST", path: PathPromote, headers: withJSON(map[string]string{"Authorization": "Bearer " + testToken, "Origin": "http://evil.example"}), want: 403, wantMsg: "web page"},
		{name: "origin on status", method: "GET", path: PathStatus, headers: map[string]string{"Authorization": "Bearer " + testToken, "Origin": "null"}, want: 403},
		{name: "browser cross-site", method: "GET", path: PathStatus, headers: map[string]string{"Authorization": "Bearer " + testToken, "Sec-Fetch-Site": "cross-site"}, want: 403},
		{name: "browser same-origin", method: "GET", path: PathStatus, headers: map[string]string{"Authorization": "Bearer " + testToken, "Sec-Fetch-Site": "same-origin"}, want: 200},
		{name: "rebinding host", method: "GET", path: PathStatus, host: "evil.example:7402", headers: bearer, want: 403, wantMsg: "Host"},
		{name: "configured host", method: "GET", path: PathStatus, host: "ADMIN.site-a.example:7402", headers: bearer, want: 200},
		{name: "localhost", method: "GET", path: PathStatus, host: "localhost:7402", headers: bearer, want: 200},
		{name: "ipv6 literal", method: "GET", path: PathStatus, host: "[::1]:7402", headers: bearer, want: 200},
		{name: "metrics closed", method: "GET", path: PathMetrics, want: 401},
		{name: "health closed", method: "GET", path: PathHealth, want: 401},
		{name: "metrics public", method: "GET", path: PathMetrics, public: true, want: 200},
		{name: "health public", method: "GET", path: PathHealth, public: true, want: 200},
		{name: "public is read only", method: "POST", path: PathMetrics, public: true, headers: withJSON(nil), want: 401},
		{name: "public status still closed", method: "GET", path: PathStatus, public: true, want: 401},
		{name: "public metrics, rebinding host", method: "GET", path: PathMetrics, public: true, host: "evil.example", want: 403},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := &backend{}
			h := newGuard(t, c.public).Wrap(b)
			r := httptest.NewRequest(c.method, c.path, strings.NewReader("{}"))
			r.Host = "127.0.0.1:7402"
			if c.host != "" {
				r.Host = c.host
			}
			for k, v := range c.headers {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != c.want {
				t.Fatalf("%s %s: got %d %s, want %d", c.method, c.path, w.Code, w.Body, c.want)
			}
			if c.want != 200 {
				if b.served != 0 {
					t.Fatal("a refused request reached the handler")
				}
				var er ErrorResponse
				if err := json.Unmarshal(w.Body.Bytes(), &er); err != nil || er.Error == "" {
					t.Fatalf("refusal is not a JSON error: %q (%v)", w.Body, err)
				}
				if !strings.Contains(er.Error, c.wantMsg) {
					t.Errorf("error %q does not say %q", er.Error, c.wantMsg)
				}
				if c.want == 401 && w.Header().Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			} else if b.served != 1 {
				t.Fatalf("handler served %d times", b.served)
			}
		})
	}
}

// An insecure guard (admin_insecure: no authorizer) still refuses
// browsers and foreign Hosts.
func TestGuardInsecureStillRefusesBrowsers(t *testing.T) {
	g := &Guard{}
	for _, c := range []struct {
		hdr, val string
		host     string
		want     int
	}{
		{"Origin", "http://evil.example", "127.0.0.1", 403},
		{"Content-Type", "text/plain", "127.0.0.1", 415},
		{"Content-Type", "application/json", "evil.example", 403},
		{"Content-Type", "application/json", "127.0.0.1", 200},
	} {
		r := httptest.NewRequest("POST", PathFence, strings.NewReader("{}"))
		r.Host = c.host
		r.Header.Set(c.hdr, c.val)
		if c.hdr != "Content-Type" {
			r.Header.Set("Content-Type", "text/plain")
		}
		w := httptest.NewRecorder()
		g.Wrap(&backend{}).ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("%s: %s, Host %s: got %d, want %d", c.hdr, c.val, c.host, w.Code, c.want)
		}
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(p, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := ReadTokenFile(p); err != nil || tok != testToken {
		t.Fatalf("got %q, %v", tok, err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadTokenFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable token: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	if _, err := ReadTokenFile(empty); err == nil {
		t.Fatal("an empty token file was accepted")
	}
	if _, err := ReadTokenFile(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing token file was accepted")
	}
}

// pki is a CA and certificates it signs, made for one test.
type pki struct {
	ca    *x509.Certificate
	key   *ecdsa.PrivateKey
	pool  *x509.CertPool
	after int64
}

func newPKI(t *testing.T) *pki {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &pki{ca: ca, key: key, pool: pool, after: 1}
}

// cert issues a certificate with Subject CN name and OU role, for server
// and client use, valid for 127.0.0.1 when ip.
func (p *pki) cert(t *testing.T, name, role string, ip bool) tls.Certificate {
	p.after++
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(p.after),
		Subject:   pkix.Name{CommonName: name, OrganizationalUnit: []string{role}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	if ip {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestClientCertRoles runs the guard behind HTTPS with client
// certificates: a member's certificate reads, an operator's acts, a
// certificate from another CA is refused at the handshake, and a token
// still works without a certificate.
func TestClientCertRoles(t *testing.T) {
	p := newPKI(t)
	b := &backend{}
	tok, _ := NewToken(testToken)
	srv := httptest.NewUnstartedServer((&Guard{Auth: []Authorizer{ClientCert{}, tok}}).Wrap(b))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.cert(t, "site-a", "data", false)},
		ClientCAs: p.pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()
	ep := Endpoint{Name: "site-a", Admin: srv.Listener.Addr().String()}
	ctx := context.Background()
	client := func(cert *tls.Certificate, token string) *Client {
		cfg := &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS13}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		return &Client{TLS: cfg, Token: token, Timeout: 5 * time.Second}
	}
	code := func(err error) int {
		var e *Error
		if errors.As(err, &e) {
			return e.Code
		}
		if err != nil {
			return -1
		}
		return 200
	}
	member := p.cert(t, "site-b", "data", false)
	witness := p.cert(t, "witness", "witness", false)
	operator := p.cert(t, "alice", "operator", false)
	norole := p.cert(t, "bob", "", false)
	other := newPKI(t).cert(t, "mallory", "operator", false)
	for _, c := range []struct {
		name       string
		c          *Client
		read, post int
	}{
		{"no credential", client(nil, ""), 401, 401},
		{"data member", client(&member, ""), 200, 403},
		{"witness member", client(&witness, ""), 200, 403},
		{"operator", client(&operator, ""), 200, 200},
		{"token", client(nil, testToken), 200, 200},
		{"member certificate and token", client(&member, testToken), 200, 200},
		{"member certificate and a wrong token", client(&member, strings.Repeat("y", 32)), 401, 401},
		{"certificate without role", client(&norole, ""), 401, 401},
		{"foreign CA", client(&other, ""), -1, -1},
	} {
		_, err := c.c.Status(ctx, ep)
		if got := code(err); got != c.read {
			t.Errorf("%s: status: got %d (%v), want %d", c.name, got, err, c.read)
		}
		_, err = c.c.Promote(ctx, ep, "site-b")
		if got := code(err); got != c.post {
			t.Errorf("%s: promote: got %d (%v), want %d", c.name, got, err, c.post)
		}
	}
	// The server's certificate must name the member dialled.
	if _, err := client(nil, testToken).Status(ctx, Endpoint{Name: "site-c", Admin: ep.Admin}); err == nil {
		t.Error("a server certificate for site-a was accepted as site-c")
	}
}

// TestCertPrincipalAsRaft: the admin API reads a certificate's role as the
// Raft and replication planes do: a certificate stating two roles is
// refused whatever their order, not made an operator by its first OU.
func TestCertPrincipalAsRaft(t *testing.T) {
	for _, c := range []struct {
		ou   []string
		role string // "" refused
	}{
		{[]string{"operator"}, RoleOperator},
		{[]string{"data"}, RoleMember},
		{[]string{"witness"}, RoleMember},
		{[]string{"operator", "data"}, ""},
		{[]string{"data", "operator"}, ""},
		{[]string{"admin"}, ""},
		{nil, ""},
	} {
		p, ok, err := certPrincipal(&x509.Certificate{Subject: pkix.Name{CommonName: "x", OrganizationalUnit: c.ou}})
		if c.role == "" {
			if ok || err == nil {
				t.Errorf("OU %v: accepted as %+v", c.ou, p)
			}
			continue
		}
		if !ok || err != nil || p.Role != c.role || p.Name != "x" {
			t.Errorf("OU %v: %+v %v %v, want role %s", c.ou, p, ok, err, c.role)
		}
	}
}

// TestClientChecksMemberName: a client that knows which member it asks
// takes only that member's certificate: another member's, even one whose
// certificate carries the dialled address (certs issue --host), or an
// operator's is refused; the address is checked only when no name is
// known.
func TestClientChecksMemberName(t *testing.T) {
	p := newPKI(t)
	serve := func(cert tls.Certificate) string {
		srv := httptest.NewUnstartedServer((&Guard{}).Wrap(&backend{}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	siteB := serve(p.cert(t, "site-b", "data", true))
	siteA := serve(p.cert(t, "site-a", "data", false))
	c := &Client{TLS: &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS13}, Timeout: 5 * time.Second}
	ctx := context.Background()
	for _, k := range []struct {
		ep Endpoint
		ok bool
	}{
		{Endpoint{Name: "site-a", Admin: siteA}, true},
		{Endpoint{Name: "site-a", Admin: siteB}, false}, // site-b's certificate holds 127.0.0.1
		{Endpoint{Admin: siteB}, true},                  // no name known: the address
		{Endpoint{Admin: siteA}, false},                 // no name known, no address in the certificate
	} {
		_, err := c.Status(ctx, k.ep)
		if (err == nil) != k.ok {
			t.Errorf("%+v: %v, want ok=%v", k.ep, err, k.ok)
		}
	}
}
