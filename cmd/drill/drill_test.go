package drill

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/checker"
)

func TestParseScratch(t *testing.T) {
	off, n, err := ParseScratch("100GiB:4MiB")
	if err != nil || off != 100<<30 || n != 4<<20 {
		t.Fatalf("100GiB:4MiB = %d, %d, %v", off, n, err)
	}
	for _, bad := range []string{"", "4MiB", "x:4MiB", "1GiB:", "1GiB:0", "-1:4MiB"} {
		if _, _, err := ParseScratch(bad); err == nil {
			t.Errorf("--scratch %q accepted", bad)
		}
	}
}

// TestStall: the longest time without an acknowledged write runs from the
// action (or the last write acknowledged after it) to the first write
// acknowledged after it; writes after the step's effect was seen do not
// count.
func TestStall(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	at, done := 100*time.Millisecond, 900*time.Millisecond
	s := stall(ms(10, 90, 105, 110, 800, 810, 950, 5000), at, done)
	if s.Gap != 690*time.Millisecond || s.From != 110*time.Millisecond || s.To != 800*time.Millisecond {
		t.Fatalf("stall %v from %v to %v, want 690ms from 110ms to 800ms", s.Gap, s.From, s.To)
	}
	// Nothing acknowledged between the action and the effect.
	s = stall(ms(50, 1000, 1001), at, done)
	if s.Gap != 900*time.Millisecond || s.From != 100*time.Millisecond || s.To != time.Second {
		t.Fatalf("stall %v from %v to %v, want 900ms from the action to 1s", s.Gap, s.From, s.To)
	}
}

func TestErrKind(t *testing.T) {
	a := errKind("scsi: op 0x8a: CHECK CONDITION, sense key 0x2 (NOT READY), ASC/ASCQ 0x04/0x0c")
	b := errKind("scsi: op 0x88: CHECK CONDITION, sense key 0x2 (NOT READY), ASC/ASCQ 0x04/0x0c")
	if a != b {
		t.Fatalf("a read and a write refused alike are of two kinds: %q, %q", a, b)
	}
	c := errKind("connect: iscsi: dial 127.0.0.2:3260 (not sent): connection refused")
	d := errKind("connect: iscsi: dial 127.0.0.1:3261 (not sent): connection refused")
	if c != d {
		t.Fatalf("%q != %q", c, d)
	}
}

// passing is the result of a drill where everything went well: the writer
// moved away and back, the fenced site's errors fell in its window, the
// history is linearizable, the sites read back alike and verify found
// nothing.
func passing() *Result {
	return &Result{
		WriterStart: "site-a", EpochStart: 3,
		End:      EndView{Writer: "site-a", Epoch: 7},
		FenceFor: 2 * time.Minute,
		Steps: []Step{
			{Name: "workload started", Note: "writes acknowledged at every site after 0.05s"},
			{Name: "promote site-b", At: time.Second, Done: 1100 * time.Millisecond, Note: "site-b writer of epoch 4", Interrupts: true},
			{Name: "fence site-a", At: 2 * time.Second, Done: 3 * time.Second, Note: "site-b writer of epoch 5", Interrupts: true},
			{Name: "workload stopped", At: 8 * time.Second},
		},
		Errors:          Errors{Total: 11, Kinds: []ErrorKind{{Site: "site-a", Kind: "scsi: NOT READY", Expected: true, Count: 11}}},
		Linearizability: Linearizability{Verdict: "ok", Summary: "ok: 100 ops"},
		ReadBack:        ReadBack{Sites: []string{"site-a", "site-b"}, SHA256: "84bd39668c07e12a"},
		Verify:          Verify{Done: 64, Total: 64, Region: 1 << 20, Replicas: []string{"site-b"}},
	}
}

