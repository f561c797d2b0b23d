package conf

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"
)

// cluster checks the cluster block, if there is one.
func (v *validator) cluster(c *Config) {
	cl := c.Cluster
	if cl == nil {
		return
	}
	self := v.members(c)
	v.listens(c, self)
	v.timings(cl)
	for _, b := range []struct {
		name string
		n    int64
	}{{"resync_bandwidth", cl.ResyncBandwidth}, {"verify_bandwidth", cl.VerifyBandwidth}} {
		if b.n < 0 {
			v.fail("cluster."+b.name, "must not be negative, got %d; 0 means unlimited", b.n)
		}
	}
	v.tls(cl.TLS)
	v.adminCredential(cl)
	v.transport(cl)
	v.preferences(cl)
	if cl.QuorumLoss != QuorumLossTransitioning && cl.QuorumLoss != QuorumLossPDL {
		v.fail("cluster.quorum_loss", "expected %q or %q, got %q", QuorumLossTransitioning, QuorumLossPDL, cl.QuorumLoss)
	}
	v.join(c, self)
	v.imagePaths(c)
}

// imagePaths checks a data member's backing store paths. Its image
// carries the identity the cluster checks (replica/identity.go); a path
// inside the member's own state would mix the two.
func (v *validator) imagePaths(c *Config) {
	if c.Role != RoleData {
		return
	}
	state := []string{filepath.Join(c.DataDir, "raft"), filepath.Join(c.DataDir, "replica")}
	for i, t := range c.Targets {
		for j, l := range t.LUNs {
			key := fmt.Sprintf("target[%d].lun[%d].path", i, j)
			if l.Path == "" || strings.ContainsRune(l.Path, 0) || strings.HasSuffix(l.Path, "/") {
				continue // lun reported it
			}
			p := filepath.Clean(l.Path)
			for _, s := range state {
				if p == s || strings.HasPrefix(p, s+string(filepath.Separator)) {
					v.fail(key, "%q is inside %s, where metrolun keeps this member's cluster state", l.Path, s)
				}
			}
		}
	}
}

// join checks that a member that waits to be added lists a cluster that
// can add it: at least one member besides itself.
func (v *validator) join(c *Config, self int) {
	cl := c.Cluster
	if !cl.Join || self < 0 || v.dropped["cluster.member"] {
		return
	}
	for i, m := range cl.Members {
		if i != self && m.Name != c.Name {
			return
		}
	}
	v.fail("cluster.join", "this member waits to be added to a running cluster, but the block lists no other member; list the cluster's members (their admin addresses find it), or remove join to start a new cluster")
}

