package admin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/metrolun/metrolun/raftlog"
)

// Endpoint is a member's admin address and, when known, its name (a
// server certificate must name it).
type Endpoint struct {
	Name  string
	Role  string
	Admin string // host:port
}

// Client calls members' admin endpoints.
type Client struct {
	// Token is sent as a bearer token; "" sends none (a client
	// certificate in TLS, or a member with admin_insecure).
	Token string
	// TokenSource, when set, gives the token for each call instead of
	// Token (a member reads its token file again, so a rotated one is
	// picked up, while several goroutines share the client).
	TokenSource func() string
	// TLS, when not nil, makes the client speak HTTPS: RootCAs verifies
	// the server, Certificates is this client's certificate if any.
	TLS *tls.Config
	// Timeout bounds each call but Verify; 0 means 15s.
	Timeout time.Duration

	mu   sync.Mutex
	pool *clientPool
}

// clientPool holds the HTTP clients of a Client and of the copies it
// makes for one call (Verify, Gather), so that they share connections.
type clientPool struct {
	mu sync.Mutex
	// byName has one HTTP client per server name a TLS connection is
	// verified for ("" when verified by address, and for plain HTTP):
	// a kept connection is reused only for the member it was verified
	// for. A member polls the others' sessions every second, and a TLS
	// handshake per poll cost more than everything else the idle
	// cluster did (docs/bench.md).
	byName map[string]*http.Client
}

// Error is a member's refusal.
type Error struct {
	Code   int
	Msg    string
	Leader string // with 409: the leader, if the member knows it
}

func (e *Error) Error() string {
	if e.Code == http.StatusUnauthorized {
		return fmt.Sprintf("%s (%d): pass --token-file, --dir or --config to give the admin token", e.Msg, e.Code)
	}
	return e.Msg
}

// NotLeader reports whether err says the member called does not lead
// Raft (ask the leader).
func NotLeader(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == http.StatusConflict
}

func (c *Client) clients() *clientPool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pool == nil {
		c.pool = &clientPool{byName: map[string]*http.Client{}}
	}
	return c.pool
}

// httpClient is the HTTP client for requests to the member name (""
// when unknown).
func (c *Client) httpClient(name string) *http.Client {
	if c.TLS == nil {
		name = "" // nothing is verified: one pool for every member
	}
	p := c.clients()
	p.mu.Lock()
	defer p.mu.Unlock()
	if hc := p.byName[name]; hc != nil {
		return hc
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // admin addresses are dialled directly
	if c.TLS != nil {
		// Every connection of this transport is verified for name, so
		// the pool (which knows only addresses) never hands one
		// verified for another member to a request.
		tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.dialTLS(ctx, network, addr, name)
		}
	}
	hc := &http.Client{Transport: tr}
	p.byName[name] = hc
	return hc
}

// CloseIdleConnections closes the connections kept for later requests.
func (c *Client) CloseIdleConnections() {
	p := c.clients()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, hc := range p.byName {
		hc.CloseIdleConnections()
	}
}

// Do sends a request to ep and decodes the answer into out (a *[]byte
// takes it as it is, e.g. /metrics). in, when not nil, is the JSON body;
// a state-changing request always gets one.
func (c *Client) Do(ctx context.Context, ep Endpoint, method, path string, in, out any) error {
	_, _, err := c.do(ctx, ep, method, path, nil, in, out)
	return err
}

// do is Do with extra request headers; it returns the answer's status
// and headers. A 304 (Not Modified) answer is not an error and leaves out
// alone.
func (c *Client) do(ctx context.Context, ep Endpoint, method, path string, hdr http.Header, in, out any) (int, http.Header, error) {
	if ep.Admin == "" {
		return 0, nil, fmt.Errorf("%s has no admin address", ep.Name)
	}
	if c.Timeout >= 0 {
		t := c.Timeout
		if t == 0 {
			t = 15 * time.Second
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	var body io.Reader
	if in == nil && method != http.MethodGet {
		in = struct{}{}
	}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, nil, err
		}
		body = bytes.NewReader(b)
	}
	scheme := "http"
	if c.TLS != nil {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, method, scheme+"://"+ep.Admin+path, body)
	if err != nil {
		return 0, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	tok := c.Token
	if c.TokenSource != nil {
		tok = c.TokenSource()
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.httpClient(ep.Name).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("%s%s: %w", ep.Admin, path, err)
	}
	if resp.StatusCode == http.StatusNotModified {
		return resp.StatusCode, resp.Header, nil
	}
	if resp.StatusCode != http.StatusOK {
		var er ErrorResponse
		if json.Unmarshal(b, &er) != nil || er.Error == "" {
			er.Error = fmt.Sprintf("%s %s%s: %s", method, ep.Admin, path, resp.Status)
		}
		if er.Report != nil {
			if r, ok := out.(*VerifyReport); ok {
				*r = *er.Report
			}
		}
		return resp.StatusCode, resp.Header, &Error{Code: resp.StatusCode, Msg: er.Error, Leader: er.Leader}
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = b
		return resp.StatusCode, resp.Header, nil
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return 0, nil, fmt.Errorf("%s%s: %w", ep.Admin, path, err)
		}
	}
	return resp.StatusCode, resp.Header, nil
}

