package conf

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Cluster is the cluster block: the members of a multi-site cluster and
// the settings they share. Every member's file lists every member, itself
// included, so that each knows where to dial the others; a member added
// at run time (Join) is known to the others from the Raft state instead.
//
// Parse fills in the listen addresses from this member's own member block
// when the file leaves them out. A Config built in code must set them.
type Cluster struct {
	RaftListen        string        // this member's Raft bind address; default: own member's Raft address
	ReplicationListen string        // data site: bind for replication; default: own member's Replication address; "" for a witness
	AdminListen       string        // status/promote/metrics HTTP bind; default: own member's Admin address; "" for none
	Lease             time.Duration // writer/reader lease; default DefaultLease
	ElectionTimeout   time.Duration // Raft heartbeat/election timeout; default DefaultElectionTimeout
	ReplicaTimeout    time.Duration // a replica that does not answer for this long is dropped; default DefaultReplicaTimeout; > Lease
	ResyncBandwidth   int64         // bytes/s for resync, 0 = unlimited
	VerifyBandwidth   int64         // bytes/s for online verify, 0 = unlimited
	// TLS authenticates and encrypts Raft and replication (and the
	// admin API) with the cluster's certificates. A cluster block needs
	// either TLS or Plaintext.
	TLS *TLS
	// Plaintext: plain TCP between members, every peer's name taken on
	// trust. It must be asked for explicitly, and logs a warning at start.
	Plaintext bool
	// AdminTokenFile names the file (mode 0600) holding the bearer token
	// that the admin endpoint requires of operators, or only its verifier
	// (`metrolun token verifier`: "sha256:<hex>"). A member that holds the
	// token sends it when it reads the other members' status; one that
	// holds the verifier reads with its certificate. Relative: to the
	// working directory, as tls paths.
	AdminTokenFile string
	// AdminPublicMetrics lets GET /metrics and /healthz through without
	// a credential (for Prometheus).
	AdminPublicMetrics bool
	// AdminInsecure serves the admin endpoint without any credential;
	// the member logs a warning at start.
	AdminInsecure bool
	// Join: this member waits to be added to a running cluster (`metrolun
	// member add`) instead of bootstrapping a new one with the members
	// listed. It matters only while the member has no Raft state yet.
	Join bool
	// RedirectLogins: a data site that cannot serve the LU (out of sync,
	// fenced) redirects new sessions' logins to one that can; default
	// true.
	RedirectLogins bool
	// QuorumLoss is what a data site that has lost the cluster (in sync
	// by the last state it heard, but without a lease for longer than it
	// holds an operation: cut off, or without quorum) answers:
	// QuorumLossTransitioning (the default) or QuorumLossPDL.
	QuorumLoss string
	Members    []Member     // every member including this one, in file order
	Preferred  []Preference // preferred site per initiator IQN (ALUA active/optimized)
}

// The answers of a site that has lost the cluster (quorum_loss).
const (
	// QuorumLossTransitioning: NOT READY, ASYMMETRIC ACCESS STATE
	// TRANSITION (02/04/0A) on I/O and its port group transitioning: the
	// host waits or uses another path (VMware calls it all paths down
	// when no path is left).
	QuorumLossTransitioning = "transitioning"
	// QuorumLossPDL: ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED
	// (05/25/00) on every command to the LU: VMware ESXi's permanent
	// device loss, on which vSphere HA restarts the VMs at the surviving
	// site (vMSC).
	QuorumLossPDL = "pdl"
)

// TLS names the PEM files for mutually authenticated TLS between members:
// the CA that signs every member's certificate, and this member's
// certificate and key. The paths are kept as written: like a LUN's path and
// data_dir, a relative path is relative to the working directory of the
// process. Whether the files exist is checked at run time.
type TLS struct{ CA, Cert, Key string }

// Member is one member of the cluster as every member's file describes it.
// Addresses are host:port, normalised as by NormalizePortal; they are what
// the other members dial, so they may be a proxy's address.
type Member struct {
	Name        string
	Role        string   // RoleData or RoleWitness
	Raft        string   // host:port others dial for Raft (may be a proxy address)
	Replication string   // host:port others dial for replication; data sites only (required there, forbidden on a witness)
	Admin       string   // host:port of the admin HTTP endpoint (status, promote, metrics); optional
	ISCSI       []string // the site's iSCSI portals as initiators see them (for SendTargets at any site); data only; optional
	PortalGroup int      // target portal group tag of that site; data only; default: 1-based index among data members
}

// Preference makes Site the preferred (ALUA active/optimized) site of the
// initiator named Initiator. Initiator PreferEveryone applies to every
// initiator without a Preference of its own; Site PreferAuto prefers the
// site of the initiator's paths with the lowest measured round trip
// (cmd/paths.Preferred).
type Preference struct{ Initiator, Site string }

// The wildcards of a prefer block.
const (
	PreferEveryone = "*"
	PreferAuto     = "auto"
)

