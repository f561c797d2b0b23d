package drill

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/metrolun/metrolun/integration/checker"
)

// Verdicts.
const (
	Pass = "pass"
	Fail = "fail"
)

// Result is what a drill found: its verdict and everything its report
// shows. Times of the run (At, Done, From, To) are offsets from Start, the
// moment the workload's history began; durations are nanoseconds in JSON
// (the _ns names). A Result is plain data: metrolun drill prints it as text
// or as JSON.
type Result struct {
	// Verdict is Pass or Fail; Reasons say why a drill failed, in the
	// order they were found, each on one line (empty on pass).
	Verdict string   `json:"verdict"`
	Reasons []string `json:"reasons,omitempty"`

	Start time.Time `json:"start"`
	// Members are the cluster's members from ConfigPath, in its order.
	Members    []Member `json:"members"`
	ConfigPath string   `json:"config"`
	// Target, LUN: the LU the workload ran on; LUNBytes and BlockSize as
	// READ CAPACITY gave them.
	Target    string `json:"target"`
	LUN       uint64 `json:"lun"`
	LUNBytes  int64  `json:"lun_bytes"`
	BlockSize uint32 `json:"block_size"`
	Scratch   Region `json:"scratch"`
	// Sites are the data sites, in config order, with the portal the
	// workload's client at that site used.
	Sites []Site `json:"sites"`
	// Blocks is how many blocks from the scratch region's start the
	// workload wrote and read; Seed its seed.
	Blocks int    `json:"blocks"`
	Seed   uint64 `json:"seed"`

	// WriterStart and EpochStart: the writer and epoch before the first
	// step; End the cluster as the members reported it after the drill.
	WriterStart string  `json:"writer_start"`
	EpochStart  uint64  `json:"epoch_start"`
	End         EndView `json:"end"`

	// Steps are the drill's actions in order, between "workload started"
	// and "workload stopped".
	Steps []Step `json:"steps"`
	// Stopped says why the steps ended before the last: a failed step
	// (its name and error; "workload: …" when no write was acknowledged
	// at every site to begin with), what kept the next step from
	// starting (no writer, no other in-sync site), or "interrupted".
	// Empty when every step ran.
	Stopped string `json:"stopped,omitempty"`
	// Unfence is set when the drill could not unfence the site it had
	// fenced after the steps ended; the cluster lifts the fence by
	// itself after FenceFor.
	Unfence  *UnfenceError `json:"unfence_error,omitempty"`
	FenceFor time.Duration `json:"fence_for_ns"`

	// Workload: the operations the workload ran (nil when it gave no
	// figures), WorkloadErr how it failed, if it did.
	Workload    *WorkloadStats `json:"workload,omitempty"`
	WorkloadErr string         `json:"workload_error,omitempty"`
	// Errors are the workload's failed operations by site and kind.
	Errors          Errors          `json:"errors"`
	Linearizability Linearizability `json:"linearizability"`
	ReadBack        ReadBack        `json:"read_back"`
	Verify          Verify          `json:"verify"`

	// Plot and History are the files asked for (empty: none), with why
	// writing one failed.
	Plot       string `json:"plot,omitempty"`
	PlotErr    string `json:"plot_error,omitempty"`
	History    string `json:"history,omitempty"`
	HistoryErr string `json:"history_error,omitempty"`
}

// Passed reports whether the verdict is Pass.
func (r *Result) Passed() bool { return r.Verdict == Pass }

// Member is a cluster member and its role (data or witness).
type Member struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// Site is a data site and the iSCSI portal the drill's client there used.
type Site struct {
	Name   string `json:"name"`
	Portal string `json:"portal"`
}

// Region is the scratch region: the bytes of the LUN the drill may
// overwrite, and why those (given, or a demo's default).
type Region struct {
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	Why    string `json:"why"`
}

// EndView is the cluster after the drill.
type EndView struct {
	Writer string   `json:"writer"`
	Epoch  uint64   `json:"epoch"`
	Fenced []Fenced `json:"fenced,omitempty"`
}

// Fenced is a site still fenced after the drill, and until when (RFC
// 3339).
type Fenced struct {
	Site  string `json:"site"`
	Until string `json:"until"`
}

// UnfenceError: the site the drill fenced and could not unfence.
type UnfenceError struct {
	Site string `json:"site"`
	Err  string `json:"error"`
}

