package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// BenchCase is one row of the comparison table.
type BenchCase struct {
	Name string
	// Tool is "qemu-img" (qemu-img bench, sequential) or "iscsi-perf"
	// (libiscsi's random-read load generator).
	Tool  string
	Write bool
	// Size is the bytes per request.
	Size int
	// Depth is the queue depth (requests in flight).
	Depth int
	// Count is the number of requests of one qemu-img bench run.
	Count int
	// Seconds is the length of one iscsi-perf run.
	Seconds int
}

// DefaultBenchCases are the rows of the table. Counts are sized so that
// one run takes 1-3 s against tgtd 1.0.85 on a 2-core machine; scale
// multiplies them. Each write row comes before the read row of the same
// shape, so reads find written blocks, and no row needs a prefilled LUN.
func DefaultBenchCases(scale float64) []BenchCase {
	n := func(c int) int { return max(1, int(math.Round(float64(c)*scale))) }
	return []BenchCase{
		{Name: "4k seq write qd1", Tool: "qemu-img", Write: true, Size: 4096, Depth: 1, Count: n(16000)},
		{Name: "4k seq read qd1", Tool: "qemu-img", Size: 4096, Depth: 1, Count: n(16000)},
		{Name: "4k seq write qd32", Tool: "qemu-img", Write: true, Size: 4096, Depth: 32, Count: n(80000)},
		{Name: "4k seq read qd32", Tool: "qemu-img", Size: 4096, Depth: 32, Count: n(80000)},
		{Name: "1M seq write qd8", Tool: "qemu-img", Write: true, Size: 1 << 20, Depth: 8, Count: n(1500)},
		{Name: "1M seq read qd8", Tool: "qemu-img", Size: 1 << 20, Depth: 8, Count: n(2000)},
		{Name: "4k rand read qd32 (iscsi-perf)", Tool: "iscsi-perf", Size: 4096, Depth: 32, Seconds: max(1, n(3))},
	}
}

// BenchSample is one run's throughput. MBps is 10^6 bytes per second.
type BenchSample struct {
	IOPS, MBps float64
}

// BenchTarget is one side of the comparison.
type BenchTarget struct {
	Name string
	URL  string
}

var (
	qemuDoneRE  = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)
	perfIOPSRE  = regexp.MustCompile(`iops average ([0-9]+) \(`)
	perfInitIQN = "iqn.2026-11.io.metrolun:perf"
)

// RunBenchCase runs one case once against url. blockSize is the LUN's
// logical block size (iscsi-perf counts in blocks).
func RunBenchCase(ctx context.Context, url string, c BenchCase, blockSize int) (BenchSample, error) {
	return RunBenchCaseIn(ctx, nil, url, c, blockSize)
}

// RunBenchCaseIn is RunBenchCase with the client run through wrap (e.g.
// ip netns exec NS), or directly when wrap is empty.
func RunBenchCaseIn(ctx context.Context, wrap []string, url string, c BenchCase, blockSize int) (BenchSample, error) {
	run := func(timeout time.Duration, name string, args ...string) (ToolResult, error) {
		if len(wrap) == 0 {
			return RunTool(ctx, timeout, nil, name, args...)
		}
		path, err := Tool(name)
		if err != nil {
			return ToolResult{}, err
		}
		return RunTool(ctx, timeout, nil, wrap[0], append(append(slices.Clone(wrap[1:]), path), args...)...)
	}
	switch c.Tool {
	case "qemu-img":
		// -f raw: no format probing (qemu refuses writes to block 0 of a
		// probed raw image). -t none -n: no host cache, native AIO; the
		// iscsi driver accepts both and, with cache=none, sends no FUA.
		args := []string{"bench", "-f", "raw", "-t", "none", "-n"}
		if c.Write {
			args = append(args, "-w")
		}
		args = append(args, "-s", strconv.Itoa(c.Size), "-d", strconv.Itoa(c.Depth), "-c", strconv.Itoa(c.Count), url)
		res, err := run(3*time.Minute, "qemu-img", args...)
		if err != nil {
			return BenchSample{}, err
		}
		return parseQemuBench(res.Stdout, c)
	case "iscsi-perf":
		if blockSize <= 0 || c.Size%blockSize != 0 {
			return BenchSample{}, fmt.Errorf("%s: request size %d is not a multiple of the block size %d", c.Name, c.Size, blockSize)
		}
		args := []string{"-r", "-m", strconv.Itoa(c.Depth), "-b", strconv.Itoa(c.Size / blockSize),
			"-t", strconv.Itoa(c.Seconds), "-i", perfInitIQN, url}
		res, err := run(time.Duration(c.Seconds)*time.Second+30*time.Second, "iscsi-perf", args...)
		if err != nil {
			return BenchSample{}, err
		}
		return parseISCSIPerf(res.Stdout, c)
	}
	return BenchSample{}, fmt.Errorf("%s: unknown tool %q", c.Name, c.Tool)
}