// Defaults of the cluster block.
const (
	// A writer's loss costs about election_timeout to 2*election_timeout
	// to notice, then lease + lease/10 + election_timeout/2 to wait out
	// (raftlog/lease.go): 1.1 to 1.6 s with these. They hold over a WAN
	// link of up to about 50 ms round trip; scale all three up together
	// for longer links.
	DefaultLease           = 300 * time.Millisecond
	DefaultElectionTimeout = 500 * time.Millisecond
	DefaultReplicaTimeout  = 2 * time.Second
)

// Bounds on the cluster timings, inclusive. The lower bound is above
// hashicorp/raft's 5ms minimum; the upper one catches unit mistakes.
const (
	MinClusterTiming = 10 * time.Millisecond
	MaxClusterTiming = 10 * time.Minute
)

// Ports DefaultCluster uses: iSCSI on DefaultPort, and Raft, replication
// and admin on DefaultRaftPort and the two ports after it.
const (
	DefaultRaftPort        = 7400
	DefaultReplicationPort = DefaultRaftPort + 1
	DefaultAdminPort       = DefaultRaftPort + 2
	// AdminTokenFileName is the admin token's file in a demo's directory.
	AdminTokenFileName = "admin.token"
)

// DefaultClusterBlock returns a cluster block with the default timings and
// bandwidths and nothing else: no members, no listen addresses, no TLS.
func DefaultClusterBlock() *Cluster {
	return &Cluster{
		Lease:           DefaultLease,
		ElectionTimeout: DefaultElectionTimeout,
		ReplicaTimeout:  DefaultReplicaTimeout,
		RedirectLogins:  true,
		QuorumLoss:      QuorumLossTransitioning,
	}
}

// DefaultCluster returns the configs `metrolun demo` writes for a cluster
// of sites data sites and, if witness is set, one witness, all on loopback:
// DefaultClusterPorts with iSCSI on port 3260 and Raft, replication and
// admin on 7400, 7401 and 7402.
func DefaultCluster(dir string, sites int, witness bool) []*Config {
	return DefaultClusterPorts(dir, sites, witness, DefaultPort, DefaultRaftPort)
}

// DefaultClusterPorts returns one config per member of a demo cluster on
// loopback, data sites first, then the witness if witness is set.
//
// Data site i (from 0) is named site-a, site-b, ... (site-z, then site-aa,
// site-ab, ...) and uses the address 127.0.0.(i+1); the witness is named
// "witness" and uses the next address, 127.0.0.(sites+1). Each member has
// iSCSI on iscsiPort (data sites only), Raft on basePort, replication on
// basePort+1 (data sites only) and admin on basePort+2. A data site's
// portal group is i+1. Every member authenticates with the certificates
// DemoCertFiles names, under dir/pki. Every member keeps its state in dir/NAME; data
// site NAME serves target iqn.2026-11.io.metrolun:demo with LUN 0 at
// dir/NAME/lun0.img, 1 GiB. Every config lists every member and validates.
//
// It panics if sites < 1, if there are more than 254 members, or if a
// port is outside 1..65535 (basePort+2 included): those are programming
// errors, since the demo's flags are checked first.
func DefaultClusterPorts(dir string, sites int, witness bool, iscsiPort, basePort int) []*Config {
	return DefaultClusterAt(dir, netip.AddrFrom4([4]byte{127, 0, 0, 1}), sites, witness, iscsiPort, basePort)
}

// DemoAddrs returns the n loopback addresses a demo cluster whose first
// member is at first uses: first and the n-1 addresses after it, all in
// 127.0.0.0/8, or an error saying why not.
func DemoAddrs(first netip.Addr, n int) ([]netip.Addr, error) {
	if !first.Is4() || !first.IsLoopback() {
		return nil, fmt.Errorf("%s is not an IPv4 loopback address (127.0.0.0/8)", first)
	}
	b := first.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	out := make([]netip.Addr, 0, n)
	for i := 0; i < n; i++ {
		x := v + uint32(i)
		a := netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
		if x < v || !a.IsLoopback() {
			return nil, fmt.Errorf("%d members from %s do not fit in 127.0.0.0/8", n, first)
		}
		out = append(out, a)
	}
	return out, nil
}

