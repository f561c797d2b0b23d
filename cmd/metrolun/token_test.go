package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
)

// TestAdminTokenVerifier: a member whose admin_token_file holds only the
// token's verifier still takes the operator's token and refuses a wrong
// one, while the verifier itself is no credential: sent as a bearer token
// it is refused, and the commands will not read it as a token file.
func TestAdminTokenVerifier(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "operator.token")
	var out bytes.Buffer
	if err := newToken(tokFile, &out); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(tokFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v, want mode 0600", st, err)
	}
	if err := newToken(tokFile, &out); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("a second token new over the first: %v", err)
	}
	tok, err := admin.ReadTokenFile(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	verifier := admin.Verifier(tok)
	if !strings.Contains(out.String(), verifier) {
		t.Fatalf("token new did not print the verifier %s:\n%s", verifier, out.String())
	}
	memberFile := filepath.Join(dir, "member.token")
	if err := os.WriteFile(memberFile, []byte(verifier+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ReadTokenFile(memberFile); err == nil || !strings.Contains(err.Error(), "verifier") {
		t.Fatalf("a verifier file was read as an operator's token: %v", err)
	}
	ep, _ := startFakeAdmin(t, &conf.Cluster{AdminTokenFile: memberFile}, "site-a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []struct {
		name  string
		token string
		code  int
	}{
		{"the operator's token", tok, 200},
		{"the verifier as a token", verifier, 401},
		{"a wrong token", strings.Repeat("a", 64), 401},
	} {
		_, err := (&admin.Client{Token: c.token, Timeout: 5 * time.Second}).Promote(ctx, ep, "site-a")
		code := 200
		var ae *admin.Error
		if errors.As(err, &ae) {
			code = ae.Code
		} else if err != nil {
			code = -1
		}
		if code != c.code {
			t.Errorf("%s: %d (%v), want %d", c.name, code, err, c.code)
		}
	}
	// A malformed verifier is an error at start, not a member that takes
	// nothing (or anything).
	bad := filepath.Join(dir, "bad.token")
	os.WriteFile(bad, []byte(admin.VerifierPrefix+"abcd\n"), 0o600)
	if _, err := adminGuard(&conf.Cluster{AdminTokenFile: bad}, nil); err == nil {
		t.Fatal("a short verifier was accepted")
	}
}

// TestCommandsWithOperatorCert: the commands' client presents an
// operator's certificate given with --cert/--key/--ca and may change the
// cluster with it; a member's config whose admin_token_file holds only a
// verifier still reads status with the member's certificate (and may not
// change anything).
func TestCommandsWithOperatorCert(t *testing.T) {
	pki := testPKI(t, [2]string{"site-a", "data"}, [2]string{"alice", "operator"})
	dir := t.TempDir()
	memberFile := filepath.Join(dir, "member.token")
	os.WriteFile(memberFile, []byte(admin.Verifier("0123456789abcdef0123456789abcdef")+"\n"), 0o600)
	cert, key := certPaths(pki, "site-a")
	cl := &conf.Cluster{TLS: &conf.TLS{CA: filepath.Join(pki, caFile), Cert: cert, Key: key}, AdminTokenFile: memberFile}
	ep, _ := startFakeAdmin(t, cl, "site-a")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	opCert, opKey := certPaths(pki, "alice")
	op, err := admin.NewClient(admin.Credential{Cert: opCert, Key: opKey, CA: filepath.Join(pki, caFile)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := op.Promote(ctx, ep, "site-a"); err != nil {
		t.Fatalf("promote with an operator's certificate: %v", err)
	}
	if _, err := admin.NewClient(admin.Credential{Cert: opCert}); err == nil {
		t.Fatal("--cert without --key was accepted")
	}
	member, err := admin.NewClient(admin.Credential{Cluster: cl, Config: "site-a.hcl"})
	if err != nil {
		t.Fatalf("a member config holding a verifier: %v", err)
	}
	if st, err := member.Status(ctx, ep); err != nil || st.Member != "site-a" {
		t.Fatalf("status with the member's certificate: %+v %v", st, err)
	}
	var ae *admin.Error
	if _, err := member.Promote(ctx, ep, "site-a"); !errors.As(err, &ae) || ae.Code != http.StatusForbidden {
		t.Fatalf("promote with a member's certificate: %v, want 403", err)
	}
}
