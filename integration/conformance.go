package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Status is the outcome of one libiscsi conformance test.
type Status string

const (
	Passed Status = "passed"
	// Skipped is a test that CUnit counted as passed but that printed
	// "[SKIPPED]" (libiscsi's CU_PASS("[SKIPPED] ...") idiom): the target
	// lacks the feature, or the test needs something the run did not give.
	Skipped Status = "skipped"
	Failed  Status = "failed"
)

// The initiator names the conformance run logs in with; the reservation
// suites need two.
const (
	ConformanceInitiator  = "iqn.2026-11.io.metrolun:init1"
	ConformanceInitiator2 = "iqn.2026-11.io.metrolun:init2"
)

// TestResult is one conformance test.
type TestResult struct {
	// Name is "Suite.Test", e.g. "Unmap.ZeroBlocks" (libiscsi's
	// "ALL.Unmap.ZeroBlocks" without the family).
	Name   string
	Status Status
	// Reasons are the lines that explain a failure or a skip: libiscsi's
	// "[FAILED]"/"[SKIPPED]" lines and CUnit's failed assertions, or the
	// harness's own ("timeout ...").
	Reasons []string
}

// Suite is one libiscsi test suite and its tests, in run order.
type Suite struct {
	Name  string
	Tests []string
}

// ListConformanceSuites asks iscsi-test-cu for its tests (-l) and returns
// the suites of the ALL family, which holds every test once.
func ListConformanceSuites(ctx context.Context) ([]Suite, error) {
	res, err := RunTool(ctx, 30*time.Second, nil, "iscsi-test-cu", "-l")
	if err != nil {
		return nil, err
	}
	return parseTestList(res.Stdout)
}

func parseTestList(out string) ([]Suite, error) {
	var suites []Suite
	index := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		parts := strings.Split(strings.TrimSpace(line), ".")
		if parts[0] != "ALL" {
			continue
		}
		switch len(parts) {
		case 2:
			if _, ok := index[parts[1]]; !ok {
				index[parts[1]] = len(suites)
				suites = append(suites, Suite{Name: parts[1]})
			}
		case 3:
			i, ok := index[parts[1]]
			if !ok {
				i = len(suites)
				index[parts[1]] = i
				suites = append(suites, Suite{Name: parts[1]})
			}
			suites[i].Tests = append(suites[i].Tests, parts[2])
		}
	}
	if len(suites) == 0 {
		return nil, fmt.Errorf("iscsi-test-cu -l listed no ALL.* suites: %q", lastLines(out, 5))
	}
	return suites, nil
}

// ConformanceOptions configures one conformance run.
type ConformanceOptions struct {
	// URL is the LUN under test (iscsi://127.0.0.1:PORT/IQN/LUN).
	URL string
	// MultipathURL is a second path to the same LUN, for the MultipathIO
	// suite and the tests that want a second session. Empty means URL
	// itself (two sessions through one portal); "-" means none, which
	// makes the MultipathIO tests skip.
	MultipathURL string
	// Initiator and Initiator2 default to ConformanceInitiator and
	// ConformanceInitiator2.
	Initiator, Initiator2 string
	// SuiteTimeout bounds each iscsi-test-cu process; 0 means 120s.
	SuiteTimeout time.Duration
	// Budget bounds the whole run; suites not started in time count as
	// failed. 0 means 30 minutes.
	Budget time.Duration
	// Suites restricts the run to these suite names; empty runs all.
	Suites []string
	// RawDir, when set, receives each suite's raw output (SUITE.out).
	RawDir string
	// Alive, when set, is called after each suite; an error means the
	// target died, and the suites not yet run count as failed.
	Alive func() error
	// Logf, when set, gets a line per suite.
	Logf func(format string, args ...any)
}

// ConformanceReport is the result of a run, one entry per test.
type ConformanceReport struct {
	Target  string
	Results []TestResult
	Elapsed time.Duration
}

