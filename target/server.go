package target

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Config is what a Server needs besides its targets.
type Config struct {
	Limits      Limits
	PortalGroup uint16 // target portal group tag of this site's portals
	// Portals are the addresses SendTargets reports for this site, as
	// host:port. When empty the listener's address is used.
	Portals []string
	// PortGroups, when set, returns every site's target port group (this
	// one's, ID PortalGroup, included) for REPORT TARGET PORT GROUPS and
	// SendTargets. Nil: this site is the only group.
	PortGroups    PortGroupsFunc
	NOPInterval   time.Duration // 0: no target keepalive
	NOPTimeout    time.Duration
	DiscoveryCHAP *CHAPConfig
	Logger        hclog.Logger
	// MemoryBudget caps the buffer memory all connections together may
	// hold (see budget.go); a login that would exceed it is refused. 0:
	// no cap.
	MemoryBudget int64
	// Redirect, when set, may send a normal session's login to another
	// portal (redirect.go, RFC 7143 section 11.13.5). Nil: never.
	Redirect RedirectFunc
	// OnVolumeError, when set, hears of every volume failure that reached
	// an initiator as sense data (for a metric); the server logs each
	// one itself.
	OnVolumeError func(VolumeError)
	// SinglePath, when set, says which initiators have no other path in
	// the cluster: a retry-safe command of theirs that meets a writer
	// transition is answered BUSY instead of NOT READY or ABORTED
	// COMMAND (retrybusy.go). OnTransitionBusy, when set, counts those
	// answers.
	SinglePath       SinglePathFunc
	OnTransitionBusy func()
}

// TargetConfig describes one iSCSI target and its logical units.
type TargetConfig struct {
	Name            string
	Alias           string
	AllowInitiators []string // empty: any
	CHAP            *CHAPConfig
	LUNs            []LUNConfig
}

// Server is an iSCSI target portal: it accepts connections, logs them in
// and runs their sessions. It reaches storage only through Volume.
type Server struct {
	cfg Config
	log hclog.Logger

	mu        sync.Mutex
	targets   map[string]*Target
	sessions  map[uint16]*session // by TSIH
	nextTSIH  uint16
	listeners []net.Listener
	conns     map[*conn]struct{}
	closing   bool
	wg        sync.WaitGroup
	aluaStop  chan struct{} // ends watchALUA (cluster mode only)
	memHeld   int64         // budget.go: memory reserved by logged-in connections
	auth      *authLimiter  // CHAP guesses per initiator name and address
}

// Target is one iSCSI target: a name, its access rules and its LUs.
type Target struct {
	Name    string
	Alias   string
	allow   map[string]bool
	chap    *CHAPConfig
	lus     map[uint64]*LU
	lunList []uint64 // sorted
}

// NewServer returns a server with no targets.
func NewServer(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Limits.MaxRecvDataSegmentLength == 0 {
		cfg.Limits = DefaultLimits()
	}
	if cfg.PortalGroup == 0 {
		cfg.PortalGroup = 1
	}
	if cfg.NOPTimeout == 0 {
		cfg.NOPTimeout = 30 * time.Second
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		targets:  map[string]*Target{},
		sessions: map[uint16]*session{},
		conns:    map[*conn]struct{}{},
		nextTSIH: 1,
		auth:     newAuthLimiter(),
	}
	if cfg.PortGroups != nil {
		s.aluaStop = make(chan struct{})
		go s.watchALUA(s.aluaStop, 200*time.Millisecond)
	}
	return s
}

// AddTarget registers a target and opens its logical units.
func (s *Server) AddTarget(tc TargetConfig) error {
	t := &Target{Name: tc.Name, Alias: tc.Alias, chap: tc.CHAP, lus: map[uint64]*LU{}}
	if len(tc.AllowInitiators) > 0 {
		t.allow = map[string]bool{}
		for _, n := range tc.AllowInitiators {
			t.allow[n] = true
		}
	}
	for _, lc := range tc.LUNs {
		if _, dup := t.lus[lc.ID]; dup {
			return fmt.Errorf("target %s: LUN %d defined twice", tc.Name, lc.ID)
		}
		lu, err := newLU(t, lc, s.cfg.PortalGroup)
		if err != nil {
			return fmt.Errorf("target %s: LUN %d: %w", tc.Name, lc.ID, err)
		}
		lu.groups = s.cfg.PortGroups
		lu.log = s.log.With("target", tc.Name, "lun", lc.ID)
		lu.onVolErr = s.cfg.OnVolumeError
		lu.singlePath = s.cfg.SinglePath
		lu.onBusy = s.cfg.OnTransitionBusy
		t.lus[lc.ID] = lu
		t.lunList = append(t.lunList, lc.ID)
	}
	sort.Slice(t.lunList, func(i, j int) bool { return t.lunList[i] < t.lunList[j] })
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.targets[tc.Name]; dup {
		return fmt.Errorf("target %s defined twice", tc.Name)
	}
	s.targets[tc.Name] = t
	return nil
}

