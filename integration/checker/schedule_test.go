package checker

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var allKinds = []FaultKind{FaultKill9, FaultStop, FaultPartition, FaultRestart, FaultPromote, FaultLatency}

func TestScheduleDeterministic(t *testing.T) {
	cfg := ScheduleConfig{Seed: 42, Duration: time.Minute, Sites: []string{"site-a", "site-b"}, PartitionPeers: []string{"witness"}, Kinds: allKinds,
		MinGap: time.Second, MaxGap: 3 * time.Second, MinFault: time.Second, MaxFault: 4 * time.Second}
	a, err := NewSchedule(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewSchedule(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different schedules:\n%s\n%s", a, b)
	}
	if len(a.Steps) < 12 {
		t.Fatalf("only %d steps in a minute:\n%s", len(a.Steps), a)
	}
	cfg.Seed = 43
	c, _ := NewSchedule(cfg)
	if reflect.DeepEqual(a.Steps, c.Steps) {
		t.Fatal("different seeds, same schedule")
	}
	// Structure: in time order, within the duration, every fault closed
	// before the next one opens, all kinds from the list.
	seen := map[FaultKind]bool{}
	open := ""
	var last time.Duration
	for _, s := range a.Steps {
		if s.At < last || s.At >= cfg.Duration {
			t.Fatalf("step %v out of order or past the end:\n%s", s, a)
		}
		last = s.At
		seen[s.Kind] = true
		switch {
		case s.Kind == FaultKill9 || s.Kind == FaultStop || s.Kind == FaultPartition || (s.Kind == FaultLatency && s.Latency > 0):
			if open != "" {
				t.Fatalf("%v opens while %s is open:\n%s", s, open, a)
			}
			if s.Duration <= 0 {
				t.Fatalf("%v has no duration", s)
			}
			open = s.Label()
		case s.Kind == FaultCont || s.Kind == FaultHeal || (s.Kind == FaultLatency && s.Latency == 0):
			open = ""
		case s.Kind == FaultRestart:
			open = ""
		}
		if s.Kind == FaultPartition && (s.Target == s.Peer || s.Peer == "") {
			t.Fatalf("bad partition %v", s)
		}
	}
	if open != "" {
		t.Fatalf("%s still open at the end:\n%s", open, a)
	}
	for seed := range uint64(10) {
		cfg.Seed = seed
		o, err := NewSchedule(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range o.Steps {
			seen[s.Kind] = true
		}
	}
	for _, k := range []FaultKind{FaultKill9, FaultRestart, FaultStop, FaultCont, FaultPartition, FaultHeal, FaultPromote, FaultLatency} {
		if !seen[k] {
			t.Errorf("no %s step in ten minutes of all kinds", k)
		}
	}
	// Defaults give a few faults in any duration.
	d, err := NewSchedule(ScheduleConfig{Seed: 1, Duration: 10 * time.Second, Sites: []string{"a"}, Kinds: []FaultKind{FaultStop}})
	if err != nil || len(d.Steps) < 2 || d.Steps[len(d.Steps)-1].At >= 10*time.Second {
		t.Fatalf("default schedule: %v\n%s", err, d)
	}
	// Errors.
	for _, bad := range []ScheduleConfig{
		{Duration: 0, Kinds: allKinds, Sites: []string{"a"}},
		{Duration: time.Second, Kinds: []FaultKind{FaultPartition}, Sites: []string{"a"}},
		{Duration: time.Second, Kinds: []FaultKind{FaultKill9}},
		{Duration: time.Second, Kinds: []FaultKind{FaultHeal}, Sites: []string{"a"}},
		{Duration: time.Second, Kinds: []FaultKind{"flood"}, Sites: []string{"a"}},
	} {
		if _, err := NewSchedule(bad); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}

// recorder is a Faults that logs calls.
type recorder struct {
	mu    sync.Mutex
	calls []string
	fail  string
}

func (r *recorder) do(s string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
	if r.fail != "" && strings.HasPrefix(s, r.fail) {
		return errors.New("injected failure")
	}
	return nil
}
func (r *recorder) Kill(s string) error           { return r.do("kill " + s) }
func (r *recorder) Restart(s string) error        { return r.do("restart " + s) }
func (r *recorder) Stop(s string) error           { return r.do("stop " + s) }
func (r *recorder) Cont(s string) error           { return r.do("cont " + s) }
func (r *recorder) Partition(a, b string) error   { return r.do("partition " + a + " " + b) }
func (r *recorder) Heal() error                   { return r.do("heal") }
func (r *recorder) Promote(s string) error        { return r.do("promote " + s) }
func (r *recorder) Latency(d time.Duration) error { return r.do(fmt.Sprint("latency ", d)) }

func TestScheduleRun(t *testing.T) {
	s := Schedule{Steps: []Step{
		{At: 10 * time.Millisecond, Kind: FaultKill9, Target: "a", Duration: 20 * time.Millisecond},
		{At: 30 * time.Millisecond, Kind: FaultRestart, Target: "a"},
		{At: 40 * time.Millisecond, Kind: FaultPartition, Target: "a", Peer: "b", Duration: 10 * time.Millisecond},
		{At: 50 * time.Millisecond, Kind: FaultHeal},
		{At: 55 * time.Millisecond, Kind: FaultPromote, Target: "b"},
		{At: 60 * time.Millisecond, Kind: FaultLatency, Latency: 5 * time.Millisecond, Duration: 5 * time.Millisecond},
		{At: 65 * time.Millisecond, Kind: FaultLatency},
	}}
	r := &recorder{fail: "promote"}
	h := NewHistory()
	err := s.Run(context.Background(), r, h)
	if err == nil || !strings.Contains(err.Error(), "promote b") {
		t.Fatalf("Run error %v, want the promote failure", err)
	}
	want := "kill a|restart a|partition a b|heal|promote b|latency 5ms|latency 0s"
	if got := strings.Join(r.calls, "|"); got != want {
		t.Fatalf("calls %s, want %s", got, want)
	}
	ev := h.Faults()
	if len(ev) != 7 {
		t.Fatalf("%d fault events", len(ev))
	}
	for i, e := range ev {
		if e.At < s.Steps[i].At || e.Step != s.Steps[i] {
			t.Errorf("event %d: %+v for step %v", i, e, s.Steps[i])
		}
	}
	if ev[4].Err == "" || ev[3].Err != "" {
		t.Errorf("errors not recorded per step: %+v", ev)
	}

	// Cancelled while faults are open: they are closed.
	s = Schedule{Steps: []Step{
		{At: 0, Kind: FaultStop, Target: "a", Duration: time.Hour},
		{At: time.Hour, Kind: FaultCont, Target: "a"},
	}}
	r = &recorder{}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	h = NewHistory()
	if err := s.Run(ctx, r, h); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run: %v", err)
	}
	if got := strings.Join(r.calls, "|"); got != "stop a|cont a" {
		t.Fatalf("calls %s", got)
	}
	if len(h.Faults()) != 2 {
		t.Fatalf("events %+v", h.Faults())
	}
}

// storageRecorder is a recorder that also takes storage faults.
type storageRecorder struct{ recorder }

func (r *storageRecorder) StorageFault(site string, kind FaultKind, delay time.Duration) error {
	return r.do(fmt.Sprintf("%s %s %v", kind, site, delay))
}

func TestScheduleStorage(t *testing.T) {
	sites := []string{"site-a", "site-b"}
	cfg := ScheduleConfig{Seed: 7, Duration: time.Minute, Sites: sites, Kinds: StorageKinds,
		MinGap: time.Second, MaxGap: 3 * time.Second, MinFault: time.Second, MaxFault: 4 * time.Second, MaxStorageDelay: 30 * time.Millisecond}
	seen := map[FaultKind]bool{}
	for seed := range uint64(10) {
		cfg.Seed = seed
		s, err := NewSchedule(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// Each storage fault is closed at its site before the next opens.
		open := Step{}
		for _, st := range s.Steps {
			seen[st.Kind] = true
			switch {
			case st.Kind == FaultStorageClear:
				if open.Kind == "" || open.Target != st.Target || st.At != open.At+open.Duration {
					t.Fatalf("%v closes %v:\n%s", st, open, s)
				}
				open = Step{}
			case st.Kind.IsStorage():
				if open.Kind != "" || st.Duration <= 0 || !slices.Contains(sites, st.Target) {
					t.Fatalf("%v opens while %v is open, or without a duration or site:\n%s", st, open, s)
				}
				if st.Kind == FaultStorageSlow && (st.Latency < time.Millisecond || st.Latency > 30*time.Millisecond) {
					t.Fatalf("%v: delay out of bounds", st)
				}
				open = st
			default:
				t.Fatalf("%v in a storage-only schedule", st)
			}
		}
		if open.Kind != "" {
			t.Fatalf("%v open at the end:\n%s", open, s)
		}
	}
	for _, k := range append(StorageKinds, FaultStorageClear) {
		if !seen[k] {
			t.Errorf("no %s step in ten minutes of storage faults", k)
		}
	}

	// Require puts its kinds first, whatever Kinds say, and fails when
	// they do not fit.
	cfg = ScheduleConfig{Seed: 3, Duration: 20 * time.Second, Sites: sites, Kinds: []FaultKind{FaultStop},
		Require: []FaultKind{FaultStorageEIO, FaultFlushEIO}, MinGap: time.Second, MaxGap: 2 * time.Second, MinFault: time.Second, MaxFault: 2 * time.Second}
	s, err := NewSchedule(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Steps) < 4 || !slices.Contains(cfg.Require, s.Steps[0].Kind) || !slices.Contains(cfg.Require, s.Steps[2].Kind) || s.Steps[0].Kind == s.Steps[2].Kind {
		t.Fatalf("required kinds not first:\n%s", s)
	}
	cfg.Duration = 3 * time.Second
	if _, err := NewSchedule(cfg); err == nil {
		t.Fatal("two required faults of at least 2s each (gap and fault) fit in 3s")
	}
	if _, err := NewSchedule(ScheduleConfig{Duration: time.Second, Kinds: []FaultKind{FaultStorageClear}, Sites: sites}); err == nil {
		t.Fatal("a closing step accepted as a kind")
	}

	// Run: storage steps go to a StorageFaults; without one they fail;
	// a cancelled run clears the open storage fault.
	run := Schedule{Steps: []Step{
		{At: 0, Kind: FaultStorageSlow, Target: "site-a", Duration: 5 * time.Millisecond, Latency: 3 * time.Millisecond},
		{At: 5 * time.Millisecond, Kind: FaultStorageClear, Target: "site-a"},
		{At: 6 * time.Millisecond, Kind: FaultStorageFull, Target: "site-b", Duration: time.Hour},
		{At: time.Hour, Kind: FaultStorageClear, Target: "site-b"},
	}}
	r := &storageRecorder{}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := run.Run(ctx, r, NewHistory()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run: %v", err)
	}
	want := "storage-slow site-a 3ms|storage-clear site-a 0s|storage-full site-b 0s|storage-clear site-b 0s"
	if got := strings.Join(r.calls, "|"); got != want {
		t.Fatalf("calls %s, want %s", got, want)
	}
	if err := (Schedule{Steps: run.Steps[:1]}).Run(context.Background(), &recorder{}, nil); err == nil || !strings.Contains(err.Error(), "StorageFaults") {
		t.Fatalf("a storage step without a StorageFaults: %v", err)
	}
}

func TestPlotLatency(t *testing.T) {
	h := NewHistory()
	for i := range 200 {
		oc := OK
		switch i % 17 {
		case 3:
			oc = Failed
		case 5:
			oc = Indeterminate
		}
		h.Add(Op{Client: i % 4, Site: "site-a", Block: uint64(i % 8), Kind: Write, Value: val(i%4, uint64(i), uint64(i%8)),
			Call: ms(i * 10), Return: ms(i*10 + 1 + i%7), Outcome: oc})
		h.Add(Op{Client: i % 4, Kind: Read, Call: ms(i * 10), Return: ms(i*10 + 1), Outcome: OK})
	}
	faults := []Step{
		{Kind: FaultKill9, Target: "site-b", Duration: time.Second},
		{Kind: FaultRestart, Target: "site-b"},
		{Kind: FaultPartition, Target: "site-a", Peer: "witness<&>"},
		{Kind: FaultLatency, Latency: 50 * time.Millisecond},
	}
	for i, f := range faults {
		h.AddFault(FaultEvent{At: ms(300 + 400*i), Step: f})
	}
	path := filepath.Join(t.TempDir(), "lat.svg")
	if err := PlotLatency(h, path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(b))
	var texts []string
	circles, lines, root := 0, 0, ""
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
			}
			switch tok.Name.Local {
			case "circle":
				circles++
			case "line":
				for _, a := range tok.Attr {
					if a.Name.Local == "class" && a.Value == "fault" {
						lines++
					}
				}
			}
		case xml.CharData:
			texts = append(texts, string(tok))
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q", root)
	}
	all := strings.Join(texts, "\n")
	for _, f := range faults {
		if !strings.Contains(all, f.Label()) {
			t.Errorf("SVG lacks the fault label %q", f.Label())
		}
	}
	// 200 writes + 3 legend dots; reads are not plotted.
	if circles != 203 || lines != len(faults) {
		t.Errorf("%d circles, %d fault lines", circles, lines)
	}
	// An empty history still gives a valid plot.
	empty := filepath.Join(t.TempDir(), "empty.svg")
	if err := PlotLatency(NewHistory(), empty); err != nil {
		t.Fatal(err)
	}
	eb, _ := os.ReadFile(empty)
	if err := xml.Unmarshal(eb, new(struct{})); err != nil {
		t.Fatalf("empty plot: %v", err)
	}
}

// linkRecorder is a recorder that also cuts one direction and resets.
type linkRecorder struct{ recorder }

func (r *linkRecorder) PartitionOneWay(from, to string) error {
	return r.do("oneway " + from + " " + to)
}
func (r *linkRecorder) ResetLinks(s string) error { return r.do("reset " + s) }

func TestScheduleLinkFaults(t *testing.T) {
	cfg := ScheduleConfig{Seed: 5, Duration: 10 * time.Minute, Sites: []string{"site-a", "site-b"}, PartitionPeers: []string{"witness"},
		Kinds: []FaultKind{FaultPartitionOneWay, FaultReset}, MinGap: time.Second, MaxGap: 3 * time.Second, MinFault: time.Second, MaxFault: 4 * time.Second}
	s, err := NewSchedule(cfg)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := NewSchedule(cfg)
	if !reflect.DeepEqual(s, again) {
		t.Fatal("same seed, different schedules")
	}
	fromWitness, oneway, resets := false, 0, 0
	for i, st := range s.Steps {
		switch st.Kind {
		case FaultPartitionOneWay:
			oneway++
			if st.Target == st.Peer || st.Peer == "" || st.Duration <= 0 {
				t.Fatalf("bad one-way partition %v", st)
			}
			if st.Target == "witness" {
				fromWitness = true
			}
			if i+1 >= len(s.Steps) || s.Steps[i+1].Kind != FaultHeal {
				t.Fatalf("%v is not followed by a heal:\n%s", st, s)
			}
			if !strings.Contains(st.Label(), st.Target+"->"+st.Peer) {
				t.Fatalf("label %q", st.Label())
			}
		case FaultReset:
			resets++
			if st.Target == "" || st.Duration != 0 {
				t.Fatalf("bad reset %v", st)
			}
		}
	}
	if oneway < 5 || resets < 5 || !fromWitness {
		t.Fatalf("%d one-way partitions (one from the witness: %v), %d resets:\n%s", oneway, fromWitness, resets, s)
	}

	run := Schedule{Steps: []Step{
		{At: 0, Kind: FaultPartitionOneWay, Target: "a", Peer: "b", Duration: time.Millisecond},
		{At: time.Millisecond, Kind: FaultHeal},
		{At: 2 * time.Millisecond, Kind: FaultReset, Target: "a"},
	}}
	lr := &linkRecorder{}
	if err := run.Run(context.Background(), lr, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(lr.calls, "|"); got != "oneway a b|heal|reset a" {
		t.Fatalf("calls %s", got)
	}
	// A Faults without LinkFaults: the steps fail, the heal still runs.
	r := &recorder{}
	err = run.Run(context.Background(), r, nil)
	if err == nil || !strings.Contains(err.Error(), "needs a LinkFaults") {
		t.Fatalf("Run without LinkFaults: %v", err)
	}
	if got := strings.Join(r.calls, "|"); got != "heal" {
		t.Fatalf("calls %s", got)
	}
	// Cancelled during a one-way partition: healed.
	open := Schedule{Steps: []Step{
		{At: 0, Kind: FaultPartitionOneWay, Target: "a", Peer: "b", Duration: time.Hour},
		{At: time.Hour, Kind: FaultHeal},
	}}
	lr = &linkRecorder{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := open.Run(ctx, lr, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run: %v", err)
	}
	if got := strings.Join(lr.calls, "|"); got != "oneway a b|heal" {
		t.Fatalf("calls %s", got)
	}
}

// imageRecorder is a recorder that also replaces images.
type imageRecorder struct{ recorder }

func (r *imageRecorder) ReplaceImage(site string) error { return r.do("replace " + site) }

func TestScheduleReplaceImage(t *testing.T) {
	sites := []string{"site-a", "site-b"}
	cfg := ScheduleConfig{Seed: 11, Duration: time.Minute, Sites: sites, Kinds: []FaultKind{FaultReplaceImage, FaultStop},
		MinGap: time.Second, MaxGap: 3 * time.Second, MinFault: time.Second, MaxFault: 4 * time.Second}
	s, err := NewSchedule(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, st := range s.Steps {
		if st.Kind != FaultReplaceImage {
			continue
		}
		n++
		if st.Duration <= 0 || !slices.Contains(sites, st.Target) || i+1 >= len(s.Steps) ||
			s.Steps[i+1] != (Step{At: st.At + st.Duration, Kind: FaultRestart, Target: st.Target}) {
			t.Fatalf("%v is not closed by a restart of its site:\n%s", st, s)
		}
	}
	if n < 3 {
		t.Fatalf("%d replace-image steps in a minute:\n%s", n, s)
	}
	// Run: to an ImageFaults; without one the step fails; a cancelled
	// run restarts the site.
	run := Schedule{Steps: []Step{
		{At: 0, Kind: FaultReplaceImage, Target: "a", Duration: time.Hour},
		{At: time.Hour, Kind: FaultRestart, Target: "a"},
	}}
	r := &imageRecorder{}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := run.Run(ctx, r, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run: %v", err)
	}
	if got := strings.Join(r.calls, "|"); got != "replace a|restart a" {
		t.Fatalf("calls %s", got)
	}
	if err := (Schedule{Steps: run.Steps[:1]}).Run(context.Background(), &recorder{}, nil); err == nil || !strings.Contains(err.Error(), "ImageFaults") {
		t.Fatalf("a replace-image step without an ImageFaults: %v", err)
	}
}

// TestScheduleOverlap: with Overlap, some slow or unreadable disks have
// a kill -9, stop or partition nested in them at another site; nothing
// else overlaps.
func TestScheduleOverlap(t *testing.T) {
	sites := []string{"site-a", "site-b"}
	kinds := append([]FaultKind{FaultKill9, FaultStop, FaultPartition, FaultPartitionOneWay, FaultLatency}, StorageKinds...)
	cfg := ScheduleConfig{Duration: 2 * time.Minute, Sites: sites, PartitionPeers: []string{"witness"}, Kinds: kinds,
		Require: []FaultKind{FaultStorageReadEIO}, Overlap: true,
		MinGap: time.Second, MaxGap: 3 * time.Second, MinFault: time.Second, MaxFault: 4 * time.Second}
	pairs := map[FaultKind]int{}
	for seed := range uint64(20) {
		cfg.Seed = seed
		s, err := NewSchedule(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if again, _ := NewSchedule(cfg); !reflect.DeepEqual(s, again) {
			t.Fatal("same seed, different schedules")
		}
		var storage, other Step // open faults
		var last time.Duration
		for i, st := range s.Steps {
			if st.At < last {
				t.Fatalf("%v out of order:\n%s", st, s)
			}
			last = st.At
			switch {
			case st.Kind == FaultStorageClear:
				if storage.Kind == "" || other.Kind != "" || st.Target != storage.Target || st.At != storage.At+storage.Duration {
					t.Fatalf("%v closes %v with %v open:\n%s", st, storage, other, s)
				}
				storage = Step{}
			case st.Kind.IsStorage():
				if storage.Kind != "" || other.Kind != "" {
					t.Fatalf("%v opens with %v %v open:\n%s", st, storage, other, s)
				}
				storage = st
			case st.Kind == FaultRestart || st.Kind == FaultCont || st.Kind == FaultHeal || st.Kind == FaultLatency && st.Latency == 0:
				if other.Kind == "" || st.At != other.At+other.Duration {
					t.Fatalf("%v closes nothing open (%v):\n%s", st, other, s)
				}
				other = Step{}
			default:
				if other.Kind != "" || st.Duration <= 0 {
					t.Fatalf("%v opens with %v open:\n%s", st, other, s)
				}
				if storage.Kind != "" {
					// Nested, at another site, a disk that loses nothing,
					// not the required one (the first fault).
					if !slices.Contains(OverlapStorageKinds, storage.Kind) || st.Kind == FaultLatency || i < 3 ||
						st.At <= storage.At || st.At+st.Duration >= storage.At+storage.Duration {
						t.Fatalf("%v overlaps %v:\n%s", st, storage, s)
					}
					// A kill -9 or stop of another site; a partition with
					// another site at one end (either, for a one-way one).
					other := func(x string) bool { return x != storage.Target && slices.Contains(sites, x) }
					if !other(st.Target) && (st.Kind == FaultKill9 || st.Kind == FaultStop || !other(st.Peer)) {
						t.Fatalf("%v overlaps %v at its site:\n%s", st, storage, s)
					}
					pairs[st.Kind]++
				}
				other = st
			}
		}
		if storage.Kind != "" || other.Kind != "" {
			t.Fatalf("%v %v open at the end:\n%s", storage, other, s)
		}
	}
	for _, k := range overlapNetworkKinds {
		if pairs[k] == 0 {
			t.Errorf("no %s nested in a storage fault in 40 minutes (pairs: %v)", k, pairs)
		}
	}
	// Without Overlap, nothing overlaps (TestScheduleDeterministic,
	// TestScheduleStorage); with one site, neither.
	cfg.Overlap, cfg.Sites = true, sites[:1]
	s, err := NewSchedule(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(s.Steps); i++ {
		if prev := s.Steps[i-1].Kind; prev.IsStorage() && prev != FaultStorageClear && s.Steps[i].Kind != FaultStorageClear {
			t.Fatalf("%v opens inside %v with one site:\n%s", s.Steps[i], s.Steps[i-1], s)
		}
	}
}
