package conf

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// mustHCL parses src as a body with one argument, x.
func mustHCL(t *testing.T, src string) *hcl.BodyContent {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "d.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	content, diags := f.Body.Content(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "x"}}})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return content
}

func TestParseClusterExample(t *testing.T) {
	src, err := os.ReadFile("testdata/cluster-site-a.hcl")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse("testdata/cluster-site-a.hcl", src)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &Cluster{
		RaftListen:        "0.0.0.0:7400",
		ReplicationListen: "[::]:7401",
		AdminListen:       "192.0.2.10:7402",
		Lease:             1500 * time.Millisecond,
		ElectionTimeout:   500 * time.Millisecond,
		ReplicaTimeout:    3 * time.Second,
		ResyncBandwidth:   100 << 20,
		VerifyBandwidth:   10e6,
		RedirectLogins:    false,
		QuorumLoss:        QuorumLossPDL,
		TLS: &TLS{
			CA:   "/etc/metrolun/ca.pem",
			Cert: "/etc/metrolun/site-a.pem",
			Key:  "/etc/metrolun/site-a-key.pem",
		},
		Members: []Member{
			{
				Name: "site-a", Role: RoleData,
				Raft: "192.0.2.10:7400", Replication: "192.0.2.10:7401", Admin: "192.0.2.10:7402",
				ISCSI:       []string{"192.0.2.10:3260", "[2001:db8::10]:3260"},
				PortalGroup: 1,
			},
			{
				Name: "site-b", Role: RoleData,
				Raft: "wan-proxy.example.net:17400", Replication: "198.51.100.20:7401", Admin: "198.51.100.20:7402",
				ISCSI:       []string{"198.51.100.20:3260"},
				PortalGroup: 7,
			},
			{Name: "witness", Role: RoleWitness, Raft: "203.0.113.30:7400"},
		},
		Preferred: []Preference{
			{Initiator: "iqn.1994-05.com.redhat:host1", Site: "site-a"},
			{Initiator: "iqn.1991-05.com.microsoft:host2", Site: "site-b"},
		},
	}
	if !reflect.DeepEqual(got.Cluster, want) {
		t.Errorf("cluster:\ngot  %s\nwant %s", dump(got.Cluster), dump(want))
	}
	// The iscsi block leaves portal_group out: it is the member's.
	if got.ISCSI.PortalGroup != 1 || !reflect.DeepEqual(got.ISCSI.Listen, []string{"0.0.0.0:3260"}) {
		t.Errorf("iscsi: got portal group %d, listen %q", got.ISCSI.PortalGroup, got.ISCSI.Listen)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate of a parsed config: %v", err)
	}
	if s := got.Self(); s.Name != "site-a" || s.PortalGroup != 1 || s.Raft != "192.0.2.10:7400" {
		t.Errorf("Self: got %+v", s)
	}
	if m, ok := got.Member("site-b"); !ok || m.PortalGroup != 7 {
		t.Errorf("Member(site-b): got %+v, %v", m, ok)
	}
	if _, ok := got.Member("site-c"); ok {
		t.Error("Member(site-c): found")
	}
	if site, ok := got.Cluster.PreferredSite("IQN.1991-05.com.Microsoft:host2"); !ok || site != "site-b" {
		t.Errorf("PreferredSite: got %q, %v", site, ok)
	}
	if _, ok := got.Cluster.PreferredSite("iqn.1994-05.com.redhat:other"); ok {
		t.Error("PreferredSite of an initiator without a prefer block: found")
	}
	if ds := got.Cluster.DataMembers(); len(ds) != 2 || ds[0].Name != "site-a" || ds[1].Name != "site-b" {
		t.Errorf("DataMembers: got %s", dump(ds))
	}
}

func TestParseClusterWitness(t *testing.T) {
	c, err := Load("testdata/cluster-witness.hcl")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	cl := c.Cluster
	if c.Role != RoleWitness || len(c.Targets) != 0 || cl == nil {
		t.Fatalf("got %s", dump(c))
	}
	if cl.RaftListen != "203.0.113.30:7400" || cl.ReplicationListen != "" || cl.AdminListen != "203.0.113.30:7402" {
		t.Errorf("listen defaults: got raft %q, replication %q, admin %q", cl.RaftListen, cl.ReplicationListen, cl.AdminListen)
	}
	if cl.Lease != 1500*time.Millisecond || cl.ElectionTimeout != 500*time.Millisecond || cl.ReplicaTimeout != 3*time.Second {
		t.Errorf("timings: got %v %v %v", cl.Lease, cl.ElectionTimeout, cl.ReplicaTimeout)
	}
	if cl.AdminTokenFile != "/etc/metrolun/admin.token" || cl.AdminInsecure || cl.AdminPublicMetrics {
		t.Errorf("admin credential: got token file %q, insecure %v, public metrics %v", cl.AdminTokenFile, cl.AdminInsecure, cl.AdminPublicMetrics)
	}
	if s := c.Self(); s.Role != RoleWitness || s.PortalGroup != 0 {
		t.Errorf("Self: got %+v", s)
	}
}

