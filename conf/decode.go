package conf

import (
	"fmt"
	"math"
	"math/big"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// The schema, one BodySchema per block type. Adding a key is one line here
// and one line in the matching decoder function below.
var (
	rootSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{
			{Name: "name"}, {Name: "role"}, {Name: "data_dir"},
			{Name: "log_level"}, {Name: "log_format"},
		},
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "iscsi"},
			{Type: "target", LabelNames: []string{"name"}},
			{Type: "cluster"},
		},
	}
	iscsiSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{
			{Name: "listen"}, {Name: "portal_group"},
			{Name: "nop_interval"}, {Name: "nop_timeout"},
			{Name: "max_recv_data_segment_length"}, {Name: "max_burst_length"},
			{Name: "first_burst_length"}, {Name: "max_outstanding_r2t"},
			{Name: "immediate_data"}, {Name: "initial_r2t"},
			{Name: "header_digest"}, {Name: "data_digest"},
			{Name: "queue_depth"}, {Name: "memory_budget"},
			{Name: "max_connections"}, {Name: "max_connections_per_ip"},
		},
		Blocks: []hcl.BlockHeaderSchema{{Type: "discovery_chap"}},
	}
	targetSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "alias"}, {Name: "allow_initiators"}},
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "chap"},
			{Type: "lun", LabelNames: []string{"number"}},
		},
	}
	lunSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{
			{Name: "path"}, {Name: "size"}, {Name: "block_size"}, {Name: "physical_block_size"},
			{Name: "read_only"}, {Name: "serial"}, {Name: "product"},
			{Name: "thin"}, {Name: "write_cache"},
		},
	}
	chapSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{
			{Name: "username"}, {Name: "secret"},
			{Name: "mutual_username"}, {Name: "mutual_secret"},
		},
	}
	clusterSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{
			{Name: "raft_listen"}, {Name: "replication_listen"}, {Name: "admin_listen"},
			{Name: "lease"}, {Name: "election_timeout"}, {Name: "replica_timeout"},
			{Name: "resync_bandwidth"}, {Name: "verify_bandwidth"}, {Name: "join"},
			{Name: "redirect_logins"}, {Name: "quorum_loss"}, {Name: "plaintext"},
			{Name: "admin_token_file"}, {Name: "admin_public_metrics"}, {Name: "admin_insecure"},
		},
		Blocks: []hcl.BlockHeaderSchema{
			{Type: "tls"},
			{Type: "member", LabelNames: []string{"name"}},
			{Type: "prefer"},
		},
	}
	tlsSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "ca"}, {Name: "cert"}, {Name: "key"}},
	}
	memberSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{
			{Name: "role"}, {Name: "raft"}, {Name: "replication"}, {Name: "admin"},
			{Name: "iscsi"}, {Name: "portal_group"},
		},
	}
	preferSchema = &hcl.BodySchema{
		Attributes: []hcl.AttributeSchema{{Name: "initiator"}, {Name: "site"}},
	}
)

// A decoder turns an HCL body into a Config. Every key it meets, and every
// key it looked for and did not find, gets a position in pos, so that the
// validator can point at it. Keys whose value could not be decoded go in
// bad, and the validator stays quiet about them: one mistake, one message.
//
// Keys name a value by its place in the file: "iscsi.listen[1]",
// "target[0].lun[2].size". The same keys prefix every message.
type decoder struct {
	pos      map[string]hcl.Range
	bad      map[string]bool
	set      map[string]bool // keys the file gives a (non-null) value
	dropped  map[string]bool // block lists with a block HCL rejected
	problems []Problem
}

func newDecoder() *decoder {
	return &decoder{pos: map[string]hcl.Range{}, bad: map[string]bool{}, set: map[string]bool{}, dropped: map[string]bool{}}
}

func (d *decoder) fail(key string, r hcl.Range, format string, args ...any) {
	d.bad[key] = true
	d.problems = append(d.problems, problemAt(r, key+": "+fmt.Sprintf(format, args...)))
}

// content extracts body's items for schema. HCL itself rejects unknown
// arguments and blocks, duplicate arguments and wrong label counts; the
// messages are extended with what is allowed in this block.
func (d *decoder) content(body hcl.Body, schema *hcl.BodySchema) *hcl.BodyContent {
	content, diags := body.Content(schema)
	for _, diag := range diags {
		switch diag.Summary {
		case "Unsupported argument", "Unsupported block type":
			diag.Detail += " " + allowedHere(schema)
		}
	}
	d.problems = append(d.problems, diagProblems(diags)...)
	return content
}

