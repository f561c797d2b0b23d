package integration

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/integration/checker"
)

// Torture runs: a real cluster (TortureCluster), clients at every data
// site running the checker's workload, a seeded fault schedule, then a
// heal, a wait for every site to be in sync, a final read of every block
// at every site, the linearizability check of the whole history (I1,
// I2, I3), a byte comparison of the backing files (I4) and a latency
// plot with the faults marked. Storage faults (a site's disk answering
// EIO or ENOSPC to writes or EIO to reads, a failed write-back, short
// writes, slow I/O) run the metrolun_faults build; a write answered with
// an I/O error counts as not acknowledged (it may or may not have
// happened), a read answered with one as no read. A slow or unreadable
// disk may overlap a kill -9, a freeze or a partition at another site
// (checker.ScheduleConfig.Overlap). A replaced image (kill -9, an empty
// backing file, restart) must be copied in full: sentinel blocks written
// before the run, outside the workload's, must be at every site at the
// end, and a writer's log must say it copied the site in full.
//
// Environment:
//
//	TORTURE_SEED      seed of the schedule and the workload (default: the time; always printed)
//	TORTURE_DURATION  length of the fault schedule (TestTortureShort: 40s)
//	TORTURE_SITES     data sites, 2 (with a witness) or 3 (default 2)
//	TORTURE_TIMING    "fast" (short leases and timeouts) or "default" (metrolun's defaults)
//	TORTURE_OUT       keep the cluster, the history, the plots here (default: a temp dir)

// tortureTimings are the cluster timings of a run.
type tortureTimings struct {
	name                                   string
	lease, electionTimeout, replicaTimeout time.Duration
}

var (
	// fastTimings make failover take a second or two, so a short run
	// sees many faults and recoveries. Raft's leader lease (half the
	// election timeout) stays long enough for a loaded two-core machine:
	// at 200ms leaders stepped down for want of CPU.
	fastTimings = tortureTimings{"fast", 500 * time.Millisecond, 600 * time.Millisecond, 1500 * time.Millisecond}
	// defaultTimings are metrolun's defaults (conf.DefaultLease, ...).
	defaultTimings = tortureTimings{"default", 0, 0, 0}
)

// tortureRun is one run's setup.
type tortureRun struct {
	bin      string
	seed     uint64
	sites    int
	timings  tortureTimings
	duration time.Duration
	// schedule, when set, replaces the generated one; it may name the
	// writer as "WRITER" (the writer when the clients start).
	schedule []checker.Step
	kinds    []checker.FaultKind
	// require: kinds the generated schedule must hold at least once.
	require []checker.FaultKind
	// killResetsLinks: see TortureConfig.
	killResetsLinks bool
	// faultsBin replaces bin when storage faults are scheduled (default:
	// the metrolun_faults build).
	faultsBin string
	out       string
}

// tortureResult is what a run found.
type tortureResult struct {
	h        *checker.History
	stats    *checker.Stats
	check    checker.Result
	i4       error
	finalErr error
	lost     [][2]int64 // byte ranges lost at every site
	summary  string
	// storageSteps counts storage faults applied without error;
	// injected is what the sites' stores injected, by kind.
	storageSteps int
	injected     map[string]int
	// replaced counts the images replaced; images is what
	// CheckReplaced and CheckSentinels found wrong.
	replaced int
	images   error
}

var allTortureKinds = append([]checker.FaultKind{
	checker.FaultKill9, checker.FaultStop, checker.FaultPartition, checker.FaultPartitionOneWay,
	checker.FaultRestart, checker.FaultPromote, checker.FaultLatency, checker.FaultReset,
	checker.FaultReplaceImage,
}, checker.StorageKinds...)

const (
	tortureFirstLBA = 1024
	tortureBlocks   = 8
	// tortureClientsPerSite clients at each data site start one
	// operation per torturePace each at most: a few thousand operations
	// a second in all, which leaves the members CPU on two cores.
	tortureClientsPerSite = 2
	torturePace           = 2 * time.Millisecond
	// tortureSyncPercent of the operations are SYNCHRONIZE CACHE, so
	// that stores write back (and a failed write-back can happen).
	tortureSyncPercent = 3
)