// TestVerdict: each finding that must fail a drill does, with its reason;
// a drill without any passes.
func TestVerdict(t *testing.T) {
	cases := []struct {
		name   string
		change func(r *Result)
		want   []string // reasons; nil: pass
	}{
		{"all well", func(*Result) {}, nil},
		{"expected errors only", func(r *Result) { r.Errors.Total = 500 }, nil},
		{"a step failed", func(r *Result) {
			r.Steps[1].Err = "no writer site-b within 1m0s (writer site-a, epoch 3, in sync: site-a)"
			r.Stopped = "promote site-b: no writer site-b within 1m0s (writer site-a, epoch 3, in sync: site-a)"
		}, []string{"promote site-b: no writer site-b within 1m0s (writer site-a, epoch 3, in sync: site-a)"}},
		{"a failed step without a stop reason", func(r *Result) {
			r.Steps[2].Err = "no write acknowledged within 1m0s after the new writer took over"
		}, []string{"fence site-a: no write acknowledged within 1m0s after the new writer took over"}},
		{"no baseline", func(r *Result) {
			r.Steps[0].Err = "no write acknowledged at site-b within 1m0s"
			r.Stopped = "workload: no write acknowledged at site-b within 1m0s"
		}, []string{"workload: no write acknowledged at site-b within 1m0s"}},
		{"interrupted", func(r *Result) { r.Stopped = "interrupted" }, []string{"interrupted"}},
		{"checker violation", func(r *Result) {
			r.Linearizability = Linearizability{Verdict: "illegal", Anomalies: []string{"lost write on block 7"}}
		}, []string{"the history is not linearizable (illegal)"}},
		{"checker out of time", func(r *Result) { r.Linearizability.Verdict = "unknown" },
			[]string{"the history is not linearizable (unknown)"}},
		{"unexpected I/O errors", func(r *Result) { r.Errors.Unexpected = 2 },
			[]string{"2 I/O errors the drill should not cause (sites that were neither fenced nor resyncing)"}},
		{"workload failed", func(r *Result) { r.WorkloadErr = "no client logged in" }, []string{"workload: no client logged in"}},
		{"fence not lifted", func(r *Result) { r.Unfence = &UnfenceError{Site: "site-a", Err: "timeout"} },
			[]string{"could not unfence site-a after the drill (the cluster lifts the fence by itself within 2m0s): timeout"}},
		{"still fenced, writer away", func(r *Result) {
			r.End = EndView{Writer: "site-b", Epoch: 6, Fenced: []Fenced{{Site: "site-a", Until: "2026-12-07T13:00:00Z"}}}
		}, []string{"site-a is still fenced (until 2026-12-07T13:00:00Z)"}},
		{"writer not back", func(r *Result) { r.End.Writer = "site-b" }, []string{"the writer did not come back to site-a (it is site-b)"}},
		{"writer not back after a failed step", func(r *Result) {
			r.End.Writer = "site-b"
			r.Stopped = "interrupted"
		}, []string{"interrupted"}},
		{"no writer at the start", func(r *Result) { r.WriterStart, r.End.Writer = "", "site-b" }, nil},
		{"data differs", func(r *Result) { r.ReadBack.Differ = "site-a and site-b differ at byte 66064384" },
			[]string{"scratch region: site-a and site-b differ at byte 66064384"}},
		{"data not read", func(r *Result) { r.ReadBack = ReadBack{Err: "login at site-b: refused", Corrupt: []uint64{9}} },
			[]string{"scratch region not read back: login at site-b: refused"}},
		{"corrupt blocks", func(r *Result) { r.ReadBack.Corrupt = []uint64{122885, 122890} },
			[]string{"2 workload blocks corrupt, first LBA 122885"}},
		{"verify differs", func(r *Result) { r.Verify.Differ = map[string][]int64{"site-b": {66060288, 0}} },
			[]string{"verify: 2 regions differ"}},
		{"verify failed", func(r *Result) { r.Verify = Verify{Err: "not the writer"} }, []string{"verify: not the writer"}},
		{"verify stopped", func(r *Result) { r.Verify.Done, r.Verify.Err = 10, "replica site-b gone" },
			[]string{"verify: replica site-b gone"}},
		{"a reason on one line", func(r *Result) { r.Stopped = "promote site-b:\n  no writer" }, []string{"promote site-b: no writer"}},
		{"every reason, in order", func(r *Result) {
			r.Stopped = "interrupted"
			r.Unfence = &UnfenceError{Site: "site-a", Err: "timeout"}
			r.WorkloadErr = "w"
			r.End.Fenced = []Fenced{{Site: "site-a", Until: "T"}}
			r.Errors.Unexpected = 1
			r.Linearizability.Verdict = "illegal"
			r.ReadBack.Differ = "d"
			r.ReadBack.Corrupt = []uint64{5}
			r.Verify.Differ = map[string][]int64{"site-b": {0}}
		}, []string{
			"interrupted",
			"could not unfence site-a after the drill (the cluster lifts the fence by itself within 2m0s): timeout",
			"workload: w",
			"site-a is still fenced (until T)",
			"1 I/O errors the drill should not cause (sites that were neither fenced nor resyncing)",
			"the history is not linearizable (illegal)",
			"scratch region: d",
			"1 workload blocks corrupt, first LBA 5",
			"verify: 1 regions differ",
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := passing()
			c.change(r)
			r.judge()
			if c.want == nil {
				if !r.Passed() || r.Verdict != Pass || len(r.Reasons) != 0 {
					t.Fatalf("verdict %q %q, want pass", r.Verdict, r.Reasons)
				}
				return
			}
			if r.Passed() || r.Verdict != Fail {
				t.Fatalf("verdict %q, want fail", r.Verdict)
			}
			if !slices.Equal(r.Reasons, c.want) {
				t.Fatalf("reasons\n%s\nwant\n%s", strings.Join(r.Reasons, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

// TestCountErrors: an error at a site inside its fence window is
// expected, one outside it or at another site is not, and one the
// drill's own stop cut short is neither; kinds come most frequent first.
func TestCountErrors(t *testing.T) {
	s := time.Second
	notReady := "scsi: op 0x2a: CHECK CONDITION, sense key 0x2 (NOT READY)"
	op := func(site string, call, ret time.Duration, err string) checker.Op {
		return checker.Op{Site: site, Kind: checker.Write, Call: call, Return: ret, Outcome: checker.Failed, Err: err}
	}
	ops := []checker.Op{
		{Site: "site-a", Kind: checker.Write, Call: 0, Return: s, Outcome: checker.OK},
		op("site-a", 3*s, 4*s, notReady),                                                    // in the window
		op("site-a", 4*s, 5*s, "scsi: op 0x28: CHECK CONDITION, sense key 0x2 (NOT READY)"), // likewise, a read
		op("site-a", 19*s, 21*s, notReady),                                                  // overlaps its open end
		op("site-a", 0, s, notReady),                                                        // before it
		op("site-b", 3*s, 4*s, notReady),                                                    // another site
		op("site-b", 29*s, 30*s, "write: "+"context canceled"),                              // the drill's stop
		op("site-b", 10*s, 11*s, "write: context canceled"),                                 // a cancel before the stop is an error
	}
	ops[6].Outcome = checker.Indeterminate
	e := countErrors(ops, []errWindow{{site: "site-a", from: 2 * s, to: -1}}, 29*s, 20*s)
	if e.Total != 6 || e.Unexpected != 3 || e.CutShort != 1 {
		t.Fatalf("total %d, unexpected %d, cut short %d; want 6, 3, 1", e.Total, e.Unexpected, e.CutShort)
	}
	want := []ErrorKind{
		{Site: "site-a", Kind: errKind(notReady), Expected: true, Count: 3},
		{Site: "site-a", Kind: errKind(notReady), Expected: false, Count: 1},
		{Site: "site-b", Kind: errKind(notReady), Expected: false, Count: 1},
		{Site: "site-b", Kind: "write: context canceled", Expected: false, Count: 1},
	}
	if !slices.Equal(e.Kinds, want) {
		t.Fatalf("kinds %+v, want %+v", e.Kinds, want)
	}
}

// TestResultJSON: what `metrolun drill --json` prints reads back as the
// same Result, and an automation finds the verdict and its reasons under
// fixed names.
func TestResultJSON(t *testing.T) {
	r := passing()
	r.Steps[1].Stall = &Stall{Gap: 14 * time.Millisecond, From: 1055 * time.Millisecond, To: 1069 * time.Millisecond}
	r.Verify.Differ = map[string][]int64{"site-b": {66060288}}
	r.judge()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, r) {
		t.Fatalf("JSON round trip changed the result:\n%s", b)
	}
	var top struct {
		Verdict string   `json:"verdict"`
		Reasons []string `json:"reasons"`
		Steps   []struct {
			Name  string `json:"name"`
			Stall *struct {
				Gap int64 `json:"gap_ns"`
			} `json:"stall"`
		} `json:"steps"`
	}
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	if top.Verdict != "fail" || !slices.Equal(top.Reasons, []string{"verify: 1 regions differ"}) {
		t.Fatalf("verdict %q, reasons %q", top.Verdict, top.Reasons)
	}
	if s := top.Steps[1]; s.Name != "promote site-b" || s.Stall == nil || s.Stall.Gap != 14e6 {
		t.Fatalf("step %+v: want promote site-b with its 14ms stall in ns", s)
	}
}