func allowedHere(schema *hcl.BodySchema) string {
	var attrs, blocks []string
	for _, a := range schema.Attributes {
		attrs = append(attrs, a.Name)
	}
	for _, b := range schema.Blocks {
		blocks = append(blocks, b.Type)
	}
	s := "Arguments allowed here: " + strings.Join(attrs, ", ") + "."
	if len(blocks) > 0 {
		s += " Blocks allowed here: " + strings.Join(blocks, ", ") + "."
	} else {
		s += " No blocks are allowed here."
	}
	return s
}

// dropped reports whether body holds blocks of type ty that Content left
// out because their labels were wrong. HCL has reported those; the
// validator should not add that the block is missing.
func dropped(body hcl.Body, content *hcl.BodyContent, ty string) bool {
	sb, ok := body.(*hclsyntax.Body)
	if !ok {
		return false
	}
	n := 0
	for _, b := range sb.Blocks {
		if b.Type == ty {
			n++
		}
	}
	for _, b := range content.Blocks {
		if b.Type == ty {
			n--
		}
	}
	return n > 0
}

// once reports a second block of a type that may appear only once.
func (d *decoder) once(seen map[string]hcl.Range, key string, b *hcl.Block) bool {
	if first, dup := seen[b.Type]; dup {
		d.problems = append(d.problems, problemAt(b.DefRange,
			fmt.Sprintf("%s: only one %s block is allowed here; the first is on line %d", key, b.Type, first.Start.Line)))
		return false
	}
	seen[b.Type] = b.DefRange
	return true
}

func (d *decoder) config(body hcl.Body) *Config {
	c := &Config{
		Role:      RoleData,
		DataDir:   DefaultDataDir,
		LogLevel:  DefaultLogLevel,
		LogFormat: DefaultLogFormat,
		ISCSI:     DefaultISCSI(),
	}
	content := d.content(body, rootSchema)
	d.pos[""] = content.MissingItemRange
	d.pos["target"] = content.MissingItemRange
	d.dropped["target"] = dropped(body, content, "target")
	s := d.scope("", content, content.MissingItemRange)
	s.str("name", &c.Name)
	s.str("role", &c.Role)
	s.str("data_dir", &c.DataDir)
	s.str("log_level", &c.LogLevel)
	s.str("log_format", &c.LogFormat)
	seen := map[string]hcl.Range{}
	for _, b := range content.Blocks {
		switch b.Type {
		case "iscsi":
			if d.once(seen, "iscsi", b) {
				d.iscsi(b, &c.ISCSI)
			}
		case "target":
			c.Targets = append(c.Targets, d.target(b, len(c.Targets)))
		case "cluster":
			if d.once(seen, "cluster", b) {
				c.Cluster = d.cluster(b)
			}
		}
	}
	if c.Cluster != nil {
		d.clusterDefaults(c)
	}
	return c
}

func (d *decoder) iscsi(b *hcl.Block, dst *ISCSI) {
	const key = "iscsi"
	d.pos[key] = b.DefRange
	content := d.content(b.Body, iscsiSchema)
	s := d.scope(key, content, b.DefRange)
	if s.strings("listen", &dst.Listen) {
		for i, l := range dst.Listen {
			// A bad entry stays as written; the validator reports it.
			if n, err := NormalizePortal(l); err == nil {
				dst.Listen[i] = n
			}
		}
	}
	s.integer("portal_group", &dst.PortalGroup)
	s.duration("nop_interval", &dst.NOPInterval)
	s.duration("nop_timeout", &dst.NOPTimeout)
	s.integer("max_recv_data_segment_length", &dst.MaxRecvDataSegmentLength)
	s.integer("max_burst_length", &dst.MaxBurstLength)
	s.integer("first_burst_length", &dst.FirstBurstLength)
	s.integer("max_outstanding_r2t", &dst.MaxOutstandingR2T)
	s.boolean("immediate_data", &dst.ImmediateData)
	s.boolean("initial_r2t", &dst.InitialR2T)
	s.strings("header_digest", &dst.HeaderDigest)
	s.strings("data_digest", &dst.DataDigest)
	s.integer("queue_depth", &dst.QueueDepth)
	s.sizeOrZero("memory_budget", &dst.MemoryBudget)
	s.integer("max_connections", &dst.MaxConnections)
	s.integer("max_connections_per_ip", &dst.MaxConnectionsPerIP)
	seen := map[string]hcl.Range{}
	for _, cb := range content.Blocks {
		if d.once(seen, key+".discovery_chap", cb) {
			dst.DiscoveryCHAP = d.chap(cb, key+".discovery_chap")
		}
	}
}

