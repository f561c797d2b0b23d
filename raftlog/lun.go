package raftlog

import (
	"fmt"
	"strings"
)

// LUN is the definition of the clustered logical unit: what every data
// site must present identically (DESIGN.md I5), so that an initiator with
// paths to several sites sees one device. The state records it with the
// first writer's set-writer; from then on a data site whose config
// defines another LU cannot become writer nor join (add-member), and its
// member process stops with the difference in its log (cmd/metrolun).
//
// Per-site choices (read-only, thin provisioning, the write cache) are not
// part of it.
type LUN struct {
	Target string `msgpack:"t"`  // the iSCSI target name
	ID     int    `msgpack:"id"` // the LUN number
	// Size in bytes; 0 in an add-member means "the size of what the new
	// site's path holds", not known until it opens it (the replication
	// hello compares sizes then).
	Size              int64  `msgpack:"s,omitempty"`
	BlockSize         int    `msgpack:"b"`
	PhysicalBlockSize int    `msgpack:"pb,omitempty"`
	Serial            string `msgpack:"sn,omitempty"` // as configured: "" derives it from Target and ID
	Product           string `msgpack:"p,omitempty"`  // as configured: "" is the default
}

// String is a one-line description for logs and status.
func (l LUN) String() string {
	s := fmt.Sprintf("%s LUN %d, %d bytes in %d-byte blocks", l.Target, l.ID, l.Size, l.BlockSize)
	if l.PhysicalBlockSize != 0 && l.PhysicalBlockSize != l.BlockSize {
		s += fmt.Sprintf(" (%d physical)", l.PhysicalBlockSize)
	}
	if l.Serial != "" {
		s += ", serial " + l.Serial
	}
	if l.Product != "" {
		s += ", product " + l.Product
	}
	return s
}

// Diff says how have (a site's config) differs from want (the cluster's
// definition), "" when it matches. A size of 0 on either side is unknown
// and matches any.
func (want LUN) Diff(have LUN) string {
	var d []string
	add := func(what string, h, w any) { d = append(d, fmt.Sprintf("%s %v (the cluster's is %v)", what, h, w)) }
	if have.Target != want.Target {
		add("target", have.Target, want.Target)
	}
	if have.ID != want.ID {
		add("LUN", have.ID, want.ID)
	}
	if have.Size != 0 && want.Size != 0 && have.Size != want.Size {
		add("size", have.Size, want.Size)
	}
	if have.BlockSize != want.BlockSize {
		add("block size", have.BlockSize, want.BlockSize)
	}
	if have.BlockSize == want.BlockSize && phys(have) != phys(want) {
		add("physical block size", phys(have), phys(want))
	}
	if have.Serial != want.Serial {
		add("serial", fmt.Sprintf("%q", have.Serial), fmt.Sprintf("%q", want.Serial))
	}
	if have.Product != want.Product {
		add("product", fmt.Sprintf("%q", have.Product), fmt.Sprintf("%q", want.Product))
	}
	return strings.Join(d, ", ")
}

func phys(l LUN) int {
	if l.PhysicalBlockSize == 0 {
		return l.BlockSize
	}
	return l.PhysicalBlockSize
}

// checkLUN refuses a command that carries an LU other than the cluster's.
func (s State) checkLUN(c Command) error {
	if c.LUN == nil || s.LUN == nil {
		return nil
	}
	if d := s.LUN.Diff(*c.LUN); d != "" {
		return fmt.Errorf("%w: %s %s: %w", ErrRefused, c.Kind, c.Name, &LUNMismatchError{Diff: d})
	}
	return nil
}

// LUNMismatchError: a site's LU is not the cluster's.
type LUNMismatchError struct{ Diff string }

func (e *LUNMismatchError) Error() string {
	return "the LU in this config differs from the cluster's: " + e.Diff
}

// LUNMismatch reports how this member's LU (Config.LUN) differs from the
// one the cluster recorded, or "" (also when either is not known yet).
func (c *Cluster) LUNMismatch() string {
	s := c.State()
	if s.LUN == nil || c.cfg.LUN == nil {
		return ""
	}
	return s.LUN.Diff(*c.cfg.LUN)
}