// Status asks ep for its status.
func (c *Client) Status(ctx context.Context, ep Endpoint) (Status, error) {
	var st Status
	err := c.Do(ctx, ep, http.MethodGet, PathStatus, nil, &st)
	return st, err
}

// Sessions asks ep for its own iSCSI sessions.
func (c *Client) Sessions(ctx context.Context, ep Endpoint) (SessionList, error) {
	var r SessionList
	err := c.Do(ctx, ep, http.MethodGet, PathSessions, nil, &r)
	return r, err
}

// SessionsIfChanged is Sessions for a caller that holds the list whose
// ETag is etag ("" for none): unchanged says ep's list is still that one,
// and nothing else was sent. tag is the ETag of the list now.
func (c *Client) SessionsIfChanged(ctx context.Context, ep Endpoint, etag string) (l SessionList, tag string, unchanged bool, err error) {
	var hdr http.Header
	if etag != "" {
		hdr = http.Header{"If-None-Match": {etag}}
	}
	code, h, err := c.do(ctx, ep, http.MethodGet, PathSessions, hdr, nil, &l)
	if err != nil {
		return SessionList{}, "", false, err
	}
	if code == http.StatusNotModified {
		return SessionList{}, etag, true, nil
	}
	return l, h.Get("ETag"), false, nil
}

// Hosts asks ep for every initiator in the cluster.
func (c *Client) Hosts(ctx context.Context, ep Endpoint) (HostsResponse, error) {
	var r HostsResponse
	err := c.Do(ctx, ep, http.MethodGet, PathHosts, nil, &r)
	return r, err
}

// Promote asks the leader ep to move the writer to site.
func (c *Client) Promote(ctx context.Context, ep Endpoint, site string) (PromoteResponse, error) {
	var r PromoteResponse
	err := c.Do(ctx, ep, http.MethodPost, PathPromote, PromoteRequest{Site: site}, &r)
	return r, err
}

// Fence asks the leader ep to fence site for d.
func (c *Client) Fence(ctx context.Context, ep Endpoint, site string, d time.Duration) (FenceResponse, error) {
	var r FenceResponse
	err := c.Do(ctx, ep, http.MethodPost, PathFence, FenceRequest{Site: site, For: d.String()}, &r)
	return r, err
}

// Unfence asks the leader ep to lift site's fence.
func (c *Client) Unfence(ctx context.Context, ep Endpoint, site string) (UnfenceResponse, error) {
	var r UnfenceResponse
	err := c.Do(ctx, ep, http.MethodPost, PathUnfence, UnfenceRequest{Site: site}, &r)
	return r, err
}

// AddMember asks the leader ep to add a member.
func (c *Client) AddMember(ctx context.Context, ep Endpoint, req AddMemberRequest) (AddMemberResponse, error) {
	var r AddMemberResponse
	err := c.Do(ctx, ep, http.MethodPost, PathMembers, req, &r)
	return r, err
}

// RemoveMember asks the leader ep to remove member name.
func (c *Client) RemoveMember(ctx context.Context, ep Endpoint, name string) (RemoveMemberResponse, error) {
	var r RemoveMemberResponse
	err := c.Do(ctx, ep, http.MethodDelete, PathMembers+"/"+url.PathEscape(name), nil, &r)
	return r, err
}

// Verify runs an online verify at the writer ep. It reads the whole LUN,
// so only ctx bounds it. A failed verify returns the report so far too.
func (c *Client) Verify(ctx context.Context, ep Endpoint) (VerifyReport, error) {
	var r VerifyReport
	cc := &Client{Token: c.Token, TokenSource: c.TokenSource, TLS: c.TLS, Timeout: -1, pool: c.clients()}
	err := cc.Do(ctx, ep, http.MethodPost, PathVerify, nil, &r)
	return r, err
}

// Gather asks every endpoint for its status at once; each gets at most
// 2s.
func (c *Client) Gather(ctx context.Context, eps []Endpoint) []MemberReport {
	out := make([]MemberReport, len(eps))
	done := make(chan struct{}, len(eps))
	pool := c.clients()
	for i, ep := range eps {
		out[i] = MemberReport{Name: ep.Name, Role: ep.Role, Admin: ep.Admin}
		go func() {
			defer func() { done <- struct{}{} }()
			if ep.Admin == "" {
				out[i].Error = "no admin address in the config"
				return
			}
			cc := Client{Token: c.Token, TokenSource: c.TokenSource, TLS: c.TLS, Timeout: 2 * time.Second, pool: pool}
			st, err := cc.Status(ctx, ep)
			if err != nil {
				out[i].Error = err.Error()
				return
			}
			out[i].Reachable, out[i].Status = true, &st
		}()
	}
	for range eps {
		<-done
	}
	return out
}

