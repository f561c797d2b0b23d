package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
)

// writePKI writes a CA and a certificate for member name (CN name, OU
// role, no SAN: members are checked by name) under dir, as a cluster tls
// block names them.
func writePKI(t *testing.T, dir, name, role string) *conf.TLS {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "metrolun test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name, OrganizationalUnit: []string{role}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	files := &conf.TLS{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+"-key.pem")}
	for path, block := range map[string]*pem.Block{
		files.CA:   {Type: "CERTIFICATE", Bytes: caDER},
		files.Cert: {Type: "CERTIFICATE", Bytes: der},
		files.Key:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// startFakeAdmin serves a member's admin guard, as cl configures it (its
// tls block and admin_token_file), in front of a status and a promote
// that answer at once; it fills in cl's listen address and the member
// name, and returns the endpoint and the scheme served.
func startFakeAdmin(t *testing.T, cl *conf.Cluster, name string) (admin.Endpoint, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl.AdminListen = ln.Addr().String()
	cl.Members = []conf.Member{{Name: name, Role: conf.RoleData, Admin: ln.Addr().String()}}
	tcfg, err := loadTLS(cl.TLS)
	if err != nil {
		t.Fatal(err)
	}
	g, err := adminGuard(cl, tcfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, admin.Status{Member: name})
	})
	mux.HandleFunc("POST /v1/promote", func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, admin.PromoteResponse{Promoted: name})
	})
	srv := &http.Server{Handler: g.Wrap(mux), ReadHeaderTimeout: 5 * time.Second}
	l, scheme := adminListener(ln, tcfg)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return admin.Endpoint{Name: name, Admin: ln.Addr().String()}, scheme
}

// TestAdminOverTLS: with a cluster tls block the admin endpoint speaks
// HTTPS with the member's certificate; the commands' client (from the
// same config) verifies it against the CA by member name, reads status
// with the member's certificate, and needs the token to change anything.
// Plain HTTP is refused.
func TestAdminOverTLS(t *testing.T) {
	dir := t.TempDir()
	files := writePKI(t, dir, "site-a", "data")
	tokFile := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tokFile, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cl := &conf.Cluster{TLS: files, AdminTokenFile: tokFile}
	ep, scheme := startFakeAdmin(t, cl, "site-a")
	if scheme != "https" {
		t.Fatalf("scheme %s with a tls block", scheme)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The member's own config without the token: its certificate reads.
	noToken := *cl
	noToken.AdminTokenFile = ""
	reader, err := admin.NewClient(admin.Credential{Cluster: &noToken})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := reader.Status(ctx, ep); err != nil || st.Member != "site-a" {
		t.Fatalf("status over TLS with the member's certificate: %+v, %v", st, err)
	}
	var ae *admin.Error
	if _, err := reader.Promote(ctx, ep, "site-a"); !errors.As(err, &ae) || ae.Code != http.StatusForbidden {
		t.Fatalf("promote with a member's certificate: %v, want 403", err)
	}
	op, err := admin.NewClient(admin.Credential{Cluster: cl})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := op.Promote(ctx, ep, "site-a"); err != nil {
		t.Fatalf("promote with the token over TLS: %v", err)
	}
	// A client that expects another member there refuses the certificate.
	if _, err := op.Status(ctx, admin.Endpoint{Name: "site-b", Admin: ep.Admin}); err == nil {
		t.Fatal("site-a's certificate was taken for site-b's")
	}
	plain := &admin.Client{Token: "0123456789abcdef0123456789abcdef", Timeout: 5 * time.Second}
	if _, err := plain.Status(ctx, ep); err == nil {
		t.Fatal("plain HTTP was answered by a TLS admin endpoint")
	}
}
