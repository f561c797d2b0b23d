// Package conf reads the metrolun configuration file: it parses the HCL,
// fills in defaults and validates every value, reporting each problem with
// the file, line and column it comes from.
//
// The package is pure: it touches no socket, file or clock beyond reading
// the one file handed to Load. Whether a backing file exists or a portal can
// be bound is decided at run time by the packages that use the Config.
package conf

import (
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Roles a member can play.
const (
	RoleData    = "data"    // holds a copy of every LUN and serves iSCSI
	RoleWitness = "witness" // Raft voter only: no data, no iSCSI
)

// Digest names as they appear in the HeaderDigest and DataDigest keys
// (RFC 7143 §13.1); the spelling is part of the protocol.
const (
	DigestNone   = "None"
	DigestCRC32C = "CRC32C"
)

// DefaultPort is the IANA-registered iSCSI port, used for a listen entry
// that names no port.
const DefaultPort = 3260

// Config is one member's configuration.
type Config struct {
	Name      string // this member's name, [a-z0-9-]{1,63}
	Role      string // RoleData or RoleWitness
	DataDir   string // metrolun's own state
	LogLevel  string // trace, debug, info, warn or error
	LogFormat string // text or json
	ISCSI     ISCSI
	Targets   []Target
	Cluster   *Cluster // nil: a standalone single site
}

// ISCSI holds the portal and the limits the target offers in login
// negotiation. The limits are upper bounds: the negotiated value is the
// lower of this and the initiator's offer (RFC 7143 §13).
type ISCSI struct {
	Listen      []string // host:port, normalised
	PortalGroup int      // target portal group tag of this site's portals
	NOPInterval time.Duration
	NOPTimeout  time.Duration

	MaxRecvDataSegmentLength int
	MaxBurstLength           int
	FirstBurstLength         int
	MaxOutstandingR2T        int
	ImmediateData            bool
	InitialR2T               bool
	HeaderDigest             []string // offered in this order
	DataDigest               []string // offered in this order
	QueueDepth               int      // CmdSN window per session
	// MemoryBudget caps the buffer memory all iSCSI connections together
	// may hold, in bytes; a login that would exceed it is refused. 0: no
	// cap.
	MemoryBudget int64
	// MaxConnections and MaxConnectionsPerIP cap the connections open on
	// the iSCSI port, in all and from one initiator address; a
	// connection over a cap is closed at once (cmd/netguard).
	MaxConnections      int
	MaxConnectionsPerIP int

	DiscoveryCHAP *CHAP // nil: SendTargets discovery needs no CHAP
}

// Target is one iSCSI target and its LUNs.
type Target struct {
	Name            string   // iqn., eui. or naa. name
	Alias           string   // TargetAlias, may be empty
	AllowInitiators []string // empty: any initiator may log in
	CHAP            *CHAP    // nil: no CHAP
	LUNs            []LUN
}

// LUN is one logical unit and its backing store.
type LUN struct {
	ID        int    // 0..16383
	Path      string // backing file or block device
	Size      int64  // bytes; 0 means use the size of what Path holds
	BlockSize int    // 512 or 4096
	// PhysicalBlockSize is reported to initiators (READ CAPACITY(16),
	// Block Limits VPD): a power of two multiple of BlockSize; 0 means
	// BlockSize.
	PhysicalBlockSize int
	ReadOnly          bool
	Serial            string // empty: derived at run time
	Product           string // INQUIRY PRODUCT IDENTIFICATION
	Thin              bool   // report thin provisioning and accept UNMAP
	WriteCache        bool   // WCE in the caching mode page
}

// CHAP holds the credentials of one CHAP exchange. Username and Secret are
// what the initiator proves; the mutual pair is what the target proves back.
type CHAP struct {
	Username       string
	Secret         Secret
	MutualUsername string
	MutualSecret   Secret
}

// Defaults for values the file leaves out.
const (
	DefaultDataDir   = "/var/lib/metrolun"
	DefaultLogLevel  = "info"
	DefaultLogFormat = "text"
	DefaultProduct   = "metrolun"
)

// DefaultISCSI returns the iscsi block as it is when the file has none.
func DefaultISCSI() ISCSI {
	return ISCSI{
		Listen:                   []string{"0.0.0.0:3260"},
		PortalGroup:              1,
		NOPInterval:              5 * time.Second,
		NOPTimeout:               30 * time.Second,
		MaxRecvDataSegmentLength: 262144,
		MaxBurstLength:           1048576,
		FirstBurstLength:         262144,
		MaxOutstandingR2T:        1,
		ImmediateData:            true,
		InitialR2T:               false,
		HeaderDigest:             []string{DigestNone, DigestCRC32C},
		DataDigest:               []string{DigestNone, DigestCRC32C},
		QueueDepth:               128,
		MaxConnections:           1024,
		MaxConnectionsPerIP:      256,
	}
}

// DefaultLUN returns a LUN with every optional field at its default. ID
// and Path still have to be set.
func DefaultLUN() LUN {
	return LUN{
		BlockSize:  512,
		Product:    DefaultProduct,
		Thin:       true,
		WriteCache: true,
	}
}

// Default returns the config `metrolun demo` uses for a single site when no
// file is given: one data site named site-a under dir, serving a 1 GiB LUN 0
// on 127.0.0.1:3260.
func Default(dir string) *Config {
	site := filepath.Join(dir, "site-a")
	iscsi := DefaultISCSI()
	iscsi.Listen = []string{"127.0.0.1:3260"}
	lun := DefaultLUN()
	lun.Path = filepath.Join(site, "lun0.img")
	lun.Size = 1 << 30
	return &Config{
		Name:      "site-a",
		Role:      RoleData,
		DataDir:   site,
		LogLevel:  DefaultLogLevel,
		LogFormat: DefaultLogFormat,
		ISCSI:     iscsi,
		Targets: []Target{{
			Name: "iqn.2026-11.io.metrolun:demo",
			LUNs: []LUN{lun},
		}},
	}
}

// Load reads and validates the config file at path.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, src)
}

// Parse parses src as if read from filename (used by tests and by Load).
// On failure the error is an *Error listing every problem found.
func Parse(filename string, src []byte) (*Config, error) {
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		// A body with syntax errors decodes into noise; report only these.
		ps := diagProblems(diags)
		sortProblems(ps)
		return nil, &Error{Problems: ps}
	}
	d := newDecoder()
	c := d.config(file.Body)
	v := &validator{pos: d.pos, bad: d.bad, set: d.set, dropped: d.dropped, problems: d.problems}
	v.config(c)
	if len(v.problems) > 0 {
		sortProblems(v.problems)
		return nil, &Error{Problems: v.problems}
	}
	return c, nil
}

// Validate checks a Config, typically one built in code. Its problems carry
// no file position; the message names the field instead. A Config returned
// by Parse or Default always validates.
func (c *Config) Validate() error {
	v := &validator{}
	v.config(c)
	if len(v.problems) > 0 {
		return &Error{Problems: v.problems}
	}
	return nil
}
