package integration

import (
	"bytes"
	"context"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	baselinePath = "testdata/conformance-baseline.txt"
	tgtdRefPath  = "testdata/conformance-tgtd.txt"
)

// TestConformance runs libiscsi's conformance suite (iscsi-test-cu, one
// process per suite) against a fresh `metrolun demo` and fails when a test
// that testdata/conformance-baseline.txt records as passed no longer
// passes. Tests that newly pass are listed with the command that records
// them.
//
// Environment: CONFORMANCE_REPORT (where the per-test table goes),
// METROLUN_CONFORMANCE_URL (test an already running target instead of a
// demo), METROLUN_CONFORMANCE_TGTD=1 (also run against tgtd and print the
// differences), METROLUN_CONFORMANCE_SUITES (comma-separated subset),
// METROLUN_CONFORMANCE_SUITE_TIMEOUT, METROLUN_CONFORMANCE_BUDGET
// (durations), METROLUN_CONFORMANCE_RAW (directory for raw output).
func TestConformance(t *testing.T) {
	// Checked before anything else: a machine without the tools must not
	// look green.
	requireTool(t, "iscsi-test-cu")
	opts := conformanceOptionsFromEnv(t)
	if *update && len(opts.Suites) > 0 {
		t.Fatal("-update rewrites the whole baseline: run it without METROLUN_CONFORMANCE_SUITES")
	}

	target := os.Getenv("METROLUN_CONFORMANCE_URL")
	if target != "" {
		opts.URL = target
	} else {
		d := StartDemoT(t, DemoOptions{Bin: metrolunBin(t), Size: "1GiB"})
		data := d.File.DataMembers()
		opts.URL = data[0].ISCSI
		if len(data) > 1 {
			// A second site is a second path to the same LUN.
			opts.MultipathURL = data[1].ISCSI
		}
		opts.Alive = d.Alive
		target = "metrolun demo " + opts.URL
	}

	ctx, cancel := context.WithTimeout(context.Background(), opts.Budget+5*time.Minute)
	defer cancel()
	report, err := RunConformance(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	report.Target = target
	t.Log(report.Summary())
	writeConformanceReport(t, report)

	if os.Getenv("METROLUN_CONFORMANCE_TGTD") == "1" {
		requireTool(t, "tgtd", "tgtadm")
		tg := StartTgtdT(t, TgtdOptions{Size: 1 << 30})
		topts := opts
		topts.URL, topts.MultipathURL, topts.Alive, topts.RawDir = tg.URL, "", nil, ""
		ref, err := RunConformance(ctx, topts)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("tgtd %s", ref.Summary())
		if diff := CompareReports(report, ref); len(diff) > 0 {
			t.Logf("tests that differ (%d)\n%-45s %-8s %s\n%s", len(diff), "test", "metrolun", "tgtd", strings.Join(diff, "\n"))
		}
	}

	if *update {
		var buf bytes.Buffer
		report.WriteBaseline(&buf,
			"Expected status of every libiscsi iscsi-test-cu test against `metrolun demo`.",
			"TestConformance fails when a test listed as passed does not pass; a test not listed counts as failed.",
			"Regenerate: go test ./integration -run '^TestConformance$' -update -v")
		if err := os.WriteFile(baselinePath, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", baselinePath)
		return
	}

	base, err := ReadStatusFile(baselinePath)
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.Suites) > 0 {
		run := report.Status()
		for name := range base {
			if _, ok := run[name]; !ok {
				delete(base, name)
			}
		}
	}
	diff := CompareToBaseline(base, report)
	for _, r := range diff.Regressions {
		t.Errorf("regression: %s", r)
	}
	if len(diff.Changes) > 0 {
		t.Logf("status changes that are not regressions:\n  %s", strings.Join(diff.Changes, "\n  "))
	}
	if len(diff.Improvements) > 0 {
		t.Logf("%d tests pass that the baseline does not expect to; record them with\n"+
			"  go test ./integration -run '^TestConformance$' -update\n  %s",
			len(diff.Improvements), strings.Join(diff.Improvements, "\n  "))
	}
}

// TestConformanceTgtd measures the reference: Debian's tgtd serving a
// thin-provisioned 1 GiB sparse file, through the same runner. Gated by
// METROLUN_TGTD_CONFORMANCE=1 because it measures tgt, not metrolun.
// -update rewrites testdata/conformance-tgtd.txt; otherwise differences
// from it are logged.
func TestConformanceTgtd(t *testing.T) {
	if os.Getenv("METROLUN_TGTD_CONFORMANCE") != "1" {
		t.Skip("set METROLUN_TGTD_CONFORMANCE=1 to measure tgtd's conformance")
	}
	requireTool(t, "iscsi-test-cu", "tgtd", "tgtadm")
	opts := conformanceOptionsFromEnv(t)
	tg := StartTgtdT(t, TgtdOptions{Size: 1 << 30, IQN: "iqn.2026-11.io.metrolun:tgtd"})
	opts.URL = tg.URL
	ctx, cancel := context.WithTimeout(context.Background(), opts.Budget+5*time.Minute)
	defer cancel()
	report, err := RunConformance(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	version, _ := tgtdVersion(ctx)
	// No port or path here: the saved file changes only when results do.
	report.Target = "tgtd " + version + " (Debian tgt), LUN 1, thin_provisioning=1, 1 GiB sparse file"
	t.Log(report.Summary())
	writeConformanceReport(t, report)

	for _, r := range report.Results {
		for _, why := range r.Reasons {
			if strings.HasPrefix(why, "timeout") || strings.HasPrefix(why, "not run") || strings.HasPrefix(why, "iscsi-test-cu") || strings.HasPrefix(why, "no verdict") {
				t.Errorf("%s: the harness, not the target, ended this test: %s", r.Name, why)
			}
		}
	}

	if *update {
		var buf bytes.Buffer
		report.WriteReport(&buf,
			"Reference: libiscsi iscsi-test-cu against Debian's tgtd, one process per suite,",
			"-d -S, initiators "+ConformanceInitiator+" and "+ConformanceInitiator2+", the LUN URL given twice (multipath).",
			"Regenerate: METROLUN_TGTD_CONFORMANCE=1 go test ./integration -run '^TestConformanceTgtd$' -update -v")
		if err := os.WriteFile(tgtdRefPath, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", tgtdRefPath)
		return
	}
	saved, err := ReadStatusFile(tgtdRefPath)
	if err != nil {
		t.Fatal(err)
	}
	d := CompareToBaseline(saved, report)
	if n := len(d.Regressions) + len(d.Improvements) + len(d.Changes); n > 0 {
		t.Logf("tgtd differs from %s in %d tests:\n  %s", tgtdRefPath, n,
			strings.Join(append(append(d.Regressions, d.Improvements...), d.Changes...), "\n  "))
	}
}

func conformanceOptionsFromEnv(t *testing.T) ConformanceOptions {
	t.Helper()
	opts := ConformanceOptions{
		SuiteTimeout: envDuration(t, "METROLUN_CONFORMANCE_SUITE_TIMEOUT", 120*time.Second),
		Budget:       envDuration(t, "METROLUN_CONFORMANCE_BUDGET", 30*time.Minute),
		RawDir:       os.Getenv("METROLUN_CONFORMANCE_RAW"),
		Logf:         t.Logf,
	}
	if s := os.Getenv("METROLUN_CONFORMANCE_SUITES"); s != "" {
		for _, name := range strings.Split(s, ",") {
			if name = strings.TrimSpace(name); name != "" {
				opts.Suites = append(opts.Suites, name)
			}
		}
	}
	return opts
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive Go duration such as 90s or 10m", name, s)
	}
	return d
}

// writeConformanceReport writes the per-test table to $CONFORMANCE_REPORT,
// or to a file in the system temp dir named after the test.
func writeConformanceReport(t *testing.T, r *ConformanceReport) {
	t.Helper()
	path := os.Getenv("CONFORMANCE_REPORT")
	if path == "" {
		path = filepath.Join(os.TempDir(), "metrolun-"+t.Name()+".txt")
	}
	var buf bytes.Buffer
	r.WriteReport(&buf, "iscsi-test-cu per-test results, written by "+t.Name())
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Errorf("write conformance report: %v", err)
		return
	}
	t.Logf("per-test results: %s", path)
}

// The tests below check the parser on captured iscsi-test-cu 1.19 output
// (from tgtd 1.0.85); they need no target.

func readCUnit(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "cunit", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func statuses(rs []TestResult) map[string]Status {
	r := &ConformanceReport{Results: rs}
	return r.Status()
}

func TestParseSuiteOutput(t *testing.T) {
	reserve6 := Suite{Name: "Reserve6", Tests: []string{"Simple", "2Initiators", "Logout", "ITNexusLoss", "TargetColdReset", "TargetWarmReset", "LUNReset"}}
	cases := []struct {
		name  string
		suite Suite
		file  string
		want  map[string]Status
	}{
		{"teardown output after the last verdict", reserve6, "Reserve6.out", map[string]Status{
			"Reserve6.Simple": Passed, "Reserve6.2Initiators": Failed, "Reserve6.Logout": Passed,
			"Reserve6.ITNexusLoss": Passed, "Reserve6.TargetColdReset": Skipped,
			"Reserve6.TargetWarmReset": Skipped, "Reserve6.LUNReset": Passed,
		}},
		{"failures with and without a [FAILED] line", Suite{Name: "GetLBAStatus", Tests: []string{"Simple", "BeyondEol", "UnmapSingle"}}, "GetLBAStatus.out", map[string]Status{
			"GetLBAStatus.Simple": Passed, "GetLBAStatus.BeyondEol": Failed, "GetLBAStatus.UnmapSingle": Failed,
		}},
		{"a failure between passes", Suite{Name: "Unmap", Tests: []string{"Simple", "VPD", "ZeroBlocks"}}, "Unmap.out", map[string]Status{
			"Unmap.Simple": Passed, "Unmap.VPD": Passed, "Unmap.ZeroBlocks": Failed,
		}},
		{"skips counted as passes by CUnit", Suite{Name: "CompareAndWrite", Tests: []string{"Simple", "DpoFua", "Miscompare", "Unwritten", "InvalidDataOutSize"}}, "CompareAndWrite.out", map[string]Status{
			"CompareAndWrite.Simple": Skipped, "CompareAndWrite.DpoFua": Skipped, "CompareAndWrite.Miscompare": Skipped,
			"CompareAndWrite.Unwritten": Skipped, "CompareAndWrite.InvalidDataOutSize": Skipped,
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := ParseSuiteOutput(c.suite, readCUnit(t, c.file), "", "")
			if s := statuses(got); !reflect.DeepEqual(s, c.want) {
				t.Errorf("got %v\nwant %v", s, c.want)
			}
			for i, r := range got {
				if r.Name != c.suite.Name+"."+c.suite.Tests[i] {
					t.Errorf("result %d is %s: results must follow the suite's order", i, r.Name)
				}
				if r.Status != Passed && len(r.Reasons) == 0 {
					t.Errorf("%s %s without a reason", r.Name, r.Status)
				}
			}
		})
	}

	t.Run("reasons", func(t *testing.T) {
		got := ParseSuiteOutput(Suite{Name: "GetLBAStatus", Tests: []string{"Simple", "BeyondEol", "UnmapSingle"}}, readCUnit(t, "GetLBAStatus.out"), "", "")
		want := []string{
			"[FAILED] GET_LBA_STATUS successful but should have failed with ILLEGAL_REQUEST(0x05)/LBA_OUT_OF_RANGE(0x2100)",
			"1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)",
		}
		if !reflect.DeepEqual(got[1].Reasons, want) {
			t.Errorf("reasons %q, want %q", got[1].Reasons, want)
		}
		skip := ParseSuiteOutput(reserve6, readCUnit(t, "Reserve6.out"), "", "")[4]
		if len(skip.Reasons) != 1 || !strings.HasPrefix(skip.Reasons[0], "[SKIPPED] Task Management") {
			t.Errorf("skip reasons %q", skip.Reasons)
		}
		// The [FAILED] after LUNReset's "passed" is teardown noise.
		if lr := ParseSuiteOutput(reserve6, readCUnit(t, "Reserve6.out"), "", "")[6]; len(lr.Reasons) != 0 {
			t.Errorf("LUNReset reasons %q, want none", lr.Reasons)
		}
	})

	t.Run("killed mid-suite", func(t *testing.T) {
		out := readCUnit(t, "Reserve6.out")
		cut := strings.Index(out, "    MODE SENSE should fail from the second initiator")
		got := ParseSuiteOutput(reserve6, out[:cut], "", "timeout: iscsi-test-cu killed after 2m0s")
		want := map[string]Status{"Reserve6.Simple": Passed}
		for _, n := range reserve6.Tests[1:] {
			want["Reserve6."+n] = Failed
		}
		if s := statuses(got); !reflect.DeepEqual(s, want) {
			t.Fatalf("got %v\nwant %v", s, want)
		}
		if r := got[1].Reasons[0]; r != "timeout: iscsi-test-cu killed after 2m0s while this test ran" {
			t.Errorf("hung test reason %q", r)
		}
		if r := got[2].Reasons[0]; !strings.Contains(r, "never reached") || !strings.Contains(r, "timeout") {
			t.Errorf("unreached test reason %q", r)
		}
	})

	t.Run("login failure", func(t *testing.T) {
		got := ParseSuiteOutput(reserve6, "", "Login Failed. iscsi_service failed\nFailed to connect to SCSI device 0\n", "iscsi-test-cu: exit status 255")
		for _, r := range got {
			if r.Status != Failed || len(r.Reasons) != 2 || !strings.Contains(r.Reasons[1], "Failed to connect") {
				t.Errorf("%s: %s %q", r.Name, r.Status, r.Reasons)
			}
		}
	})
}

func TestParseTestList(t *testing.T) {
	out := "ALL\nALL.Unmap\nALL.Unmap.Simple\nALL.Unmap.VPD\nALL.Read6\nALL.Read6.Simple\nSCSI\nSCSI.Unmap\nSCSI.Unmap.Simple\n"
	got, err := parseTestList(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []Suite{{"Unmap", []string{"Simple", "VPD"}}, {"Read6", []string{"Simple"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestBaselineCompare(t *testing.T) {
	dir := t.TempDir()
	report := &ConformanceReport{Target: "x", Results: []TestResult{
		{Name: "A.Keep", Status: Passed},
		{Name: "A.Broke", Status: Failed, Reasons: []string{"[FAILED] boom"}},
		{Name: "A.Skips", Status: Skipped, Reasons: []string{"[SKIPPED] nope"}},
		{Name: "A.New", Status: Passed},
		{Name: "A.Unlisted", Status: Passed},
		{Name: "A.Worse", Status: Failed},
	}}
	base := "# comment\nA.Keep passed\nA.Broke passed\nA.Skips passed\nA.New failed\nA.Worse skipped\nA.Gone passed\n"
	path := filepath.Join(dir, "base.txt")
	os.WriteFile(path, []byte(base), 0o644)
	m, err := ReadStatusFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := CompareToBaseline(m, report)
	if len(d.Regressions) != 3 || !strings.HasPrefix(d.Regressions[0], "A.Broke") ||
		!strings.HasPrefix(d.Regressions[1], "A.Skips") || !strings.HasPrefix(d.Regressions[2], "A.Gone") {
		t.Errorf("regressions %q", d.Regressions)
	}
	if len(d.Improvements) != 2 || !strings.HasPrefix(d.Improvements[0], "A.New") || !strings.HasPrefix(d.Improvements[1], "A.Unlisted") {
		t.Errorf("improvements %q", d.Improvements)
	}
	if len(d.Changes) != 1 || !strings.HasPrefix(d.Changes[0], "A.Worse") {
		t.Errorf("changes %q", d.Changes)
	}

	// A report and a baseline both read back as the statuses they hold.
	for _, write := range []func(*ConformanceReport, *bytes.Buffer) error{
		func(r *ConformanceReport, b *bytes.Buffer) error { return r.WriteReport(b, "h") },
		func(r *ConformanceReport, b *bytes.Buffer) error { return r.WriteBaseline(b, "h") },
	} {
		var buf bytes.Buffer
		if err := write(report, &buf); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(path, buf.Bytes(), 0o644)
		back, err := ReadStatusFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, report.Status()) {
			t.Errorf("round trip: %v\n%s", back, buf.String())
		}
	}
	if got := report.Summary(); got != "conformance: 3 passed, 1 skipped, 2 failed of 6" {
		t.Errorf("summary %q", got)
	}
}

// TestConformanceBaselineCoversSuite checks that the baseline names every
// test iscsi-test-cu lists, so a libiscsi upgrade that adds or renames
// tests shows up here.
func TestConformanceBaselineCoversSuite(t *testing.T) {
	requireTool(t, "iscsi-test-cu")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	suites, err := ListConformanceSuites(ctx)
	if err != nil {
		t.Fatal(err)
	}
	base, err := ReadStatusFile(baselinePath)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range suites {
		for _, name := range s.Tests {
			n++
			if _, ok := base[s.Name+"."+name]; !ok {
				t.Errorf("%s.%s is not in %s", s.Name, name, baselinePath)
			}
		}
	}
	if n != len(base) {
		t.Errorf("iscsi-test-cu lists %d tests, %s has %d", n, baselinePath, len(base))
	}
}

// TestConformanceHungTarget points the runner at a portal that accepts
// connections and never answers: every suite must end at its time limit
// with a "timeout" reason, and the budget must stop the rest.
func TestConformanceHungTarget(t *testing.T) {
	requireTool(t, "iscsi-test-cu")
	ln, err := net.Listen("tcp", net.JoinHostPort(Loopback, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	url := "iscsi://" + ln.Addr().String() + "/iqn.2026-11.io.metrolun:silent/0"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := RunConformance(ctx, ConformanceOptions{
		URL:          url,
		Suites:       []string{"TestUnitReady", "Read6"},
		SuiteTimeout: 2 * time.Second,
		Budget:       time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Suites run in iscsi-test-cu's order (Read6 before TestUnitReady):
	// the first one hangs until its limit, which uses up the budget.
	first := strings.Split(r.Results[0].Name, ".")[0]
	for _, res := range r.Results {
		want := "not run: the conformance budget"
		if strings.HasPrefix(res.Name, first+".") {
			want = "timeout"
		}
		if res.Status != Failed || len(res.Reasons) == 0 || !strings.HasPrefix(res.Reasons[0], want) {
			t.Errorf("%s: %s %q, want failed with %q", res.Name, res.Status, res.Reasons, want)
		}
	}
}

// clusterGaps are the single-site passes that fail on a cluster because
// the state they test is still kept per site, with the reason. The list
// is exact: a gap that starts passing fails the test until it is removed.
var clusterGaps = map[string]string{}

// TestConformanceCluster runs the conformance suite against each data
// site of a two-site cluster (a witness too), the other site being the
// second path: at the writer every command runs locally, at the other
// site every write, UNMAP, COMPARE AND WRITE and cache flush is forwarded
// to the writer. Either site must do at least as well as the single-site
// baseline.
func TestConformanceCluster(t *testing.T) {
	requireTool(t, "iscsi-test-cu")
	opts := conformanceOptionsFromEnv(t)
	want, err := ReadStatusFile(baselinePath)
	if err != nil {
		t.Fatal(err)
	}
	// A fresh cluster for each site: libiscsi's MultipathIO.CompareAndWrite
	// zeroes 256 blocks and then runs to LBA 256 inclusive, so it passes
	// only on a LUN whose block 256 is still zero.
	for i := range 2 {
		base, err := ClusterBasePort(3)
		if err != nil {
			t.Fatal(err)
		}
		d := StartDemoT(t, DemoOptions{Bin: metrolunBin(t), Size: "1GiB",
			Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
		data := d.File.DataMembers()
		site := data[i]
		t.Run(site.Name, func(t *testing.T) {
			o := opts
			o.URL = site.ISCSI
			o.MultipathURL = data[(i+1)%len(data)].ISCSI
			o.Alive = d.Alive
			ctx, cancel := context.WithTimeout(context.Background(), o.Budget+5*time.Minute)
			defer cancel()
			report, err := RunConformance(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			report.Target = "metrolun cluster " + site.Name + " " + o.URL
			t.Log(report.Summary())
			exp := maps.Clone(want)
			if len(o.Suites) > 0 {
				run := report.Status()
				for name := range exp {
					if _, ok := run[name]; !ok {
						delete(exp, name)
					}
				}
			}
			diff := CompareToBaseline(exp, report)
			st := report.Status()
			for _, r := range diff.Regressions {
				name, _, _ := strings.Cut(r, ":")
				if why, ok := clusterGaps[name]; ok {
					t.Logf("known gap at %s: %s (%s)", site.Name, name, why)
					continue
				}
				t.Errorf("regression at %s: %s", site.Name, r)
			}
			for name := range clusterGaps {
				if st[name] == Passed {
					t.Errorf("%s passes at %s now: take it off clusterGaps", name, site.Name)
				}
			}
			if len(diff.Improvements) > 0 {
				t.Logf("%d tests pass at %s that the single-site baseline does not expect to", len(diff.Improvements), site.Name)
			}
		})
		if err := d.Stop(); err != nil {
			t.Error(err)
		}
	}
}
