package raftlog

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var serial int64

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue makes a member certificate for both ends of a connection. With
// san false the name is only in the CN.
func (ca *testCA) issue(t *testing.T, name string, san bool) tls.Certificate {
	t.Helper()
	return ca.issueRole(t, name, san, "")
}

// issueRole is issue with a stated role (the Subject OU, peercert.go).
func (ca *testCA) issueRole(t *testing.T, name string, san bool, role string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if san {
		tmpl.DNSNames = []string{name}
	}
	if role != "" {
		tmpl.Subject.OrganizationalUnit = []string{role}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// memberTLS is a member's config: its certificate, trusting ca.
func memberTLS(ca *testCA, cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.pool, ClientCAs: ca.pool}
}

// TestMutualTLS: with TLS the members elect a writer; a member whose
// certificate comes from another CA, or names someone else, cannot join,
// and the others go on and log the refusal.
func TestMutualTLS(t *testing.T) {
	cases := []struct {
		name string
		// witness makes w's certificate; nil: a good one.
		witness func(t *testing.T, ca *testCA) tls.Certificate
	}{
		{"good", nil},
		{"foreign CA", func(t *testing.T, _ *testCA) tls.Certificate {
			return newCA(t, "other CA").issue(t, "w", true)
		}},
		{"wrong name", func(t *testing.T, ca *testCA) tls.Certificate {
			return ca.issue(t, "mallory", true)
		}},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			ca := newCA(t, "metrolun test CA")
			tc := newMembers(t)
			for i, m := range tc.members {
				// a's name is in its CN only; b and w have a DNS SAN too.
				cert := ca.issue(t, m.name, i != 0)
				if m.name == "w" && tt.witness != nil {
					cert = tt.witness(t, ca)
				}
				m.tls = memberTLS(ca, cert)
			}
			tc.startAll()
			mon := tc.monitor()
			x, epoch := tc.writer(0)
			if x.role != RoleData || epoch < 1 {
				t.Fatalf("writer %s epoch %d", x.name, epoch)
			}
			w := tc.get("w")
			if tt.witness == nil {
				tc.waitFor("the witness follows", func() bool {
					return w.c.Leader() == x.name && w.c.State().Epoch == epoch
				})
				mon.check(t)
				return
			}
			// The others refuse w and say so; w never hears of the
			// cluster.
			tc.waitFor("a logged refusal", func() bool {
				return strings.Contains(tc.get("a").logs.String(), "refused peer") ||
					strings.Contains(tc.get("b").logs.String(), "refused peer")
			})
			for _, m := range []*member{tc.get("a"), tc.get("b")} {
				for _, line := range strings.Split(m.logs.String(), "\n") {
					if strings.Contains(line, "refused peer") {
						t.Logf("%s: %s", m.name, line)
						break
					}
				}
			}
			y := tc.other(x)
			if err := x.c.DropInSync(y.name, epoch); err != nil {
				t.Fatalf("the cluster without w cannot commit: %v", err)
			}
			if s := w.c.State(); len(s.Members) != 0 || s.Epoch != 0 {
				t.Fatalf("refused witness has state %+v", s)
			}
			if l := w.c.Leader(); l != "" {
				t.Fatalf("refused witness knows leader %s", l)
			}
			if s := x.c.State(); len(s.Members) != 3 {
				t.Fatalf("members %v", s.Members)
			}
			mon.check(t)
		})
	}
}

// TestCertNames: a certificate names a member by its CN only; its other
// DNS SANs are host names (`certs issue --host`), and one that happens to
// be another member's name must not prove that member. A hand-made
// certificate with no CN names the members in its DNS SANs.
func TestCertNames(t *testing.T) {
	for _, c := range []struct {
		cert  *x509.Certificate
		names map[string]bool
	}{
		{&x509.Certificate{Subject: pkix.Name{CommonName: "a"}, DNSNames: []string{"a", "b", "c"}},
			map[string]bool{"a": true, "b": false, "c": false, "d": false, "": false}},
		{&x509.Certificate{DNSNames: []string{"b", "c"}},
			map[string]bool{"b": true, "c": true, "a": false, "": false}},
	} {
		id, err := CertIdentity(c.cert)
		if err != nil {
			t.Fatal(err)
		}
		for name, want := range c.names {
			if got := id.Is(name); got != want {
				t.Errorf("CN %q SANs %v: Is(%q) = %v", c.cert.Subject.CommonName, c.cert.DNSNames, name, got)
			}
		}
	}
}
