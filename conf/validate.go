package conf

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// A validator checks a decoded Config. It works the same on a Config built
// in code (pos and bad empty: messages name the field only) and on one read
// from a file (messages also carry the position of the field).
type validator struct {
	pos      map[string]hcl.Range
	bad      map[string]bool
	set      map[string]bool // see decoder.set
	dropped  map[string]bool // see decoder.dropped
	problems []Problem
}

// parent strips the last element of a key: "target[0].lun[1]" gives
// "target[0].lun", which gives "target[0]", then "target", then "".
func parent(key string) string {
	i := strings.LastIndexAny(key, ".[")
	if i < 0 {
		return ""
	}
	return key[:i]
}

// skip reports whether key or a key containing it failed to decode.
func (v *validator) skip(key string) bool {
	for k := key; ; k = parent(k) {
		if v.bad[k] {
			return true
		}
		if k == "" {
			return false
		}
	}
}

// at finds the position of key, or of the nearest enclosing key that has
// one.
func (v *validator) at(key string) (hcl.Range, bool) {
	for k := key; ; k = parent(k) {
		if r, ok := v.pos[k]; ok {
			return r, true
		}
		if k == "" {
			return hcl.Range{}, false
		}
	}
}

func (v *validator) fail(key, format string, args ...any) {
	if v.skip(key) {
		return
	}
	msg := key + ": " + fmt.Sprintf(format, args...)
	if r, ok := v.at(key); ok {
		v.problems = append(v.problems, problemAt(r, msg))
		return
	}
	v.problems = append(v.problems, Problem{Msg: msg})
}

// where names another key for a message about a duplicate, with its line
// when it is known.
func (v *validator) where(key string) string {
	if r, ok := v.pos[key]; ok {
		return fmt.Sprintf("%s on line %d", key, r.Start.Line)
	}
	return key
}

func (v *validator) intRange(key string, n, lo, hi int) {
	if n < lo || n > hi {
		v.fail(key, "must be between %d and %d, got %d", lo, hi, n)
	}
}

func (v *validator) secondsRange(key string, d, lo, hi time.Duration) {
	if d < lo || d > hi {
		v.fail(key, "must be between %d and %d seconds, got %v", lo/time.Second, hi/time.Second, d)
	}
}

func (v *validator) config(c *Config) {
	if err := checkMemberName(c.Name); err != nil {
		v.fail("name", "%v", err)
	}
	if c.Role != RoleData && c.Role != RoleWitness {
		v.fail("role", "expected %q or %q, got %q", RoleData, RoleWitness, c.Role)
	}
	if c.DataDir == "" {
		v.fail("data_dir", "must not be empty; expected a directory for metrolun's state")
	} else if strings.ContainsRune(c.DataDir, 0) {
		v.fail("data_dir", "must not contain a NUL byte")
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		v.fail("log_level", "expected one of trace, debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		v.fail("log_format", "expected \"text\" or \"json\", got %q", c.LogFormat)
	}
	v.iscsi(&c.ISCSI)
	v.targets(c)
	v.secretReuse(c)
	v.cluster(c)
}

// connBufferBytes is what one iSCSI connection may hold for solicited
// write data and large reads (target's connBudget), the fixed part of what
// it reserves against memory_budget.
const connBufferBytes = 64 << 20

func (v *validator) iscsi(c *ISCSI) {
	const key = "iscsi"
	if len(c.Listen) == 0 {
		v.fail(key+".listen", "expected at least one portal such as \"0.0.0.0:3260\"")
	}
	seen := map[string]string{}
	for i, l := range c.Listen {
		k := fmt.Sprintf("%s.listen[%d]", key, i)
		n, err := NormalizePortal(l)
		if err != nil {
			v.fail(k, "%v", err)
			continue
		}
		if first, dup := seen[n]; dup {
			v.fail(k, "portal %s is listed twice (also %s)", n, v.where(first))
			continue
		}
		seen[n] = k
	}
	// RFC 7143 §13.9: the tag is 16 bits; 0 is kept for "not set" here.
	v.intRange(key+".portal_group", c.PortalGroup, 1, 65535)
	v.secondsRange(key+".nop_interval", c.NOPInterval, 0, time.Hour)
	v.secondsRange(key+".nop_timeout", c.NOPTimeout, time.Second, time.Hour)
	// RFC 7143 §13.12-13.14: 512 to 2**24-1.
	v.intRange(key+".max_recv_data_segment_length", c.MaxRecvDataSegmentLength, 512, 1<<24-1)
	v.intRange(key+".max_burst_length", c.MaxBurstLength, 512, 1<<24-1)
	v.intRange(key+".first_burst_length", c.FirstBurstLength, 512, 1<<24-1)
	// RFC 7143 §13.14: FirstBurstLength MUST NOT exceed MaxBurstLength.
	if c.FirstBurstLength > c.MaxBurstLength && !v.skip(key+".max_burst_length") {
		v.fail(key+".first_burst_length", "%d exceeds max_burst_length %d; it must not (RFC 7143 §13.14)",
			c.FirstBurstLength, c.MaxBurstLength)
	}
	// RFC 7143 §13.17.
	v.intRange(key+".max_outstanding_r2t", c.MaxOutstandingR2T, 1, 65535)
	v.digests(key+".header_digest", c.HeaderDigest)
	v.digests(key+".data_digest", c.DataDigest)
	v.intRange(key+".queue_depth", c.QueueDepth, 1, 1024)
	// A budget must let at least one session in: a connection reserves
	// connMemory bytes at login (target/budget.go), at most this.
	if c.MemoryBudget < 0 {
		v.fail(key+".memory_budget", "must not be negative, got %d", c.MemoryBudget)
	} else if c.MemoryBudget != 0 && !v.skip(key+".queue_depth") && !v.skip(key+".first_burst_length") {
		one := int64(connBufferBytes)
		if c.ImmediateData || !c.InitialR2T {
			one += int64(c.QueueDepth) * int64(c.FirstBurstLength)
		}
		if c.MemoryBudget < one {
			v.fail(key+".memory_budget", "%d bytes is less than one connection may reserve (%d: 64 MiB plus queue_depth × first_burst_length); use 0 for no cap",
				c.MemoryBudget, one)
		}
	}
	v.intRange(key+".max_connections", c.MaxConnections, 1, 65535)
	v.intRange(key+".max_connections_per_ip", c.MaxConnectionsPerIP, 1, 65535)
	if c.MaxConnectionsPerIP > c.MaxConnections && !v.skip(key+".max_connections") {
		v.fail(key+".max_connections_per_ip", "%d exceeds max_connections %d; it must not",
			c.MaxConnectionsPerIP, c.MaxConnections)
	}
	v.chap(key+".discovery_chap", c.DiscoveryCHAP)
}

