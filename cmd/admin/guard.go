package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/metrolun/metrolun/raftlog"
)

// Roles a credential can carry. A member (its certificate's OU is data or
// witness) may read; an operator may change the cluster (DESIGN.md I7).
const (
	RoleMember   = "member"
	RoleOperator = "operator"
)

// Principal is who made a request.
type Principal struct {
	Name string // the certificate's CN, or "token"
	Role string // RoleMember or RoleOperator
}

// An Authorizer tells who made a request from its credential. ok is false
// when the request carries no credential this Authorizer knows; err when
// it carries one that is wrong (a bad token).
type Authorizer interface {
	Authorize(r *http.Request) (p Principal, ok bool, err error)
}

// Token authorises a bearer token as an operator. The comparison is of
// digests in constant time, so neither the token's bytes nor its length
// show in the timing.
type Token struct{ sum [32]byte }

// NewToken returns a Token for secret, which must not be empty.
func NewToken(secret string) (*Token, error) {
	if secret == "" {
		return nil, errors.New("empty admin token")
	}
	return &Token{sum: sha256.Sum256([]byte(secret))}, nil
}

func (t *Token) Authorize(r *http.Request) (Principal, bool, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return Principal{}, false, nil
	}
	scheme, tok, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return Principal{}, false, errors.New("the Authorization header is not a bearer token")
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	if subtle.ConstantTimeCompare(got[:], t.sum[:]) != 1 {
		return Principal{}, false, errors.New("wrong admin token")
	}
	return Principal{Name: "token", Role: RoleOperator}, true, nil
}

// ClientCert authorises a TLS client certificate that the server verified
// against the cluster CA (tls.VerifyClientCertIfGiven), by the role in its
// Subject OU: operator, or data/witness for a member.
type ClientCert struct{}

func (ClientCert) Authorize(r *http.Request) (Principal, bool, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return Principal{}, false, nil
	}
	return certPrincipal(r.TLS.VerifiedChains[0][0])
}

func certPrincipal(c *x509.Certificate) (Principal, bool, error) {
	// The same reading of a certificate as the Raft and replication
	// planes (raftlog.CertIdentity): one OU, a known role, and the CN
	// names its holder.
	id, err := raftlog.CertIdentity(c)
	if err != nil {
		return Principal{}, false, fmt.Errorf("client certificate: %w", err)
	}
	switch id.Role {
	case raftlog.RoleOperator:
		return Principal{Name: id.Name, Role: RoleOperator}, true, nil
	case raftlog.RoleData, raftlog.RoleWitness:
		return Principal{Name: id.Name, Role: RoleMember}, true, nil
	}
	return Principal{}, false, fmt.Errorf("client certificate %q has no role (OU operator, data or witness)", id.Name)
}

// Guard is the admin API's front door: it refuses browser-style requests
// and foreign Host names, then authenticates and authorises every request
// before next sees it.
type Guard struct {
	// Auth are every credential the member accepts (see authorize).
	// None: every request is allowed (admin_insecure), after the browser
	// checks.
	Auth []Authorizer
	// Hosts are the names besides IP literals and localhost that a
	// request's Host may carry: the host parts of this member's admin
	// addresses (a DNS-rebinding page reaches a loopback or internal
	// server under its own name, which is not one of these).
	Hosts []string
	// PublicMetrics lets GET /metrics and /healthz through without a
	// credential (admin_public_metrics), for Prometheus.
	PublicMetrics bool
}