// clusterSrc is a valid data site "a" of a cluster with members a, b and
// w. The cluster block opens on line 7; extra goes at its start, on line 8
// and after. It says plaintext = true (last in the block) unless extra
// has a tls block.
func clusterSrc(extra ...string) string {
	var b strings.Builder
	b.WriteString("name = \"a\"\n" + strings.TrimPrefix(okTarget, "\n") + "cluster {\n")
	for _, l := range extra {
		b.WriteString("  " + l + "\n")
	}
	tlsBlock := slices.ContainsFunc(extra, func(l string) bool { return strings.HasPrefix(l, "tls") })
	b.WriteString(`  member "a" {
    raft = "10.0.0.1:7400"
    replication = "10.0.0.1:7401"
  }
  member "b" {
    raft = "10.0.0.2:7400"
    replication = "10.0.0.2:7401"
  }
  member "w" {
    role = "witness"
    raft = "10.0.0.3:7400"
  }
`)
	if !tlsBlock {
		b.WriteString("  plaintext = true\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// TestParseClusterJoin: join is off by default and read when set.
func TestParseClusterJoin(t *testing.T) {
	if c := mustParse(t, clusterSrc()); c.Cluster.Join {
		t.Fatal("join is on by default")
	}
	if c := mustParse(t, clusterSrc("join = true")); !c.Cluster.Join {
		t.Fatal("join = true not read")
	}
}

func TestParseClusterDefaults(t *testing.T) {
	c := mustParse(t, clusterSrc())
	want := &Cluster{
		RaftListen:        "10.0.0.1:7400",
		ReplicationListen: "10.0.0.1:7401",
		Lease:             DefaultLease,
		ElectionTimeout:   DefaultElectionTimeout,
		ReplicaTimeout:    DefaultReplicaTimeout,
		RedirectLogins:    true,
		QuorumLoss:        QuorumLossTransitioning,
		Plaintext:         true,
		Members: []Member{
			{Name: "a", Role: RoleData, Raft: "10.0.0.1:7400", Replication: "10.0.0.1:7401", PortalGroup: 1},
			{Name: "b", Role: RoleData, Raft: "10.0.0.2:7400", Replication: "10.0.0.2:7401", PortalGroup: 2},
			{Name: "w", Role: RoleWitness, Raft: "10.0.0.3:7400"},
		},
	}
	if !reflect.DeepEqual(c.Cluster, want) {
		t.Errorf("got  %s\nwant %s", dump(c.Cluster), dump(want))
	}
	if c.ISCSI.PortalGroup != 1 {
		t.Errorf("iscsi.portal_group: got %d, want 1 from the member block", c.ISCSI.PortalGroup)
	}

	// Site b takes portal group 2 from its position; an explicit
	// iscsi.portal_group that agrees is fine.
	src := strings.Replace(clusterSrc(), `name = "a"`, "name = \"b\"\niscsi {\n  portal_group = 2\n}", 1)
	c = mustParse(t, src)
	if c.ISCSI.PortalGroup != 2 || c.Cluster.RaftListen != "10.0.0.2:7400" {
		t.Errorf("site b: got portal group %d, raft_listen %q", c.ISCSI.PortalGroup, c.Cluster.RaftListen)
	}

	// Without a cluster block nothing changes.
	c = mustParse(t, `name = "a"`+okTarget)
	if c.Cluster != nil {
		t.Errorf("standalone: Cluster = %s", dump(c.Cluster))
	}
	if s := c.Self(); !reflect.DeepEqual(s, Member{Name: "a", Role: RoleData, PortalGroup: 1}) {
		t.Errorf("standalone Self: got %+v", s)
	}
	if m, ok := c.Member("a"); !ok || m.Name != "a" {
		t.Errorf("standalone Member(a): got %+v, %v", m, ok)
	}
	if _, ok := c.Member("b"); ok {
		t.Error("standalone Member(b): found")
	}
	if _, ok := c.Cluster.PreferredSite("iqn.1994-05.com.redhat:x"); ok {
		t.Error("PreferredSite on a nil Cluster: found")
	}
}

func TestDurations(t *testing.T) {
	cases := []struct {
		in   string
		want time.Duration
	}{
		{`5`, 5 * time.Second},
		{`0.25`, 250 * time.Millisecond},
		{`1.5`, 1500 * time.Millisecond},
		{`0.1`, 100 * time.Millisecond},
		{`1e-9`, time.Nanosecond},
		{`"500ms"`, 500 * time.Millisecond},
		{`"1s"`, time.Second},
		{`"1.5s"`, 1500 * time.Millisecond},
		{`"2m"`, 2 * time.Minute},
		{`"1m30s"`, 90 * time.Second},
		{`" 750ms "`, 750 * time.Millisecond},
		{`"0"`, 0},
		{`0`, 0},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			var got time.Duration
			d := newDecoder()
			f := mustHCL(t, "x = "+tc.in)
			s := d.scope("", f, f.MissingItemRange)
			s.duration("x", &got)
			if len(d.problems) > 0 || got != tc.want {
				t.Errorf("got %v, %v; want %v", got, d.problems, tc.want)
			}
		})
	}
	// Both forms in a file, on old and new keys.
	c := mustParse(t, strings.Replace(clusterSrc(`lease = 0.5`, `election_timeout = "250ms"`, `replica_timeout = 2`),
		`name = "a"`, "name = \"a\"\niscsi {\n  nop_interval = \"2500ms\"\n  nop_timeout = 7.5\n}", 1))
	if c.ISCSI.NOPInterval != 2500*time.Millisecond || c.ISCSI.NOPTimeout != 7500*time.Millisecond {
		t.Errorf("nop: got %v, %v", c.ISCSI.NOPInterval, c.ISCSI.NOPTimeout)
	}
	if cl := c.Cluster; cl.Lease != 500*time.Millisecond || cl.ElectionTimeout != 250*time.Millisecond || cl.ReplicaTimeout != 2*time.Second {
		t.Errorf("cluster: got %v, %v, %v", cl.Lease, cl.ElectionTimeout, cl.ReplicaTimeout)
	}
}

func TestBandwidth(t *testing.T) {
	for in, want := range map[string]int64{
		`0`: 0, `"0"`: 0, `1048576`: 1 << 20, `"100M"`: 100 << 20, `"100MB"`: 100e6,
		`"1.5GiB/s"`: 3 << 29, `"10 MiB/s"`: 10 << 20,
	} {
		c := mustParse(t, clusterSrc("resync_bandwidth = "+in, "verify_bandwidth = "+in))
		if c.Cluster.ResyncBandwidth != want || c.Cluster.VerifyBandwidth != want {
			t.Errorf("%s: got %d, %d; want %d", in, c.Cluster.ResyncBandwidth, c.Cluster.VerifyBandwidth, want)
		}
	}
}

// TestClusterProblems holds one case per cluster rule, as TestProblems
// does for the rest. clusterSrc's cluster block opens on line 7 and extra
// lines start on line 8.
func TestClusterProblems(t *testing.T) {
	type tc struct {
		name string
		src  string
		want []string // "LINE:COL fragment"
	}
	cases := []tc{
		// The block itself.
		{"cluster twice", clusterSrc() + "cluster {\n}\n",
			[]string{"22:1 cluster: only one cluster block is allowed here; the first is on line 7"}},
		{"unknown key", clusterSrc(`raft = "x"`),
			[]string{`8:3 Unsupported argument: An argument named "raft" is not expected here. Arguments allowed here: raft_listen, replication_listen, admin_listen`}},
		{"empty cluster", "name = \"a\"" + okTarget + "cluster {\n}\n",
			[]string{`7:1 cluster: expected a member block for every member of the cluster, this one ("a") included, and at least one with role = "data"`,
				"7:1 cluster: has no tls block: members authenticate each other with certificates"}},
		{"plaintext and tls", clusterSrc(`tls {`, `  ca = "ca.pem"`, `  cert = "a.pem"`, `  key = "a-key.pem"`, `}`, `plaintext = true`),
			[]string{"13:15 cluster.plaintext: is true, but the block also has a tls block; remove one"}},
		{"this member missing", strings.Replace(clusterSrc(), `member "a"`, `member "c"`, 1),
			[]string{`7:1 cluster: has no member block for this member (name = "a"); list every member, this one included`}},
		{"member without label", "name = \"a\"" + okTarget + "cluster {\n  member {\n  }\n  plaintext = true\n}\n",
			[]string{"8:10 Missing name for member"}},

		// Member blocks.
		{"member twice", clusterSrc(`member "b" {`, `  raft = "10.0.0.9:7400"`, `  replication = "10.0.0.9:7401"`, `}`),
			[]string{`16:10 cluster.member[2].name: member "b" is defined twice (also cluster.member[0].name on line 8)`}},
		{"member bad name", strings.Replace(clusterSrc(), `member "b"`, `member "Site_B"`, 1),
			[]string{`12:10 cluster.member[1].name: "Site_B" contains 'S'`}},
		{"member bad role", strings.Replace(clusterSrc(), `role = "witness"`, `role = "voter"`, 1),
			[]string{`17:12 cluster.member[2].role: expected "data" or "witness", got "voter"`}},
		{"own role differs", strings.Replace(clusterSrc(), `name = "a"`, "name = \"w\"\nrole = \"data\"", 1),
			[]string{`18:12 cluster.member[2].role: is "witness", but this block is this member's own (name = "w") and the top-level role is "data"; the two must agree`}},
		{"no data member", "name = \"w\"\nrole = \"witness\"\ncluster {\n  member \"w\" {\n    role = \"witness\"\n    raft = \"10.0.0.3:7400\"\n  }\n  plaintext = true\n}\n",
			[]string{`3:1 cluster.member: expected at least one member with role = "data"; a witness alone holds no data`}},
		{"raft missing", strings.Replace(clusterSrc(), "    raft = \"10.0.0.2:7400\"\n", "", 1),
			[]string{"12:3 cluster.member[1].raft: is required: the host:port other members dial for Raft"}},
		{"raft without port", strings.Replace(clusterSrc(), `"10.0.0.2:7400"`, `"10.0.0.2"`, 1),
			[]string{`13:12 cluster.member[1].raft: "10.0.0.2": expected host:port with an explicit port`}},
		{"raft bad host", strings.Replace(clusterSrc(), `"10.0.0.2:7400"`, `"10.0.0.256:7400"`, 1),
			[]string{`13:12 cluster.member[1].raft: "10.0.0.256:7400": host "10.0.0.256" is not a valid IP address`}},
		{"raft wildcard", strings.Replace(clusterSrc(), `"10.0.0.2:7400"`, `"0.0.0.0:7400"`, 1),
			[]string{"13:12 cluster.member[1].raft: 0.0.0.0:7400 means every local address; other members dial this one"}},
		{"raft empty host", strings.Replace(clusterSrc(), `"10.0.0.2:7400"`, `":7400"`, 1),
			[]string{"13:12 cluster.member[1].raft: :7400 means every local address"}},
		{"raft shared", strings.Replace(clusterSrc(), `"10.0.0.3:7400"`, `"10.0.0.2:7400"`, 1),
			[]string{"18:12 cluster.member[2].raft: 10.0.0.2:7400 is also cluster.member[1].raft on line 13; no two members"}},
		{"replication shared after normalising", strings.Replace(clusterSrc(), `"10.0.0.2:7401"`, `"10.0.0.01:7401"`, 1),
			[]string{`14:19 cluster.member[1].replication: "10.0.0.01:7401": host "10.0.0.01" is not a valid IP address`}},
		{"replication is raft of another", strings.Replace(clusterSrc(), `"10.0.0.2:7401"`, `"10.0.0.1:7400"`, 1),
			[]string{"14:19 cluster.member[1].replication: 10.0.0.1:7400 is also cluster.member[0].raft on line 9"}},
		{"data member without replication", strings.Replace(clusterSrc(), "    replication = \"10.0.0.2:7401\"\n", "", 1),
			[]string{"12:3 cluster.member[1].replication: is required on a data member"}},
		{"raft wrong type", strings.Replace(clusterSrc(), `"10.0.0.2:7400"`, `7400`, 1),
			[]string{"13:12 cluster.member[1].raft: expected a string, got number"}},
		{"admin bad", strings.Replace(clusterSrc(), "    raft = \"10.0.0.2:7400\"\n", "    raft = \"10.0.0.2:7400\"\n    admin = \"\"\n", 1),
			[]string{"14:13 cluster.member[1].admin: empty address; expected host:port"}},
		{"iscsi portal bad and wildcard", strings.Replace(clusterSrc(), "    raft = \"10.0.0.2:7400\"\n", "    raft = \"10.0.0.2:7400\"\n    iscsi = [\"10.0.0.2\", \"h:x\", \"[::]\", \"10.0.0.1:7400\"]\n", 1),
			[]string{
				`14:26 cluster.member[1].iscsi[1]: "h:x": port "x" is not a number`,
				"14:33 cluster.member[1].iscsi[2]: [::]:3260 means every local address; initiators dial this one",
				"14:41 cluster.member[1].iscsi[3]: 10.0.0.1:7400 is also cluster.member[0].raft on line 9",
			}},
		{"portal group out of range", strings.Replace(clusterSrc(), "    raft = \"10.0.0.2:7400\"\n", "    raft = \"10.0.0.2:7400\"\n    portal_group = 65536\n", 1),
			[]string{"14:20 cluster.member[1].portal_group: must be between 1 and 65535, got 65536"}},
		{"portal group twice", strings.Replace(clusterSrc(), "    raft = \"10.0.0.2:7400\"\n", "    raft = \"10.0.0.2:7400\"\n    portal_group = 1\n", 1),
			[]string{"14:20 cluster.member[1].portal_group: portal group 1 is also cluster.member[0].portal_group on line 8; every data member needs its own"}},
		{"portal group default collides", strings.Replace(clusterSrc(), "    raft = \"10.0.0.1:7400\"\n", "    raft = \"10.0.0.1:7400\"\n    portal_group = 2\n", 1),
			[]string{
				"13:3 cluster.member[1].portal_group: portal group 2 is also cluster.member[0].portal_group on line 10; every data member needs its own (when left out it is the member's 1-based position among the data members)",
			}},
		{"witness with data keys", strings.Replace(clusterSrc(), "    role = \"witness\"\n", "    role = \"witness\"\n    replication = \"10.0.0.3:7401\"\n    iscsi = []\n    portal_group = 0\n", 1),
			[]string{
				"18:19 cluster.member[2].replication: a witness holds no data; remove replication",
				"19:13 cluster.member[2].iscsi: a witness serves no iSCSI; remove iscsi",
				"20:20 cluster.member[2].portal_group: a witness has no portal group; remove portal_group",
			}},
		{"iscsi portal group disagrees", strings.Replace(clusterSrc(), `name = "a"`, "name = \"a\"\niscsi {\n  portal_group = 5\n}", 1),
			[]string{"3:18 iscsi.portal_group: is 5, but this site's member block says 1 (cluster.member[0].portal_group on line 11); they must agree"}},

		// Listen addresses.
		{"raft_listen without port", clusterSrc(`raft_listen = "0.0.0.0"`),
			[]string{`8:17 cluster.raft_listen: "0.0.0.0": expected host:port with an explicit port`}},
		{"listen wildcards are fine, clashes are not", clusterSrc(`raft_listen = ":7400"`, `replication_listen = "0.0.0.0:7400"`, `admin_listen = "[::]:3260"`),
			[]string{
				"9:24 cluster.replication_listen: 0.0.0.0:7400 clashes with cluster.raft_listen on line 8 (:7400): both would bind port 7400",
				"10:18 cluster.admin_listen: [::]:3260 clashes with",
				"10:18 cluster.admin_listen: the admin endpoint needs a credential",
			}},
		{"listen clashes with a defaulted one", clusterSrc(`admin_listen = "10.0.0.1:7401"`, `admin_insecure = true`),
			[]string{"8:18 cluster.admin_listen: 10.0.0.1:7401 clashes with cluster.replication_listen on line 7 (10.0.0.1:7401)"}},

		// The admin endpoint's credential.
		{"admin without credential", clusterSrc(`admin_listen = "10.0.0.1:7402"`),
			[]string{"8:18 cluster.admin_listen: the admin endpoint needs a credential: set admin_token_file"}},
		{"admin member without credential", strings.Replace(clusterSrc(), "    replication = \"10.0.0.1:7401\"\n", "    replication = \"10.0.0.1:7401\"\n    admin = \"10.0.0.1:7402\"\n", 1),
			[]string{"7:1 cluster.admin_listen: the admin endpoint needs a credential"}},
		{"admin token file empty", clusterSrc(`admin_token_file = ""`),
			[]string{"8:22 cluster.admin_token_file: must not be empty"}},
		{"admin insecure and token", clusterSrc(`admin_token_file = "/t"`, `admin_insecure = true`),
			[]string{"9:20 cluster.admin_insecure: is true, but admin_token_file is set too"}},
		{"admin public metrics not a bool", clusterSrc(`admin_public_metrics = "yes"`),
			[]string{"8:26 cluster.admin_public_metrics: expected true or false"}},
		{"iscsi listen clashes", strings.Replace(clusterSrc(), `name = "a"`, "name = \"a\"\niscsi {\n  listen = [\"10.0.0.1:7400\"]\n}", 1),
			[]string{"3:13 iscsi.listen[0]: 10.0.0.1:7400 clashes with cluster.raft_listen on line 10 (10.0.0.1:7400)"}},
		{"listen set to empty", clusterSrc(`raft_listen = ""`),
			[]string{"8:17 cluster.raft_listen: is required: the host:port to bind for Raft"}},
		{"witness replication_listen", "name = \"w\"\nrole = \"witness\"\ncluster {\n  replication_listen = \"10.0.0.3:7401\"\n  member \"a\" {\n    raft = \"10.0.0.1:7400\"\n    replication = \"10.0.0.1:7401\"\n  }\n  member \"w\" {\n    role = \"witness\"\n    raft = \"10.0.0.3:7400\"\n  }\n  plaintext = true\n}\n",
			[]string{"4:24 cluster.replication_listen: a witness holds no data; remove replication_listen"}},
		{"witness with target", strings.Replace(clusterSrc(), `name = "a"`, "name = \"w\"\nrole = \"witness\"", 1),
			[]string{"3:1 target[0]: a witness serves no iSCSI targets"}},

		// Backing store paths of a data member (its image identity).
		{"path inside data_dir/raft", strings.Replace(strings.Replace(clusterSrc(), `name = "a"`, "name = \"a\"\ndata_dir = \"/srv/m\"", 1), `"/srv/ok.img"`, `"/srv/m/raft/lun.img"`, 1),
			[]string{`5:12 target[0].lun[0].path: "/srv/m/raft/lun.img" is inside /srv/m/raft, where metrolun keeps this member's cluster state`}},
		{"path names a directory", strings.Replace(clusterSrc(), `"/srv/ok.img"`, `"/srv/disk/"`, 1),
			[]string{`4:12 target[0].lun[0].path: "/srv/disk/" names a directory; expected a backing file or block device`}},

		// Joining a running cluster.
		{"join without the cluster", "name = \"a\"" + okTarget + "cluster {\n  join = true\n  member \"a\" {\n    raft = \"10.0.0.1:7400\"\n    replication = \"10.0.0.1:7401\"\n  }\n  plaintext = true\n}\n",
			[]string{"8:10 cluster.join: this member waits to be added to a running cluster, but the block lists no other member"}},
		{"join not a bool", clusterSrc(`join = "yes"`),
			[]string{"8:10 cluster.join: expected true or false"}},

		// Timings and bandwidths.
		{"lease zero", clusterSrc(`lease = 0`),
			[]string{"8:11 cluster.lease: must be between 10ms and 10m, got 0s"}},
		{"election_timeout too long", clusterSrc(`election_timeout = "1h"`),
			[]string{"8:22 cluster.election_timeout: must be between 10ms and 10m, got 1h0m0s"}},
		{"replica_timeout negative", clusterSrc(`replica_timeout = "-3s"`),
			[]string{"8:21 cluster.replica_timeout: must be between 10ms and 10m, got -3s"}},
		{"replica_timeout not over lease", clusterSrc(`lease = "2s"`, `replica_timeout = 2`),
			[]string{"9:21 cluster.replica_timeout: 2s must be longer than lease (2s)"}},
		{"lease over default replica_timeout", clusterSrc(`lease = "5s"`),
			[]string{"8:11 cluster.lease: 5s must be shorter than replica_timeout (2s, the default)"}},
		{"duration without unit", clusterSrc(`lease = "5"`),
			[]string{`8:11 cluster.lease: duration "5" has no unit; write 5 (a number of seconds) or "5s"`}},
		{"duration bad unit", clusterSrc(`lease = "5 sec"`),
			[]string{`8:11 cluster.lease: invalid duration "5 sec": expected a number and a unit (ns, us, ms, s, m, h)`}},
		{"duration wrong type", clusterSrc(`lease = true`),
			[]string{`8:11 cluster.lease: expected a duration, a number of seconds or a string such as "500ms" or "1s", got bool`}},
		{"duration huge", clusterSrc(`lease = 1e10`),
			[]string{"8:11 cluster.lease: 1e+10 seconds is out of range"}},
		{"nop_interval string", strings.Replace(clusterSrc(), `name = "a"`, "name = \"a\"\niscsi {\n  nop_interval = \"2h\"\n}", 1),
			[]string{"3:18 iscsi.nop_interval: must be between 0 and 3600 seconds, got 2h0m0s"}},
		{"bandwidth negative", clusterSrc(`resync_bandwidth = -1`),
			[]string{"8:22 cluster.resync_bandwidth: must not be negative, got -1; 0 means unlimited"}},
		{"bandwidth bad unit", clusterSrc(`verify_bandwidth = "10 Mbit"`),
			[]string{`8:22 cluster.verify_bandwidth: invalid size "10 Mbit": unknown unit`}},
		{"bandwidth fraction", clusterSrc(`verify_bandwidth = 1.5`),
			[]string{"8:22 cluster.verify_bandwidth: expected a whole number, got 1.5"}},
		{"bandwidth wrong type", clusterSrc(`verify_bandwidth = false`),
			[]string{`8:22 cluster.verify_bandwidth: expected bytes per second, a number or a string such as "100M" or "1GiB/s", got bool`}},

		// TLS.
		{"tls empty", clusterSrc(`tls {`, `}`),
			[]string{"8:3 cluster.tls: expected ca, cert and key (PEM files); for plain TCP between members replace the block with plaintext = true"}},
		{"tls partial", clusterSrc(`tls {`, `  ca = "ca.pem"`, `}`),
			[]string{
				"8:3 cluster.tls.cert: is required: TLS between members needs ca, cert and key",
				"8:3 cluster.tls.key: is required",
			}},
		{"tls twice", clusterSrc(`tls {`, `  ca = "a"`, `  cert = "b"`, `  key = "c"`, `}`, `tls {`, `}`),
			[]string{"13:3 cluster.tls: only one tls block is allowed here; the first is on line 8"}},
		{"tls wrong type", clusterSrc(`tls {`, `  ca = "a"`, `  cert = 1`, `  key = "c"`, `}`),
			[]string{"10:12 cluster.tls.cert: expected a string, got number"}},

		// Preferences.
		{"prefer bad initiator", clusterSrc(`prefer {`, `  initiator = "iqn.1994-05.com.RedHat:h"`, `  site = "a"`, `}`),
			[]string{`9:17 cluster.prefer[0].initiator: "iqn.1994-05.com.RedHat:h": iSCSI names are lower case`}},
		{"prefer missing initiator", clusterSrc(`prefer {`, `  site = "a"`, `}`),
			[]string{"8:3 cluster.prefer[0].initiator: must not be empty"}},
		{"prefer initiator twice", clusterSrc(`prefer {`, `  initiator = "iqn.1994-05.com.redhat:h"`, `  site = "a"`, `}`, `prefer {`, `  initiator = "iqn.1994-05.com.redhat:h"`, `  site = "b"`, `}`),
			[]string{`13:17 cluster.prefer[1].initiator: "iqn.1994-05.com.redhat:h" already has a preferred site (cluster.prefer[0].initiator on line 9)`}},
		{"prefer unknown site", clusterSrc(`prefer {`, `  initiator = "iqn.1994-05.com.redhat:h"`, `  site = "c"`, `}`),
			[]string{`10:12 cluster.prefer[0].site: "c" is not a member; expected one of a, b`}},
		{"prefer witness", clusterSrc(`prefer {`, `  initiator = "iqn.1994-05.com.redhat:h"`, `  site = "w"`, `}`),
			[]string{`10:12 cluster.prefer[0].site: "w" is a witness, which serves no iSCSI; expected one of a, b`}},
		{"prefer missing site", clusterSrc(`prefer {`, `  initiator = "iqn.1994-05.com.redhat:h"`, `}`),
			[]string{"8:3 cluster.prefer[0].site: is required"}},
		{"prefer with a label", clusterSrc(`prefer "a" {`, `  initiator = "iqn.1994-05.com.redhat:h"`, `}`),
			[]string{"8:10 Extraneous label for prefer"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("t.hcl", []byte(tc.src))
			if err == nil {
				t.Fatalf("no error; config %s\nsource:\n%s", dump(c), tc.src)
			}
			ps := problemsOf(t, err)
			if len(ps) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%v\nsource:\n%s", len(ps), len(tc.want), err, tc.src)
			}
			for i, w := range tc.want {
				at, frag, _ := strings.Cut(w, " ")
				p := ps[i]
				if got := fmt.Sprintf("%d:%d", p.Line, p.Col); got != at || p.File != "t.hcl" {
					t.Errorf("problem %d at %s:%s, want t.hcl:%s: %s", i, p.File, got, at, p.Msg)
				}
				if !strings.Contains(p.Msg, frag) {
					t.Errorf("problem %d: %q does not contain %q", i, p.Msg, frag)
				}
			}
		})
	}
}