// digests checks a digest preference list (RFC 7143 §13.1).
func (v *validator) digests(key string, ds []string) {
	if len(ds) == 0 {
		v.fail(key, "expected at least one of %q and %q", DigestNone, DigestCRC32C)
	}
	seen := map[string]string{}
	for i, d := range ds {
		k := fmt.Sprintf("%s[%d]", key, i)
		if d != DigestNone && d != DigestCRC32C {
			v.fail(k, "expected %q or %q (spelled exactly so), got %q", DigestNone, DigestCRC32C, d)
			continue
		}
		if first, dup := seen[d]; dup {
			v.fail(k, "%q is listed twice (also %s)", d, v.where(first))
			continue
		}
		seen[d] = k
	}
}

func (v *validator) targets(c *Config) {
	switch {
	case c.Role == RoleWitness:
		for i := range c.Targets {
			v.fail(fmt.Sprintf("target[%d]", i), "a witness serves no iSCSI targets; remove this block or set role = %q", RoleData)
		}
	case c.Role == RoleData && len(c.Targets) == 0 && !v.dropped["target"]:
		v.fail("target", "a data site needs at least one target block with at least one lun block")
	}
	names := map[string]string{}
	paths := map[string]string{}
	for i := range c.Targets {
		t := &c.Targets[i]
		key := fmt.Sprintf("target[%d]", i)
		if err := checkISCSIName(t.Name); err != nil {
			v.fail(key+".name", "%v", err)
		} else if first, dup := names[t.Name]; dup {
			v.fail(key+".name", "target %q is defined twice (also %s)", t.Name, v.where(first+".name"))
		} else {
			names[t.Name] = key
		}
		if err := checkText(t.Alias, 255); err != nil {
			v.fail(key+".alias", "%v", err)
		}
		inits := map[string]string{}
		for j, name := range t.AllowInitiators {
			k := fmt.Sprintf("%s.allow_initiators[%d]", key, j)
			if err := checkISCSIName(name); err != nil {
				v.fail(k, "%v", err)
			} else if first, dup := inits[name]; dup {
				v.fail(k, "%q is listed twice (also %s)", name, v.where(first))
			} else {
				inits[name] = k
			}
		}
		v.chap(key+".chap", t.CHAP)
		if len(t.LUNs) == 0 && !v.dropped[key+".lun"] {
			v.fail(key+".lun", "expected at least one lun block")
		}
		ids := map[int]string{}
		for j := range t.LUNs {
			l := &t.LUNs[j]
			lkey := fmt.Sprintf("%s.lun[%d]", key, j)
			v.lun(lkey, l)
			if !v.skip(lkey+".id") && l.ID >= 0 && l.ID <= maxLUN {
				if first, dup := ids[l.ID]; dup {
					v.fail(lkey+".id", "LUN %d is defined twice in this target (also %s)", l.ID, v.where(first+".id"))
				} else {
					ids[l.ID] = lkey
				}
			}
			// Two LUNs on one backing store would overwrite each other.
			if l.Path != "" && !v.skip(lkey+".path") {
				p := filepath.Clean(l.Path)
				if first, dup := paths[p]; dup {
					v.fail(lkey+".path", "%q is already the backing store of %s", l.Path, v.where(first+".path"))
				} else {
					paths[p] = lkey
				}
			}
		}
	}
}