// DefaultClusterAt is DefaultClusterPorts with the members on the
// loopback addresses from first on (DemoAddrs) instead of 127.0.0.1, so
// that several demos run side by side on one host. It panics where
// DefaultClusterPorts does, and when the addresses leave 127.0.0.0/8.
func DefaultClusterAt(dir string, first netip.Addr, sites int, witness bool, iscsiPort, basePort int) []*Config {
	n := sites
	if witness {
		n++
	}
	switch {
	case sites < 1:
		panic(fmt.Sprintf("conf.DefaultCluster: %d data sites; expected at least 1", sites))
	case n > 254:
		panic(fmt.Sprintf("conf.DefaultCluster: %d members do not fit in 127.0.0.1-127.0.0.254", n))
	case iscsiPort < 1 || iscsiPort > 65535 || basePort < 1 || basePort+2 > 65535:
		panic(fmt.Sprintf("conf.DefaultCluster: ports %d and %d..%d are not all in 1..65535", iscsiPort, basePort, basePort+2))
	}
	ips, err := DemoAddrs(first, n)
	if err != nil {
		panic("conf.DefaultCluster: " + err.Error())
	}
	addr := func(i, port int) string {
		return net.JoinHostPort(ips[i].String(), strconv.Itoa(port))
	}
	members := func() []Member {
		ms := make([]Member, 0, n)
		for i := 0; i < sites; i++ {
			ms = append(ms, Member{
				Name:        demoSiteName(i),
				Role:        RoleData,
				Raft:        addr(i, basePort),
				Replication: addr(i, basePort+1),
				Admin:       addr(i, basePort+2),
				ISCSI:       []string{addr(i, iscsiPort)},
				PortalGroup: i + 1,
			})
		}
		if witness {
			ms = append(ms, Member{
				Name:  "witness",
				Role:  RoleWitness,
				Raft:  addr(sites, basePort),
				Admin: addr(sites, basePort+2),
			})
		}
		return ms
	}
	configs := make([]*Config, 0, n)
	for i, self := range members() {
		c := Default(dir)
		c.Name = self.Name
		c.Role = self.Role
		c.DataDir = filepath.Join(dir, self.Name)
		c.ISCSI.Listen = []string{addr(i, iscsiPort)}
		cl := DefaultClusterBlock()
		cl.RaftListen = self.Raft
		cl.ReplicationListen = self.Replication
		cl.AdminListen = self.Admin
		// One token for the whole demo, which `metrolun demo` writes
		// and the commands find with --dir.
		cl.AdminTokenFile = filepath.Join(dir, AdminTokenFileName)
		cl.Members = members()
		ca, cert, key := DemoCertFiles(dir, self.Name)
		cl.TLS = &TLS{CA: ca, Cert: cert, Key: key}
		c.Cluster = cl
		if self.Role == RoleData {
			c.ISCSI.PortalGroup = self.PortalGroup
			c.Targets[0].LUNs[0].Path = filepath.Join(c.DataDir, "lun0.img")
		} else {
			c.Targets = nil
		}
		configs = append(configs, c)
	}
	return configs
}

// DemoCertFiles are the PEM files DefaultClusterPorts' member name uses
// (`metrolun demo` makes them; so does `metrolun certs` given dir/pki):
// the cluster CA and name's certificate and key.
func DemoCertFiles(dir, name string) (ca, cert, key string) {
	pki := filepath.Join(dir, "pki")
	return filepath.Join(pki, "ca.pem"), filepath.Join(pki, name+".pem"), filepath.Join(pki, name+"-key.pem")
}

// demoSiteName names data site i: site-a to site-z, then site-aa, ...
func demoSiteName(i int) string {
	var b []byte
	for i++; i > 0; i = (i - 1) / 26 {
		b = append([]byte{byte('a' + (i-1)%26)}, b...)
	}
	return "site-" + string(b)
}

// Member returns the member named name. Without a cluster block, the only
// member is this one, as Self describes it.
func (c *Config) Member(name string) (Member, bool) {
	if c.Cluster == nil {
		if name == c.Name {
			return c.Self(), true
		}
		return Member{}, false
	}
	for _, m := range c.Cluster.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// Self returns this member's member block: the one named c.Name. Without a
// cluster block (or without that member, which Validate rejects) it
// returns what is known of a standalone site: its name, its role and, for
// a data site, its portal group.
func (c *Config) Self() Member {
	if c.Cluster != nil {
		for _, m := range c.Cluster.Members {
			if m.Name == c.Name {
				return m
			}
		}
	}
	m := Member{Name: c.Name, Role: c.Role}
	if c.Role == RoleData {
		m.PortalGroup = c.ISCSI.PortalGroup
	}
	return m
}

// DataMembers returns the data members in file order.
func (cl *Cluster) DataMembers() []Member {
	var out []Member
	for _, m := range cl.Members {
		if m.Role == RoleData {
			out = append(out, m)
		}
	}
	return out
}

// PreferredSite returns the preferred site of the initiator named
// initiator as the prefer blocks give it: its own block's, else the
// PreferEveryone block's (either may be PreferAuto). iSCSI names compare
// case-insensitively (RFC 3722), so initiator may be in any case.
func (cl *Cluster) PreferredSite(initiator string) (string, bool) {
	if cl == nil {
		return "", false
	}
	initiator = strings.ToLower(initiator)
	every, hasEvery := "", false
	for _, p := range cl.Preferred {
		switch p.Initiator {
		case initiator:
			return p.Site, true
		case PreferEveryone:
			every, hasEvery = p.Site, true
		}
	}
	return every, hasEvery
}
