package conf

import (
	"fmt"
	"strings"
	"testing"
)

// lunSrc is a config whose one LUN block (opening on line 3) holds lines
// from line 5 on, after its path.
func lunSrc(lines ...string) string {
	return "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n    " +
		strings.Join(lines, "\n    ") + "\n  }\n}\n"
}

// iscsiSrc is a config whose iscsi block (line 2) holds lines from line 3 on.
func iscsiSrc(lines ...string) string {
	return "name = \"a\"\niscsi {\n  " + strings.Join(lines, "\n  ") +
		"\n}\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n"
}

func TestPhysicalBlockSize(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want int
	}{
		{lunSrc(""), 0},
		{lunSrc("physical_block_size = 512"), 512},
		{lunSrc("physical_block_size = 4096"), 4096},
		{lunSrc("block_size = 4096", "physical_block_size = 65536"), 65536},
		{lunSrc("physical_block_size = 16777216"), 16777216}, // 512 << 15
	} {
		c, err := Parse("t.hcl", []byte(tc.src))
		if err != nil {
			t.Fatalf("%q: %v", tc.src, err)
		}
		if got := c.Targets[0].LUNs[0].PhysicalBlockSize; got != tc.want {
			t.Errorf("%q: physical_block_size %d, want %d", tc.src, got, tc.want)
		}
	}
	for _, tc := range []struct{ src, want string }{
		{lunSrc("physical_block_size = 1536"), "5:27 target[0].lun[0].physical_block_size: expected block_size (512) times a power of two up to 32768, got 1536"},
		{lunSrc("physical_block_size = 256"), "5:27 target[0].lun[0].physical_block_size: expected block_size (512) times a power of two"},
		{lunSrc("block_size = 4096", "physical_block_size = 512"), "6:27 target[0].lun[0].physical_block_size: expected block_size (4096)"},
		{lunSrc("physical_block_size = 33554432"), "5:27 target[0].lun[0].physical_block_size: expected block_size (512) times a power of two up to 32768"},
		{lunSrc("physical_block_size = \"4KiB\""), "5:27 target[0].lun[0].physical_block_size: expected a whole number"},
		// A bad block_size is reported once, not again through this key.
		{lunSrc("block_size = 1000", "physical_block_size = 4096"), "5:18 target[0].lun[0].block_size: expected 512 or 4096"},
	} {
		wantOneProblem(t, tc.src, tc.want)
	}
}

func TestMemoryBudget(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want int64
	}{
		{iscsiSrc(""), 0},
		{iscsiSrc("memory_budget = 0"), 0},
		{iscsiSrc("memory_budget = \"1GiB\""), 1 << 30},
		// 64 MiB + 128 × 256 KiB, the least the defaults allow.
		{iscsiSrc("memory_budget = 100663296"), 96 << 20},
		// Without unsolicited data a connection needs only its 64 MiB.
		{iscsiSrc("immediate_data = false", "initial_r2t = true", "memory_budget = \"64MiB\""), 64 << 20},
	} {
		c, err := Parse("t.hcl", []byte(tc.src))
		if err != nil {
			t.Fatalf("%q: %v", tc.src, err)
		}
		if got := c.ISCSI.MemoryBudget; got != tc.want {
			t.Errorf("%q: memory_budget %d, want %d", tc.src, got, tc.want)
		}
	}
	for _, tc := range []struct{ src, want string }{
		{iscsiSrc("memory_budget = \"10MiB\""), "3:19 iscsi.memory_budget: 10485760 bytes is less than one connection may reserve (100663296"},
		{iscsiSrc("queue_depth = 1", "memory_budget = \"64MiB\""), "4:19 iscsi.memory_budget: 67108864 bytes is less than one connection may reserve (67371008"},
		{iscsiSrc("memory_budget = -1"), "3:19 iscsi.memory_budget: expected a size of at least 1 byte"},
		{iscsiSrc("memory_budget = \"lots\""), "3:19 iscsi.memory_budget: invalid size"},
	} {
		wantOneProblem(t, tc.src, tc.want)
	}
	// A Config built in code is checked too.
	c := Default(t.TempDir())
	c.ISCSI.MemoryBudget = -5
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "memory_budget: must not be negative") {
		t.Fatalf("negative budget in code: %v", err)
	}
}

func wantOneProblem(t *testing.T, src, want string) {
	t.Helper()
	_, err := Parse("t.hcl", []byte(src))
	if err == nil {
		t.Fatalf("%q: no error, want %s", src, want)
	}
	ps := problemsOf(t, err)
	at, frag, _ := strings.Cut(want, " ")
	if len(ps) != 1 || fmt.Sprintf("%d:%d", ps[0].Line, ps[0].Col) != at || !strings.Contains(ps[0].Msg, frag) {
		t.Fatalf("%q: problems %v, want one at %s containing %q", src, err, at, frag)
	}
}

func TestConnectionCaps(t *testing.T) {
	for _, tc := range []struct {
		src      string
		max, per int
		err      string
	}{
		{iscsiSrc(""), 1024, 256, ""},
		{iscsiSrc("max_connections = 100", "max_connections_per_ip = 100"), 100, 100, ""},
		{iscsiSrc("max_connections = 0"), 0, 0, "iscsi.max_connections"},
		{iscsiSrc("max_connections_per_ip = 70000"), 0, 0, "iscsi.max_connections_per_ip"},
		{iscsiSrc("max_connections = 10", "max_connections_per_ip = 11"), 0, 0, "exceeds max_connections 10"},
	} {
		c, err := Parse("t.hcl", []byte(tc.src))
		if err == nil {
			err = c.Validate()
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one about %s", tc.src, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.src, err)
			continue
		}
		if c.ISCSI.MaxConnections != tc.max || c.ISCSI.MaxConnectionsPerIP != tc.per {
			t.Errorf("%q: caps %d/%d, want %d/%d", tc.src, c.ISCSI.MaxConnections, c.ISCSI.MaxConnectionsPerIP, tc.max, tc.per)
		}
	}
}
