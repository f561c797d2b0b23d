package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/cmd/netguard"
	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/raftlog"
	"github.com/metrolun/metrolun/replica"
)

// member is one running cluster member: Raft, and at a data site the
// mirrored volume and its replication listener.
type member struct {
	cfg     *conf.Config
	log     hclog.Logger
	cluster *raftlog.Cluster
	site    *replica.Site // nil at a witness
	store   *replica.LocalFile
	// tls is the member's own TLS config (its certificate, the cluster
	// CA as RootCAs and ClientCAs), nil with plaintext = true. A plane
	// derives its listener's and dialer's configs from it with
	// raftlog.ServerTLS and raftlog.ClientTLS, and reads who a peer is
	// with raftlog.PeerIdentity (raftlog/peercert.go): an operator's
	// certificate has Role raftlog.RoleOperator.
	tls     *tls.Config
	closers []func()
	// admin asks the other members' admin endpoints (adminClient).
	admin     *admin.Client
	adminOnce sync.Once
	// book is what this member knows of the cluster's iSCSI sessions
	// (sessions.go).
	book *sessionBook
	// stopc gets why this member must stop on its own (watch): nil
	// when it was removed from the cluster, an error when its LU is not
	// the cluster's.
	stopc chan error
	done  chan struct{} // closed when the member stops
}

// control adapts raftlog.Cluster to replica.Control.
type control struct{ c *raftlog.Cluster }

func (a control) View() replica.View {
	s := a.c.State()
	v := replica.View{Epoch: s.Epoch, Writer: s.Writer, InSync: s.InSync, Fenced: s.FencedNames(),
		Handover: s.Epoch > 1 && s.Released == s.Epoch-1}
	if len(s.Members) > 0 {
		// The data sites, with members being removed left out: the
		// writer adds and retires peers by this (raftlog/members.go).
		v.Peers = map[string]string{}
		for _, m := range s.Members {
			if m.Role == raftlog.RoleData && !s.IsLeaving(m.Name) {
				v.Peers[m.Name] = m.Addrs.Replication
			}
		}
	}
	return v
}
func (a control) Changed() <-chan struct{}         { return a.c.Changed() }
func (a control) WriterLease() (uint64, time.Time) { return a.c.WriterLease() }
func (a control) DropInSync(name string, e uint64) error {
	return inSyncErr(a.c.DropInSync(name, e))
}

func (a control) AddInSync(name string, e uint64) error { return inSyncErr(a.c.AddInSync(name, e)) }

// control is also a replica.ImageControl: the writer checks and records
// its peers' image identities in the Raft state (raftlog/image.go).
func (a control) ImageDistrust(name string, id replica.ImageID) string {
	return a.c.State().ImageDistrust(name, raftlog.ImageID(id))
}
func (a control) MarkImage(name, why string) error { return a.c.MarkImage(name, why) }
func (a control) RecordImage(name string, e uint64, id replica.ImageID) error {
	return a.c.RecordImage(name, e, raftlog.ImageID(id))
}
func (a control) ImageRecorded(name string, id replica.ImageID) bool {
	rec, ok := a.c.State().Image(name)
	return ok && rec.Untrusted == "" && rec.UUID == id.UUID && id.Gen >= rec.Gen
}
func (a control) AddInSyncImage(name string, e uint64, id replica.ImageID) error {
	return inSyncErr(a.c.AddInSyncImage(name, e, raftlog.ImageID(id)))
}

// siteImage adapts a data site's backing store to raftlog.ImageStore.
type siteImage struct{ st *replica.LocalFile }

func (i siteImage) Image() raftlog.ImageID {
	id, _, _ := i.st.Image()
	return raftlog.ImageID(id)
}

func (i siteImage) RaiseGeneration(gen uint64) (raftlog.ImageID, error) {
	id, err := i.st.RaiseGeneration(gen)
	return raftlog.ImageID(id), err
}