// Step is one action of the drill and what it caused.
type Step struct {
	Name string `json:"name"`
	// At is when the action was taken; Done when its effect was seen, or
	// when it failed (zero: neither, as for the workload's start).
	At   time.Duration `json:"at_ns"`
	Done time.Duration `json:"done_ns,omitempty"`
	// Err is why the step failed (empty: it did not); Note what it did.
	Err  string `json:"error,omitempty"`
	Note string `json:"note,omitempty"`
	// The writer and epoch before and after the step, and when the new
	// writer's lease began (its own clock; zero when unknown).
	FromWriter  string    `json:"from_writer,omitempty"`
	ToWriter    string    `json:"to_writer,omitempty"`
	FromEpoch   uint64    `json:"from_epoch,omitempty"`
	ToEpoch     uint64    `json:"to_epoch,omitempty"`
	WriterSince time.Time `json:"writer_since,omitzero"`
	// Interrupts: the step interrupts writes (a promote or a fence);
	// Stall is then the longest time without an acknowledged write from
	// the action to the first write acknowledged after its effect (nil
	// for other steps and for a step that never took effect).
	Interrupts bool   `json:"interrupts,omitempty"`
	Stall      *Stall `json:"stall,omitempty"`
}

// Stall is a time without an acknowledged write: Gap long, From to To
// (offsets from Result.Start). A zero Gap: no write was acknowledged
// between the action and the end of the step.
type Stall struct {
	Gap  time.Duration `json:"gap_ns"`
	From time.Duration `json:"from_ns"`
	To   time.Duration `json:"to_ns"`
}

// WorkloadStats counts the workload's operations.
type WorkloadStats struct {
	Ops           int `json:"ops"`
	Reads         int `json:"reads"`
	Writes        int `json:"writes"`
	OK            int `json:"ok"`
	Failed        int `json:"failed"`
	Indeterminate int `json:"indeterminate"`
	Logins        int `json:"logins"`
}

// Errors are the workload's operations that did not succeed. Total counts
// those the cluster failed, Unexpected the part of them at a site that was
// neither fenced nor resyncing (any fails the drill); CutShort counts
// operations the drill's own stop interrupted, which are in neither.
type Errors struct {
	Total      int `json:"total"`
	Unexpected int `json:"unexpected"`
	CutShort   int `json:"cut_short"`
	// Kinds group the errors by site, kind and whether expected, most
	// frequent first.
	Kinds []ErrorKind `json:"kinds,omitempty"`
}

// ErrorKind is a count of like errors at a site (the error text with
// opcodes, addresses and numbers taken out).
type ErrorKind struct {
	Site     string `json:"site"`
	Kind     string `json:"kind"`
	Expected bool   `json:"expected"`
	Count    int    `json:"count"`
}

// Linearizability is the check of every operation of the workload
// (integration/checker).
type Linearizability struct {
	// Verdict is the checker's: ok, illegal or unknown.
	Verdict string `json:"verdict"`
	// Summary is its one-line account: ops, reads, writes, time taken.
	Summary string `json:"summary"`
	// Anomalies explain the first violations found (at most five);
	// Explanation says more when there are none to show.
	Anomalies   []string `json:"anomalies,omitempty"`
	Explanation string   `json:"explanation,omitempty"`
}

// OK reports whether the history was found linearizable.
func (l Linearizability) OK() bool { return l.Verdict == string(checker.VerdictOK) }