// Counts returns the number of passed, skipped and failed tests.
func (r *ConformanceReport) Counts() (passed, skipped, failed int) {
	for _, t := range r.Results {
		switch t.Status {
		case Passed:
			passed++
		case Skipped:
			skipped++
		default:
			failed++
		}
	}
	return
}

// Summary is the one-line result: "conformance: N passed, N skipped,
// N failed of N".
func (r *ConformanceReport) Summary() string {
	p, s, f := r.Counts()
	return fmt.Sprintf("conformance: %d passed, %d skipped, %d failed of %d", p, s, f, len(r.Results))
}

// Status returns map name -> status.
func (r *ConformanceReport) Status() map[string]Status {
	m := make(map[string]Status, len(r.Results))
	for _, t := range r.Results {
		m[t.Name] = t.Status
	}
	return m
}

// RunConformance runs libiscsi's iscsi-test-cu against opts.URL, one
// process per suite.
//
// One process per suite because libiscsi 1.19 leaves state behind: on a
// thin-provisioned LUN, CompareAndWrite.InvalidDataOutSize installs a PDU
// hook that rewrites byte 13 of every later CDB when COMPARE AND WRITE is
// skipped or fails, which breaks every test after it in the same process.
// A fresh process also confines a hang: the suite's tests fail with a
// "timeout" reason and the next suite starts.
func RunConformance(ctx context.Context, opts ConformanceOptions) (*ConformanceReport, error) {
	if opts.URL == "" {
		return nil, errors.New("ConformanceOptions.URL is empty")
	}
	bin, err := Tool("iscsi-test-cu")
	if err != nil {
		return nil, err
	}
	if opts.Initiator == "" {
		opts.Initiator = ConformanceInitiator
	}
	if opts.Initiator2 == "" {
		opts.Initiator2 = ConformanceInitiator2
	}
	if opts.SuiteTimeout == 0 {
		opts.SuiteTimeout = 120 * time.Second
	}
	if opts.Budget == 0 {
		opts.Budget = 30 * time.Minute
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	suites, err := ListConformanceSuites(ctx)
	if err != nil {
		return nil, err
	}
	if len(opts.Suites) > 0 {
		want := map[string]bool{}
		for _, s := range opts.Suites {
			want[s] = true
		}
		var picked []Suite
		for _, s := range suites {
			if want[s.Name] {
				picked = append(picked, s)
				delete(want, s.Name)
			}
		}
		if len(want) > 0 {
			var missing []string
			for s := range want {
				missing = append(missing, s)
			}
			sort.Strings(missing)
			return nil, fmt.Errorf("iscsi-test-cu has no suite %s", strings.Join(missing, ", "))
		}
		suites = picked
	}
	if opts.RawDir != "" {
		if err := os.MkdirAll(opts.RawDir, 0o755); err != nil {
			return nil, err
		}
	}

	// stdbuf makes stdout unbuffered, so a suite killed on timeout still
	// shows which test it was in.
	var prefix []string
	if sb, err := exec.LookPath("stdbuf"); err == nil {
		prefix = []string{sb, "-o0", "-e0"}
	}

	report := &ConformanceReport{Target: opts.URL}
	start := time.Now()
	var notRun string // once set, the remaining suites are not run
	for _, s := range suites {
		if notRun == "" && ctx.Err() != nil {
			notRun = "not run: " + ctx.Err().Error()
		}
		if notRun == "" && time.Since(start) > opts.Budget {
			notRun = fmt.Sprintf("not run: the conformance budget of %v was used up", opts.Budget)
		}
		if notRun != "" {
			for _, name := range s.Tests {
				report.Results = append(report.Results, TestResult{Name: s.Name + "." + name, Status: Failed, Reasons: []string{notRun}})
			}
			continue
		}

		args := []string{"-d", "-S", "-i", opts.Initiator, "-I", opts.Initiator2, "-t", "ALL." + s.Name, opts.URL}
		mp, timeout := opts.MultipathURL, opts.SuiteTimeout
		if s.Name == "Sanitize" {
			// libiscsi 1.19's Sanitize.Reservations takes a RESERVE(6)
			// on the second session and never releases it; with a
			// second URL that session stays logged in and the next
			// test's SANITIZE rightly gets RESERVATION CONFLICT. One
			// URL, and time for overwrites of the whole LU.
			mp, timeout = "-", 4*timeout
		}
		switch mp {
		case "":
			args = append(args, opts.URL)
		case "-":
		default:
			args = append(args, mp)
		}
		stdout, stderr, cause := runSuite(ctx, timeout, append(append(prefix, bin), args...))
		if opts.RawDir != "" {
			raw := fmt.Sprintf("$ iscsi-test-cu %s\n%s\n--- stderr ---\n%s\n--- end: %s ---\n",
				strings.Join(args, " "), stdout, stderr, orDefault(cause, "exited normally"))
			os.WriteFile(filepath.Join(opts.RawDir, s.Name+".out"), []byte(raw), 0o644)
		}
		results := ParseSuiteOutput(s, stdout, stderr, cause)
		report.Results = append(report.Results, results...)
		sub := &ConformanceReport{Results: results}
		p, sk, f := sub.Counts()
		logf("%-26s %3d passed %3d skipped %3d failed%s", s.Name, p, sk, f, map[bool]string{true: "  (" + cause + ")", false: ""}[cause != ""])

		if opts.Alive != nil {
			if err := opts.Alive(); err != nil {
				notRun = "not run: the target died during suite " + s.Name + ": " + err.Error()
				logf("%s", notRun)
			}
		}
	}
	report.Elapsed = time.Since(start)
	return report, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// runSuite runs one iscsi-test-cu process in its own process group.
// cause is empty when the process exited by itself with status 0 or 1
// (1 means some test failed); otherwise it says what happened.
func runSuite(ctx context.Context, timeout time.Duration, argv []string) (stdout, stderr, cause string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = groupAttr()
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	err := cmd.Run()
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		cause = fmt.Sprintf("timeout: iscsi-test-cu killed after %v", timeout)
	case ctx.Err() != nil:
		cause = "iscsi-test-cu stopped: " + ctx.Err().Error()
	case err != nil:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			cause = "iscsi-test-cu: " + err.Error()
		}
	}
	return out.String(), errb.String(), cause
}