// parseQemuBench reads "Run completed in 2.514 seconds." from qemu-img
// bench.
func parseQemuBench(out string, c BenchCase) (BenchSample, error) {
	m := qemuDoneRE.FindStringSubmatch(out)
	if m == nil {
		return BenchSample{}, fmt.Errorf("qemu-img bench: no \"Run completed\" line in %q", lastLines(out, 3))
	}
	secs, err := strconv.ParseFloat(m[1], 64)
	if err != nil || secs <= 0 {
		return BenchSample{}, fmt.Errorf("qemu-img bench: bad run time %q", m[1])
	}
	iops := float64(c.Count) / secs
	return BenchSample{IOPS: iops, MBps: iops * float64(c.Size) / 1e6}, nil
}

// parseISCSIPerf reads the last "iops average N (M MB/s)" that iscsi-perf
// prints (its progress lines end in \r; the final one is the whole run's
// average) and checks that it finished rather than aborted.
func parseISCSIPerf(out string, c BenchCase) (BenchSample, error) {
	if strings.Contains(out, "ABORTED") {
		return BenchSample{}, fmt.Errorf("iscsi-perf aborted: %q", lastLines(strings.ReplaceAll(out, "\r", "\n"), 3))
	}
	all := perfIOPSRE.FindAllStringSubmatch(out, -1)
	if all == nil {
		return BenchSample{}, fmt.Errorf("iscsi-perf: no \"iops average\" in %q", lastLines(strings.ReplaceAll(out, "\r", "\n"), 3))
	}
	iops, _ := strconv.ParseFloat(all[len(all)-1][1], 64)
	return BenchSample{IOPS: iops, MBps: iops * float64(c.Size) / 1e6}, nil
}

// BenchCell is one target's result for one case: the median of its runs.
type BenchCell struct {
	Median  BenchSample
	Samples []BenchSample
	Err     error
}

// BenchRow is one case across the targets.
type BenchRow struct {
	Case  BenchCase
	Cells []BenchCell
}

// BenchTable is a whole comparison.
type BenchTable struct {
	Targets []BenchTarget
	Reps    int
	Rows    []BenchRow
}

// RunBench runs every case reps times against every target, interleaved
// (A, B, A, B, ...) so that drift in the machine's load hits both sides
// alike, and keeps the median per target. A failed run marks its cell and
// the table goes on; the returned error joins the failures.
func RunBench(ctx context.Context, targets []BenchTarget, cases []BenchCase, reps int, logf func(string, ...any)) (*BenchTable, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	blockSizes := make([]int, len(targets))
	for i, tg := range targets {
		rc, err := ReadCapacity(ctx, tg.URL)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tg.Name, err)
		}
		blockSizes[i] = rc.BlockSize
	}
	table := &BenchTable{Targets: targets, Reps: reps}
	var errs []error
	for _, c := range cases {
		row := BenchRow{Case: c, Cells: make([]BenchCell, len(targets))}
		for rep := 0; rep < reps; rep++ {
			for i, tg := range targets {
				if row.Cells[i].Err != nil {
					continue
				}
				// Flush the page cache's dirty data, so that no run pays
				// for the writeback of the run before it.
				syscall.Sync()
				s, err := RunBenchCase(ctx, tg.URL, c, blockSizes[i])
				if err != nil {
					row.Cells[i].Err = err
					errs = append(errs, fmt.Errorf("%s on %s: %w", c.Name, tg.Name, err))
					logf("%-32s %-10s run %d: %v", c.Name, tg.Name, rep+1, err)
					continue
				}
				row.Cells[i].Samples = append(row.Cells[i].Samples, s)
				logf("%-32s %-10s run %d: %10.0f IOPS %8.1f MB/s", c.Name, tg.Name, rep+1, s.IOPS, s.MBps)
			}
		}
		for i := range row.Cells {
			row.Cells[i].Median = medianSample(row.Cells[i].Samples)
		}
		table.Rows = append(table.Rows, row)
	}
	return table, errors.Join(errs...)
}