func TestClusterValidateInCode(t *testing.T) {
	cases := []struct {
		name   string
		modify func(c *Config)
		want   []string // exact messages, in order
	}{
		{"default is valid", func(c *Config) {}, nil},
		{"empty block", func(c *Config) { c.Cluster = &Cluster{} }, []string{
			`cluster: expected a member block for every member of the cluster, this one ("site-a") included, and at least one with role = "data"`,
			"cluster.lease: must be between 10ms and 10m, got 0s",
			"cluster.election_timeout: must be between 10ms and 10m, got 0s",
			"cluster.replica_timeout: must be between 10ms and 10m, got 0s",
			"cluster: has no tls block: members authenticate each other with certificates (metrolun certs init, then metrolun certs issue NAME per member; see docs/security.md); for unauthenticated plain TCP between members say plaintext = true",
			`cluster.quorum_loss: expected "transitioning" or "pdl", got ""`,
		}},
		{"quorum_loss", func(c *Config) { c.Cluster.QuorumLoss = "apd" }, []string{
			`cluster.quorum_loss: expected "transitioning" or "pdl", got "apd"`,
		}},
		{"listen addresses are not filled in", func(c *Config) {
			c.Cluster.RaftListen, c.Cluster.ReplicationListen, c.Cluster.AdminListen = "", "", ""
		}, []string{
			"cluster.raft_listen: is required: the host:port to bind for Raft",
			"cluster.replication_listen: is required: the host:port to bind for replication",
		}},
		{"self missing", func(c *Config) { c.Name = "site-z" }, []string{
			`cluster: has no member block for this member (name = "site-z"); list every member, this one included`,
		}},
		{"role differs", func(c *Config) { c.Cluster.Members[0].Role = RoleWitness }, []string{
			"cluster.member[0].replication: a witness holds no data; remove replication",
			"cluster.member[0].iscsi: a witness serves no iSCSI; remove iscsi",
			"cluster.member[0].portal_group: a witness has no portal group; remove portal_group",
			`cluster.member[0].role: is "witness", but this block is this member's own (name = "site-a") and the top-level role is "data"; the two must agree`,
		}},
		{"addresses are compared normalised", func(c *Config) { c.Cluster.Members[1].Raft = "127.0.0.01:7400" }, []string{
			`cluster.member[1].raft: "127.0.0.01:7400": host "127.0.0.01" is not a valid IP address`,
		}},
		{"raft shared", func(c *Config) { c.Cluster.Members[2].Raft = "127.0.0.2:7400" }, []string{
			"cluster.member[2].raft: 127.0.0.2:7400 is also cluster.member[1].raft; no two members, and no two services of a member, can share an address",
		}},
		{"portal groups", func(c *Config) { c.Cluster.Members[1].PortalGroup = 1; c.Cluster.Members[2].PortalGroup = 2 }, []string{
			"cluster.member[1].portal_group: portal group 1 is also cluster.member[0].portal_group; every data member needs its own (when left out it is the member's 1-based position among the data members)",
			"cluster.member[2].portal_group: a witness has no portal group; remove portal_group",
		}},
		{"portal group zero", func(c *Config) { c.Cluster.Members[1].PortalGroup = 0 }, []string{
			"cluster.member[1].portal_group: must be between 1 and 65535, got 0",
		}},
		{"iscsi portal group", func(c *Config) { c.ISCSI.PortalGroup = 2 }, []string{
			"iscsi.portal_group: is 2, but this site's member block says 1 (cluster.member[0].portal_group); they must agree: leave iscsi.portal_group out to use the member's",
		}},
		{"timings", func(c *Config) { c.Cluster.ReplicaTimeout = c.Cluster.Lease }, []string{
			"cluster.replica_timeout: 300ms must be longer than lease (300ms): a replica is dropped only after a whole lease without an answer",
		}},
		{"bandwidths", func(c *Config) { c.Cluster.ResyncBandwidth, c.Cluster.VerifyBandwidth = -1, -2 }, []string{
			"cluster.resync_bandwidth: must not be negative, got -1; 0 means unlimited",
			"cluster.verify_bandwidth: must not be negative, got -2; 0 means unlimited",
		}},
		{"tls", func(c *Config) { c.Cluster.TLS = &TLS{Cert: "c.pem", Key: "k\x00.pem"} }, []string{
			"cluster.tls.key: must not contain a NUL byte",
			"cluster.tls.ca: is required: TLS between members needs ca, cert and key",
		}},
		{"tls complete", func(c *Config) { c.Cluster.TLS = &TLS{CA: "ca.pem", Cert: "c.pem", Key: "k.pem"} }, nil},
		{"preferences", func(c *Config) {
			c.Cluster.Preferred = []Preference{
				{Initiator: "iqn.1994-05.com.redhat:h", Site: "site-b"},
				{Initiator: "iqn.1994-05.com.redhat:h", Site: "witness"},
				{Initiator: "host-c"},
			}
		}, []string{
			`cluster.prefer[1].initiator: "iqn.1994-05.com.redhat:h" already has a preferred site (cluster.prefer[0].initiator)`,
			`cluster.prefer[1].site: "witness" is a witness, which serves no iSCSI; expected one of site-a, site-b`,
			`cluster.prefer[2].initiator: "host-c": expected a name starting with iqn., eui. or naa. (RFC 7143 §4.2.7)`,
			"cluster.prefer[2].site: is required: the data member this initiator prefers; expected one of site-a, site-b, or \"auto\"",
		}},
		{"no cluster", func(c *Config) { c.Cluster = nil }, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultCluster(t.TempDir(), 2, true)[0]
			tc.modify(c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var got []string
			for _, p := range problemsOf(t, err) {
				got = append(got, p.String())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestDefaultCluster(t *testing.T) {
	dir := filepath.Join("some", "dir")
	for _, sites := range []int{1, 2, 3, 27} {
		for _, witness := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d-%v", sites, witness), func(t *testing.T) {
				cs := DefaultCluster(dir, sites, witness)
				n := sites
				if witness {
					n++
				}
				if len(cs) != n {
					t.Fatalf("got %d configs, want %d", len(cs), n)
				}
				for i, c := range cs {
					if err := c.Validate(); err != nil {
						t.Errorf("config %d (%s): %v", i, c.Name, err)
					}
					if !reflect.DeepEqual(c.Cluster.Members, cs[0].Cluster.Members) {
						t.Errorf("config %d lists other members than config 0", i)
					}
					if len(c.Cluster.Members) != n {
						t.Errorf("config %d: %d members, want %d", i, len(c.Cluster.Members), n)
					}
					if i > 0 && &c.Cluster.Members[0] == &cs[0].Cluster.Members[0] {
						t.Errorf("config %d shares its member slice with config 0", i)
					}
					if c.DataDir != filepath.Join(dir, c.Name) {
						t.Errorf("config %d: data_dir %q", i, c.DataDir)
					}
				}
				if witness {
					w := cs[sites]
					ip := fmt.Sprintf("127.0.0.%d", sites+1)
					want := Member{Name: "witness", Role: RoleWitness, Raft: ip + ":7400", Admin: ip + ":7402"}
					if w.Role != RoleWitness || len(w.Targets) != 0 || !reflect.DeepEqual(w.Self(), want) {
						t.Errorf("witness: got %s", dump(w))
					}
					if w.Cluster.RaftListen != want.Raft || w.Cluster.ReplicationListen != "" || w.Cluster.AdminListen != want.Admin {
						t.Errorf("witness listens: got %s", dump(w.Cluster))
					}
				}
			})
		}
	}
	cs := DefaultCluster(dir, 2, true)
	b := cs[1]
	wantB := Member{
		Name: "site-b", Role: RoleData,
		Raft: "127.0.0.2:7400", Replication: "127.0.0.2:7401", Admin: "127.0.0.2:7402",
		ISCSI: []string{"127.0.0.2:3260"}, PortalGroup: 2,
	}
	if !reflect.DeepEqual(b.Self(), wantB) {
		t.Errorf("site-b: got %+v, want %+v", b.Self(), wantB)
	}
	if b.Name != "site-b" || b.Role != RoleData || b.ISCSI.PortalGroup != 2 ||
		!reflect.DeepEqual(b.ISCSI.Listen, []string{"127.0.0.2:3260"}) ||
		b.Cluster.RaftListen != "127.0.0.2:7400" || b.Cluster.ReplicationListen != "127.0.0.2:7401" || b.Cluster.AdminListen != "127.0.0.2:7402" {
		t.Errorf("site-b: got %s", dump(b))
	}
	if len(b.Targets) != 1 || b.Targets[0].Name != "iqn.2026-11.io.metrolun:demo" || len(b.Targets[0].LUNs) != 1 {
		t.Fatalf("site-b targets: got %s", dump(b.Targets))
	}
	if l := b.Targets[0].LUNs[0]; l.ID != 0 || l.Path != filepath.Join(dir, "site-b", "lun0.img") || l.Size != 1<<30 {
		t.Errorf("site-b LUN: got %+v", l)
	}
	cl := b.Cluster
	if cl.Lease != DefaultLease || cl.ElectionTimeout != DefaultElectionTimeout || cl.ReplicaTimeout != DefaultReplicaTimeout ||
		cl.TLS == nil || cl.TLS.CA != filepath.Join(dir, "pki", "ca.pem") || cl.TLS.Cert != filepath.Join(dir, "pki", "site-b.pem") ||
		cl.TLS.Key != filepath.Join(dir, "pki", "site-b-key.pem") || cl.Plaintext || cl.Preferred != nil || cl.ResyncBandwidth != 0 {
		t.Errorf("site-b cluster: got %s", dump(cl))
	}
	if names := DefaultCluster(dir, 28, false); names[25].Name != "site-z" || names[26].Name != "site-aa" || names[27].Name != "site-ab" {
		t.Errorf("names after site-z: %s, %s, %s", names[25].Name, names[26].Name, names[27].Name)
	}

	// Ports are a parameter.
	cs = DefaultClusterPorts(dir, 1, true, 13260, 17400)
	if cs[0].ISCSI.Listen[0] != "127.0.0.1:13260" || cs[1].Cluster.RaftListen != "127.0.0.2:17400" || cs[0].Cluster.AdminListen != "127.0.0.1:17402" {
		t.Errorf("ports: got %s", dump(cs))
	}
	for i, c := range cs {
		if err := c.Validate(); err != nil {
			t.Errorf("DefaultClusterPorts config %d: %v", i, err)
		}
	}
	if cs := DefaultCluster(dir, 253, true); len(cs) != 254 || cs[253].Cluster.RaftListen != "127.0.0.254:7400" {
		t.Errorf("254 members: got %d", len(cs))
	}

	for _, bad := range []func(){
		func() { DefaultCluster(dir, 0, true) },
		func() { DefaultCluster(dir, 254, true) },
		func() { DefaultClusterPorts(dir, 1, false, 3260, 65534) },
		func() { DefaultClusterPorts(dir, 1, false, 0, 7400) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("expected a panic")
				}
			}()
			bad()
		}()
	}
}