var (
	suiteLineRE = regexp.MustCompile(`(?m)^Suite: (\S+)`)
	testLineRE  = regexp.MustCompile(`(?m)^  Test: (\S+) \.\.\.`)
	endRE       = regexp.MustCompile(`(?m)^(Run Summary:|Suite: )`)
	assertRE    = regexp.MustCompile(`^\s+\d+\. \S+:\d+`)
)

// maxReasons caps the explanation of one test (a test can fail thousands
// of assertions).
const maxReasons = 6

// ParseSuiteOutput turns one iscsi-test-cu process's output into a result
// per test of s, in s's order.
//
// CUnit 2.1 in verbose mode (libiscsi's default) writes "\n  Test: NAME ..."
// when a test starts and "passed" or "FAILED" when it returns, directly
// after whatever the test printed; libiscsi indents its own lines by four
// spaces, so the verdict is the first line that starts with "passed" or
// "FAILED". A failure is followed by numbered assertion lines. Anything
// after "passed" on the same line comes from the suite's teardown, not the
// test. cause is the harness's word on how the process ended (empty when
// it ended by itself); a test with no verdict fails with it.
func ParseSuiteOutput(s Suite, stdout, stderr, cause string) []TestResult {
	results := make([]TestResult, 0, len(s.Tests))
	found := map[string]TestResult{}

	body := stdout
	if loc := suiteLineRE.FindStringSubmatchIndex(body); loc != nil {
		body = body[loc[1]:]
	} else {
		why := cause
		if why == "" {
			why = "iscsi-test-cu did not start the suite"
		}
		detail := lastLines(stderr+"\n"+stdout, 3)
		for _, name := range s.Tests {
			r := TestResult{Name: s.Name + "." + name, Status: Failed, Reasons: []string{why}}
			if detail != "" {
				r.Reasons = append(r.Reasons, detail)
			}
			results = append(results, r)
		}
		return results
	}
	if loc := endRE.FindStringIndex(body); loc != nil {
		body = body[:loc[0]]
	}

	starts := testLineRE.FindAllStringSubmatchIndex(body, -1)
	for i, loc := range starts {
		name := body[loc[2]:loc[3]]
		end := len(body)
		if i+1 < len(starts) {
			end = starts[i+1][0]
		}
		found[name] = parseTest(s.Name+"."+name, body[loc[1]:end], cause, i == len(starts)-1)
	}

	for _, name := range s.Tests {
		if r, ok := found[name]; ok {
			results = append(results, r)
			continue
		}
		why := "not run: iscsi-test-cu never reached this test"
		if cause != "" {
			why += " (" + cause + ")"
		}
		results = append(results, TestResult{Name: s.Name + "." + name, Status: Failed, Reasons: []string{why}})
	}
	return results
}

