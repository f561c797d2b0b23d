package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
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
	g, err := adminGuard(&conf.Cluster{AdminTokenFile: memberFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/promote", func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, admin.PromoteResponse{Promoted: "site-a"})
	})
	srv := httptest.NewServer(g.Wrap(mux))
	defer srv.Close()
	ep := admin.Endpoint{Name: "site-a", Admin: strings.TrimPrefix(srv.URL, "http://")}
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