func (d *decoder) target(b *hcl.Block, i int) Target {
	key := fmt.Sprintf("target[%d]", i)
	d.pos[key] = b.DefRange
	d.pos[key+".name"] = b.LabelRanges[0]
	t := Target{Name: b.Labels[0]}
	content := d.content(b.Body, targetSchema)
	d.dropped[key+".lun"] = dropped(b.Body, content, "lun")
	s := d.scope(key, content, b.DefRange)
	s.str("alias", &t.Alias)
	s.strings("allow_initiators", &t.AllowInitiators)
	seen := map[string]hcl.Range{}
	for _, cb := range content.Blocks {
		switch cb.Type {
		case "chap":
			if d.once(seen, key+".chap", cb) {
				t.CHAP = d.chap(cb, key+".chap")
			}
		case "lun":
			t.LUNs = append(t.LUNs, d.lun(cb, fmt.Sprintf("%s.lun[%d]", key, len(t.LUNs))))
		}
	}
	return t
}

func (d *decoder) lun(b *hcl.Block, key string) LUN {
	d.pos[key] = b.DefRange
	l := DefaultLUN()
	id, err := parseLUNLabel(b.Labels[0])
	if err != nil {
		d.fail(key+".id", b.LabelRanges[0], "%v", err)
	} else {
		d.pos[key+".id"] = b.LabelRanges[0]
		l.ID = id
	}
	content := d.content(b.Body, lunSchema)
	s := d.scope(key, content, b.DefRange)
	s.str("path", &l.Path)
	s.size("size", &l.Size)
	s.integer("block_size", &l.BlockSize)
	s.integer("physical_block_size", &l.PhysicalBlockSize)
	s.boolean("read_only", &l.ReadOnly)
	s.str("serial", &l.Serial)
	s.str("product", &l.Product)
	s.boolean("thin", &l.Thin)
	s.boolean("write_cache", &l.WriteCache)
	return l
}

func (d *decoder) chap(b *hcl.Block, key string) *CHAP {
	d.pos[key] = b.DefRange
	c := &CHAP{}
	content := d.content(b.Body, chapSchema)
	s := d.scope(key, content, b.DefRange)
	s.str("username", &c.Username)
	s.secret("secret", &c.Secret)
	s.str("mutual_username", &c.MutualUsername)
	s.secret("mutual_secret", &c.MutualSecret)
	return c
}

func (d *decoder) cluster(b *hcl.Block) *Cluster {
	const key = "cluster"
	d.pos[key] = b.DefRange
	cl := DefaultClusterBlock()
	content := d.content(b.Body, clusterSchema)
	d.pos[key+".member"] = b.DefRange
	d.dropped[key+".member"] = dropped(b.Body, content, "member")
	d.dropped[key+".prefer"] = dropped(b.Body, content, "prefer")
	s := d.scope(key, content, b.DefRange)
	s.address("raft_listen", &cl.RaftListen)
	s.address("replication_listen", &cl.ReplicationListen)
	s.address("admin_listen", &cl.AdminListen)
	s.duration("lease", &cl.Lease)
	s.duration("election_timeout", &cl.ElectionTimeout)
	s.duration("replica_timeout", &cl.ReplicaTimeout)
	s.bandwidth("resync_bandwidth", &cl.ResyncBandwidth)
	s.bandwidth("verify_bandwidth", &cl.VerifyBandwidth)
	s.boolean("join", &cl.Join)
	s.boolean("redirect_logins", &cl.RedirectLogins)
	s.str("quorum_loss", &cl.QuorumLoss)
	s.str("admin_token_file", &cl.AdminTokenFile)
	s.boolean("admin_public_metrics", &cl.AdminPublicMetrics)
	s.boolean("admin_insecure", &cl.AdminInsecure)
	s.boolean("plaintext", &cl.Plaintext)
	seen := map[string]hcl.Range{}
	for _, cb := range content.Blocks {
		switch cb.Type {
		case "tls":
			if d.once(seen, key+".tls", cb) {
				cl.TLS = d.tls(cb, key+".tls")
			}
		case "member":
			cl.Members = append(cl.Members, d.member(cb, fmt.Sprintf("%s.member[%d]", key, len(cl.Members))))
		case "prefer":
			cl.Preferred = append(cl.Preferred, d.prefer(cb, fmt.Sprintf("%s.prefer[%d]", key, len(cl.Preferred))))
		}
	}
	return cl
}