// Wrap returns next behind the guard.
func (g *Guard) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := g.check(r); err != nil {
			var he *httpError
			errors.As(err, &he)
			if he.code == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="metrolun"`)
			}
			WriteJSON(w, he.code, ErrorResponse{Error: he.msg})
			return
		}
		next.ServeHTTP(w, r)
	})
}

type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func refuse(code int, format string, a ...any) error {
	return &httpError{code, fmt.Sprintf(format, a...)}
}

// check returns an *httpError for a request the member must not serve.
func (g *Guard) check(r *http.Request) error {
	// A browser names the page that makes a request; nothing that
	// legitimately calls this API runs in a page, so any Origin, or a
	// fetch a browser marks as cross-site, is a page trying (CSRF).
	if o := r.Header.Get("Origin"); o != "" {
		return refuse(http.StatusForbidden, "requests from a web page (Origin %q) are refused", o)
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "none" && s != "same-origin" {
		return refuse(http.StatusForbidden, "cross-site browser requests (Sec-Fetch-Site %q) are refused", s)
	}
	if !g.hostAllowed(r.Host) {
		return refuse(http.StatusForbidden, "Host %q is not this member's admin address, an IP address or localhost", r.Host)
	}
	public := r.Method == http.MethodGet && (r.URL.Path == PathMetrics || r.URL.Path == PathHealth)
	if public && g.PublicMetrics {
		return nil
	}
	p, err := g.authorize(r)
	if err != nil {
		return err
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return nil
	}
	if p.Role != RoleOperator {
		return refuse(http.StatusForbidden, "%s (%s) may read the cluster's state but not change it; that needs an operator credential", p.Name, p.Role)
	}
	// A page can send a "simple" cross-origin POST (text/plain, form
	// data) without asking first; it cannot send application/json.
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return refuse(http.StatusUnsupportedMediaType, "%s %s needs Content-Type: application/json and a JSON body (even {}), got %q",
			r.Method, r.URL.Path, r.Header.Get("Content-Type"))
	}
	return nil
}

// authorize asks every Authorizer: a wrong credential refuses the
// request even when another is right, and of several right ones the
// strongest role counts (a member's certificate and the operator's token
// together make an operator).
func (g *Guard) authorize(r *http.Request) (Principal, error) {
	if len(g.Auth) == 0 {
		return Principal{Name: "anyone", Role: RoleOperator}, nil
	}
	var best *Principal
	for _, a := range g.Auth {
		p, ok, err := a.Authorize(r)
		if err != nil {
			return Principal{}, refuse(http.StatusUnauthorized, "%v", err)
		}
		if ok && (best == nil || p.Role == RoleOperator) {
			best = &p
		}
	}
	if best == nil {
		return Principal{}, refuse(http.StatusUnauthorized, "no credential: send Authorization: Bearer TOKEN (the cluster's admin_token_file) or an operator's client certificate")
	}
	return *best, nil
}

func (g *Guard) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" {
		return false
	}
	if net.ParseIP(host) != nil || strings.EqualFold(host, "localhost") {
		return true
	}
	return slices.ContainsFunc(g.Hosts, func(h string) bool { return strings.EqualFold(h, host) })
}

// VerifierPrefix starts a token verifier: what a member's
// admin_token_file may hold instead of the token itself (Verifier).
const VerifierPrefix = "sha256:"

// Verifier returns the line a member's admin_token_file may hold in place
// of secret: its SHA-256. A member holding only the verifier checks the
// operator's token but cannot present it, so a copy of a member's files
// (a stolen disk, a backup) gives no operator rights.
func Verifier(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return VerifierPrefix + hex.EncodeToString(sum[:])
}

// readSecretFile reads path, which only its owner may read, trimmed.
func readSecretFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("admin token %s has mode %04o: others may read it; chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("admin token %s is empty", path)
	}
	return tok, nil
}

// ReadTokenFile reads an operator's admin token from path, which only its
// owner may read: a token others can read is no credential. A file that
// holds a verifier (a member's) is refused: it proves nothing.
func ReadTokenFile(path string) (string, error) {
	tok, err := readSecretFile(path)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(tok, VerifierPrefix) {
		return "", fmt.Errorf("%s holds a token verifier (%s...), which a member checks tokens with; an operator's command needs the token itself (--token-file)", path, VerifierPrefix)
	}
	return tok, nil
}

// LoadToken reads a member's admin_token_file: the token itself, or its
// Verifier. secret is the token when the file holds it, "" for a
// verifier.
func LoadToken(path string) (t *Token, secret string, err error) {
	s, err := readSecretFile(path)
	if err != nil {
		return nil, "", err
	}
	if hexSum, ok := strings.CutPrefix(s, VerifierPrefix); ok {
		b, err := hex.DecodeString(hexSum)
		if err != nil || len(b) != sha256.Size {
			return nil, "", fmt.Errorf("admin token %s: a verifier is %s and 64 hex digits", path, VerifierPrefix)
		}
		t = &Token{}
		copy(t.sum[:], b)
		return t, "", nil
	}
	t, err = NewToken(s)
	return t, s, err
}

// WriteJSON answers v with code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