// openImage opens a data site's backing store with its image identity.
// Only the first start of a new LU at this site may create the path:
// with Raft state or an image record in data_dir, this site has held the
// LU, and a missing path is a lost image (a mount missing at boot), which
// must not silently become an empty one.
func openImage(cfg *conf.Config, lun conf.LUN, log hclog.Logger) (*replica.LocalFile, error) {
	record := filepath.Join(cfg.DataDir, "replica", "image")
	_, rerr := os.Stat(filepath.Join(cfg.DataDir, "raft"))
	_, ierr := os.Stat(record)
	first := errors.Is(rerr, os.ErrNotExist) && errors.Is(ierr, os.ErrNotExist)
	store, err := replica.OpenImage(lun.Path, lun.Size, replica.ImageOptions{Create: first})
	if err != nil {
		return nil, err
	}
	slog := log.Named("store").With("target", cfg.Targets[0].Name, "lun", lun.ID)
	store.SetLogger(slog)
	if err := injectFaults(store, cfg.DataDir, slog); err != nil {
		store.Close()
		return nil, err
	}
	id, created, _ := store.Image()
	switch {
	case created != "" && first:
		log.Info("a new image", "path", lun.Path, "image", id.String())
	case created != "":
		log.Warn("the backing store has a new image identity; the cluster copies it in full before it is in sync", "path", lun.Path, "image", id.String(), "why", created)
	default:
		log.Info("image identity", "path", lun.Path, "image", id.String())
	}
	if err := os.MkdirAll(filepath.Dir(record), 0o755); err != nil {
		store.Close()
		return nil, err
	}
	if err := os.WriteFile(record, []byte(fmt.Sprintf("path %s\nimage %s\n", lun.Path, id.UUID)), 0o600); err != nil {
		store.Close()
		return nil, fmt.Errorf("image record: %w", err)
	}
	return store, nil
}

// MoveWriter hands the writer role of epoch to the in-sync data site to
// (replica/stepdown.go: this site's store failed).
func (a control) MoveWriter(epoch uint64, to string) error {
	if s := a.c.State(); s.Epoch != epoch {
		return fmt.Errorf("epoch %d is over (now %d)", epoch, s.Epoch)
	}
	return a.c.Promote(to, moveWriterTimeout)
}

// moveWriterTimeout bounds a writer hand-over after a store failure.
const moveWriterTimeout = 30 * time.Second

// inSyncErr gives raftlog's in-sync refusals replica's names.
func inSyncErr(err error) error {
	switch {
	case errors.Is(err, raftlog.ErrNotInSync):
		return fmt.Errorf("%w: %v", replica.ErrNotInSync, err)
	case errors.Is(err, raftlog.ErrAlreadyInSync):
		return fmt.Errorf("%w: %v", replica.ErrAlreadyInSync, err)
	}
	return err
}