func (s *Server) target(name string) *Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.targets[name]
}

// Serve accepts connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return errors.New("server is shutting down")
	}
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	s.log.Info("listening", "portal", l.Addr().String(), "tpgt", s.cfg.PortalGroup)
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		// A guarded listener (cmd/netguard) hands out a wrapper that
		// still has the TCP methods.
		if tc, ok := nc.(interface {
			SetNoDelay(bool) error
			SetKeepAlive(bool) error
		}); ok {
			tc.SetNoDelay(true)
			tc.SetKeepAlive(true)
		}
		c := newConn(s, nc)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Shutdown stops accepting, lets commands in flight finish and their
// answers go out, then closes every connection. It returns when all are
// gone or ctx ends (then connections are cut).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing && s.aluaStop != nil {
		close(s.aluaStop)
	}
	s.closing = true
	for _, l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.drain()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		for _, c := range conns {
			c.nc.Close()
		}
		<-done
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, t := range s.targets {
		for _, lu := range t.lus {
			if err := lu.close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// bindSession attaches a logged-in connection to a session: a new one, a
// reinstated one (same initiator, ISID and target, RFC 7143 section 6.3.5)
// or an existing one the connection joins by TSIH.
func (s *Server) bindSession(c *conn, p Params, t *Target, isid [6]byte, tsih uint16, cmdSN uint32) (*session, *loginStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tsih != 0 {
		sess := s.sessions[tsih]
		if sess == nil || sess.isid != isid || sess.params.InitiatorName != p.InitiatorName {
			return nil, &loginStatus{0x02, 0x0a, "session to join does not exist"}
		}
		c.setLogContext(p.InitiatorName, tsih)
		if !sess.addConn(c) {
			return nil, &loginStatus{0x02, 0x06, "too many connections"}
		}
		return sess, nil
	}
	var old []*session
	for _, other := range s.sessions {
		if other.isid == isid && other.params.InitiatorName == p.InitiatorName && other.target == t {
			old = append(old, other)
		}
	}
	for _, o := range old {
		delete(s.sessions, o.tsih)
		s.log.Info("session reinstated", "initiator", p.InitiatorName, "tsih", o.tsih)
		go o.close("reinstated by a new login")
	}
	for s.sessions[s.nextTSIH] != nil || s.nextTSIH == 0 {
		s.nextTSIH++
	}
	sess := newSession(s, t, p, isid, s.nextTSIH, cmdSN)
	s.nextTSIH++
	s.sessions[sess.tsih] = sess
	c.setLogContext(p.InitiatorName, sess.tsih)
	sess.addConn(c)
	return sess, nil
}

func (s *Server) removeSession(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[sess.tsih] == sess {
		delete(s.sessions, sess.tsih)
	}
}

// sendTargets answers SendTargets (RFC 7143 section 13.3 and appendix C):
// each target the initiator may see, with the portals of every site's
// port group (see targetAddresses), so that discovery at one site finds
// every path.
func (s *Server) sendTargets(which, initiator string, local net.Addr) []KV {
	s.mu.Lock()
	own := s.cfg.Portals
	if len(own) == 0 && local != nil {
		own = []string{local.String()}
	}
	names := make([]string, 0, len(s.targets))
	for n, t := range s.targets {
		if (which == "All" || which == n || which == "") && t.allows(initiator) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	targets := make([]*Target, len(names))
	for i, n := range names {
		targets[i] = s.targets[n]
	}
	s.mu.Unlock()
	var out []KV
	for _, t := range targets {
		// The site's own state is its volume's (the first LU's: the
		// target's LUs live at the same sites).
		state := PathActiveOptimized
		rel := s.cfg.PortalGroup
		if len(t.lunList) > 0 {
			lu := t.lus[t.lunList[0]]
			state, rel = lu.vol.State(), lu.relPort
		}
		groups := resolvePortGroups(s.cfg.PortGroups, initiator, s.cfg.PortalGroup, rel, state, own)
		out = append(out, KV{"TargetName", t.Name})
		for _, a := range targetAddresses(groups, local) {
			out = append(out, KV{"TargetAddress", a})
		}
	}
	return out
}

func (t *Target) allows(initiator string) bool {
	return t.allow == nil || t.allow[initiator]
}
