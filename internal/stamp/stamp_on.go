//go:build stamp

package stamp

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

const On = true

type mark struct {
	stage string
	at    time.Duration
}

type timeline struct {
	open  bool
	begin time.Time
	marks []mark
	// per window: stage -> durations since begin; order of first sight
	acc   map[string][]time.Duration
	order []string
	n     int
	// dropped: records begun again before they ended (this window)
	dropped int
	ended   time.Time
	gaps    []time.Duration
	tagged  map[string][]time.Duration
	ru      syscall.Rusage
	wstart  time.Time
}

var (
	gapTag string
	counts = map[string]int{}
	mu     sync.Mutex
	tls    [nKinds]timeline
	out    string
)

func init() {
	if d := os.Getenv("METROLUN_STAMPS"); d != "" {
		out = filepath.Join(d, fmt.Sprintf("stamps-%d.txt", os.Getpid()))
	}
}

func Begin(k Kind) {
	now := time.Now()
	mu.Lock()
	t := &tls[k]
	defer func() { gapTag = "" }()
	if t.open {
		t.dropped++
	} else if !t.ended.IsZero() {
		// From the last record's end to this one's begin: at queue
		// depth 1, the answer's way to the client and the next
		// request's way back (a record's stages count from its begin).
		t.gaps = append(t.gaps, now.Sub(t.ended))
		if gapTag != "" {
			if t.tagged == nil {
				t.tagged = map[string][]time.Duration{}
			}
			t.tagged[gapTag] = append(t.tagged[gapTag], now.Sub(t.ended))
		}
	}
	t.open, t.begin, t.marks = true, now, t.marks[:0]
	mu.Unlock()
}

func Mark(k Kind, stage string) {
	now := time.Now()
	mu.Lock()
	markLocked(&tls[k], stage, now)
	mu.Unlock()
}

func markLocked(t *timeline, stage string, now time.Time) {
	if !t.open {
		return
	}
	t.marks = append(t.marks, mark{stage, now.Sub(t.begin)})
}

func MarkAll(stage string) {
	now := time.Now()
	mu.Lock()
	for i := range tls {
		markLocked(&tls[i], stage, now)
	}
	mu.Unlock()
}

func Count(name string) {
	mu.Lock()
	counts[name]++
	gapTag = name
	mu.Unlock()
}

func End(k Kind) {
	now := time.Now()
	mu.Lock()
	defer mu.Unlock()
	t := &tls[k]
	if !t.open {
		return
	}
	t.open, t.ended = false, now
	t.marks = append(t.marks, mark{"end", now.Sub(t.begin)})
	if t.acc == nil {
		t.acc = map[string][]time.Duration{}
		t.wstart = now
		syscall.Getrusage(syscall.RUSAGE_SELF, &t.ru)
	}
	seen := map[string]bool{}
	for _, m := range t.marks {
		if seen[m.stage] {
			continue // the first stamp of a stage counts
		}
		seen[m.stage] = true
		if _, ok := t.acc[m.stage]; !ok {
			t.order = append(t.order, m.stage)
		}
		t.acc[m.stage] = append(t.acc[m.stage], m.at)
	}
	t.n++
	if t.n < Window {
		return
	}
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	report(k, t, &ru, now)
	t.acc, t.order, t.n, t.dropped, t.gaps, t.tagged = nil, nil, 0, 0, t.gaps[:0], nil
}

func report(k Kind, t *timeline, ru *syscall.Rusage, now time.Time) {
	if out == "" {
		return
	}
	n := float64(t.n)
	cpu := time.Duration(ru.Utime.Nano()+ru.Stime.Nano()-t.ru.Utime.Nano()-t.ru.Stime.Nano()) / time.Duration(t.n)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d ops in %v (%.1f µs/op); per op: voluntary switches %.2f, involuntary %.2f, CPU %v; %d records begun again before their end\n",
		now.Format(time.RFC3339), kindNames[k], t.n, now.Sub(t.wstart).Round(time.Millisecond),
		float64(now.Sub(t.wstart).Microseconds())/n,
		float64(ru.Nvcsw-t.ru.Nvcsw)/n, float64(ru.Nivcsw-t.ru.Nivcsw)/n, cpu, t.dropped)
	type row struct {
		stage    string
		med, p90 time.Duration
		frac     float64
	}
	var rows []row
	for _, s := range t.order {
		d := t.acc[s]
		slices.Sort(d)
		rows = append(rows, row{s, d[len(d)/2], d[len(d)*9/10], float64(len(d)) / n})
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].med < rows[j].med })
	for _, r := range rows {
		fmt.Fprintf(&b, "  %-22s median %7.1f µs  p90 %7.1f µs  (in %3.0f%% of ops)\n", r.stage,
			float64(r.med.Nanoseconds())/1e3, float64(r.p90.Nanoseconds())/1e3, 100*r.frac)
	}
	names := make([]string, 0, len(counts))
	for s := range counts {
		names = append(names, s)
	}
	sort.Strings(names)
	for _, s := range names {
		fmt.Fprintf(&b, "  count %-16s %.2f per op\n", s, float64(counts[s])/n)
	}
	clear(counts)
	if d := t.gaps; len(d) > 0 {
		slices.Sort(d)
		fmt.Fprintf(&b, "  %-22s median %7.1f µs  p90 %7.1f µs  (from the previous end)\n", "gap",
			float64(d[len(d)/2].Nanoseconds())/1e3, float64(d[len(d)*9/10].Nanoseconds())/1e3)
	}
	for _, s := range slices.Sorted(maps.Keys(t.tagged)) {
		d := t.tagged[s]
		slices.Sort(d)
		fmt.Fprintf(&b, "  %-22s median %7.1f µs  p90 %7.1f µs  (%d gaps after %q)\n", "gap "+s,
			float64(d[len(d)/2].Nanoseconds())/1e3, float64(d[len(d)*9/10].Nanoseconds())/1e3, len(d), s)
	}
	f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	f.WriteString(b.String())
	f.Close()
}