// storageScheduled says whether r's schedule may hold storage faults:
// then the cluster runs the metrolun_faults build (in place of r.bin).
// A given schedule decides alone (its kinds are not drawn from r.kinds),
// so that a run of a known-bug binary runs that binary.
func storageScheduled(r tortureRun) bool {
	if r.schedule != nil {
		return slices.ContainsFunc(r.schedule, func(st checker.Step) bool { return st.Kind.IsStorage() })
	}
	return slices.ContainsFunc(slices.Concat(r.kinds, r.require), checker.FaultKind.IsStorage)
}

func tortureSeed(t *testing.T) uint64 {
	t.Helper()
	if s := os.Getenv("TORTURE_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TORTURE_SEED=%q: %v", s, err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

func tortureDuration(t *testing.T, def time.Duration) time.Duration {
	t.Helper()
	if s := os.Getenv("TORTURE_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("TORTURE_DURATION=%q: want a positive Go duration", s)
		}
		return d
	}
	return def
}

func tortureSites(t *testing.T) int {
	t.Helper()
	switch s := os.Getenv("TORTURE_SITES"); s {
	case "", "2":
		return 2
	case "3":
		return 3
	default:
		t.Fatalf("TORTURE_SITES=%q: want 2 or 3", s)
	}
	return 0
}

func tortureTiming(t *testing.T, def tortureTimings) tortureTimings {
	t.Helper()
	switch s := os.Getenv("TORTURE_TIMING"); s {
	case "":
		return def
	case "fast":
		return fastTimings
	case "default":
		return defaultTimings
	default:
		t.Fatalf("TORTURE_TIMING=%q: want fast or default", s)
	}
	return def
}

// tortureOut is $TORTURE_OUT/TEST/SUFFIX (kept), or a temp dir.
func tortureOut(t *testing.T, suffix string) string {
	t.Helper()
	base := os.Getenv("TORTURE_OUT")
	if base == "" {
		return t.TempDir()
	}
	dir := filepath.Join(base, strings.ReplaceAll(t.Name(), "/", "_"), suffix)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runTorture runs one torture run and returns what it found; it fails t
// only for harness failures (a cluster that does not start, does not
// heal, a site that cannot be restarted). The caller judges the result.
func runTorture(t *testing.T, r tortureRun) tortureResult {
	t.Helper()
	start := time.Now()
	if r.sites == 0 {
		r.sites = 2
	}
	if r.kinds == nil {
		r.kinds = allTortureKinds
	}
	storage := storageScheduled(r)
	if storage {
		// The tags are the point: a store that fails on demand.
		if r.faultsBin == "" {
			r.faultsBin = metrolunFaultsBin(t)
		}
		r.bin = r.faultsBin
	}
	t.Logf("torture: seed %d (replay with TORTURE_SEED=%d), %d data sites, %s timings, %v of faults, output in %s",
		r.seed, r.seed, r.sites, r.timings.name, r.duration, r.out)
	// Everything below is bounded by this.
	ctx, cancel := context.WithTimeout(context.Background(), r.duration+4*time.Minute)
	defer cancel()
	var logMu sync.Mutex
	var faultLog []string
	c, err := StartTorture(ctx, TortureConfig{
		Bin: r.bin, Dir: filepath.Join(r.out, "cluster"), Sites: r.sites,
		Lease: r.timings.lease, ElectionTimeout: r.timings.electionTimeout, ReplicaTimeout: r.timings.replicaTimeout,
		KillResetsLinks: r.killResetsLinks, StorageFaults: storage,
		Logf: func(format string, args ...any) {
			logMu.Lock()
			faultLog = append(faultLog, fmt.Sprintf("%v "+format, append([]any{time.Since(start).Round(time.Millisecond)}, args...)...))
			logMu.Unlock()
		},
	})
	if err != nil {
		t.Fatalf("start torture cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("member logs (last lines):\n%s", c.LogTails(25))
		}
		c.Close()
	})
	var siteNames []string
	for _, m := range c.DataSites() {
		siteNames = append(siteNames, m.Name)
	}
	writers, _ := c.PollWriters(ctx)
	t.Logf("torture: cluster up in %v, writer %v, %d proxied links", time.Since(start).Round(time.Millisecond), writers, len(c.Links))

	var sched checker.Schedule
	if r.schedule != nil {
		sched = checker.Schedule{Seed: r.seed, Duration: r.duration}
		for _, st := range r.schedule {
			if st.Target == "WRITER" {
				if len(writers) != 1 {
					t.Fatalf("schedule names the writer, but the writers are %v", writers)
				}
				st.Target = writers[0]
			}
			sched.Steps = append(sched.Steps, st)
		}
	} else {
		// Faults last one to a few failovers; between them the cluster
		// has time to recover (resync included).
		et := r.timings.electionTimeout
		if et == 0 {
			et = conf.DefaultElectionTimeout
		}
		// Latency spikes stay below Raft's RPC timeout (half the election
		// timeout) per round trip.
		// A slow disk's delay per system call is bounded the same way:
		// a replica's backlog of a few writes stays within its timeout.
		unit, lat := 4*et, et/5
		var witness []string
		if c.Member("witness") != nil {
			witness = []string{"witness"}
		}
		sched, err = checker.NewSchedule(checker.ScheduleConfig{
			Seed: r.seed, Duration: r.duration, Sites: siteNames, PartitionPeers: witness, Kinds: r.kinds, Require: r.require,
			MinGap: unit, MaxGap: 3 * unit, MinFault: unit / 2, MaxFault: 3 * unit, MaxLatency: lat, MaxStorageDelay: lat,
			Overlap: true,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("torture: %s", sched)

	// Blocks outside the workload's, which only a full copy brings to a
	// replaced image.
	if err := c.WriteSentinels(ctx); err != nil {
		t.Fatal(err)
	}

	h := checker.NewHistory()
	hold := c.Hold()
	w := checker.Workload{
		Targets:        c.Targets(),
		ClientsPerSite: tortureClientsPerSite,
		Pace:           torturePace,
		FirstLBA:       tortureFirstLBA,
		Blocks:         tortureBlocks,
		FUAPercent:     10,
		SyncPercent:    tortureSyncPercent,
		Seed:           r.seed,
		Duration:       r.duration,
		// Longer than a site holds an operation waiting for a writer,
		// so a held operation ends with the site's answer.
		OpTimeout:  hold + 2*time.Second,
		MaxBackoff: 300 * time.Millisecond,
	}
	monCtx, stopMon := context.WithCancel(ctx)
	samplesCh := make(chan []WriterSample, 1)
	go func() { samplesCh <- c.MonitorWriters(monCtx, h, 100*time.Millisecond) }()
	schedErr := make(chan error, 1)
	go func() { schedErr <- sched.Run(ctx, c, h) }()
	stats, err := w.Run(ctx, h)
	if err != nil {
		t.Fatalf("workload: %v", err)
	}
	serr := <-schedErr
	runEnd := h.Now()

	// Heal everything and wait for every site to be in sync.
	if err := c.HealAll(); err != nil {
		t.Fatalf("heal: %v", err)
	}
	syncTook, err := c.WaitInSync(ctx, 90*time.Second)
	stopMon()
	samples := <-samplesCh
	if err != nil {
		t.Fatalf("after the run: %v", err)
	}
	res := tortureResult{h: h, stats: stats, injected: map[string]int{}, replaced: len(c.Replaced())}
	replacedLines, replErr := c.CheckReplaced(ctx)
	res.images = errors.Join(replErr, c.CheckSentinels())
	injectedBySite := c.StorageInjected()
	for _, kinds := range injectedBySite {
		for k, n := range kinds {
			res.injected[k] += n
		}
	}
	// Ranges lost at every site: a writer's failed write with no in-sync
	// replica to hand over to (two failures) leaves nothing to copy.
	lost, lostErr := c.LostRanges(ctx)
	res.lost = lost
	res.finalErr = errors.Join(lostErr, c.ReadAll(ctx, h, len(c.DataSites())*w.ClientsPerSite+1, tortureFirstLBA, tortureBlocks, lost))

	if err := h.SaveJSON(filepath.Join(r.out, "history.json")); err != nil {
		t.Errorf("history: %v", err)
	}
	checkStart := time.Now()
	res.check = checker.CheckWith(h, checker.Options{Timeout: 2 * time.Minute})
	checkTook := time.Since(checkStart)
	html := ""
	if !res.check.OK() {
		// porcupine's visualization, with the anomalies marked (large:
		// only when there is something to look at).
		html = filepath.Join(r.out, "history.html")
		if err := res.check.WriteHTML(html); err != nil {
			t.Errorf("visualization: %v", err)
		}
	}
	compared, i4 := c.CompareBacking(lost)
	res.i4 = i4

	svg := filepath.Join(r.out, "latency.svg")
	if err := checker.PlotLatency(h, svg); err != nil {
		t.Errorf("latency plot: %v", err)
	}

	// The summary.
	var b strings.Builder
	fmt.Fprintf(&b, "torture summary (seed %d, %d data sites, %s timings, %v of faults):\n", r.seed, r.sites, r.timings.name, r.duration)
	fmt.Fprintf(&b, "  ops: %s\n", stats)
	for _, s := range siteNames {
		fmt.Fprintf(&b, "  at %s: %d ok, %d failed or indeterminate\n", s, stats.PerSiteOK[s], stats.PerSiteNotOK[s])
	}
	faults := h.Faults()
	failedSteps := 0
	for _, f := range faults {
		if f.Err != "" {
			failedSteps++
		}
	}
	fmt.Fprintf(&b, "  faults: %d steps applied, %d of them failed\n", len(faults), failedSteps)
	byKind := map[checker.FaultKind]int{}
	for _, f := range faults {
		if f.Err == "" {
			byKind[f.Step.Kind]++
			if f.Step.Kind.IsStorage() && f.Step.Kind != checker.FaultStorageClear {
				res.storageSteps++
			}
		}
	}
	fmt.Fprintf(&b, "  fault steps by kind: %s\n", countsText(byKind))
	if storage {
		fmt.Fprintf(&b, "  storage faults injected by the stores (faults.json.injected): %s\n", countsText(res.injected))
		for _, s := range siteNames {
			fmt.Fprintf(&b, "    at %s: %s\n", s, countsText(injectedBySite[s]))
		}
	}
	fmt.Fprintf(&b, "  in sync %v after the heal; final reads: %v\n", syncTook.Round(time.Millisecond), errOrOK(res.finalErr))
	fmt.Fprintf(&b, "  checker: %s (%d ops checked in %v)\n", res.check.Verdict, res.check.Ops, checkTook.Round(time.Millisecond))
	fmt.Fprintf(&b, "  I4 backing files: %v (%d MiB of LU compared with %s's)\n", errOrOK(res.i4), compared>>20, siteNames[0])
	if len(res.lost) > 0 {
		fmt.Fprintf(&b, "  lost at every site (a writer's store failed with no in-sync replica; reads there answer MEDIUM ERROR): %v\n", res.lost)
	}
	fmt.Fprintf(&b, "  images replaced: %d; sentinel blocks and copies: %v\n", res.replaced, errOrOK(res.images))
	for _, l := range replacedLines {
		fmt.Fprintf(&b, "    %s\n", l)
	}
	if two := overlappingWriters(samples); two > 0 {
		// Polls of different sites are not simultaneous, so this is a
		// hint; the checker decides whether two writers acknowledged.
		fmt.Fprintf(&b, "  status polls in which two sites said writer: %d\n", two)
	}
	fmt.Fprintf(&b, "  per fault: time without a writer (status polls every 100ms), longest time without an acknowledged write:\n")
	for _, g := range FaultGaps(faults, samples, h.Ops(), runEnd) {
		line := fmt.Sprintf("    %8v %-28s no writer %7v, no ack %7v (window %v)", g.Fault.At.Round(time.Millisecond), g.Fault.Label(),
			g.NoWriter.Round(time.Millisecond), g.LongestNoAck.Round(time.Millisecond), g.Window.Round(time.Millisecond))
		if g.Fault.Err != "" {
			line += " [step failed: " + firstLine(g.Fault.Err) + "]"
		}
		b.WriteString(line + "\n")
	}
	fmt.Fprintf(&b, "  latency plot: %s\n  history: %s (check again: CHECKER_HISTORY=that go test ./integration/checker -run TestCheckSavedHistory)\n", svg, filepath.Join(r.out, "history.json"))
	if html != "" {
		fmt.Fprintf(&b, "  visualization: %s\n", html)
	}
	res.summary = b.String()
	t.Log(res.summary)
	if serr != nil {
		t.Logf("schedule step errors: %v", serr)
	}
	logMu.Lock()
	t.Logf("harness log (times since the cluster was started):\n%s", strings.Join(faultLog, "\n"))
	logMu.Unlock()
	return res
}

// countsText is "a 1, b 2" in key order ("none" when empty).
func countsText[K ~string](m map[K]int) string {
	keys := slices.Sorted(maps.Keys(m))
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func overlappingWriters(samples []WriterSample) int {
	n := 0
	for _, s := range samples {
		if len(s.Writers) > 1 {
			n++
		}
	}
	return n
}

func errOrOK(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// requireTortureOK fails t unless the run was clean: a linearizable
// history (no lost write, no stale read, no second writer), identical
// backing files, every final read served, and enough work done to mean
// something.
func requireTortureOK(t *testing.T, res tortureResult) {
	t.Helper()
	if !res.check.OK() {
		t.Errorf("checker: %s", res.check)
	}
	if res.i4 != nil {
		t.Errorf("%v", res.i4)
	}
	if res.finalErr != nil {
		t.Errorf("final reads after the heal: %v", res.finalErr)
	}
	if res.images != nil {
		t.Errorf("replaced images: %v", res.images)
	}
	if res.stats.OK < 100 || res.stats.Corrupt != 0 {
		t.Errorf("workload: %s, %d corrupt reads (first error %q)", res.stats, res.stats.Corrupt, res.stats.FirstError)
	}
	total := 0
	for _, n := range res.injected {
		total += n
	}
	if res.storageSteps > 0 && total == 0 {
		// The disks were to fail and none did: the run proved nothing
		// about storage faults.
		t.Errorf("%d storage faults applied, none injected by the stores", res.storageSteps)
	}
}

// TestTortureShort is the CI torture run: two data sites and a witness
// with short timings, every fault kind for TORTURE_DURATION (40s), about
// a minute and a half in all. A site's disk fails at least twice (EIO on
// write, then or before a failed write-back), so CI always sees storage
// faults, and one site's image is replaced (and must be copied in full).
func TestTortureShort(t *testing.T) {
	bin := metrolunBin(t)
	res := runTorture(t, tortureRun{
		bin: bin, seed: tortureSeed(t), sites: tortureSites(t), timings: tortureTiming(t, fastTimings),
		duration: tortureDuration(t, 40*time.Second), out: tortureOut(t, "run"),
		require: []checker.FaultKind{checker.FaultStorageEIO, checker.FaultFlushEIO, checker.FaultReplaceImage},
	})
	requireTortureOK(t, res)
	if res.replaced == 0 {
		// Among the first faults, on a healthy cluster: the other site
		// must have taken over.
		t.Errorf("the required replace-image step replaced no image (see the schedule step errors)")
	}
}

// TestTortureDefaults is a torture run with metrolun's default timings
// (lease 1s, election 1s, replica timeout 3s). It runs under `make
// torture` (TORTURE_DURATION set) or with TORTURE_DEFAULTS=1.
func TestTortureDefaults(t *testing.T) {
	if os.Getenv("TORTURE_DURATION") == "" && os.Getenv("TORTURE_DEFAULTS") == "" {
		t.Skip("runs under `make torture` (TORTURE_DURATION) or with TORTURE_DEFAULTS=1")
	}
	bin := metrolunBin(t)
	res := runTorture(t, tortureRun{
		bin: bin, seed: tortureSeed(t), sites: tortureSites(t), timings: defaultTimings,
		duration: tortureDuration(t, 2*time.Minute), out: tortureOut(t, "run"),
	})
	requireTortureOK(t, res)
}

// ackEarlySchedule slows every link, then kills the writer while its
// clients write, with its in-flight bytes lost (KillResetsLinks): writes
// a correct writer acknowledges are on the replica already; writes a
// writer that answers early acknowledged are still in the WAN and die
// with it. The survivor takes over and serves the blocks.
var ackEarlySchedule = []checker.Step{
	{At: 2 * time.Second, Kind: checker.FaultLatency, Latency: 40 * time.Millisecond, Duration: 2 * time.Second},
	{At: 3500 * time.Millisecond, Kind: checker.FaultKill9, Target: "WRITER", Duration: 4500 * time.Millisecond},
	{At: 4 * time.Second, Kind: checker.FaultLatency},
	{At: 8 * time.Second, Kind: checker.FaultRestart, Target: "WRITER"},
}

// TestTortureCatchesAckEarly proves that the torture run catches broken
// mirroring: a binary built with -tags metrolun_bug_ackearly, whose
// writer answers writes before its replicas have them, must show a lost
// acknowledged write (or different backing files) under
// ackEarlySchedule. A correct binary runs the same schedule first, as
// the control: it must lose no acknowledged write and end with
// identical backing files, or the detection would prove nothing.
func TestTortureCatchesAckEarly(t *testing.T) {
	good := metrolunBin(t)
	bad, err := BuildMetrolunTags(context.Background(), binDir, "metrolun-bug-ackearly", "metrolun_bug_ackearly")
	if err != nil {
		t.Fatal(err)
	}
	seed := tortureSeed(t)
	run := func(bin, name string) (tortureResult, map[checker.AnomalyKind]int) {
		res := runTorture(t, tortureRun{
			bin: bin, seed: seed, timings: fastTimings, duration: 12 * time.Second,
			schedule: ackEarlySchedule, killResetsLinks: true, out: tortureOut(t, name),
		})
		if res.stats.OK < 100 || res.finalErr != nil {
			t.Fatalf("%s: too little work to judge: %s; final reads: %v", name, res.stats, errOrOK(res.finalErr))
		}
		kinds := map[checker.AnomalyKind]int{}
		for _, a := range res.check.Anomalies {
			kinds[a.Kind]++
		}
		return res, kinds
	}
	control, kinds := run(good, "control")
	if kinds[checker.LostWrite] > 0 || control.i4 != nil {
		t.Fatalf("the correct binary lost acknowledged writes under the ack-early schedule, so catching the bug would prove nothing: checker %s; I4 %v",
			control.check, errOrOK(control.i4))
	}
	if !control.check.OK() {
		// Not what this test is about; TestTortureShort reports it.
		t.Logf("control: the correct binary's history is not linearizable either (%v), but it lost no acknowledged write", kinds)
	}

	res, kinds := run(bad, "ackearly")
	lost := kinds[checker.LostWrite]
	switch {
	case lost > 0:
		for _, a := range res.check.Anomalies {
			if a.Kind == checker.LostWrite {
				t.Logf("caught the ack-early bug: %d lost writes (all anomalies: %v); first: %s", lost, kinds, a.Text)
				break
			}
		}
	case res.i4 != nil:
		t.Logf("caught the ack-early bug by I4 (anomalies: %v): %v", kinds, res.i4)
	default:
		t.Fatalf("the ack-early bug went unnoticed: no lost write, identical backing files; checker %s", res.check)
	}
}

// shortWriteSchedule makes the writer's disk store half of every write
// (and report that count) for 3 seconds.
var shortWriteSchedule = []checker.Step{
	{At: 2 * time.Second, Kind: checker.FaultShortWrite, Target: "WRITER", Duration: 3 * time.Second},
	{At: 5 * time.Second, Kind: checker.FaultStorageClear, Target: "WRITER"},
}

// TestTortureCatchesShortWrite proves that the torture run catches a
// swallowed storage error: a binary built with -tags
// metrolun_faults,metrolun_bug_shortwrite, whose store takes a short
// write count for the whole write (issue 12 item 1), must show torn
// blocks (or different backing files) under shortWriteSchedule. The
// correct metrolun_faults build runs the same schedule first, as the
// control: it must pass.
func TestTortureCatchesShortWrite(t *testing.T) {
	bad, err := BuildMetrolunTags(context.Background(), binDir, "metrolun-bug-shortwrite", "metrolun_faults", "metrolun_bug_shortwrite")
	if err != nil {
		t.Fatal(err)
	}
	seed := tortureSeed(t)
	run := func(bin, name string) tortureResult {
		res := runTorture(t, tortureRun{
			bin: bin, faultsBin: bin, seed: seed, timings: fastTimings, duration: 8 * time.Second,
			schedule: shortWriteSchedule, out: tortureOut(t, name),
		})
		if res.stats.OK < 100 || res.injected["short_write"] == 0 {
			t.Fatalf("%s: too little to judge: %s; short writes injected: %d", name, res.stats, res.injected["short_write"])
		}
		return res
	}
	control := run(metrolunFaultsBin(t), "control")
	if !control.check.OK() || control.i4 != nil || control.stats.Corrupt != 0 || control.finalErr != nil {
		t.Fatalf("the correct binary failed under short writes, so catching the bug would prove nothing: checker %s; I4 %v; final reads %v",
			control.check, errOrOK(control.i4), errOrOK(control.finalErr))
	}
	res := run(bad, "shortwrite")
	kinds := map[checker.AnomalyKind]int{}
	for _, a := range res.check.Anomalies {
		kinds[a.Kind]++
	}
	switch {
	case res.stats.Corrupt > 0 || !res.check.OK():
		t.Logf("caught the short-write bug: %d torn reads, anomalies %v", res.stats.Corrupt, kinds)
	case res.i4 != nil:
		t.Logf("caught the short-write bug by I4: %v", res.i4)
	default:
		t.Fatalf("the short-write bug went unnoticed: no torn read, identical backing files; checker %s", res.check)
	}
}

// TestTortureHelpers checks the pieces of the summary and the sync
// condition on made-up data.
func TestTortureHelpers(t *testing.T) {
	s := time.Second
	faults := []checker.FaultEvent{
		{At: 1 * s, Step: checker.Step{Kind: checker.FaultKill9, Target: "site-a"}},
		{At: 4 * s, Step: checker.Step{Kind: checker.FaultRestart, Target: "site-a"}},
	}
	var samples []WriterSample
	for at := time.Duration(0); at < 6*s; at += 500 * time.Millisecond {
		w := []string{"site-a"}
		if at >= 1500*time.Millisecond && at < 3*s {
			w = nil // no writer from 1.5s to 3s
		}
		samples = append(samples, WriterSample{At: at, Writers: w})
	}
	ops := []checker.Op{
		{Kind: checker.Write, Outcome: checker.OK, Return: 1200 * time.Millisecond},
		{Kind: checker.Write, Outcome: checker.Failed, Return: 2 * s},
		{Kind: checker.Write, Outcome: checker.OK, Return: 3500 * time.Millisecond},
		{Kind: checker.Read, Outcome: checker.OK, Return: 3400 * time.Millisecond},
		{Kind: checker.Write, Outcome: checker.OK, Return: 4100 * time.Millisecond},
	}
	g := FaultGaps(faults, samples, ops, 6*s)
	if len(g) != 2 || g[0].NoWriter != 1500*time.Millisecond || g[0].LongestNoAck != 2300*time.Millisecond || g[0].Window != 3*s {
		t.Fatalf("gaps %+v", g)
	}
	if g[1].NoWriter != 0 || g[1].LongestNoAck != 1900*time.Millisecond {
		t.Fatalf("gaps after the restart %+v", g[1])
	}

	st := func(name, role string, epoch uint64, peers ...TorturePeer) TortureReport {
		r := TortureReport{Name: name, Reachable: true, Status: &TortureStatus{Member: name}}
		r.Status.Raft.Writer, r.Status.Raft.Epoch, r.Status.Raft.InSync = "site-a", 3, []string{"site-a", "site-b"}
		if role != "" {
			r.Status.Site = &TortureSiteStatus{Role: role, Epoch: epoch, Peers: peers}
		}
		return r
	}
	sites := []string{"site-a", "site-b"}
	good := []TortureReport{
		st("site-a", "writer", 3, TorturePeer{Name: "site-b", State: "in-sync", Connected: true}),
		st("site-b", "replica", 3),
		st("witness", "", 0),
	}
	if ok, why := TortureInSync(good, sites); !ok {
		t.Fatalf("healthy cluster not in sync: %s", why)
	}
	lagging := []TortureReport{
		st("site-a", "writer", 3, TorturePeer{Name: "site-b", State: "in-sync", Connected: true, LagFrames: 2}),
		st("site-b", "replica", 3),
		st("witness", "", 0),
	}
	syncing := []TortureReport{
		st("site-a", "writer", 3, TorturePeer{Name: "site-b", State: "syncing", Connected: true}),
		st("site-b", "none", 3),
		st("witness", "", 0),
	}
	down := append([]TortureReport(nil), good...)
	down[2] = TortureReport{Name: "witness", Error: "connection refused"}
	for name, reps := range map[string][]TortureReport{"lagging": lagging, "syncing": syncing, "witness down": down, "no writer": good[1:]} {
		if ok, _ := TortureInSync(reps, sites); ok {
			t.Errorf("%s: reported in sync", name)
		}
	}
}