// GatherCluster asks the endpoints given, then the members the freshest
// Raft state among their answers has and eps does not (added at run
// time). It reports the state's members, in its order, so a member
// removed since eps was written is left out, and then the members that
// have no state at all (started with join = true, waiting to be added);
// without a state it reports eps's members.
func (c *Client) GatherCluster(ctx context.Context, eps []Endpoint) []MemberReport {
	reps := c.Gather(ctx, eps)
	view := Freshest(reps)
	if view == nil || len(view.MemberInfo) == 0 {
		return reps
	}
	byName := map[string]MemberReport{}
	for _, r := range reps {
		byName[r.Name] = r
	}
	var missing []Endpoint
	for _, mi := range view.MemberInfo {
		if _, ok := byName[mi.Name]; !ok {
			missing = append(missing, Endpoint{Name: mi.Name, Role: mi.Role, Admin: mi.Admin})
		}
	}
	for _, r := range c.Gather(ctx, missing) {
		byName[r.Name] = r
	}
	out := make([]MemberReport, 0, len(view.MemberInfo))
	in := map[string]bool{}
	for _, mi := range view.MemberInfo {
		out = append(out, byName[mi.Name])
		in[mi.Name] = true
	}
	for _, r := range reps {
		if !in[r.Name] && r.Status != nil && len(r.Status.Raft.Members) == 0 && r.Status.Raft.CommitIndex == 0 {
			out = append(out, r)
		}
	}
	return out
}

// Leader finds the Raft leader's endpoint among the cluster's members.
func (c *Client) Leader(ctx context.Context, eps []Endpoint) (Endpoint, error) {
	reps := c.GatherCluster(ctx, eps)
	for _, r := range reps {
		if r.Status != nil && r.Status.Raft.State == "leader" {
			return Endpoint{Name: r.Name, Role: r.Role, Admin: r.Admin}, nil
		}
	}
	for _, r := range reps {
		if r.Status == nil || r.Status.Raft.Leader == "" {
			continue
		}
		if i := slices.IndexFunc(reps, func(o MemberReport) bool { return o.Name == r.Status.Raft.Leader }); i >= 0 && reps[i].Admin != "" {
			return Endpoint{Name: reps[i].Name, Role: reps[i].Role, Admin: reps[i].Admin}, nil
		}
	}
	var why []error
	for _, r := range reps {
		if r.Error != "" {
			why = append(why, fmt.Errorf("%s: %s", r.Name, r.Error))
		}
	}
	return Endpoint{}, errors.Join(append([]error{errors.New("no member knows a Raft leader")}, why...)...)
}

// AtLeader calls fn with the Raft leader's endpoint, finding it again
// when fn's member says it no longer leads, up to attempts times.
func (c *Client) AtLeader(ctx context.Context, eps []Endpoint, attempts int, fn func(Endpoint) error) error {
	var last error
	for i := 0; i < attempts; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		ep, err := c.Leader(ctx, eps)
		if err == nil {
			if err = fn(ep); err == nil || !NotLeader(err) {
				return err
			}
		}
		last = err
		if i+1 < attempts {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	return fmt.Errorf("the Raft leader kept changing: %w", last)
}

// dialTLS verifies a member's certificate against the CA (TLS.RootCAs)
// and against the member's name (its CN and role, as the Raft transport
// checks members) or, only when no name is known, the address dialled.
func (c *Client) dialTLS(ctx context.Context, network, addr, name string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	cfg := c.TLS.Clone()
	// The standard check matches ServerName against DNS and IP SANs; a
	// member's certificate names the member, so the chain is verified
	// here and then the name or the address.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no server certificate")
		}
		opts := x509.VerifyOptions{Roots: c.TLS.RootCAs, Intermediates: x509.NewCertPool(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		for _, ic := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(ic)
		}
		leaf := cs.PeerCertificates[0]
		if _, err := leaf.Verify(opts); err != nil {
			return err
		}
		if name != "" {
			// The member meant is known: its certificate, read as the
			// Raft transport reads it (the CN, a member's role), and
			// nothing else. An address in another member's certificate
			// (certs issue --host) must not stand in for it.
			id, err := raftlog.CertIdentity(leaf)
			if err != nil {
				return fmt.Errorf("admin endpoint %s: %v", addr, err)
			}
			if !id.Is(name) {
				return fmt.Errorf("admin endpoint %s: certificate %q is not member %q's", addr, id.Name, name)
			}
			return id.CheckRole(raftlog.RoleData, raftlog.RoleWitness)
		}
		if err := leaf.VerifyHostname(host); err != nil {
			return fmt.Errorf("admin endpoint %s: certificate %q does not name the address: %v", addr, leaf.Subject.CommonName, err)
		}
		return nil
	}
	d := tls.Dialer{Config: cfg}
	return d.DialContext(ctx, network, addr)
}