func parseTest(name, out, cause string, last bool) TestResult {
	lines := strings.Split(out, "\n")
	verdict := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "passed") || strings.HasPrefix(l, "FAILED") {
			verdict = i
			break
		}
	}
	var reasons []string
	collect := func(l string) {
		l = strings.TrimSpace(l)
		for _, r := range reasons {
			if r == l {
				return
			}
		}
		reasons = append(reasons, l)
	}
	if verdict < 0 {
		why := "no verdict: iscsi-test-cu ended while this test ran"
		if cause != "" {
			why = cause + " while this test ran"
		} else if !last {
			why = "no verdict in iscsi-test-cu output"
		}
		reasons = append(reasons, why)
		if tail := lastLines(out, 2); tail != "" {
			reasons = append(reasons, "last output: "+tail)
		}
		return TestResult{Name: name, Status: Failed, Reasons: reasons}
	}

	if strings.HasPrefix(lines[verdict], "passed") {
		for _, l := range lines[:verdict] {
			if strings.Contains(l, "[SKIPPED]") {
				collect(l)
			}
		}
		if len(reasons) > 0 {
			return TestResult{Name: name, Status: Skipped, Reasons: capReasons(reasons)}
		}
		return TestResult{Name: name, Status: Passed}
	}

	for _, l := range lines[:verdict] {
		if strings.Contains(l, "[FAILED]") {
			collect(l)
		}
	}
	for _, l := range lines[verdict+1:] {
		if assertRE.MatchString(l) {
			collect(l)
		}
	}
	if len(reasons) == 0 {
		reasons = []string{"FAILED with no explanation in the output"}
	}
	return TestResult{Name: name, Status: Failed, Reasons: capReasons(reasons)}
}

func capReasons(r []string) []string {
	if len(r) <= maxReasons {
		return r
	}
	return append(r[:maxReasons:maxReasons], fmt.Sprintf("... and %d more", len(r)-maxReasons))
}

// WriteReport writes the per-test table: a header of "#" comments, then
// "NAME STATUS FIRST-REASON" and the further reasons on indented lines.
// ReadStatusFile reads it back.
func (r *ConformanceReport) WriteReport(w io.Writer, header ...string) error {
	bw := bufio.NewWriter(w)
	for _, h := range header {
		fmt.Fprintf(bw, "# %s\n", h)
	}
	fmt.Fprintf(bw, "# target: %s\n# %s\n", r.Target, r.Summary())
	width := 0
	for _, t := range r.Results {
		width = max(width, len(t.Name))
	}
	for _, t := range r.Results {
		line := fmt.Sprintf("%-*s %-7s", width, t.Name, t.Status)
		if len(t.Reasons) > 0 {
			line += " " + t.Reasons[0]
		}
		fmt.Fprintln(bw, strings.TrimRight(line, " "))
		for _, more := range t.Reasons[min(1, len(t.Reasons)):] {
			fmt.Fprintf(bw, "%*s %s\n", width+8, "", more)
		}
	}
	return bw.Flush()
}

