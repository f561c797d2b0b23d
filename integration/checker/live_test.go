package checker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/initiator/servetest"
)

func TestMain(m *testing.M) { os.Exit(servetest.Main(m)) }

// artifacts returns a directory for the HTML visualization, the latency
// plot and the history: $CHECKER_ARTIFACTS/TEST when set, else a temp
// dir that goes away with the test.
func artifacts(t *testing.T) string {
	dir := os.Getenv("CHECKER_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	dir = filepath.Join(dir, t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestLiveWorkloadSingleSite runs 4 clients against one `metrolun serve`
// (64 MiB sparse LUN) for a few seconds: the history must be
// linearizable. Then it plants a stale read in a copy of the recorded
// history and the checker must reject it.
func TestLiveWorkloadSingleSite(t *testing.T) {
	srv := servetest.Start(t, servetest.Options{Size: "64MiB"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := NewHistory()
	w := Workload{
		Targets:        []Target{{Site: "site-a", Addr: srv.Addr, IQN: srv.IQN, LUN: srv.LUN}},
		ClientsPerSite: 4,
		FirstLBA:       4096,
		Blocks:         32,
		FUAPercent:     10,
		Seed:           1,
		Duration:       3 * time.Second,
		MaxOps:         20000,
		Logf:           t.Logf,
	}
	st, err := w.Run(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("workload: %s", st)
	if st.OK < 100 || st.Failed+st.Indeterminate != 0 || st.ClientsWithoutSuccess != 0 || st.Corrupt != 0 {
		t.Fatalf("workload against a healthy target: %s (first error %q)\n%s", st, st.FirstError, srv.LogTail(10))
	}
	dir := artifacts(t)
	res := CheckWith(h, Options{Timeout: 20 * time.Second, HTMLPath: filepath.Join(dir, "history.html")})
	t.Logf("check: %s", res)
	if !res.OK() || res.Ops == 0 || res.Ops != st.Ops {
		t.Fatalf("healthy single site: %s", res)
	}
	if err := PlotLatency(h, filepath.Join(dir, "latency.svg")); err != nil {
		t.Fatal(err)
	}
	h.SaveJSON(filepath.Join(dir, "history.json"))

	// Reads must have seen writes (not only zeros), or the check above
	// proves little.
	ops := h.Ops()
	seen := 0
	for _, op := range ops {
		if op.Kind == Read && !op.Value.IsZero() {
			seen++
		}
	}
	if seen < 10 {
		t.Fatalf("only %d reads returned written data", seen)
	}

	// Plant a stale read: a read that returned v, whose write completed
	// before the read began, now returns the value v overwrote (or zeros
	// if v was the block's first write).
	writes := map[Value]Op{}
	for _, op := range ops {
		if op.Kind == Write {
			writes[op.Value] = op
		}
	}
	victim := -1
	var older Value
	for i, op := range ops {
		if op.Kind != Read || op.Value.IsZero() {
			continue
		}
		src := writes[op.Value]
		if src.Return >= op.Call {
			continue
		}
		// The latest write to this block that completed before src began.
		var prev *Op
		for j := range ops {
			p := &ops[j]
			if p.Kind == Write && p.Block == op.Block && p.Return < src.Call && (prev == nil || p.Return > prev.Return) {
				prev = p
			}
		}
		victim = i
		if prev != nil {
			older = prev.Value
		}
		break
	}
	if victim < 0 {
		t.Fatal("no read in the live history to plant a stale value in")
	}
	bad := append([]Op(nil), ops...)
	bad[victim].Value = older
	res = CheckWith(HistoryOf(bad, nil), Options{Timeout: 20 * time.Second, HTMLPath: filepath.Join(dir, "planted.html")})
	t.Logf("planted: %s", res)
	if res.Verdict != VerdictIllegal {
		t.Fatalf("a planted stale read passed: %s", res)
	}
	found := false
	for _, a := range res.Anomalies {
		if a.Read.Client == bad[victim].Client && a.Read.Call == bad[victim].Call && (a.Kind == StaleRead || a.Kind == LostWrite) {
			found = true
		}
	}
	if !found {
		t.Fatalf("the planted read is not named as a stale read or lost write:\n%s", res)
	}
}

// serverFaults freezes and thaws the one server; other faults are not
// available with a single site.
type serverFaults struct{ srv *servetest.Server }

var errNoFault = errors.New("not available with one site")

func (f serverFaults) Stop(string) error             { f.srv.Freeze(); return nil }
func (f serverFaults) Cont(string) error             { f.srv.Thaw(); return nil }
func (f serverFaults) Kill(string) error             { return errNoFault }
func (f serverFaults) Restart(string) error          { return errNoFault }
func (f serverFaults) Partition(a, b string) error   { return errNoFault }
func (f serverFaults) Heal() error                   { return errNoFault }
func (f serverFaults) Promote(string) error          { return errNoFault }
func (f serverFaults) Latency(d time.Duration) error { return errNoFault }

// TestLiveWorkloadWithFreezes freezes the target (SIGSTOP) twice while 4
// clients run with short timeouts: commands time out (indeterminate
// writes), logins fail, sessions reconnect after the thaw. The history,
// indeterminate writes included, must still be linearizable, and the
// plot must show the faults.
func TestLiveWorkloadWithFreezes(t *testing.T) {
	srv := servetest.Start(t, servetest.Options{Size: "64MiB"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sched, err := NewSchedule(ScheduleConfig{
		Seed: 7, Duration: 3500 * time.Millisecond, Sites: []string{"site-a"}, Kinds: []FaultKind{FaultStop},
		MinGap: 400 * time.Millisecond, MaxGap: 600 * time.Millisecond,
		MinFault: 500 * time.Millisecond, MaxFault: 700 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sched.Steps) < 4 {
		t.Fatalf("schedule too short:\n%s", sched)
	}
	h := NewHistory()
	w := Workload{
		Targets:        []Target{{Site: "site-a", Addr: srv.Addr, IQN: srv.IQN, LUN: srv.LUN}},
		ClientsPerSite: 4,
		FirstLBA:       8192,
		Blocks:         16,
		Seed:           2,
		Duration:       4 * time.Second,
		MaxOps:         200000,
		OpTimeout:      250 * time.Millisecond,
		MaxBackoff:     100 * time.Millisecond,
	}
	schedErr := make(chan error, 1)
	go func() { schedErr <- sched.Run(ctx, serverFaults{srv}, h) }()
	st, err := w.Run(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-schedErr; err != nil {
		t.Fatal(err)
	}
	srv.Thaw() // whatever happened, leave it running
	t.Logf("schedule: %s\nworkload: %s", sched, st)
	if st.Indeterminate == 0 {
		t.Fatalf("freezing the target caused no indeterminate op: %s", st)
	}
	lastFault := h.Faults()[len(h.Faults())-1].At
	okAfter := 0
	for _, op := range h.Ops() {
		if op.Outcome == OK && op.Call > lastFault {
			okAfter++
		}
	}
	if okAfter == 0 {
		t.Fatalf("no successful op after the last thaw: %s (last error %q)\n%s", st, st.LastError, srv.LogTail(10))
	}
	dir := artifacts(t)
	res := CheckWith(h, Options{Timeout: 20 * time.Second, HTMLPath: filepath.Join(dir, "history.html")})
	t.Logf("check: %s", res)
	if !res.OK() || res.IndeterminateWrites == 0 {
		t.Fatalf("freeze/thaw history: %s", res)
	}
	svg := filepath.Join(dir, "latency.svg")
	if err := PlotLatency(h, svg); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(svg)
	if !strings.Contains(string(b), "stop site-a") || !strings.Contains(string(b), "cont site-a") {
		t.Fatal("latency plot lacks the fault labels")
	}
	h.SaveJSON(filepath.Join(dir, "history.json"))
}

// TestLiveWorkloadPace: with Pace, each client starts at most one
// operation per Pace.
func TestLiveWorkloadPace(t *testing.T) {
	srv := servetest.Start(t, servetest.Options{Size: "64MiB"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := NewHistory()
	w := Workload{
		Targets:        []Target{{Site: "site-a", Addr: srv.Addr, IQN: srv.IQN, LUN: srv.LUN}},
		ClientsPerSite: 2,
		FirstLBA:       12288,
		Blocks:         8,
		Seed:           3,
		Duration:       time.Second,
		Pace:           20 * time.Millisecond,
	}
	st, err := w.Run(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	// 2 clients, 1s at one operation per 20ms: about 100 (a login and a
	// slow first operation make it fewer).
	if st.Ops > 2*(50+1) || st.Ops < 40 || st.OK != st.Ops {
		t.Fatalf("paced workload: %s", st)
	}
	for c := range 2 {
		var calls []time.Duration
		for _, op := range h.Ops() {
			if op.Client == c {
				calls = append(calls, op.Call)
			}
		}
		// The first operation's start is taken after the login, so
		// spacing counts from the second one.
		for i := 2; i < len(calls); i++ {
			if d := calls[i] - calls[i-1]; d < 19*time.Millisecond {
				t.Fatalf("client %d started operations %d and %d %v apart", c, i-1, i, d)
			}
		}
	}
}