// members checks the member blocks and returns the index of this member's
// own block, or -1.
func (v *validator) members(c *Config) int {
	const key = "cluster"
	cl := c.Cluster
	names := map[string]string{} // member name -> key
	addrs := map[string]string{} // normalised address -> key
	groups := map[int]string{}   // portal group -> key
	self, data := -1, 0
	dropped := v.dropped[key+".member"]
	unsure := dropped // of how many data members there are
	for i := range cl.Members {
		m := &cl.Members[i]
		mk := fmt.Sprintf("%s.member[%d]", key, i)
		if err := checkMemberName(m.Name); err != nil {
			v.fail(mk+".name", "%v", err)
		} else if first, dup := names[m.Name]; dup {
			v.fail(mk+".name", "member %q is defined twice (also %s)", m.Name, v.where(first+".name"))
		} else {
			names[m.Name] = mk
			if m.Name == c.Name {
				self = i
			}
		}
		if m.Raft == "" {
			v.fail(mk+".raft", "is required: the host:port other members dial for Raft")
		} else {
			v.memberAddr(mk+".raft", m.Raft, false, addrs)
		}
		if m.Admin != "" || v.set[mk+".admin"] {
			v.memberAddr(mk+".admin", m.Admin, false, addrs)
		}
		switch {
		case v.skip(mk + ".role"):
			unsure = true
		case m.Role == RoleData:
			data++
			if m.Replication == "" {
				v.fail(mk+".replication", "is required on a data member: the host:port other members dial for replication")
			} else {
				v.memberAddr(mk+".replication", m.Replication, false, addrs)
			}
			for j, p := range m.ISCSI {
				v.memberAddr(fmt.Sprintf("%s.iscsi[%d]", mk, j), p, true, addrs)
			}
			pk := mk + ".portal_group"
			if m.PortalGroup < 1 || m.PortalGroup > 65535 {
				v.fail(pk, "must be between 1 and 65535, got %d", m.PortalGroup)
			} else if first, dup := groups[m.PortalGroup]; dup && !v.skip(pk) {
				what := "portal group %d is also %s; every data member needs its own"
				if !v.set[pk] {
					what += " (when left out it is the member's 1-based position among the data members)"
				}
				v.fail(pk, what, m.PortalGroup, v.where(first))
			} else {
				groups[m.PortalGroup] = pk
			}
		case m.Role == RoleWitness:
			if m.Replication != "" || v.set[mk+".replication"] {
				v.fail(mk+".replication", "a witness holds no data; remove replication")
			}
			if len(m.ISCSI) > 0 || v.set[mk+".iscsi"] {
				v.fail(mk+".iscsi", "a witness serves no iSCSI; remove iscsi")
			}
			if m.PortalGroup != 0 || v.set[mk+".portal_group"] {
				v.fail(mk+".portal_group", "a witness has no portal group; remove portal_group")
			}
		default:
			unsure = true
			v.fail(mk+".role", "expected %q or %q, got %q", RoleData, RoleWitness, m.Role)
		}
	}
	nameOK := checkMemberName(c.Name) == nil
	switch {
	case unsure:
	case len(cl.Members) == 0 && checkMemberName(c.Name) == nil:
		v.fail(key, "expected a member block for every member of the cluster, this one (%q) included, and at least one with role = %q", c.Name, RoleData)
		return -1
	case data == 0:
		v.fail(key+".member", "expected at least one member with role = %q; a witness alone holds no data", RoleData)
	}
	switch {
	case self < 0 && nameOK && !dropped && len(cl.Members) > 0:
		v.fail(key, "has no member block for this member (name = %q); list every member, this one included", c.Name)
	case self >= 0:
		m := cl.Members[self]
		mk := fmt.Sprintf("%s.member[%d].role", key, self)
		roleKnown := func(r string) bool { return r == RoleData || r == RoleWitness }
		if roleKnown(c.Role) && roleKnown(m.Role) && m.Role != c.Role && !v.skip(mk) && !v.skip("role") {
			v.fail(mk, "is %q, but this block is this member's own (name = %q) and the top-level role is %q; the two must agree", m.Role, c.Name, c.Role)
		}
	}
	return self
}

// memberAddr checks an address in a member block: one that other members
// (or, for a portal, initiators) dial. It must be reachable, so not a
// wildcard, and no two may be the same.
func (v *validator) memberAddr(key, addr string, portal bool, seen map[string]string) {
	if v.skip(key) {
		return
	}
	var n string
	var err error
	if portal {
		n, err = NormalizePortal(addr)
	} else {
		n, err = normalizeHostPort(addr)
	}
	if err != nil {
		v.fail(key, "%v", err)
		return
	}
	if host, _, _ := net.SplitHostPort(n); isWildcardHost(host) {
		who := "other members"
		if portal {
			who = "initiators"
		}
		v.fail(key, "%s means every local address; %s dial this one, so give an address they can reach", n, who)
		return
	}
	if first, dup := seen[n]; dup {
		v.fail(key, "%s is also %s; no two members, and no two services of a member, can share an address", n, v.where(first))
		return
	}
	seen[n] = key
}

