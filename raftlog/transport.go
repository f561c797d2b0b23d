package raftlog

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// streamLayer carries Raft RPCs between members over TCP, or mutual TLS.
// Raft addresses are member names (ServerAddress = Name); Dial resolves
// them to the host:port this member uses to reach that peer, which may be
// a proxy, so the Raft configuration never holds a network address.
type streamLayer struct {
	ln    net.Listener // the TCP listener; TLS is layered per connection
	self  string
	addrs map[string]string // member name -> dial address, from the config
	names []string          // every member name in the config
	// extra resolves members the config does not list (added at run
	// time, members.go). It is set once, after the transport's accept
	// loop has started (raftlog.Open), so handshakes read it through
	// the atomic; nil in tests of the layer alone.
	extra atomic.Pointer[memberLookup]
	// server and client are nil without TLS.
	server, client *tls.Config
	timeout        time.Duration // bound on a TLS handshake of an accepted connection
	log            hclog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // open in either direction, closed on Close
	closed bool
	warned map[string]time.Time // refusals logged lately, by peer
}

// refused logs a peer this member refused, once a minute per peer: Raft
// retries every few heartbeats and would flood the log.
func (s *streamLayer) refused(peer string, args ...any) {
	s.mu.Lock()
	last, ok := s.warned[peer]
	now := time.Now()
	if ok && now.Sub(last) < time.Minute {
		s.mu.Unlock()
		return
	}
	s.warned[peer] = now
	s.mu.Unlock()
	s.log.Warn("refused peer: TLS handshake failed", args...)
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(cfg *Config, timeout time.Duration, log hclog.Logger) (*streamLayer, error) {
	s := &streamLayer{
		self:    cfg.Name,
		addrs:   map[string]string{},
		timeout: timeout,
		log:     log,
		conns:   map[net.Conn]struct{}{},
		warned:  map[string]time.Time{},
	}
	for _, p := range cfg.Peers {
		s.names = append(s.names, p.Name)
		if p.Name != cfg.Name {
			s.addrs[p.Name] = p.Addr
		}
	}
	if cfg.TLS != nil {
		s.server, s.client = peerTLS(cfg.TLS, s.members)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("raftlog: listen %s: %w", cfg.Listen, err)
	}
	if cfg.Guard != nil {
		ln = cfg.Guard(ln)
	}
	s.ln = ln
	return s, nil
}

// members lists every member this one knows: its config's and those
// added at run time.
func (s *streamLayer) members() []string {
	x := s.extra.Load()
	if x == nil {
		return s.names
	}
	return append(slices.Clone(s.names), x.names()...)
}

// memberLookup is how the stream layer learns of members added at run
// time: their address and every such name.
type memberLookup struct {
	addr  func(name string) (string, bool)
	names func() []string
}

// setMembers hands the layer the cluster state's member lookup.
func (s *streamLayer) setMembers(addr func(string) (string, bool), names func() []string) {
	s.extra.Store(&memberLookup{addr: addr, names: names})
}

// resolve returns the address to dial for member name: the config's first
// (it may be a proxy this member must use), then the cluster's.
func (s *streamLayer) resolve(name string) (string, bool) {
	if addr, ok := s.addrs[name]; ok {
		return addr, true
	}
	if x := s.extra.Load(); x != nil {
		if addr, ok := x.addr(name); ok && addr != "" {
			return addr, true
		}
	}
	return "", false
}

// peerTLS derives the listener's and the dialer's configurations from the
// member's own (peercert.go). Both sides authenticate: the listener
// requires a client certificate from the CA that names a current member
// and is no operator's, so nothing from anyone else is ever decoded as a
// Raft RPC; the dialer requires the server's to name the very member it
// dialled, whatever address (a proxy) it dialled.
func peerTLS(base *tls.Config, members func() []string) (server, client *tls.Config) {
	server = ServerTLS(base, func(id Identity) error {
		if err := id.CheckRole(RoleData, RoleWitness); err != nil {
			return err
		}
		if slices.ContainsFunc(members(), id.Is) {
			return nil
		}
		return fmt.Errorf("client certificate %q names no member", id.Name)
	})
	return server, ClientTLS(base, RoleData, RoleWitness)
}

func (s *streamLayer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *streamLayer) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Accept returns the next inbound connection. A TLS handshake happens on
// the connection's first read, in the transport's goroutine for that
// connection, so a slow or hostile client cannot stall the accept loop.
func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	c = newUnprovenConn(c, firstAnswerTimeout)
	if s.server != nil {
		c = &serverConn{Conn: tls.Server(c, s.server), s: s}
	}
	c = &trackedConn{Conn: c, s: s}
	if !s.track(c) {
		c.Close()
		return nil, net.ErrClosed
	}
	return c, nil
}

func (s *streamLayer) Close() error {
	s.mu.Lock()
	s.closed = true
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	err := s.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	return err
}

func (s *streamLayer) Addr() net.Addr { return s.ln.Addr() }

// Dial connects to the member named address.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	name := string(address)
	addr, ok := s.resolve(name)
	if !ok {
		return nil, fmt.Errorf("raftlog: no member %q to dial", name)
	}
	return s.dial(name, addr, timeout)
}

// dial connects to member name at addr; with TLS, the server must prove
// it is name.
func (s *streamLayer) dial(name, addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("raftlog: dial %s at %s: %w", name, addr, err)
	}
	if s.client != nil {
		cfg := s.client.Clone()
		cfg.ServerName = name
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			s.refused("dial "+name, "peer", name, "addr", addr, "error", err)
			return nil, fmt.Errorf("raftlog: TLS to %s at %s: %w", name, addr, err)
		}
		c = tc
	}
	c = &trackedConn{Conn: c, s: s}
	if !s.track(c) {
		c.Close()
		return nil, net.ErrClosed
	}
	return c, nil
}

// trackedConn leaves the stream layer's set when closed.
type trackedConn struct {
	net.Conn
	s    *streamLayer
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.s.untrack(c) })
	return c.Conn.Close()
}

// serverConn runs the server side of the TLS handshake before the first
// read, bounded in time, and logs a peer it refuses.
type serverConn struct {
	*tls.Conn
	s    *streamLayer
	once sync.Once
	err  error
}

func (c *serverConn) handshake() {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.timeout)
	defer cancel()
	if c.err = c.HandshakeContext(ctx); c.err != nil {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		c.s.refused("accept "+host, "remote", c.RemoteAddr().String(), "error", c.err)
	}
}

func (c *serverConn) Read(b []byte) (int, error) {
	c.once.Do(c.handshake)
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Read(b)
}

func (c *serverConn) Write(b []byte) (int, error) {
	c.once.Do(c.handshake)
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Write(b)
}