// ReadBack is the scratch region read at every data site after the
// workload stopped.
type ReadBack struct {
	// Err: the region could not be read (the rest is then empty).
	Err   string   `json:"error,omitempty"`
	Sites []string `json:"sites,omitempty"`
	// Differ names the first difference between the sites (empty: they
	// are identical); SHA256 begins the first site's region's hash.
	Differ string `json:"differ,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	// Corrupt are the workload's blocks (LBAs) that hold no valid stamp.
	Corrupt []uint64 `json:"corrupt,omitempty"`
}

// Verify is the online verify the writer ran after the workload
// (POST /v1/verify).
type Verify struct {
	Err string `json:"error,omitempty"`
	// Done of Total regions of Region bytes compared against Replicas.
	Done     int      `json:"done"`
	Total    int      `json:"total"`
	Region   int64    `json:"region"`
	Replicas []string `json:"replicas,omitempty"`
	// Differ: per replica, the byte offsets of the regions that differ.
	Differ map[string][]int64 `json:"differ,omitempty"`
}

// Differing counts the regions that differ, over every replica.
func (v Verify) Differing() int {
	n := 0
	for _, offs := range v.Differ {
		n += len(offs)
	}
	return n
}

// judge sets r's Verdict and Reasons from what r holds. The reasons come
// in the order the drill meets them: why the steps stopped, the fence it
// could not lift, the workload's failure, then the end state (a site
// still fenced, the writer not back), unexpected I/O errors, the
// linearizability check, the data read back and the online verify.
func (r *Result) judge() {
	var why []string
	fail := func(format string, args ...any) {
		why = append(why, strings.Join(strings.Fields(fmt.Sprintf(format, args...)), " "))
	}
	if r.Stopped != "" {
		fail("%s", r.Stopped)
	} else {
		for _, s := range r.Steps {
			if s.Err != "" {
				fail("%s: %s", s.Name, s.Err)
				break
			}
		}
	}
	if u := r.Unfence; u != nil {
		fail("could not unfence %s after the drill (the cluster lifts the fence by itself within %v): %s", u.Site, r.FenceFor, u.Err)
	}
	if r.WorkloadErr != "" {
		fail("workload: %s", r.WorkloadErr)
	}
	for _, f := range r.End.Fenced {
		fail("%s is still fenced (until %s)", f.Site, f.Until)
	}
	// Only worth saying when nothing else went wrong: a failed step
	// leaves the writer wherever it was.
	if r.WriterStart != "" && len(why) == 0 && r.End.Writer != r.WriterStart {
		fail("the writer did not come back to %s (it is %s)", r.WriterStart, orDash(r.End.Writer))
	}
	if r.Errors.Unexpected > 0 {
		fail("%d I/O errors the drill should not cause (sites that were neither fenced nor resyncing)", r.Errors.Unexpected)
	}
	if !r.Linearizability.OK() {
		fail("the history is not linearizable (%s)", r.Linearizability.Verdict)
	}
	rb := r.ReadBack
	switch {
	case rb.Err != "":
		fail("scratch region not read back: %s", rb.Err)
	case rb.Differ != "":
		fail("scratch region: %s", rb.Differ)
	}
	if rb.Err == "" && len(rb.Corrupt) > 0 {
		fail("%d workload blocks corrupt, first LBA %d", len(rb.Corrupt), rb.Corrupt[0])
	}
	v := r.Verify
	switch bad := v.Differing(); {
	case v.Err != "" && v.Total == 0:
		fail("verify: %s", v.Err)
	case bad > 0:
		fail("verify: %d regions differ", bad)
	case v.Err != "":
		fail("verify: %s", v.Err)
	}
	r.Reasons = why
	r.Verdict = Pass
	if len(why) > 0 {
		r.Verdict = Fail
	}
}

// errWindow is a time when I/O errors at a site are expected: it was
// fenced, or resyncing after that (to < 0: until the end).
type errWindow struct {
	site     string
	from, to time.Duration
}

func expected(windows []errWindow, op checker.Op, end time.Duration) bool {
	for _, w := range windows {
		to := w.to
		if to < 0 {
			to = end
		}
		if op.Site == w.site && op.Return >= w.from && op.Call <= to {
			return true
		}
	}
	return false
}

// countErrors sorts the operations that failed: cut short by the drill's
// own stop at stoppedAt, expected in one of windows, or unexpected.
func countErrors(ops []checker.Op, windows []errWindow, stoppedAt, end time.Duration) Errors {
	var e Errors
	counts := map[[3]string]*ErrorKind{}
	for _, op := range ops {
		if op.Outcome == checker.OK {
			continue
		}
		if op.Return >= stoppedAt && strings.Contains(op.Err, context.Canceled.Error()) {
			e.CutShort++
			continue
		}
		exp := expected(windows, op, end)
		e.Total++
		if !exp {
			e.Unexpected++
		}
		k := [3]string{op.Site, errKind(op.Err), strconv.FormatBool(exp)}
		if counts[k] == nil {
			counts[k] = &ErrorKind{Site: op.Site, Kind: k[1], Expected: exp}
		}
		counts[k].Count++
	}
	for _, c := range counts {
		e.Kinds = append(e.Kinds, *c)
	}
	sort.Slice(e.Kinds, func(i, j int) bool {
		a, b := e.Kinds[i], e.Kinds[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		return a.Site+a.Kind < b.Site+b.Kind
	})
	return e
}

var (
	reOp   = regexp.MustCompile(`op 0x[0-9a-f]{2}: `)
	reAddr = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+:\d+|\[[0-9a-f:]+\]:\d+`)
	reNum  = regexp.MustCompile(`(lba|n|port) \d+`)
)

// errKind shortens an operation's error to its kind, for counting.
func errKind(s string) string {
	s = reOp.ReplaceAllString(s, "")
	s = reAddr.ReplaceAllString(s, "ADDR")
	s = reNum.ReplaceAllString(s, "$1 N")
	if len(s) > 110 {
		s = s[:110] + "…"
	}
	return s
}

// stall is the longest time without an acknowledged write (acks, sorted)
// from a step's action at to the first write acknowledged after its
// effect was seen at done, with where it began and ended.
func stall(acks []time.Duration, at, done time.Duration) Stall {
	var s Stall
	prev := at
	for _, a := range acks {
		if a < at {
			continue
		}
		if a-prev > s.Gap {
			s = Stall{Gap: a - prev, From: prev, To: a}
		}
		prev = a
		if a >= done {
			break
		}
	}
	return s
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