func (d *decoder) tls(b *hcl.Block, key string) *TLS {
	d.pos[key] = b.DefRange
	t := &TLS{}
	content := d.content(b.Body, tlsSchema)
	s := d.scope(key, content, b.DefRange)
	s.str("ca", &t.CA)
	s.str("cert", &t.Cert)
	s.str("key", &t.Key)
	return t
}

func (d *decoder) member(b *hcl.Block, key string) Member {
	d.pos[key] = b.DefRange
	d.pos[key+".name"] = b.LabelRanges[0]
	m := Member{Name: b.Labels[0], Role: RoleData}
	content := d.content(b.Body, memberSchema)
	s := d.scope(key, content, b.DefRange)
	s.str("role", &m.Role)
	s.address("raft", &m.Raft)
	s.address("replication", &m.Replication)
	s.address("admin", &m.Admin)
	if s.strings("iscsi", &m.ISCSI) {
		for i, p := range m.ISCSI {
			if n, err := NormalizePortal(p); err == nil {
				m.ISCSI[i] = n
			}
		}
	}
	s.integer("portal_group", &m.PortalGroup)
	return m
}

func (d *decoder) prefer(b *hcl.Block, key string) Preference {
	d.pos[key] = b.DefRange
	var p Preference
	content := d.content(b.Body, preferSchema)
	s := d.scope(key, content, b.DefRange)
	s.str("initiator", &p.Initiator)
	s.str("site", &p.Site)
	return p
}

// clusterDefaults fills in what a cluster block leaves out and that
// depends on the rest of the file: portal groups, this member's listen
// addresses and the iscsi block's portal group. A default taken from a
// value that failed to decode is marked bad too, so that it is not
// reported twice.
func (d *decoder) clusterDefaults(c *Config) {
	const key = "cluster"
	cl := c.Cluster
	data := 0
	for i := range cl.Members {
		m := &cl.Members[i]
		if m.Role != RoleData {
			continue
		}
		data++
		if mk := fmt.Sprintf("%s.member[%d].portal_group", key, i); !d.set[mk] && !d.bad[mk] {
			m.PortalGroup = data
		}
	}
	self := -1
	for i := range cl.Members {
		if cl.Members[i].Name == c.Name {
			self = i
			break
		}
	}
	if self < 0 {
		return
	}
	m := cl.Members[self]
	mk := fmt.Sprintf("%s.member[%d]", key, self)
	def := func(name string, dst *string, from, field string) {
		k := key + "." + name
		if d.set[k] || d.bad[k] {
			return
		}
		*dst = from
		if d.bad[mk+"."+field] || d.bad[mk+".role"] {
			d.bad[k] = true
		}
	}
	def("raft_listen", &cl.RaftListen, m.Raft, "raft")
	if c.Role == RoleData && m.Role == RoleData {
		def("replication_listen", &cl.ReplicationListen, m.Replication, "replication")
	}
	def("admin_listen", &cl.AdminListen, m.Admin, "admin")
	if c.Role == RoleData && m.Role == RoleData && !d.set["iscsi.portal_group"] && !d.bad["iscsi.portal_group"] {
		c.ISCSI.PortalGroup = m.PortalGroup
		if d.bad[mk+".portal_group"] {
			d.bad["iscsi.portal_group"] = true
		}
	}
}

// A scope decodes the arguments of one block.
type scope struct {
	d       *decoder
	prefix  string
	attrs   hcl.Attributes
	missing hcl.Range // where to point when an argument is absent
}

func (d *decoder) scope(prefix string, content *hcl.BodyContent, missing hcl.Range) scope {
	return scope{d: d, prefix: prefix, attrs: content.Attributes, missing: missing}
}

func (s scope) key(name string) string {
	if s.prefix == "" {
		return name
	}
	return s.prefix + "." + name
}

// value evaluates argument name. It reports false when the argument is
// absent or null, both of which mean "use the default", or when it cannot
// be evaluated. Arguments are constants: there are no variables or
// functions, so a reference or a call is reported as an error by HCL.
func (s scope) value(name string) (cty.Value, *hcl.Attribute, bool) {
	key := s.key(name)
	attr, ok := s.attrs[name]
	if !ok {
		s.d.pos[key] = s.missing
		return cty.NilVal, nil, false
	}
	s.d.pos[key] = attr.Expr.Range()
	v, diags := attr.Expr.Value(nil)
	if diags.HasErrors() {
		s.d.bad[key] = true
		s.d.problems = append(s.d.problems, diagProblems(diags)...)
		return cty.NilVal, nil, false
	}
	if v.IsNull() {
		return cty.NilVal, nil, false
	}
	if !v.IsWhollyKnown() {
		s.d.fail(key, attr.Expr.Range(), "expected a constant value")
		return cty.NilVal, nil, false
	}
	s.d.set[key] = true
	return v, attr, true
}