// loadTLS builds the mutual-TLS config for inter-site traffic.
func loadTLS(t *conf.TLS) (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	if err := checkKeyMode(t.Key); err != nil {
		return nil, fmt.Errorf("cluster tls: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("cluster tls: %w", err)
	}
	pem, err := os.ReadFile(t.CA)
	if err != nil {
		return nil, fmt.Errorf("cluster tls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("cluster tls: %s holds no PEM certificate", t.CA)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// checkKeyMode refuses a private key that other users may read (or
// write): whoever reads it can join the cluster as this member. As ssh
// does for its keys, the fix is the operator's (chmod 600), never a silent
// acceptance.
func checkKeyMode(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if m := st.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("private key %s has mode %04o: group and others must have no access (chmod 600 %s)", path, m, path)
	}
	return nil
}

// replicationServerTLS is the replication listener's config: a client
// certificate from the cluster CA that states no role other than data (a
// witness never sends data, an operator never connects here). Which data
// site it is comes with the hello (replicationPeer).
func replicationServerTLS(base *tls.Config) *tls.Config {
	return raftlog.ServerTLS(base, func(id raftlog.Identity) error { return id.CheckRole(raftlog.RoleData) })
}

// replicationPeer is replica.SiteConfig.Authenticate with TLS: the
// certificate the connection's peer presented must name from, the data
// site its hello claims to be, and state no other role. (The replica
// then checks from is a data site of the committed view.)
func replicationPeer(c net.Conn, from string) error {
	cs, ok := connState(c)
	if !ok {
		return errors.New("not a TLS connection")
	}
	id, err := raftlog.PeerIdentity(cs)
	if err != nil {
		return err
	}
	if !id.Is(from) {
		return fmt.Errorf("the certificate names %v, not %q", id.Names, from)
	}
	return id.CheckRole(raftlog.RoleData)
}

// connState finds the TLS state of c, looking through wrappers that say
// what they wrap (NetConn, as tls.Conn itself does).
func connState(c net.Conn) (tls.ConnectionState, bool) {
	for range 8 {
		switch x := c.(type) {
		case interface{ ConnectionState() tls.ConnectionState }:
			return x.ConnectionState(), true
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return tls.ConnectionState{}, false
		}
	}
	return tls.ConnectionState{}, false
}

// startMember opens Raft and, at a data site, the mirrored volume of the
// (single) clustered LUN. It returns the volume to serve over iSCSI.
func startMember(cfg *conf.Config, log hclog.Logger) (*member, error) {
	cl := cfg.Cluster
	tcfg, err := loadTLS(cl.TLS)
	if err != nil {
		return nil, err
	}
	m := &member{cfg: cfg, log: log, tls: tcfg, stopc: make(chan error, 1), done: make(chan struct{})}
	m.book = newSessionBook(m)
	if tcfg == nil {
		log.Warn("cluster.plaintext = true: Raft and replication run over plain TCP, unauthenticated and unencrypted; " +
			"a peer's name is taken on trust, so anyone who reaches these ports can write into the LUN and disrupt the cluster " +
			"(metrolun certs makes a CA and certificates; see docs/security.md)")
	}
	var peers []raftlog.Peer
	for _, p := range cl.Members {
		peers = append(peers, raftlog.Peer{Name: p.Name, Role: p.Role, Addr: p.Raft, Addrs: memberAddrs(p)})
	}
	// A data site opens its LU first: the cluster checks it against the
	// one every site must serve (raftlog/lun.go).
	var store *replica.LocalFile
	var def *raftlog.LUN
	lun := conf.LUN{}
	if cfg.Role == conf.RoleData {
		if len(cfg.Targets) != 1 || len(cfg.Targets[0].LUNs) != 1 {
			return nil, errors.New("a cluster member serves exactly one target with one LUN (the mirrored one)")
		}
		lun = cfg.Targets[0].LUNs[0]
		if store, err = openImage(cfg, lun, log); err != nil {
			return nil, err
		}
		def = lunDef(cfg.Targets[0].Name, lun, store.Size())
	}
	var img raftlog.ImageStore
	if store != nil {
		img = siteImage{store}
	}
	m.cluster, err = raftlog.Open(raftlog.Config{
		Name: cfg.Name, Role: cfg.Role,
		Dir:    filepath.Join(cfg.DataDir, "raft"),
		Listen: cl.RaftListen, Peers: peers, TLS: tcfg, Join: cl.Join, LUN: def, Image: img,
		Lease: cl.Lease, ElectionTimeout: cl.ElectionTimeout,
		Guard:  func(l net.Listener) net.Listener { return guard(l, "raft", netguard.Raft, log) },
		Logger: log.Named("raft"),
	})
	if err != nil {
		if store != nil {
			store.Close()
		}
		return nil, fmt.Errorf("raft: %w", err)
	}
	m.closers = append(m.closers, func() { m.cluster.Close() }, func() { close(m.done) })
	go m.watch()
	go m.book.run()
	if cfg.Role != conf.RoleData {
		return m, nil
	}
	others := map[string]string{}
	for _, p := range cl.DataMembers() {
		if p.Name != cfg.Name {
			others[p.Name] = p.Replication
		}
	}
	var dialTLS *tls.Config
	if tcfg != nil {
		dialTLS = raftlog.ClientTLS(tcfg, raftlog.RoleData)
	}
	dial := func(ctx context.Context, name, addr string) (net.Conn, error) {
		var d net.Dialer
		if dialTLS == nil {
			return d.DialContext(ctx, "tcp", addr)
		}
		// The name, not the address (a proxy, maybe), is what the peer's
		// certificate must prove.
		cfg := dialTLS.Clone()
		cfg.ServerName = name
		td := tls.Dialer{NetDialer: &d, Config: cfg}
		return td.DialContext(ctx, "tcp", addr)
	}
	m.store = store
	var auth func(net.Conn, string) error
	if tcfg != nil {
		auth = replicationPeer
	}
	m.site, err = replica.NewSite(replica.SiteConfig{
		Name: cfg.Name, Store: store,
		Dir:   filepath.Join(cfg.DataDir, "replica"),
		Peers: others, Control: control{m.cluster},
		Lease: cl.Lease, ReplicaTimeout: cl.ReplicaTimeout,
		ResyncBandwidth: cl.ResyncBandwidth,
		PDL:             cl.QuorumLoss == conf.QuorumLossPDL,
		Dial:            dial,
		Authenticate:    auth,
		Logger:          log.Named("replica"),
	})
	if err != nil {
		store.Close()
		m.close()
		return nil, err
	}
	m.closers = append(m.closers, func() { m.site.Close() })
	ln, err := net.Listen("tcp", cl.ReplicationListen)
	if err != nil {
		m.close()
		return nil, fmt.Errorf("replication listen on %s: %w", cl.ReplicationListen, err)
	}
	ln = guard(ln, "replication", netguard.Replication, log)
	if tcfg != nil {
		ln = tls.NewListener(ln, replicationServerTLS(tcfg))
	}
	go m.site.Serve(ln)
	log.Info("LUN mirrored", "path", lun.Path, "bytes", store.Size(), "replication", cl.ReplicationListen, "peers", others)
	return m, nil
}

// dataMembers returns the data sites of the state, or of the config
// before there is a state.
func (m *member) dataMembers(st raftlog.State) []conf.Member {
	cl := m.cfg.Cluster
	if len(st.Members) == 0 {
		return cl.DataMembers()
	}
	var out []conf.Member
	for _, sm := range st.Members {
		if sm.Role != raftlog.RoleData {
			continue
		}
		if cm, ok := m.cfg.Member(sm.Name); ok && cm.Role == conf.RoleData {
			out = append(out, cm)
			continue
		}
		out = append(out, conf.Member{Name: sm.Name, Role: sm.Role, Raft: sm.Addrs.Raft, Replication: sm.Addrs.Replication,
			Admin: sm.Addrs.Admin, ISCSI: sm.Addrs.ISCSI, PortalGroup: sm.Addrs.PortalGroup})
	}
	return out
}

// lunDef is the definition of the clustered LU that a data site's config
// gives, size the bytes its backing store holds.
func lunDef(target string, l conf.LUN, size int64) *raftlog.LUN {
	return &raftlog.LUN{Target: target, ID: l.ID, Size: size, BlockSize: l.BlockSize,
		PhysicalBlockSize: l.PhysicalBlockSize, Serial: l.Serial, Product: l.Product}
}

// memberAddrs is what the Raft state records of a member block.
func memberAddrs(p conf.Member) raftlog.Addrs {
	return raftlog.Addrs{Raft: p.Raft, Replication: p.Replication, Admin: p.Admin, ISCSI: p.ISCSI, PortalGroup: p.PortalGroup}
}

// close stops in reverse order of start: the volume first (the writer
// finishes what is in flight), then Raft.
func (m *member) close() {
	for i := len(m.closers) - 1; i >= 0; i-- {
		m.closers[i]()
	}
	m.closers = nil
}