// listens checks the addresses this member binds, given the index of its
// own member block (or -1).
func (v *validator) listens(c *Config, self int) {
	const key = "cluster"
	cl := c.Cluster
	var m Member
	selfOK := self >= 0
	if selfOK {
		m = cl.Members[self]
		selfOK = m.Role == c.Role
	}
	type bind struct {
		key, addr string
		member    bool // the same as this member's block, and checked there
	}
	var binds []bind
	// iscsi.listen first, so that a clash is reported in the cluster block.
	if c.Role == RoleData {
		for i, l := range c.ISCSI.Listen {
			if n, err := NormalizePortal(l); err == nil {
				binds = append(binds, bind{fmt.Sprintf("iscsi.listen[%d]", i), n, false})
			}
		}
	}
	check := func(name, addr, own, what string, required bool) {
		k := key + "." + name
		if v.skip(k) {
			return
		}
		if selfOK && addr != "" && addr == own {
			if n, err := normalizeHostPort(addr); err == nil {
				binds = append(binds, bind{k, n, true})
			}
			return
		}
		if addr == "" {
			if required && selfOK {
				v.fail(k, "is required: the host:port to bind for %s", what)
			}
			return
		}
		n, err := normalizeHostPort(addr)
		if err != nil {
			v.fail(k, "%v", err)
			return
		}
		binds = append(binds, bind{k, n, false})
	}
	check("raft_listen", cl.RaftListen, m.Raft, "Raft", true)
	switch c.Role {
	case RoleData:
		check("replication_listen", cl.ReplicationListen, m.Replication, "replication", true)
	case RoleWitness:
		if cl.ReplicationListen != "" || v.set[key+".replication_listen"] {
			v.fail(key+".replication_listen", "a witness holds no data; remove replication_listen")
		}
	}
	check("admin_listen", cl.AdminListen, m.Admin, "the admin endpoint", false)
	// Two binds on one port clash when their hosts are the same or one is
	// a wildcard. Each clash is reported once, at the bind that is not
	// merely a copy of the member block (those are checked there).
	reported := map[string]bool{}
	for j := range binds {
		for i := 0; i < j; i++ {
			a, b := binds[i], binds[j]
			if a.member && b.member || strings.HasPrefix(a.key, "iscsi.") && strings.HasPrefix(b.key, "iscsi.") {
				continue
			}
			ha, pa, _ := net.SplitHostPort(a.addr)
			hb, pb, _ := net.SplitHostPort(b.addr)
			if pa != pb || ha != hb && !isWildcardHost(ha) && !isWildcardHost(hb) {
				continue
			}
			at, other := b, a
			if b.member {
				at, other = a, b
			}
			if reported[at.key] {
				continue
			}
			reported[at.key] = true
			v.fail(at.key, "%s clashes with %s (%s): both would bind port %s", at.addr, v.where(other.key), other.addr, pa)
		}
	}
	// The iscsi block's portal group is this site's; REPORT TARGET PORT
	// GROUPS and SendTargets at the other sites use the member block's.
	if selfOK && c.Role == RoleData {
		mk := fmt.Sprintf("%s.member[%d].portal_group", key, self)
		pg := c.ISCSI.PortalGroup
		if pg != m.PortalGroup && pg >= 1 && pg <= 65535 && m.PortalGroup >= 1 && m.PortalGroup <= 65535 &&
			!v.skip("iscsi.portal_group") && !v.skip(mk) {
			v.fail("iscsi.portal_group", "is %d, but this site's member block says %d (%s); they must agree: leave iscsi.portal_group out to use the member's",
				pg, m.PortalGroup, v.where(mk))
		}
	}
}

// timings checks lease, election_timeout and replica_timeout.
func (v *validator) timings(cl *Cluster) {
	const key = "cluster"
	ok := func(name string, d time.Duration) bool {
		k := key + "." + name
		if d < MinClusterTiming || d > MaxClusterTiming {
			v.fail(k, "must be between %v and %v, got %v", MinClusterTiming, fmtDuration(MaxClusterTiming), d)
			return false
		}
		return !v.skip(k)
	}
	lease := ok("lease", cl.Lease)
	ok("election_timeout", cl.ElectionTimeout)
	replica := ok("replica_timeout", cl.ReplicaTimeout)
	if lease && replica && cl.ReplicaTimeout <= cl.Lease {
		// Point at whichever of the two the file sets.
		if !v.set[key+".replica_timeout"] && v.set[key+".lease"] {
			v.fail(key+".lease", "%v must be shorter than replica_timeout (%v, the default): a replica is dropped only after a whole lease without an answer",
				cl.Lease, cl.ReplicaTimeout)
		} else {
			v.fail(key+".replica_timeout", "%v must be longer than lease (%v): a replica is dropped only after a whole lease without an answer",
				cl.ReplicaTimeout, cl.Lease)
		}
	}
}