func (v *validator) lun(key string, l *LUN) {
	if l.ID < 0 || l.ID > maxLUN {
		v.fail(key+".id", "must be between 0 and %d, got %d", maxLUN, l.ID)
	}
	switch {
	case l.Path == "":
		v.fail(key+".path", "is required: the backing file or block device")
	case strings.ContainsRune(l.Path, 0):
		v.fail(key+".path", "must not contain a NUL byte")
	case strings.HasSuffix(l.Path, "/"):
		v.fail(key+".path", "%q names a directory; expected a backing file or block device", l.Path)
	}
	blockOK := l.BlockSize == 512 || l.BlockSize == 4096
	if !blockOK {
		v.fail(key+".block_size", "expected 512 or 4096, got %d", l.BlockSize)
	}
	// SBC-3 READ CAPACITY(16): LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT
	// is four bits wide.
	if p := l.PhysicalBlockSize; p != 0 && blockOK && !v.skip(key+".block_size") {
		if p < l.BlockSize || p%l.BlockSize != 0 || p&(p-1) != 0 || p/l.BlockSize > 1<<15 {
			v.fail(key+".physical_block_size", "expected block_size (%d) times a power of two up to 32768, got %d", l.BlockSize, p)
		}
	}
	switch {
	case l.Size < 0:
		v.fail(key+".size", "must not be negative, got %d", l.Size)
	case l.Size > 0 && blockOK && !v.skip(key+".block_size") && l.Size%int64(l.BlockSize) != 0:
		v.fail(key+".size", "%d bytes is not a multiple of block_size %d", l.Size, l.BlockSize)
	}
	// SPC-4: the Unit Serial Number VPD page and the INQUIRY PRODUCT
	// IDENTIFICATION field hold ASCII; the product field is 16 bytes.
	if err := checkPrintableASCII(l.Serial, 32); err != nil {
		v.fail(key+".serial", "%v", err)
	}
	if err := checkPrintableASCII(l.Product, 16); err != nil {
		v.fail(key+".product", "%v", err)
	}
}

// Bounds on CHAP values. RFC 7143 §9.2.1 requires secrets of at least 96
// bits; the upper bound is what common initiators accept.
const (
	minSecretLen = 12
	maxSecretLen = 255
	maxCHAPName  = 255
)

// chap checks one set of CHAP credentials. No message mentions a secret's
// value or length.
func (v *validator) chap(key string, c *CHAP) {
	if c == nil {
		return
	}
	mutual := c.MutualUsername != "" || c.MutualSecret != ""
	switch {
	case c.Username == "" && c.Secret == "" && mutual:
		v.fail(key, "mutual CHAP needs one-way CHAP too: set username and secret")
	case c.Username == "" && c.Secret == "":
		v.fail(key, "expected username and secret; remove the block to turn CHAP off")
	case c.Username == "":
		v.fail(key+".username", "is required when secret is set")
	case c.Secret == "":
		v.fail(key+".secret", "is required when username is set")
	}
	v.chapName(key+".username", c.Username)
	v.chapSecret(key+".secret", c.Secret)
	if mutual {
		switch {
		case c.MutualUsername == "":
			v.fail(key+".mutual_username", "is required when mutual_secret is set")
		case c.MutualSecret == "":
			v.fail(key+".mutual_secret", "is required when mutual_username is set")
		}
		v.chapName(key+".mutual_username", c.MutualUsername)
		v.chapSecret(key+".mutual_secret", c.MutualSecret)
	}
}

func (v *validator) chapName(key, name string) {
	if name == "" {
		return
	}
	if err := checkText(name, maxCHAPName); err != nil {
		v.fail(key, "%v", err)
	}
}

func (v *validator) chapSecret(key string, s Secret) {
	switch {
	case s == "":
	case len(s) < minSecretLen:
		v.fail(key, "is too short: CHAP secrets must be at least %d bytes (96 bits, RFC 7143 §9.2.1)", minSecretLen)
	case len(s) > maxSecretLen:
		v.fail(key, "is too long: at most %d bytes", maxSecretLen)
	}
}

// secretReuse enforces RFC 7143 §9.2.1: a secret that authenticates
// initiators must not be configured to authenticate a target, since an
// eavesdropper could otherwise reflect one side's challenge at the other.
func (v *validator) secretReuse(c *Config) {
	type entry struct {
		key  string
		chap *CHAP
	}
	all := []entry{{"iscsi.discovery_chap", c.ISCSI.DiscoveryCHAP}}
	for i := range c.Targets {
		all = append(all, entry{fmt.Sprintf("target[%d].chap", i), c.Targets[i].CHAP})
	}
	for _, m := range all {
		if m.chap == nil || m.chap.MutualSecret == "" {
			continue
		}
		for _, o := range all {
			if o.chap == nil || o.chap.Secret == "" || o.chap.Secret != m.chap.MutualSecret {
				continue
			}
			what := "secret"
			if o.key != m.key {
				what = "the secret of " + o.key
			}
			v.fail(m.key+".mutual_secret", "must differ from %s: a secret that authenticates initiators must not authenticate the target (RFC 7143 §9.2.1)", what)
			break
		}
	}
}
