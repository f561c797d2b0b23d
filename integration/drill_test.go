package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// drillStatus is one member in `metrolun status --json`, fences
// included.
type drillStatus = MemberStatus

func drillClusterStatus(t *testing.T, bin, dir string) []drillStatus {
	t.Helper()
	res, err := RunTool(t.Context(), 20*time.Second, nil, bin, "status", "--json", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	var ms []drillStatus
	if err := json.Unmarshal([]byte(res.Stdout), &ms); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	return ms
}

// runDrill runs `metrolun drill` and returns its report (stdout) and exit
// status.
func runDrill(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	res, err := RunTool(t.Context(), 5*time.Minute, nil, bin, append([]string{"drill"}, args...)...)
	t.Logf("metrolun drill %s:\n%s", strings.Join(args, " "), res.Stdout)
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("metrolun drill: %v\n%s", err, res.Stderr)
	}
	return res.Stdout, code
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// stepLine returns the report's step line for name, or fails.
func stepLine(t *testing.T, report, name string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^  \d\d:\d\d:\d\d\.\d{3}\s+\+\d+\.\d{3}s\s+` + regexp.QuoteMeta(name) + `\s+(.*)$`)
	m := re.FindAllStringSubmatch(report, -1)
	if len(m) == 0 {
		t.Fatalf("the report has no step %q", name)
	}
	return m[len(m)-1][1]
}

// TestDrill runs `metrolun drill` against a two-site demo: first the
// planned switchover, then with --fence-writer. Each passes (last line,
// exit status), moves the writer away and back, and leaves every site in
// sync and nothing fenced; the fenced site is back in sync afterwards.
func TestDrill(t *testing.T) {
	d := startCluster(t)
	bin := metrolunBin(t)
	// The demo is ready once a writer exists; every member's Raft view
	// learns of it a moment later.
	var w0 string
	until(t, "every member knows the writer", 30*time.Second, func() bool {
		before := drillClusterStatus(t, bin, d.Dir)
		w0 = before[0].Status.Raft.Writer
		for _, m := range before {
			if m.Status == nil || m.Status.Raft.Writer != w0 {
				return false
			}
		}
		return w0 != ""
	})
	other := "site-b"
	if w0 == "site-b" {
		other = "site-a"
	}

	plot := filepath.Join(t.TempDir(), "drill.svg")
	report, code := runDrill(t, bin, "--dir", d.Dir, "--settle", "1s", "--plot", plot)
	if last := lastLine(report); last != "verdict: pass" || code != 0 {
		t.Fatalf("switchover drill: exit %d, last line %q", code, last)
	}
	if !strings.Contains(report, "the last 4 MiB of the LUN") || !strings.Contains(report, "bytes 62914560 to 67108863") {
		t.Fatal("the report does not say which scratch region it used")
	}
	for _, step := range []string{"promote " + other, "promote " + w0} {
		if l := stepLine(t, report, step); !strings.HasPrefix(l, "ok") {
			t.Fatalf("step %s: %s", step, l)
		}
	}
	if !regexp.MustCompile(`epoch \d+ -> \d+, writer ` + w0 + ` -> ` + other).MatchString(report) {
		t.Fatal("the report shows no epoch change from the writer to the other site")
	}
	if !regexp.MustCompile(`linearizability: ok: [1-9]\d* ops`).MatchString(report) {
		t.Fatal("the report shows no linearizability check of the operations")
	}
	svg, err := os.ReadFile(plot)
	if err != nil || !strings.Contains(string(svg), "promote "+other) {
		t.Fatalf("plot: %v (marks the promote: %v)", err, strings.Contains(string(svg), "promote "+other))
	}
	if ms := drillClusterStatus(t, bin, d.Dir); ms[0].Status.Raft.Writer != w0 {
		t.Fatalf("writer after the drill: %s, want %s back", ms[0].Status.Raft.Writer, w0)
	}

	report, code = runDrill(t, bin, "--dir", d.Dir, "--settle", "1s", "--fence-writer", "--resync-timeout", "90s")
	if last := lastLine(report); last != "verdict: pass" || code != 0 {
		t.Fatalf("fence drill: exit %d, last line %q", code, last)
	}
	for _, step := range []string{"fence " + w0, "unfence " + w0} {
		if l := stepLine(t, report, step); !strings.HasPrefix(l, "ok") {
			t.Fatalf("step %s: %s", step, l)
		}
	}
	if l := stepLine(t, report, "fence "+w0); !strings.Contains(l, other+" writer of epoch") || !strings.Contains(l, w0+" out of the in-sync set") {
		t.Fatalf("fence step: %s", l)
	}
	if !regexp.MustCompile(`(?m)^  fence ` + w0 + `\s+\d+\.\d\ds .*epoch \d+ -> \d+, writer ` + w0 + ` -> ` + other).MatchString(report) {
		t.Fatal("the report shows no time without a writer for the fence")
	}

	ms := drillClusterStatus(t, bin, d.Dir)
	for _, m := range ms {
		if m.Status == nil {
			t.Fatalf("%s unreachable after the drill", m.Name)
		}
		r := m.Status.Raft
		if r.Writer != w0 || len(r.Fenced) != 0 || !slices.Contains(r.InSync, w0) || !slices.Contains(r.InSync, other) {
			t.Fatalf("%s after the fence drill: writer %s, in sync %v, fenced %v; want writer %s back, both in sync, none fenced",
				m.Name, r.Writer, r.InSync, r.Fenced, w0)
		}
		if m.Name == other && (m.Status.Site == nil || m.Status.Site.Role != "replica") {
			t.Fatalf("%s is not a replica with a lease after the drill", other)
		}
	}
	if _, err := RunTool(context.Background(), time.Minute, nil, bin, "verify", "--dir", d.Dir); err != nil {
		t.Fatalf("verify after the drills: %v", err)
	}
}

// TestDrillFailsOnCorruptReplica: a byte of one site's scratch region is
// changed behind the cluster's back (in its backing file, outside the
// blocks the workload writes); the drill must notice, say so in its
// verdict and exit 1.
func TestDrillFailsOnCorruptReplica(t *testing.T) {
	d := startCluster(t)
	bin := metrolunBin(t)
	// The damage must come after site-b joined: in the cluster's first
	// epoch the writer compares a replica whose image was ever written
	// with its own at their first connection and copies what differs
	// (replica/writer.go), which would repair the byte (and resync
	// site-b while the drill's workload starts) instead of leaving it for
	// the drill to find. The writer records site-b's image at its epoch
	// once that connection is over.
	until(t, "site-b's image recorded in sync", 30*time.Second, func() bool {
		for _, m := range drillClusterStatus(t, bin, d.Dir) {
			if m.Status == nil || m.Status.Raft.Epoch == 0 {
				continue
			}
			r := m.Status.Raft
			for _, mi := range r.MemberInfo {
				if mi.Name == "site-b" && mi.InSync && strings.HasSuffix(mi.Image, fmt.Sprintf(" gen %d)", r.Epoch)) {
					return true
				}
			}
		}
		return false
	})
	img := filepath.Join(d.Dir, "site-b", "lun0.img")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	// In the demo's default scratch region, its last 4 MiB; the file
	// ends with the site's image identity, 1 MiB past the LU.
	at := st.Size() - 1<<20 - 4096
	if _, err := f.WriteAt([]byte("bit rot"), at); err != nil {
		t.Fatal(err)
	}
	f.Close()

	report, code := runDrill(t, bin, "--dir", d.Dir, "--settle", "500ms")
	last := lastLine(report)
	if code != 1 || !strings.HasPrefix(last, "verdict: fail: ") {
		t.Fatalf("drill over a corrupt replica: exit %d, last line %q; want exit 1 and a failed verdict", code, last)
	}
	if !strings.Contains(last, "scratch region") || !strings.Contains(last, "differ") {
		t.Fatalf("the verdict does not name the difference: %q", last)
	}
	// Verify compares against the writer, so whichever site is not the
	// writer is named; the damaged region is the LUN's last.
	if !strings.Contains(report, "differs in 1 regions, first at byte 66060288") {
		t.Fatal("the online verify in the report does not find the damaged region")
	}
}