// TestReferenceExamplesParse parses every ```hcl block in REFERENCE.md;
// TestReferenceExampleParses covers the first.
func TestReferenceExamplesParse(t *testing.T) {
	ref, err := os.ReadFile("REFERENCE.md")
	if err != nil {
		t.Fatal(err)
	}
	rest := string(ref)
	n := 0
	for {
		var ok bool
		_, rest, ok = strings.Cut(rest, "```hcl\n")
		if !ok {
			break
		}
		var block string
		if block, rest, ok = strings.Cut(rest, "```"); !ok {
			t.Fatal("unterminated ```hcl block in REFERENCE.md")
		}
		n++
		c, err := Parse(fmt.Sprintf("REFERENCE.md#%d", n), []byte(block))
		if err != nil {
			t.Errorf("example %d in REFERENCE.md does not parse:\n%v", n, err)
			continue
		}
		if n == 2 && c.Cluster == nil {
			t.Error("example 2 in REFERENCE.md has no cluster block")
		}
	}
	if n < 2 {
		t.Errorf("REFERENCE.md has %d ```hcl blocks, want at least 2 (the second with a cluster block)", n)
	}
}

func TestDefaultClusterAt(t *testing.T) {
	dir := t.TempDir()
	cs := DefaultClusterAt(dir, netip.MustParseAddr("127.0.10.254"), 2, true, 3260, 7400)
	want := []string{"127.0.10.254:7400", "127.0.10.255:7400", "127.0.11.0:7400"}
	for i, c := range cs {
		if c.Cluster.RaftListen != want[i] {
			t.Errorf("member %d raft %s, want %s", i, c.Cluster.RaftListen, want[i])
		}
		if err := c.Validate(); err != nil {
			t.Errorf("member %d: %v", i, err)
		}
	}
	if got := cs[1].ISCSI.Listen[0]; got != "127.0.10.255:3260" {
		t.Errorf("site-b iscsi %s", got)
	}
	for _, bad := range []struct {
		first string
		n     int
	}{{"127.255.255.254", 3}, {"10.0.0.1", 1}, {"::1", 1}} {
		if _, err := DemoAddrs(netip.MustParseAddr(bad.first), bad.n); err == nil {
			t.Errorf("DemoAddrs(%s, %d) accepted", bad.first, bad.n)
		}
	}
}

func TestPreferAuto(t *testing.T) {
	src := clusterSrc(`prefer {`, `  initiator = "*"`, `  site = "auto"`, `}`, `prefer {`, `  initiator = "iqn.1994-05.com.redhat:h"`, `  site = "b"`, `}`)
	c, err := Parse("prefer.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if site, ok := c.Cluster.PreferredSite("IQN.1994-05.com.redhat:H"); !ok || site != "b" {
		t.Errorf("own block: %q %v", site, ok)
	}
	if site, ok := c.Cluster.PreferredSite("iqn.1994-05.com.redhat:other"); !ok || site != PreferAuto {
		t.Errorf("everyone's block: %q %v", site, ok)
	}
	dup := clusterSrc(`prefer {`, `  initiator = "*"`, `  site = "auto"`, `}`, `prefer {`, `  initiator = "*"`, `  site = "a"`, `}`)
	if _, err := Parse("dup.hcl", []byte(dup)); err == nil || !strings.Contains(err.Error(), `"*" already has a preferred site`) {
		t.Errorf("two blocks for \"*\": %v", err)
	}
}