func medianSample(s []BenchSample) BenchSample {
	if len(s) == 0 {
		return BenchSample{}
	}
	iops := make([]float64, len(s))
	mbps := make([]float64, len(s))
	for i, x := range s {
		iops[i], mbps[i] = x.IOPS, x.MBps
	}
	return BenchSample{IOPS: median(iops), MBps: median(mbps)}
}

func median(v []float64) float64 {
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func (t *BenchTable) header() []string {
	h := []string{"case"}
	for _, tg := range t.Targets {
		h = append(h, tg.Name+" IOPS", tg.Name+" MB/s")
	}
	if len(t.Targets) == 2 {
		h = append(h, t.Targets[0].Name+"/"+t.Targets[1].Name)
	}
	return h
}

func (t *BenchTable) cells(r BenchRow) []string {
	out := []string{r.Case.Name}
	for _, c := range r.Cells {
		if c.Err != nil {
			out = append(out, "error", "error")
			continue
		}
		out = append(out, strconv.FormatFloat(c.Median.IOPS, 'f', 0, 64), strconv.FormatFloat(c.Median.MBps, 'f', 1, 64))
	}
	if len(r.Cells) == 2 {
		a, b := r.Cells[0], r.Cells[1]
		if a.Err != nil || b.Err != nil || b.Median.IOPS == 0 {
			out = append(out, "-")
		} else {
			out = append(out, strconv.FormatFloat(a.Median.IOPS/b.Median.IOPS, 'f', 2, 64))
		}
	}
	return out
}

// Caption says how the table was measured.
func (t *BenchTable) Caption() string {
	names := make([]string, len(t.Targets))
	for i, tg := range t.Targets {
		names[i] = tg.Name
	}
	return fmt.Sprintf("median of %d runs each, interleaved %s; MB/s is 10^6 bytes/s; ratio is IOPS of the first over the second",
		t.Reps, strings.Join(names, "/"))
}

// WriteText writes an aligned plain-text table.
func (t *BenchTable) WriteText(w io.Writer) error {
	rows := [][]string{t.header()}
	for _, r := range t.Rows {
		rows = append(rows, t.cells(r))
	}
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "bench: %s\n", t.Caption())
	for _, r := range rows {
		for i, c := range r {
			if i == 0 {
				fmt.Fprintf(bw, "%-*s", width[i], c)
			} else {
				fmt.Fprintf(bw, "  %*s", width[i], c)
			}
		}
		fmt.Fprintln(bw)
	}
	for _, r := range t.Rows {
		for i, c := range r.Cells {
			if c.Err != nil {
				fmt.Fprintf(bw, "error: %s on %s: %v\n", r.Case.Name, t.Targets[i].Name, c.Err)
			}
		}
	}
	return bw.Flush()
}

// WriteMarkdown writes the table as GitHub markdown.
func (t *BenchTable) WriteMarkdown(w io.Writer) error {
	bw := bufio.NewWriter(w)
	h := t.header()
	fmt.Fprintf(bw, "| %s |\n| --- |%s\n", strings.Join(h, " | "), strings.Repeat(" ---: |", len(h)-1))
	for _, r := range t.Rows {
		fmt.Fprintf(bw, "| %s |\n", strings.Join(t.cells(r), " | "))
	}
	fmt.Fprintf(bw, "\n%s.\n", t.Caption())
	return bw.Flush()
}