// fmtDuration renders whole minutes as "10m" rather than "10m0s".
func fmtDuration(d time.Duration) string {
	if d%time.Minute == 0 && d < time.Hour {
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

func (v *validator) tls(t *TLS) {
	if t == nil {
		return
	}
	const key = "cluster.tls"
	files := []struct{ name, path string }{{"ca", t.CA}, {"cert", t.Cert}, {"key", t.Key}}
	var missing []string
	for _, f := range files {
		k := key + "." + f.name
		switch {
		case f.path == "" && !v.skip(k):
			missing = append(missing, f.name)
		case strings.ContainsRune(f.path, 0):
			v.fail(k, "must not contain a NUL byte")
		}
	}
	switch len(missing) {
	case 0:
	case len(files):
		v.fail(key, "expected ca, cert and key (PEM files); for plain TCP between members replace the block with plaintext = true")
	default:
		for _, name := range missing {
			v.fail(key+"."+name, "is required: TLS between members needs ca, cert and key")
		}
	}
}

// adminCredential checks that an admin endpoint asks for a credential
// (DESIGN.md I7): a token file, or an operator's client certificate
// through the tls block, unless the file says admin_insecure.
func (v *validator) adminCredential(cl *Cluster) {
	const key = "cluster"
	switch {
	case strings.ContainsRune(cl.AdminTokenFile, 0):
		v.fail(key+".admin_token_file", "must not contain a NUL byte")
	case v.set[key+".admin_token_file"] && cl.AdminTokenFile == "":
		v.fail(key+".admin_token_file", "must not be empty; name the file that holds the admin token (mode 0600)")
	case cl.AdminInsecure && cl.AdminTokenFile != "":
		v.fail(key+".admin_insecure", "is true, but admin_token_file is set too: remove one (admin_insecure serves the admin endpoint to anyone)")
	case cl.AdminListen != "" && cl.AdminTokenFile == "" && cl.TLS == nil && !cl.AdminInsecure &&
		!v.skip(key+".admin_listen") && !v.skip(key+".tls"):
		v.fail(key+".admin_listen", "the admin endpoint needs a credential: set admin_token_file to a file (mode 0600) holding a token, "+
			"or add a tls block (operators then present a client certificate with OU operator); admin_insecure = true serves it to anyone")
	}
}

// transport checks that the block says how members talk: TLS, or plain
// TCP asked for by name (secure by default, DESIGN.md I7).
func (v *validator) transport(cl *Cluster) {
	switch {
	case cl.TLS != nil && cl.Plaintext:
		v.fail("cluster.plaintext", "is true, but the block also has a tls block; remove one (plaintext = true turns TLS between members off)")
	case cl.TLS == nil && !cl.Plaintext && !v.skip("cluster.plaintext"):
		v.fail("cluster", "has no tls block: members authenticate each other with certificates (metrolun certs init, then metrolun certs issue NAME per member; see docs/security.md); "+
			"for unauthenticated plain TCP between members say plaintext = true")
	}
}

func (v *validator) preferences(cl *Cluster) {
	const key = "cluster"
	var data []string
	for _, m := range cl.Members {
		if m.Role == RoleData {
			data = append(data, m.Name)
		}
	}
	expected := "expected the name of a data member"
	if len(data) > 0 {
		expected = "expected one of " + strings.Join(data, ", ")
	}
	inits := map[string]string{}
	for i, p := range cl.Preferred {
		pk := fmt.Sprintf("%s.prefer[%d]", key, i)
		if err := checkISCSIName(p.Initiator); err != nil && p.Initiator != PreferEveryone {
			v.fail(pk+".initiator", "%v", err)
		} else if first, dup := inits[p.Initiator]; dup {
			v.fail(pk+".initiator", "%q already has a preferred site (%s)", p.Initiator, v.where(first+".initiator"))
		} else {
			inits[p.Initiator] = pk
		}
		var site *Member
		for j := range cl.Members {
			if cl.Members[j].Name == p.Site {
				site = &cl.Members[j]
				break
			}
		}
		switch {
		case p.Site == PreferAuto:
		case p.Site == "":
			v.fail(pk+".site", "is required: the data member this initiator prefers; %s, or %q", expected, PreferAuto)
		case site == nil:
			if !v.dropped[key+".member"] {
				v.fail(pk+".site", "%q is not a member; %s, or %q", p.Site, expected, PreferAuto)
			}
		case site.Role == RoleWitness:
			v.fail(pk+".site", "%q is a witness, which serves no iSCSI; %s", p.Site, expected)
		}
	}
}
