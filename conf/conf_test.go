package conf

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dump renders a Config with its pointers followed, for failure messages.
// Secrets print redacted, so tests that compare them do so separately.
func dump(v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Sprintf("%+v", v)
	}
	return string(b)
}

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	c, err := Parse("t.hcl", []byte(src))
	if err != nil {
		t.Fatalf("Parse: unexpected error:\n%v", err)
	}
	return c
}

func problemsOf(t *testing.T, err error) []Problem {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error, got none")
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error is %T, not *conf.Error: %v", err, err)
	}
	if len(e.Problems) == 0 {
		t.Fatal("*Error with no problems")
	}
	return e.Problems
}

func TestParseExample(t *testing.T) {
	src, err := os.ReadFile("testdata/example.hcl")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse("testdata/example.hcl", src)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &Config{
		Name:      "site-a",
		Role:      "data",
		DataDir:   "/var/lib/metrolun",
		LogLevel:  "debug",
		LogFormat: "json",
		ISCSI: ISCSI{
			Listen:                   []string{"192.0.2.10:3260", "[2001:db8::10]:3260", "portal-a.example.net:3261"},
			PortalGroup:              2,
			NOPInterval:              10 * time.Second,
			NOPTimeout:               60 * time.Second,
			MaxRecvDataSegmentLength: 65536,
			MaxBurstLength:           524288,
			FirstBurstLength:         65536,
			MaxOutstandingR2T:        4,
			ImmediateData:            false,
			InitialR2T:               true,
			HeaderDigest:             []string{"CRC32C", "None"},
			DataDigest:               []string{"None"},
			QueueDepth:               64,
			MaxConnections:           512,
			MaxConnectionsPerIP:      32,
			DiscoveryCHAP:            &CHAP{Username: "discovery", Secret: "discovery-secret-1"},
		},
		Targets: []Target{
			{
				Name:            "iqn.2026-11.io.metrolun:demo",
				Alias:           "demo",
				AllowInitiators: []string{"iqn.1994-05.com.redhat:abc", "iqn.1991-05.com.microsoft:host-b"},
				CHAP: &CHAP{
					Username:       "user",
					Secret:         "12-to-16-byte-secret",
					MutualUsername: "tgt",
					MutualSecret:   "another-secret-here",
				},
				LUNs: []LUN{
					{
						ID: 0, Path: "/var/lib/metrolun/demo.img", Size: 1 << 30, BlockSize: 512,
						Serial: "MLDEMO0001", Product: "metrolun", Thin: true, WriteCache: true,
					},
					{
						ID: 1, Path: "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", BlockSize: 4096,
						ReadOnly: true, Product: "metrolun",
					},
				},
			},
			{
				Name: "iqn.2026-11.io.metrolun:scratch",
				LUNs: []LUN{{
					ID: 0, Path: "/var/lib/metrolun/scratch.img", Size: 256 << 20, BlockSize: 512,
					Product: "metrolun", Thin: true, WriteCache: true,
				}},
			},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse(example.hcl):\ngot  %s\nwant %s", dump(got), dump(want))
	}
	// dump redacts secrets, so check them by value here.
	if got.Targets[0].CHAP == nil || string(got.Targets[0].CHAP.MutualSecret) != "another-secret-here" {
		t.Error("target chap mutual_secret not decoded")
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate of a parsed config: %v", err)
	}
}

func TestReferenceExampleParses(t *testing.T) {
	// The commented example in REFERENCE.md must stay a valid file.
	ref, err := os.ReadFile("REFERENCE.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(ref), "```hcl\n")
	if !ok {
		t.Fatal("REFERENCE.md has no ```hcl block")
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("unterminated ```hcl block in REFERENCE.md")
	}
	if _, err := Parse("REFERENCE.md", []byte(block)); err != nil {
		t.Fatalf("example in REFERENCE.md does not parse:\n%v", err)
	}
}

func TestParseDefaults(t *testing.T) {
	got := mustParse(t, `
name = "site-b"
target "iqn.2026-11.io.metrolun:demo" {
  lun "7" {
    path = "/srv/lun7.img"
  }
}
`)
	want := &Config{
		Name:      "site-b",
		Role:      RoleData,
		DataDir:   "/var/lib/metrolun",
		LogLevel:  "info",
		LogFormat: "text",
		ISCSI: ISCSI{
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
			HeaderDigest:             []string{"None", "CRC32C"},
			DataDigest:               []string{"None", "CRC32C"},
			QueueDepth:               128,
			MaxConnections:           1024,
			MaxConnectionsPerIP:      256,
		},
		Targets: []Target{{
			Name: "iqn.2026-11.io.metrolun:demo",
			LUNs: []LUN{{
				ID: 7, Path: "/srv/lun7.img", BlockSize: 512, Product: "metrolun",
				Thin: true, WriteCache: true,
			}},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %s\nwant %s", dump(got), dump(want))
	}
}

func TestParsePartialISCSIKeepsDefaults(t *testing.T) {
	got := mustParse(t, `
name = "a"
iscsi {
  portal_group = 3
  listen = ["10.0.0.1", "[::1]", "[fe80::1%eth0]:3262", "Host.Example.NET"]
}
target "iqn.2026-11.io.metrolun:t" {
  lun "0" {
    path = "/x"
    size = null # null means unset
  }
}
`)
	want := DefaultISCSI()
	want.PortalGroup = 3
	want.Listen = []string{"10.0.0.1:3260", "[::1]:3260", "[fe80::1%eth0]:3262", "host.example.net:3260"}
	if !reflect.DeepEqual(got.ISCSI, want) {
		t.Errorf("got  %s\nwant %s", dump(got.ISCSI), dump(want))
	}
	if got.Targets[0].LUNs[0].Size != 0 {
		t.Errorf("size = null: got %d, want 0 (unset)", got.Targets[0].LUNs[0].Size)
	}
}

// HCL (through cty) stores strings in Unicode NFC form; REFERENCE.md warns
// about it for CHAP secrets. This pins the behaviour the warning describes.
func TestStringsAreNFC(t *testing.T) {
	decomposed := "e\u0301-and-twelve-more" // e + COMBINING ACUTE ACCENT
	c := mustParse(t, chapSrc(`username = "u"`, fmt.Sprintf("secret = %q", decomposed)))
	if got, want := string(c.Targets[0].CHAP.Secret), "\u00e9-and-twelve-more"; got != want {
		t.Errorf("secret: got %+q, want %+q", got, want)
	}
}

func TestParseWitness(t *testing.T) {
	got := mustParse(t, "name = \"w\"\nrole = \"witness\"\n")
	if got.Role != RoleWitness || len(got.Targets) != 0 {
		t.Errorf("got %s", dump(got))
	}
}

func TestDefault(t *testing.T) {
	dir := filepath.Join("some", "dir")
	c := Default(dir)
	if err := c.Validate(); err != nil {
		t.Fatalf("Default(%q).Validate(): %v", dir, err)
	}
	if c.Name != "site-a" || c.Role != RoleData {
		t.Errorf("name/role: got %q/%q", c.Name, c.Role)
	}
	if want := filepath.Join(dir, "site-a"); c.DataDir != want {
		t.Errorf("DataDir: got %q, want %q", c.DataDir, want)
	}
	if !reflect.DeepEqual(c.ISCSI.Listen, []string{"127.0.0.1:3260"}) {
		t.Errorf("Listen: got %q", c.ISCSI.Listen)
	}
	if len(c.Targets) != 1 || c.Targets[0].Name != "iqn.2026-11.io.metrolun:demo" || len(c.Targets[0].LUNs) != 1 {
		t.Fatalf("targets: got %s", dump(c.Targets))
	}
	l := c.Targets[0].LUNs[0]
	if want := filepath.Join(dir, "site-a", "lun0.img"); l.ID != 0 || l.Path != want || l.Size != 1<<30 || l.BlockSize != 512 {
		t.Errorf("LUN: got %+v, want LUN 0 at %s of 1 GiB", l, want)
	}
	if err := Default("").Validate(); err != nil {
		t.Errorf("Default(\"\").Validate(): %v", err)
	}
}

func TestLoad(t *testing.T) {
	c, err := Load("testdata/example.hcl")
	if err != nil || c.Name != "site-a" {
		t.Fatalf("Load(example): %v, %+v", err, c)
	}
	if _, err := Load("testdata/does-not-exist.hcl"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing): got %v, want fs.ErrNotExist", err)
	}
	path := filepath.Join(t.TempDir(), "bad.hcl")
	if err := os.WriteFile(path, []byte("name = \"a\"\nrole = \"x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path)
	ps := problemsOf(t, err)
	if ps[0].File != path || ps[0].Line != 2 {
		t.Errorf("Load(bad): problem %+v, want it in %s on line 2", ps[0], path)
	}
}

// okTarget completes a source whose subject is elsewhere. It starts on the
// line after whatever precedes it.
const okTarget = `
target "iqn.2026-11.io.metrolun:ok" {
  lun "0" {
    path = "/srv/ok.img"
  }
}
`

// TestProblems holds one case per rule: the exact LINE:COL of each problem
// and a fragment of its message, in the order they are reported.
func TestProblems(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want []string // "LINE:COL fragment"
	}{
		// Top level.
		{"name missing", `role = "data"` + okTarget,
			[]string{"1:1 name: is required"}},
		{"name null", `name = null` + okTarget,
			[]string{"1:8 name: is required"}},
		{"name bad char", `name = "Site_A"` + okTarget,
			[]string{`1:8 name: "Site_A" contains 'S'; expected 1 to 63 of a-z, 0-9 and -`}},
		{"name too long", `name = "` + strings.Repeat("a", 64) + `"` + okTarget,
			[]string{"1:8 name: is 64 characters long"}},
		{"name wrong type", `name = 7` + okTarget,
			[]string{"1:8 name: expected a string, got number"}},
		{"role", "name = \"a\"\nrole = \"primary\"" + okTarget,
			[]string{`2:8 role: expected "data" or "witness", got "primary"`}},
		{"data_dir empty", "name = \"a\"\n\ndata_dir = \"\"" + okTarget,
			[]string{"3:12 data_dir: must not be empty"}},
		{"log_level", "name = \"a\"\nlog_level = \"verbose\"" + okTarget,
			[]string{`2:13 log_level: expected one of trace, debug, info, warn or error, got "verbose"`}},
		{"log_format", "name = \"a\"\nlog_format = \"xml\"" + okTarget,
			[]string{`2:14 log_format: expected "text" or "json"`}},
		{"unknown key at line 4", "name = \"a\"\n\n# comment\ncolour = \"blue\"" + okTarget,
			[]string{`4:1 Unsupported argument: An argument named "colour" is not expected here. Arguments allowed here: name, role`}},
		{"misspelt key suggests", "name = \"a\"\nlog_levle = \"info\"" + okTarget,
			[]string{`2:1 Did you mean "log_level"?`}},
		{"unknown block", "name = \"a\"\nsite \"b\" {\n}" + okTarget,
			[]string{`2:1 Unsupported block type: Blocks of type "site" are not expected here.`}},
		{"argument redefined", "name = \"a\"\nname = \"b\"" + okTarget,
			[]string{`2:1 Attribute redefined: The argument "name" was already set at t.hcl:1,1-5`}},
		{"variables not allowed", "name = var.site" + okTarget,
			[]string{"1:8 Variables not allowed"}},
		{"functions not allowed", "name = lower(\"A\")" + okTarget,
			[]string{"1:8 Function calls not allowed"}},
		{"syntax error", "name = \"a\"\niscsi {\n  portal_group = \n}\n",
			[]string{"3:18 Invalid expression"}},
		{"data site without target", "name = \"a\"\n",
			[]string{"1:1 target: a data site needs at least one target block"}},
		{"witness with target", "name = \"w\"\nrole = \"witness\"" + okTarget,
			[]string{"3:1 target[0]: a witness serves no iSCSI targets"}},

		// iscsi block.
		{"iscsi duplicate block", "name = \"a\"\niscsi {\n}\niscsi {\n}" + okTarget,
			[]string{"4:1 iscsi: only one iscsi block is allowed here; the first is on line 2"}},
		{"iscsi unknown key", "name = \"a\"\niscsi {\n  listen = []\n  portal_grup = 1\n}" + okTarget,
			[]string{
				"3:12 iscsi.listen: expected at least one portal",
				`4:3 An argument named "portal_grup" is not expected here. Did you mean "portal_group"?`,
			}},
		{"listen not a list", "name = \"a\"\niscsi {\n  listen = \"0.0.0.0\"\n}" + okTarget,
			[]string{"3:12 iscsi.listen: expected a list of strings"}},
		{"listen bad entries", "name = \"a\"\niscsi {\n  listen = [\"1.2.3.4:99999\", 5, \"h:iscsi\", \"300.1.1.1\"]\n}" + okTarget,
			[]string{
				`3:13 iscsi.listen[0]: "1.2.3.4:99999": port "99999" is not a number 1..65535`,
				"3:30 iscsi.listen[1]: expected a string, got number",
				`3:33 iscsi.listen[2]: "h:iscsi": port "iscsi" is not a number`,
				`3:44 iscsi.listen[3]: "300.1.1.1": host "300.1.1.1" is not a valid IP address`,
			}},
		{"listen duplicate after normalising", "name = \"a\"\niscsi {\n  listen = [\n    \"10.0.0.1\",\n    \"10.0.0.1:3260\",\n  ]\n}" + okTarget,
			[]string{"5:5 iscsi.listen[1]: portal 10.0.0.1:3260 is listed twice (also iscsi.listen[0] on line 4)"}},
		{"portal_group 0", "name = \"a\"\niscsi {\n  portal_group = 0\n}" + okTarget,
			[]string{"3:18 iscsi.portal_group: must be between 1 and 65535, got 0"}},
		{"portal_group 65536", "name = \"a\"\niscsi {\n  portal_group = 65536\n}" + okTarget,
			[]string{"3:18 iscsi.portal_group: must be between 1 and 65535, got 65536"}},
		{"portal_group string", "name = \"a\"\niscsi {\n  portal_group = \"1\"\n}" + okTarget,
			[]string{"3:18 iscsi.portal_group: expected a whole number, got string"}},
		{"portal_group fraction", "name = \"a\"\niscsi {\n  portal_group = 1.5\n}" + okTarget,
			[]string{"3:18 iscsi.portal_group: expected a whole number, got 1.5"}},
		{"portal_group huge", "name = \"a\"\niscsi {\n  portal_group = 1e40\n}" + okTarget,
			[]string{"3:18 iscsi.portal_group: 1e+40 is out of range"}},
		{"nop_interval negative", "name = \"a\"\niscsi {\n  nop_interval = -1\n}" + okTarget,
			[]string{"3:18 iscsi.nop_interval: must be between 0 and 3600 seconds, got -1s"}},
		{"nop_timeout zero", "name = \"a\"\niscsi {\n  nop_timeout = 0\n}" + okTarget,
			[]string{"3:17 iscsi.nop_timeout: must be between 1 and 3600 seconds, got 0s"}},
		{"max_recv_data_segment_length", "name = \"a\"\niscsi {\n  max_recv_data_segment_length = 511\n}" + okTarget,
			[]string{"3:34 iscsi.max_recv_data_segment_length: must be between 512 and 16777215, got 511"}},
		{"max_burst_length", "name = \"a\"\niscsi {\n  max_burst_length = 16777216\n}" + okTarget,
			[]string{"3:22 iscsi.max_burst_length: must be between 512 and 16777215, got 16777216"}},
		{"first_burst_length over max_burst_length", "name = \"a\"\niscsi {\n  max_burst_length = 4096\n  first_burst_length = 8192\n}" + okTarget,
			[]string{"4:24 iscsi.first_burst_length: 8192 exceeds max_burst_length 4096"}},
		{"max_outstanding_r2t", "name = \"a\"\niscsi {\n  max_outstanding_r2t = 0\n}" + okTarget,
			[]string{"3:25 iscsi.max_outstanding_r2t: must be between 1 and 65535, got 0"}},
		{"immediate_data not bool", "name = \"a\"\niscsi {\n  immediate_data = \"yes\"\n}" + okTarget,
			[]string{"3:20 iscsi.immediate_data: expected true or false, got string"}},
		{"digest spelling", "name = \"a\"\niscsi {\n  header_digest = [\"crc32c\"]\n}" + okTarget,
			[]string{`3:20 iscsi.header_digest[0]: expected "None" or "CRC32C" (spelled exactly so), got "crc32c"`}},
		{"digest twice", "name = \"a\"\niscsi {\n  data_digest = [\"None\", \"None\"]\n}" + okTarget,
			[]string{`3:26 iscsi.data_digest[1]: "None" is listed twice (also iscsi.data_digest[0] on line 3)`}},
		{"digest empty", "name = \"a\"\niscsi {\n  data_digest = []\n}" + okTarget,
			[]string{`3:17 iscsi.data_digest: expected at least one of "None" and "CRC32C"`}},
		{"queue_depth", "name = \"a\"\niscsi {\n  queue_depth = 1025\n}" + okTarget,
			[]string{"3:17 iscsi.queue_depth: must be between 1 and 1024, got 1025"}},
		{"discovery_chap twice", "name = \"a\"\niscsi {\n  discovery_chap {\n    username = \"u\"\n    secret = \"0123456789ab\"\n  }\n  discovery_chap {\n  }\n}" + okTarget,
			[]string{"7:3 iscsi.discovery_chap: only one discovery_chap block is allowed here; the first is on line 3"}},

		// target blocks.
		{"target missing label", "name = \"a\"\ntarget {\n}\n",
			[]string{"2:8 Missing name for target"}},
		{"target name uppercase", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:Demo\" {\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`2:8 target[0].name: "iqn.2026-11.io.metrolun:Demo": iSCSI names are lower case; write "iqn.2026-11.io.metrolun:demo"`}},
		{"target name prefix uppercase", "name = \"a\"\ntarget \"IQN.2026-11.io.metrolun\" {\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`2:8 target[0].name: "IQN.2026-11.io.metrolun": iSCSI names are lower case`}},
		{"target name bad month", "name = \"a\"\ntarget \"iqn.2026-13.io.metrolun\" {\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`2:8 target[0].name: "iqn.2026-13.io.metrolun": month 13 is not 01..12`}},
		{"target name no date", "name = \"a\"\ntarget \"iqn.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`2:8 target[0].name: "iqn.io.metrolun:x": expected iqn.yyyy-mm.reversed.domain[:anything]`}},
		{"target name bad eui", "name = \"a\"\ntarget \"eui.0123\" {\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`2:8 target[0].name: "eui.0123": expected eui. followed by 16 hex digits`}},
		{"target name unknown format", "name = \"a\"\ntarget \"demo\" {\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`2:8 target[0].name: "demo": expected a name starting with iqn., eui. or naa.`}},
		{"target defined twice", "name = \"a\"" + okTarget + `target "iqn.2026-11.io.metrolun:ok" {
  lun "0" {
    path = "/srv/other.img"
  }
}`,
			[]string{`7:8 target[1].name: target "iqn.2026-11.io.metrolun:ok" is defined twice (also target[0].name on line 2)`}},
		{"target without lun", "name = \"a\"\n\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  alias = \"x\"\n}\n",
			[]string{"3:1 target[0].lun: expected at least one lun block"}},
		{"alias control character", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  alias = \"a\\tb\"\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{"3:11 target[0].alias: contains a control character"}},
		{"allow_initiators bad entry", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  allow_initiators = [\"iqn.1994-05.com.redhat:abc\", \"host-b\"]\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`3:53 target[0].allow_initiators[1]: "host-b": expected a name starting with iqn., eui. or naa.`}},
		{"allow_initiators twice", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  allow_initiators = [\n    \"naa.52004567ba64678d\",\n    \"naa.52004567ba64678d\",\n  ]\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`5:5 target[0].allow_initiators[1]: "naa.52004567ba64678d" is listed twice (also target[0].allow_initiators[0] on line 4)`}},
		{"column counts characters, not bytes", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  allow_initiators = [\"ü\", \"x\"]\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{
				`3:23 target[0].allow_initiators[0]: "ü"`,
				`3:28 target[0].allow_initiators[1]: "x"`,
			}},

		// lun blocks.
		{"lun label not a number", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"zero\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`3:7 target[0].lun[0].id: "zero": expected a LUN number 0..16383`}},
		{"lun label out of range", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"16384\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`3:7 target[0].lun[0].id: "16384": expected a LUN number 0..16383`}},
		{"lun label leading zero", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"01\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{`3:7 target[0].lun[0].id: "01": expected a LUN number`}},
		{"lun defined twice", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"3\" {\n    path = \"/x\"\n  }\n  lun \"3\" {\n    path = \"/y\"\n  }\n}\n",
			[]string{"6:7 target[0].lun[1].id: LUN 3 is defined twice in this target (also target[0].lun[0].id on line 3)"}},
		{"same lun number in two targets is fine, same path is not", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/srv/x.img\"\n  }\n}\ntarget \"iqn.2026-11.io.metrolun:y\" {\n  lun \"0\" {\n    path = \"/srv/../srv/x.img\"\n  }\n}\n",
			[]string{`9:12 target[1].lun[0].path: "/srv/../srv/x.img" is already the backing store of target[0].lun[0].path on line 4`}},
		{"lun path missing", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n\n  lun \"0\" {\n    size = \"1GiB\"\n  }\n}\n",
			[]string{"4:3 target[0].lun[0].path: is required"}},
		{"lun unknown key at line 6", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n\n    sise = \"1GiB\"\n  }\n}\n",
			[]string{`6:5 Unsupported argument: An argument named "sise" is not expected here. Did you mean "size"? Arguments allowed here: path, size, block_size, physical_block_size, read_only, serial, product, thin, write_cache. No blocks are allowed here.`}},
		{"size not a multiple of block_size", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n    block_size = 4096\n    size = \"1000KB\"\n  }\n}\n",
			[]string{"6:12 target[0].lun[0].size: 1000000 bytes is not a multiple of block_size 4096"}},
		{"size bad unit", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n    size = \"1 GB2\"\n  }\n}\n",
			[]string{`5:12 target[0].lun[0].size: invalid size "1 GB2": unknown unit`}},
		{"size zero", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n    size = 0\n  }\n}\n",
			[]string{"5:12 target[0].lun[0].size: must be greater than 0"}},
		{"size negative", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n    size = -512\n  }\n}\n",
			[]string{"5:12 target[0].lun[0].size: expected a size of at least 1 byte, got -512"}},
		{"size wrong type", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n    size = true\n  }\n}\n",
			[]string{`5:12 target[0].lun[0].size: expected a size, a number of bytes or a string such as "1GiB", got bool`}},
		{"block_size", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n    block_size = 1024\n  }\n}\n",
			[]string{"5:18 target[0].lun[0].block_size: expected 512 or 4096, got 1024"}},
		{"serial too long", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n    serial = \"" + strings.Repeat("S", 33) + "\"\n  }\n}\n",
			[]string{"5:14 target[0].lun[0].serial: is 33 characters long; at most 32 are allowed"}},
		{"product not ASCII", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n    product = \"métro\"\n  }\n}\n",
			[]string{"5:15 target[0].lun[0].product: \"métro\" contains a byte outside printable ASCII"}},
		{"product too long", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  lun \"0\" {\n    path = \"/x\"\n    product = \"0123456789abcdefg\"\n  }\n}\n",
			[]string{"5:15 target[0].lun[0].product: is 17 characters long; at most 16 are allowed"}},

		// chap blocks.
		{"chap username without secret", chapSrc(`username = "u"`),
			[]string{"3:3 target[0].chap.secret: is required when username is set"}},
		{"chap secret without username", chapSrc(`secret = "0123456789abcdef"`),
			[]string{"3:3 target[0].chap.username: is required when secret is set"}},
		{"chap empty block", chapSrc(``),
			[]string{"3:3 target[0].chap: expected username and secret; remove the block to turn CHAP off"}},
		{"chap mutual without one-way", chapSrc(`mutual_username = "t"`, `mutual_secret = "0123456789abcdef"`),
			[]string{"3:3 target[0].chap: mutual CHAP needs one-way CHAP too"}},
		{"chap mutual_username without mutual_secret", chapSrc(`username = "u"`, `secret = "0123456789abcdef"`, `mutual_username = "t"`),
			[]string{"3:3 target[0].chap.mutual_secret: is required when mutual_username is set"}},
		{"chap secret too short", chapSrc(`username = "u"`, `secret = "01234567890"`),
			[]string{"5:14 target[0].chap.secret: is too short: CHAP secrets must be at least 12 bytes"}},
		{"chap mutual_secret too short", chapSrc(`username = "u"`, `secret = "0123456789ab"`, `mutual_username = "t"`, `mutual_secret = "x"`),
			[]string{"7:21 target[0].chap.mutual_secret: is too short"}},
		{"chap mutual_secret equals secret", chapSrc(`username = "u"`, `secret = "0123456789ab"`, `mutual_username = "t"`, `mutual_secret = "0123456789ab"`),
			[]string{"7:21 target[0].chap.mutual_secret: must differ from secret"}},
		{"chap block twice", "name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  chap {\n    username = \"u\"\n    secret = \"0123456789ab\"\n  }\n  chap {\n  }\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n",
			[]string{"7:3 target[0].chap: only one chap block is allowed here; the first is on line 3"}},
		{"chap secret wrong type", chapSrc(`username = "u"`, `secret = 123456789012`),
			[]string{"5:14 target[0].chap.secret: expected a string, got number"}},
		{"mutual_secret reuses another block's secret", `name = "a"
iscsi {
  discovery_chap {
    username = "d"
    secret = "0123456789ab"
  }
}
target "iqn.2026-11.io.metrolun:x" {
  chap {
    username = "u"
    secret = "fedcba9876543210"
    mutual_username = "t"
    mutual_secret = "0123456789ab"
  }
  lun "0" {
    path = "/x"
  }
}
`,
			[]string{"13:21 target[0].chap.mutual_secret: must differ from the secret of iscsi.discovery_chap"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("t.hcl", []byte(tc.src))
			if err == nil {
				t.Fatalf("no error; config %s", dump(c))
			}
			if c != nil {
				t.Errorf("config returned along with an error")
			}
			ps := problemsOf(t, err)
			if len(ps) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(ps), len(tc.want), err)
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
				if want := fmt.Sprintf("t.hcl:%d:%d: %s", p.Line, p.Col, p.Msg); p.String() != want {
					t.Errorf("problem %d renders as %q, want %q", i, p.String(), want)
				}
			}
		})
	}
}

// chapSrc is a config whose target's chap block (on line 3) holds lines,
// one per line from line 4.
func chapSrc(lines ...string) string {
	var b strings.Builder
	b.WriteString("name = \"a\"\ntarget \"iqn.2026-11.io.metrolun:x\" {\n  chap {\n")
	for _, l := range lines {
		b.WriteString("    " + l + "\n")
	}
	b.WriteString("  }\n  lun \"0\" {\n    path = \"/x\"\n  }\n}\n")
	return b.String()
}

func TestAllProblemsReported(t *testing.T) {
	src := `name = "A"
role = "witness"
iscsi {
  queue_depth = 0
  bogus = 1
}
target "iqn.2026-11.io.metrolun:x" {
  lun "0" {
    block_size = 7
  }
}
`
	_, err := Parse("multi.hcl", []byte(src))
	ps := problemsOf(t, err)
	want := []string{
		`multi.hcl:1:8: name: "A" contains 'A'`,
		`multi.hcl:4:17: iscsi.queue_depth: must be between 1 and 1024, got 0`,
		`multi.hcl:5:3: Unsupported argument: An argument named "bogus"`,
		`multi.hcl:7:1: target[0]: a witness serves no iSCSI targets`,
		`multi.hcl:8:3: target[0].lun[0].path: is required`,
		`multi.hcl:9:18: target[0].lun[0].block_size: expected 512 or 4096, got 7`,
	}
	if len(ps) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(ps), len(want), err)
	}
	lines := strings.Split(err.Error(), "\n")
	for i, w := range want {
		if !strings.HasPrefix(ps[i].String(), w) {
			t.Errorf("problem %d: got %q, want prefix %q", i, ps[i], w)
		}
		if lines[i] != ps[i].String() {
			t.Errorf("Error() line %d: got %q, want %q", i, lines[i], ps[i])
		}
	}
}

func TestValidateInCode(t *testing.T) {
	cases := []struct {
		name   string
		modify func(c *Config)
		want   []string // exact messages, in order
	}{
		{"default is valid", func(c *Config) {}, nil},
		{"zero Config", func(c *Config) { *c = Config{} }, []string{
			"name: is required; expected 1 to 63 of a-z, 0-9 and -",
			`role: expected "data" or "witness", got ""`,
			"data_dir: must not be empty; expected a directory for metrolun's state",
			`log_level: expected one of trace, debug, info, warn or error, got ""`,
			`log_format: expected "text" or "json", got ""`,
			`iscsi.listen: expected at least one portal such as "0.0.0.0:3260"`,
			"iscsi.portal_group: must be between 1 and 65535, got 0",
			"iscsi.nop_timeout: must be between 1 and 3600 seconds, got 0s",
			"iscsi.max_recv_data_segment_length: must be between 512 and 16777215, got 0",
			"iscsi.max_burst_length: must be between 512 and 16777215, got 0",
			"iscsi.first_burst_length: must be between 512 and 16777215, got 0",
			"iscsi.max_outstanding_r2t: must be between 1 and 65535, got 0",
			`iscsi.header_digest: expected at least one of "None" and "CRC32C"`,
			`iscsi.data_digest: expected at least one of "None" and "CRC32C"`,
			"iscsi.queue_depth: must be between 1 and 1024, got 0",
			"iscsi.max_connections: must be between 1 and 65535, got 0",
			"iscsi.max_connections_per_ip: must be between 1 and 65535, got 0",
		}},
		{"lun fields", func(c *Config) {
			l := &c.Targets[0].LUNs[0]
			l.ID = -1
			l.Path = ""
			l.BlockSize = 0
			l.Size = -1
		}, []string{
			"target[0].lun[0].id: must be between 0 and 16383, got -1",
			"target[0].lun[0].path: is required: the backing file or block device",
			"target[0].lun[0].block_size: expected 512 or 4096, got 0",
			"target[0].lun[0].size: must not be negative, got -1",
		}},
		{"size not a multiple", func(c *Config) { c.Targets[0].LUNs[0].Size = 1<<30 + 1 }, []string{
			"target[0].lun[0].size: 1073741825 bytes is not a multiple of block_size 512",
		}},
		{"sub-second nop interval is fine", func(c *Config) { c.ISCSI.NOPInterval = 500 * time.Millisecond }, nil},
		{"nop_interval too long", func(c *Config) { c.ISCSI.NOPInterval = 2 * time.Hour }, []string{
			"iscsi.nop_interval: must be between 0 and 3600 seconds, got 2h0m0s",
		}},
		{"bad listen", func(c *Config) { c.ISCSI.Listen = []string{"", "localhost:0"} }, []string{
			"iscsi.listen[0]: empty portal; expected host:port, host, [ipv6]:port or [ipv6]",
			`iscsi.listen[1]: "localhost:0": port "0" is not a number 1..65535`,
		}},
		{"witness with targets", func(c *Config) { c.Role = RoleWitness }, []string{
			`target[0]: a witness serves no iSCSI targets; remove this block or set role = "data"`,
		}},
		{"chap both empty", func(c *Config) { c.Targets[0].CHAP = &CHAP{} }, []string{
			"target[0].chap: expected username and secret; remove the block to turn CHAP off",
		}},
		{"discovery chap missing secret", func(c *Config) { c.ISCSI.DiscoveryCHAP = &CHAP{Username: "u"} }, []string{
			"iscsi.discovery_chap.secret: is required when username is set",
		}},
		{"data site without targets", func(c *Config) { c.Targets = nil }, []string{
			"target: a data site needs at least one target block with at least one lun block",
		}},
		{"lun without a target's lun list", func(c *Config) { c.Targets[0].LUNs = nil }, []string{
			"target[0].lun: expected at least one lun block",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Default(t.TempDir())
			tc.modify(c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			ps := problemsOf(t, err)
			var got []string
			for _, p := range ps {
				if p.File != "" || p.Line != 0 || p.Col != 0 {
					t.Errorf("problem %q has a position; a Config built in code has none", p)
				}
				got = append(got, p.String())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	const (
		oneWay = "Kx9-one-way-SECRET"
		mutual = "Qz7-mutual-SECRET"
		short  = "Pw4-tiny" // under 12 bytes
	)
	c := Default(t.TempDir())
	c.Targets[0].CHAP = &CHAP{Username: "u", Secret: oneWay, MutualUsername: "t", MutualSecret: mutual}
	c.ISCSI.DiscoveryCHAP = &CHAP{Username: "d", Secret: mutual}
	chap := *c.Targets[0].CHAP
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{
		"%v Config":    fmt.Sprintf("%v", *c),
		"%+v Config":   fmt.Sprintf("%+v", *c),
		"%#v Config":   fmt.Sprintf("%#v", *c),
		"%v *Config":   fmt.Sprintf("%v", c),
		"%+v CHAP":     fmt.Sprintf("%+v", chap),
		"%#v CHAP":     fmt.Sprintf("%#v", chap),
		"%+v *CHAP":    fmt.Sprintf("%+v", &chap),
		"%s Secret":    fmt.Sprintf("%s", chap.Secret),
		"%q Secret":    fmt.Sprintf("%q", chap.Secret),
		"%x Secret":    fmt.Sprintf("%x", chap.Secret),
		"%d Secret":    fmt.Sprintf("%d", chap.Secret),
		"%10.3s":       fmt.Sprintf("%10.3s", chap.Secret),
		"String()":     chap.Secret.String(),
		"GoString()":   chap.Secret.GoString(),
		"json.Marshal": string(js),
	}
	// Errors: the mutual secret reuses the discovery secret, and another
	// target has a short secret and a type error next to it.
	c.Targets = append(c.Targets, Target{
		Name: "iqn.2026-11.io.metrolun:other",
		CHAP: &CHAP{Secret: short, MutualSecret: oneWay},
		LUNs: []LUN{{Path: "/x", BlockSize: 512}},
	})
	if err := c.Validate(); err == nil {
		t.Error("Validate: expected errors")
	} else {
		outputs["Validate error"] = err.Error()
	}
	src := fmt.Sprintf(`name = "a"
target "iqn.2026-11.io.metrolun:x" {
  chap {
    secret = %q
    mutual_secret = %q
    mutual_username = 7
  }
  lun "0" {
    path = "/x"
  }
}
target "iqn.2026-11.io.metrolun:y" {
  chap {
    username = "u"
    secret = %q
    mutual_username = "m"
    mutual_secret = %q
  }
  lun "0" {
    path = "/y"
  }
}
`, short, short, oneWay, oneWay)
	if _, err := Parse("s.hcl", []byte(src)); err == nil {
		t.Error("Parse: expected errors")
	} else {
		outputs["Parse error"] = err.Error()
	}
	for what, out := range outputs {
		for _, s := range []string{oneWay, mutual, short} {
			if strings.Contains(out, s) {
				t.Errorf("%s reveals a secret: %s", what, out)
			}
			// %x would show it hex-encoded.
			if strings.Contains(out, fmt.Sprintf("%x", s)) {
				t.Errorf("%s reveals a secret in hex: %s", what, out)
			}
		}
		if strings.Contains(what, "Secret") && !strings.Contains(out, "<redacted>") {
			t.Errorf("%s: got %q, want <redacted>", what, out)
		}
	}
	if !strings.Contains(outputs["json.Marshal"], `"Secret":"\u003credacted\u003e"`) {
		t.Errorf("json output does not redact Secret: %s", outputs["json.Marshal"])
	}
	if !strings.Contains(outputs["Parse error"], "mutual_secret: must differ from secret") ||
		!strings.Contains(outputs["Parse error"], "mutual_username: expected a string") {
		t.Errorf("Parse error lacks the expected problems:\n%s", outputs["Parse error"])
	}
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		err  string // fragment; "" means success
	}{
		{"0", 0, ""},
		{"512", 512, ""},
		{"512B", 512, ""},
		{" 4 KiB ", 4096, ""},
		{"1K", 1024, ""},
		{"1k", 1024, ""},
		{"1KB", 1000, ""},
		{"1kb", 1000, ""},
		{"1M", 1 << 20, ""},
		{"1MiB", 1 << 20, ""},
		{"1MB", 1000000, ""},
		{"1G", 1 << 30, ""},
		{"1GiB", 1 << 30, ""},
		{"1gib", 1 << 30, ""},
		{"1GB", 1000000000, ""},
		{"1T", 1 << 40, ""},
		{"2TiB", 2 << 40, ""},
		{"1TB", 1000000000000, ""},
		{"1.5GiB", 3 << 29, ""},
		{"0.5K", 512, ""},
		{"8388607TiB", 8388607 << 40, ""},
		{"9223372036854775807", 9223372036854775807, ""},
		{"9223372036854775808", 0, "larger than"},
		{"8388608TiB", 0, "larger than"},
		{"1.1B", 0, "not a whole number of bytes"},
		{"0.3K", 0, "not a whole number of bytes"},
		{"", 0, "empty size"},
		{"   ", 0, "empty size"},
		{"GiB", 0, "expected a number of bytes"},
		{"-1", 0, "expected a number of bytes"},
		{"+1", 0, "expected a number of bytes"},
		{"1e9", 0, "unknown unit"},
		{"1 PiB", 0, "unknown unit"},
		{"1GiBs", 0, "unknown unit"},
		{"1..5G", 0, "expected a number of bytes"},
		{".5G", 0, "expected a number of bytes"},
		{"5.G", 0, "expected a number of bytes"},
		{"0x10", 0, "unknown unit"},
		{"1 000", 0, "unknown unit"},
		{strings.Repeat("9", 65), 0, "longer than 64"},
	}
	for _, tc := range cases {
		t.Run(strconv.Quote(tc.in), func(t *testing.T) {
			got, err := ParseSize(tc.in)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.err == "" && got != tc.want:
				t.Fatalf("got %d, want %d", got, tc.want)
			case tc.err != "" && err == nil:
				t.Fatalf("got %d, want an error containing %q", got, tc.err)
			case tc.err != "" && !strings.Contains(err.Error(), tc.err):
				t.Fatalf("error %q does not contain %q", err, tc.err)
			}
		})
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0B", 1: "1B", 1000: "1000B", 1024: "1KiB", 3 << 29: "1536MiB",
		1 << 30: "1GiB", 5 << 40: "5TiB", 1<<40 + 512: "1099511628288B",
	} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
		if back, err := ParseSize(want); err != nil || back != n {
			t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", n, back, err)
		}
	}
}

func TestNormalizePortal(t *testing.T) {
	cases := []struct{ in, want, err string }{
		{"127.0.0.1:3260", "127.0.0.1:3260", ""},
		{"127.0.0.1", "127.0.0.1:3260", ""},
		{"127.0.0.1:", "127.0.0.1:3260", ""},
		{"0.0.0.0:860", "0.0.0.0:860", ""},
		{":3260", ":3260", ""},
		{"[::1]:3261", "[::1]:3261", ""},
		{"[::1]", "[::1]:3260", ""},
		{"::1", "[::1]:3260", ""},
		{"2001:DB8:0:0::1", "[2001:db8::1]:3260", ""},
		{"[fe80::1%eth0]", "[fe80::1%eth0]:3260", ""},
		{"Storage.Example.com:03260", "storage.example.com:3260", ""},
		{"localhost", "localhost:3260", ""},
		{"", "", "empty portal"},
		{"host:0", "", "not a number 1..65535"},
		{"host:65536", "", "not a number 1..65535"},
		{"host:-1", "", "not a number 1..65535"},
		{"host:+1", "", "not a number 1..65535"},
		{"[1.2.3.4]", "", "not an IPv6 address"},
		{"[nohost]", "", "not an IPv6 address"},
		{"1.2.3.4.5", "", "not a valid IP address"},
		{"bad_host", "", "neither an IP address nor a host name"},
		{"-host", "", "neither an IP address nor a host name"},
		{"a..b", "", "neither an IP address nor a host name"},
		{"1:2:3", "", "expected host:port"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := NormalizePortal(tc.in)
			switch {
			case tc.err == "" && (err != nil || got != tc.want):
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("got %q, %v; want an error containing %q", got, err, tc.err)
			}
		})
	}
}

func TestISCSINames(t *testing.T) {
	valid := []string{
		"iqn.2026-11.io.metrolun:demo",
		"iqn.2026-11.io.metrolun",
		"iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
		"iqn.1994-05.com.redhat:5b1e7c2d8a3f",
		"eui.02004567A425678D",
		"eui.02004567a425678d",
		"naa.52004567BA64678D",
		"naa.6001405e1c5b2f3a8d4c4e7f9a0b1c2d",
		"iqn.2026-11.io.metrolun:" + strings.Repeat("x", 223-len("iqn.2026-11.io.metrolun:")),
	}
	for _, s := range valid {
		if err := checkISCSIName(s); err != nil {
			t.Errorf("checkISCSIName(%q): %v", s, err)
		}
	}
	tooLong := "iqn.2026-11.io.metrolun:" + strings.Repeat("x", 224-len("iqn.2026-11.io.metrolun:"))
	invalid := map[string]string{
		"":                              "must not be empty",
		tooLong:                         "at most 223 bytes",
		"iqn.2026-1.io.metrolun":        "expected iqn.yyyy-mm",
		"iqn.2026-00.io.metrolun":       "month 00",
		"iqn.2026-11":                   "expected iqn.yyyy-mm",
		"iqn.2026-11.":                  "empty label",
		"iqn.2026-11.io..metrolun":      "empty label",
		"iqn.2026-11.io.metrolun:":      "nothing follows ':'",
		"iqn.2026-11.io.metrolun:a b":   "contains ' '",
		"iqn.2026-11.io.metrolun:a_b":   "contains '_'",
		"iqn.2026-11.io.metrolun:ä":     "contains 'ä'",
		"iqn.2026-11.io.Metrolun":       "lower case",
		"eui.02004567A425678":           "16 hex digits",
		"eui.02004567A425678G":          "16 hex digits",
		"naa.52004567BA64678D00":        "16 or 32 hex digits",
		"EUI.02004567A425678D":          "lower case",
		"iscsi.2026-11.io.metrolun:abc": "expected a name starting with iqn., eui. or naa.",
	}
	for s, frag := range invalid {
		err := checkISCSIName(s)
		if err == nil || !strings.Contains(err.Error(), frag) {
			t.Errorf("checkISCSIName(%q) = %v, want an error containing %q", s, err, frag)
		}
	}
}

// FuzzParse checks that no input makes Parse panic, that whatever it
// accepts also passes Validate, and that every problem it reports carries
// a position in the file.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("testdata/example.hcl")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	for _, name := range []string{"testdata/cluster-site-a.hcl", "testdata/cluster-witness.hcl"} {
		src, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	f.Add([]byte(clusterSrc(`lease = 0.5`, `replica_timeout = "1s"`, `prefer {`, `  initiator = "iqn.1994-05.com.redhat:h"`, `  site = "b"`, `}`)))
	f.Add([]byte(`name = "a"` + okTarget))
	f.Add([]byte(chapSrc(`username = "u"`, `secret = "0123456789ab"`, `mutual_secret = "0123456789ab"`)))
	f.Add([]byte("name = \"a\"\niscsi {\n  listen = [\"[::1]\", 5, null]\n  portal_group = 1e40\n}\n"))
	f.Add([]byte("target \"x\" \"y\" {\n  lun {\n  }\n}\n"))
	f.Add([]byte("name = [for x in [1, 2]: \"${x}\"]\n"))
	f.Add([]byte("\xff\xfe{{{"))
	f.Fuzz(func(t *testing.T, src []byte) {
		c, err := Parse("fuzz.hcl", src)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("Parse accepted a config that Validate rejects: %v\nsource:\n%s", verr, src)
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) || len(e.Problems) == 0 {
			t.Fatalf("Parse error %T with no problems: %v", err, err)
		}
		for _, p := range e.Problems {
			if p.File != "fuzz.hcl" || p.Line < 1 || p.Col < 1 {
				t.Fatalf("problem without a position: %+v", p)
			}
		}
	})
}