func (s scope) str(name string, dst *string) {
	v, attr, ok := s.value(name)
	if !ok {
		return
	}
	if v.Type() != cty.String {
		s.d.fail(s.key(name), attr.Expr.Range(), "expected a string, got %s", v.Type().FriendlyName())
		return
	}
	*dst = v.AsString()
}

// secret is str with a message that never mentions the value.
func (s scope) secret(name string, dst *Secret) {
	var str string
	s.str(name, &str)
	*dst = Secret(str)
}

func (s scope) boolean(name string, dst *bool) {
	v, attr, ok := s.value(name)
	if !ok {
		return
	}
	if v.Type() != cty.Bool {
		s.d.fail(s.key(name), attr.Expr.Range(), "expected true or false, got %s", v.Type().FriendlyName())
		return
	}
	*dst = v.True()
}

// whole converts a number value to an int64, reporting fractions and values
// out of int64 range.
func (s scope) whole(name string, v cty.Value, attr *hcl.Attribute) (int64, bool) {
	if v.Type() != cty.Number {
		s.d.fail(s.key(name), attr.Expr.Range(), "expected a whole number, got %s", v.Type().FriendlyName())
		return 0, false
	}
	f := v.AsBigFloat()
	if !f.IsInt() {
		s.d.fail(s.key(name), attr.Expr.Range(), "expected a whole number, got %s", f.Text('g', 10))
		return 0, false
	}
	n, acc := f.Int64()
	if acc != big.Exact {
		s.d.fail(s.key(name), attr.Expr.Range(), "%s is out of range", f.Text('g', 10))
		return 0, false
	}
	return n, true
}

func (s scope) integer(name string, dst *int) {
	v, attr, ok := s.value(name)
	if !ok {
		return
	}
	n, ok := s.whole(name, v, attr)
	if !ok {
		return
	}
	if int64(int(n)) != n {
		s.d.fail(s.key(name), attr.Expr.Range(), "%d is out of range", n)
		return
	}
	*dst = int(n)
}

// duration reads a span of time written as a number of seconds, which
// may have a fraction (5, 0.25), or as a string in Go's duration syntax
// ("500ms", "1.5s", "2m", "1h30m"). Numbers are rounded to the nearest
// nanosecond.
func (s scope) duration(name string, dst *time.Duration) {
	v, attr, ok := s.value(name)
	if !ok {
		return
	}
	key := s.key(name)
	r := attr.Expr.Range()
	switch v.Type() {
	case cty.Number:
		f := v.AsBigFloat()
		ns := new(big.Float).Mul(f, big.NewFloat(float64(time.Second)))
		limit := new(big.Float).SetInt64(math.MaxInt64)
		if new(big.Float).Abs(ns).Cmp(limit) > 0 {
			s.d.fail(key, r, "%s seconds is out of range", f.Text('g', 10))
			return
		}
		half := big.NewFloat(0.5)
		if ns.Sign() < 0 {
			half.Neg(half)
		}
		n, _ := ns.Add(ns, half).Int64() // truncates: rounds half away from zero
		*dst = time.Duration(n)
	case cty.String:
		d, err := parseDuration(v.AsString())
		if err != nil {
			s.d.fail(key, r, "%v", err)
			return
		}
		*dst = d
	default:
		s.d.fail(key, r, "expected a duration, a number of seconds or a string such as \"500ms\" or \"1s\", got %s", v.Type().FriendlyName())
	}
}

// parseDuration parses the string form of a duration.
func parseDuration(str string) (time.Duration, error) {
	const form = `expected a number and a unit (ns, us, ms, s, m, h), such as "500ms" or "1.5s"`
	t := strings.TrimSpace(str)
	if len(t) > 64 {
		return 0, fmt.Errorf("duration is longer than 64 characters")
	}
	if num := strings.TrimPrefix(t, "-"); t != "0" && validDecimal(num) && strings.Trim(num, "0123456789.") == "" {
		return 0, fmt.Errorf("duration %q has no unit; write %s (a number of seconds) or \"%ss\"", str, t, t)
	}
	d, err := time.ParseDuration(t)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: %s", str, form)
	}
	return d, nil
}

