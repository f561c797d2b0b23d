package main

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/raftlog"
)

// testPKI makes a CA and certificates for the given name/role pairs.
func testPKI(t *testing.T, holders ...[2]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if err := pkiInit(dir, 30); err != nil {
		t.Fatal(err)
	}
	for _, h := range holders {
		if err := pkiIssue(dir, h[0], h[1], nil, 30); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// holderTLS loads name's certificate from dir as a member config would.
func holderTLS(t *testing.T, dir, name string) *tls.Config {
	t.Helper()
	c, k := certPaths(dir, name)
	cfg, err := loadTLS(&conf.TLS{CA: filepath.Join(dir, caFile), Cert: c, Key: k})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestLoadTLSRefusesOpenKey: a member refuses to start with a private key
// other users can read, and says how to fix it.
func TestLoadTLSRefusesOpenKey(t *testing.T) {
	dir := testPKI(t, [2]string{"site-a", "data"})
	c, k := certPaths(dir, "site-a")
	if err := os.Chmod(k, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := loadTLS(&conf.TLS{CA: filepath.Join(dir, caFile), Cert: c, Key: k})
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a 0644 key was accepted or the error says no fix: %v", err)
	}
	if err := os.Chmod(k, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadTLS(&conf.TLS{CA: filepath.Join(dir, caFile), Cert: c, Key: k}); err != nil {
		t.Fatal(err)
	}
}

// TestCertsIssue: a holder's certificate names it (CN and DNS SAN),
// states its role, chains to the CA, and its key is 0600; nothing is
// overwritten and bad names or roles are refused.
func TestCertsIssue(t *testing.T) {
	dir := testPKI(t, [2]string{"site-a", "data"}, [2]string{"witness", "witness"}, [2]string{"ops", "operator"})
	caPEM, err := os.ReadFile(filepath.Join(dir, caFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	for _, h := range [][2]string{{"site-a", "data"}, {"witness", "witness"}, {"ops", "operator"}, {"ca", ""}} {
		name, role := h[0], h[1]
		c, k := certPaths(dir, name)
		for _, f := range []struct {
			path string
			mode os.FileMode
		}{{c, 0o644}, {k, 0o600}} {
			st, err := os.Stat(f.path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != f.mode {
				t.Errorf("%s: mode %v, want %v", f.path, st.Mode().Perm(), f.mode)
			}
		}
		if role == "" {
			continue
		}
		pair, err := tls.LoadX509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(pair.Certificate[0])
		id, err := raftlog.CertIdentity(cert)
		if err != nil || id.Name != name || !id.Is(name) || id.Role != role || len(cert.DNSNames) == 0 || cert.DNSNames[0] != name {
			t.Errorf("%s: identity %+v, DNS %v (%v)", name, id, cert.DNSNames, err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s does not chain to the CA: %v", name, err)
		}
	}
	for _, bad := range []struct{ name, role, want string }{
		{"site-a", "data", "exists"},
		{"Site_A", "data", "member name"},
		{"site-z", "admin", "want data, witness or operator"},
		{"ca", "data", "CA's file name"},
	} {
		if err := pkiIssue(dir, bad.name, bad.role, nil, 30); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("issue %s %s: %v, want %q", bad.name, bad.role, err, bad.want)
		}
	}
	if err := pkiInit(dir, 30); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("a second init over the CA: %v", err)
	}
}

// TestReplicationPeer: the replication plane takes a data site's
// certificate for the name it carries only; a witness's or an operator's
// certificate fails the handshake, one from another CA too, and a plain
// TCP connection proves nothing.
func TestReplicationPeer(t *testing.T) {
	dir := testPKI(t, [2]string{"site-a", "data"}, [2]string{"site-b", "data"}, [2]string{"witness", "witness"}, [2]string{"ops", "operator"})
	other := testPKI(t, [2]string{"site-a", "data"})
	server := replicationServerTLS(holderTLS(t, dir, "site-b"))
	cases := []struct {
		name   string
		client *tls.Config // nil: plain TCP
		from   string
		want   string // "" accepted; else in the handshake or Authenticate error
	}{
		{"data site as itself", holderTLS(t, dir, "site-a"), "site-a", ""},
		{"data site as another", holderTLS(t, dir, "site-a"), "site-b", "not \"site-b\""},
		{"witness", holderTLS(t, dir, "witness"), "witness", "witness certificate"},
		{"operator", holderTLS(t, dir, "ops"), "site-a", "operator certificate"},
		{"another CA", holderTLS(t, other, "site-a"), "site-a", "certificate"},
		{"plain TCP", nil, "site-a", "not a TLS connection"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if tc.client != nil {
				ln = tls.NewListener(ln, server)
			}
			got := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- err
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				// The hello is read first, which runs the handshake.
				if _, err := c.Read(make([]byte, 1)); err != nil {
					got <- err
					return
				}
				got <- replicationPeer(c, tc.from)
			}()
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tc.client != nil {
				cfg := raftlog.ClientTLS(tc.client, raftlog.RoleData)
				cfg.ServerName = "site-b"
				c = tls.Client(c, cfg)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte{1})
			err = <-got
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestReplicationDialChecksName: a site dialling a peer through an
// address that is not the peer's own (a proxy, here another member)
// accepts the peer only if its certificate names the member meant.
func TestReplicationDialChecksName(t *testing.T) {
	dir := testPKI(t, [2]string{"site-a", "data"}, [2]string{"site-b", "data"}, [2]string{"witness", "witness"})
	for _, tc := range []struct {
		server, meant string
		ok            bool
	}{{"site-b", "site-b", true}, {"witness", "site-b", false}, {"site-a", "site-b", false}} {
		ln, err := tls.Listen("tcp", "127.0.0.1:0", replicationServerTLS(holderTLS(t, dir, tc.server)))
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept()
			if err == nil {
				c.Read(make([]byte, 1))
				c.Close()
			}
		}()
		cfg := raftlog.ClientTLS(holderTLS(t, dir, "site-a"), raftlog.RoleData)
		cfg.ServerName = tc.meant
		d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if (err == nil) != tc.ok {
			t.Errorf("dial %s, answered by %s: %v", tc.meant, tc.server, err)
		}
		if c != nil {
			c.Close()
		}
		ln.Close()
	}
}

// TestPlaintextWarns: a member whose config asks for plain TCP says at
// start that peers' names are taken on trust; one with TLS does not.
func TestPlaintextWarns(t *testing.T) {
	for _, plain := range []bool{true, false} {
		l, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatal(err)
		}
		base := l.Addr().(*net.TCPAddr).Port
		l.Close()
		dir := t.TempDir()
		cfg := conf.DefaultClusterPorts(dir, 1, true, 3260, base)[1] // the witness, on 127.0.0.2
		if plain {
			cfg.Cluster.TLS, cfg.Cluster.Plaintext = nil, true
		} else {
			pki := testPKI(t, [2]string{"witness", "witness"})
			c, k := certPaths(pki, "witness")
			cfg.Cluster.TLS = &conf.TLS{CA: filepath.Join(pki, caFile), Cert: c, Key: k}
		}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		var buf syncBuffer
		m, err := startMember(cfg, hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Warn}))
		if err != nil {
			t.Fatal(err)
		}
		m.close()
		warned := strings.Contains(buf.String(), "plaintext = true") && strings.Contains(buf.String(), "taken on trust")
		if warned != plain {
			t.Errorf("plaintext %v: log %q", plain, buf.String())
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