// WriteBaseline writes "NAME STATUS" per test, without reasons, so that a
// baseline changes only when a status does.
func (r *ConformanceReport) WriteBaseline(w io.Writer, header ...string) error {
	bw := bufio.NewWriter(w)
	for _, h := range header {
		fmt.Fprintf(bw, "# %s\n", h)
	}
	fmt.Fprintf(bw, "# %s\n", r.Summary())
	width := 0
	for _, t := range r.Results {
		width = max(width, len(t.Name))
	}
	for _, t := range r.Results {
		fmt.Fprintf(bw, "%-*s %s\n", width, t.Name, t.Status)
	}
	return bw.Flush()
}

// ReadStatusFile reads a baseline or a report: every line that starts
// with neither "#" nor white space is "NAME STATUS ...".
func ReadStatusFile(path string) (map[string]Status, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]Status{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("%s:%d: want \"NAME STATUS\", got %q", path, n, line)
		}
		switch st := Status(f[1]); st {
		case Passed, Skipped, Failed:
			m[f[0]] = st
		default:
			return nil, fmt.Errorf("%s:%d: status %q is not passed, skipped or failed", path, n, f[1])
		}
	}
	return m, sc.Err()
}

// BaselineDiff is how a run differs from the recorded baseline.
type BaselineDiff struct {
	// Regressions are tests the baseline says passed that now skip,
	// fail, or are missing from the run.
	Regressions []string
	// Improvements are tests that pass now and did not in the baseline
	// (a test not in the baseline counts as "expected: failed").
	Improvements []string
	// Changes are the other status changes (failed <-> skipped).
	Changes []string
}

// CompareToBaseline compares r with a baseline read by ReadStatusFile.
func CompareToBaseline(base map[string]Status, r *ConformanceReport) BaselineDiff {
	var d BaselineDiff
	now := r.Status()
	for _, t := range r.Results {
		was, listed := base[t.Name]
		if !listed {
			was = Failed
		}
		switch {
		case was == t.Status:
		case was == Passed:
			d.Regressions = append(d.Regressions, fmt.Sprintf("%s: was passed, now %s: %s", t.Name, t.Status, strings.Join(t.Reasons, " | ")))
		case t.Status == Passed:
			d.Improvements = append(d.Improvements, fmt.Sprintf("%s: was %s, now passed", t.Name, was))
		default:
			d.Changes = append(d.Changes, fmt.Sprintf("%s: was %s, now %s: %s", t.Name, was, t.Status, strings.Join(t.Reasons, " | ")))
		}
	}
	var missing []string
	for name, st := range base {
		if _, ok := now[name]; !ok && st == Passed {
			missing = append(missing, name+": was passed, now missing from the run (renamed in a newer libiscsi, or not selected)")
		}
	}
	sort.Strings(missing)
	d.Regressions = append(d.Regressions, missing...)
	return d
}

// CompareReports lists the tests whose status differs between a and b,
// as "NAME  A-STATUS  B-STATUS" lines.
func CompareReports(a, b *ConformanceReport) []string {
	bs := b.Status()
	var out []string
	for _, t := range a.Results {
		other, ok := bs[t.Name]
		if !ok {
			other = "-"
		}
		if other != t.Status {
			out = append(out, fmt.Sprintf("%-45s %-8s %s", t.Name, t.Status, other))
		}
	}
	return out
}