// bandwidth reads a rate in bytes per second: a number, or a string in the
// size syntax optionally followed by "/s" ("100M", "1.5GiB/s"). 0 means
// unlimited.
func (s scope) bandwidth(name string, dst *int64) {
	v, attr, ok := s.value(name)
	if !ok {
		return
	}
	key := s.key(name)
	r := attr.Expr.Range()
	var n int64
	switch v.Type() {
	case cty.Number:
		if n, ok = s.whole(name, v, attr); !ok {
			return
		}
	case cty.String:
		str := strings.TrimSpace(v.AsString())
		str = strings.TrimSpace(strings.TrimSuffix(strings.TrimSuffix(str, "/s"), "/S"))
		var err error
		if n, err = ParseSize(str); err != nil {
			s.d.fail(key, r, "%v", err)
			return
		}
	default:
		s.d.fail(key, r, "expected bytes per second, a number or a string such as \"100M\" or \"1GiB/s\", got %s", v.Type().FriendlyName())
		return
	}
	if n < 0 {
		s.d.fail(key, r, "must not be negative, got %d; 0 means unlimited", n)
		return
	}
	*dst = n
}

// address reads a host:port string and stores it normalised when it is
// valid; a bad value stays as written for the validator to report.
func (s scope) address(name string, dst *string) {
	s.str(name, dst)
	if n, err := normalizeHostPort(*dst); err == nil {
		*dst = n
	}
}

// size reads a byte count written as a number or as a string with a unit.
// sizeOrZero is size for a limit where 0 means "none".
func (s scope) sizeOrZero(name string, dst *int64) {
	if v, _, ok := s.value(name); ok && v.Type() == cty.Number && v.Equals(cty.Zero).True() {
		*dst = 0
		return
	}
	s.size(name, dst)
}

func (s scope) size(name string, dst *int64) {
	v, attr, ok := s.value(name)
	if !ok {
		return
	}
	key := s.key(name)
	var n int64
	switch v.Type() {
	case cty.Number:
		if n, ok = s.whole(name, v, attr); !ok {
			return
		}
		if n < 0 {
			s.d.fail(key, attr.Expr.Range(), "expected a size of at least 1 byte, got %d", n)
			return
		}
	case cty.String:
		var err error
		if n, err = ParseSize(v.AsString()); err != nil {
			s.d.fail(key, attr.Expr.Range(), "%v", err)
			return
		}
	default:
		s.d.fail(key, attr.Expr.Range(), "expected a size, a number of bytes or a string such as \"1GiB\", got %s", v.Type().FriendlyName())
		return
	}
	if n == 0 {
		// In a Config, 0 means "not set"; a file that says 0 means a mistake.
		s.d.fail(key, attr.Expr.Range(), "must be greater than 0; leave size out to use the size of the existing file or device")
		return
	}
	*dst = n
}

// strings reads a list of strings and records the position of each
// element under key[i].
func (s scope) strings(name string, dst *[]string) bool {
	v, attr, ok := s.value(name)
	if !ok {
		return false
	}
	key := s.key(name)
	ty := v.Type()
	if !ty.IsTupleType() && !ty.IsListType() && !ty.IsSetType() {
		s.d.fail(key, attr.Expr.Range(), "expected a list of strings such as [\"a\", \"b\"], got %s", ty.FriendlyName())
		return false
	}
	exprs, _ := hcl.ExprList(attr.Expr)
	if len(exprs) != v.LengthInt() {
		exprs = nil // built by a for expression: no per-element positions
	}
	// A bad element is kept as "" so that the others keep their index and
	// are still checked; the validator skips the bad one.
	out := make([]string, 0, v.LengthInt())
	for i, it := 0, v.ElementIterator(); it.Next(); i++ {
		_, e := it.Element()
		ekey := fmt.Sprintf("%s[%d]", key, i)
		r := attr.Expr.Range()
		if exprs != nil {
			r = exprs[i].Range()
		}
		s.d.pos[ekey] = r
		if e.IsNull() || e.Type() != cty.String {
			s.d.fail(ekey, r, "expected a string, got %s", friendly(e))
			out = append(out, "")
			continue
		}
		out = append(out, e.AsString())
	}
	*dst = out
	return true
}

func friendly(v cty.Value) string {
	if v.IsNull() {
		return "null"
	}
	return v.Type().FriendlyName()
}
