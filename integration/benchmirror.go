package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The mirroring benchmark (issue 13, `make bench-mirror`): what a
// synchronously mirrored LUN costs against a single site, at the writer
// and at a site that forwards its writes, in IOPS and in server CPU per
// operation. Each cluster runs in a network namespace of its own, so
// that its ports cannot meet another cluster's (or another engineer's),
// and the clients run in it through ip netns exec.

// MirrorCases are the rows: counts are sized so that one mirrored run
// takes one to three seconds on the 2-core development machine; scale
// multiplies them.
func MirrorCases(scale float64) []BenchCase {
	n := func(c int) int { return max(1, int(math.Round(float64(c)*scale))) }
	return []BenchCase{
		{Name: "4k write qd1", Tool: "qemu-img", Write: true, Size: 4096, Depth: 1, Count: n(8000)},
		{Name: "4k write qd32", Tool: "qemu-img", Write: true, Size: 4096, Depth: 32, Count: n(40000)},
		{Name: "1M write qd8", Tool: "qemu-img", Write: true, Size: 1 << 20, Depth: 8, Count: n(800)},
		{Name: "4k read qd1", Tool: "qemu-img", Size: 4096, Depth: 1, Count: n(8000)},
		{Name: "4k rand read qd32", Tool: "iscsi-perf", Size: 4096, Depth: 32, Seconds: max(1, n(3))},
	}
}

// MirrorSetup is one cluster: `metrolun demo` with Args, from Bin, in
// network namespace NS.
type MirrorSetup struct {
	Name string
	Bin  string
	Args []string
	NS   string
	Env  []string
	Demo *Demo
	// Writer is the data site that was the writer when the columns were
	// chosen.
	Writer string
}

// wrap is the command prefix that runs a program in the setup's
// namespace.
func (s *MirrorSetup) wrap() []string { return []string{"ip", "netns", "exec", s.NS} }

// PIDs are the setup's metrolun server processes (every member).
func (s *MirrorSetup) PIDs() []int {
	var p []int
	for _, m := range s.Demo.File.Members {
		p = append(p, m.PID)
	}
	return p
}

// MirrorColumn is one place a client runs against: a setup's site.
type MirrorColumn struct {
	Label string
	Setup *MirrorSetup
	URL   string
}

// MirrorCell is one column's runs of one row.
type MirrorCell struct {
	IOPS  []float64
	CPUus []float64 // server CPU per operation, µs
	Err   error
}

// MirrorTable is the benchmark's result.
type MirrorTable struct {
	Columns []MirrorColumn
	Cases   []BenchCase
	Reps    int
	Cells   [][]MirrorCell // [case][column]
	// Idle is each setup's CPU, in % of one core, while no client runs.
	Idle       map[string]float64
	IdleWindow time.Duration
	// Notes are what went wrong on the way that the figures do not show
	// (a writer that moved: its columns swapped roles).
	Notes []string
}

// writer asks the setup's cluster which data site is the writer
// (metrolun status --json), "" for a single site.
func (s *MirrorSetup) writer(ctx context.Context) (string, error) {
	if len(s.Demo.File.DataMembers()) < 2 {
		return "", nil
	}
	res, err := RunTool(ctx, 20*time.Second, nil, "ip", append(s.wrap()[1:], s.Bin, "status", "--dir", s.Demo.Dir, "--json")...)
	if err != nil {
		return "", err
	}
	var reps []struct {
		Name   string
		Status *struct {
			Site *struct{ Role string }
		}
	}
	if err := json.Unmarshal([]byte(res.Stdout), &reps); err != nil {
		return "", err
	}
	for _, r := range reps {
		if r.Status != nil && r.Status.Site != nil && r.Status.Site.Role == "writer" {
			return r.Name, nil
		}
	}
	return "", errors.New("no writer")
}

// NetNS creates network namespace name with its loopback up, and returns
// a function that deletes it.
func NetNS(ctx context.Context, name string) (func(), error) {
	exec := func(args ...string) error {
		_, err := RunTool(ctx, 10*time.Second, nil, "ip", args...)
		return err
	}
	exec("netns", "del", name) // left by an interrupted run
	if err := exec("netns", "add", name); err != nil {
		return nil, err
	}
	// Not under ctx, which may be over by the time the caller cleans up.
	del := func() { RunTool(context.Background(), 10*time.Second, nil, "ip", "netns", "del", name) }
	if err := exec("netns", "exec", name, "ip", "link", "set", "lo", "up"); err != nil {
		del()
		return nil, err
	}
	return del, nil
}

// ProcCPU returns the CPU time (user + system) the processes have used,
// from /proc/PID/stat (utime and stime, in clock ticks of 10 ms).
func ProcCPU(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, err
		}
		s := string(b)
		// The command name, in parentheses, may hold spaces.
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 {
			return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
		}
		// f[0] is field 3 (state); utime and stime are fields 14 and 15.
		ut, err1 := strconv.ParseInt(f[11], 10, 64)
		st, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("/proc/%d/stat: bad utime or stime", pid)
		}
		total += time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
	}
	return total, nil
}

// readCapacityIn is ReadCapacity with the client run through wrap.
func readCapacityIn(ctx context.Context, wrap []string, url string) (Capacity, error) {
	path, err := Tool("iscsi-readcapacity16")
	if err != nil {
		return Capacity{}, err
	}
	res, err := RunTool(ctx, clientTimeout, nil, wrap[0], append(slices.Clone(wrap[1:]), path, url)...)
	if err != nil {
		return Capacity{}, err
	}
	return parseReadCapacity(res.Stdout)
}

// RunMirrorBench runs every case reps times on every column, the
// columns interleaved within each repetition so that the machine's load
// drifts over all of them alike, and measures each setup's idle CPU over
// idle at the end.
func RunMirrorBench(ctx context.Context, cols []MirrorColumn, cases []BenchCase, reps int, idle time.Duration, logf func(string, ...any)) (*MirrorTable, error) {
	t := &MirrorTable{Columns: cols, Cases: cases, Reps: reps, Idle: map[string]float64{}, IdleWindow: idle}
	blockSizes := make([]int, len(cols))
	for i, c := range cols {
		rc, err := readCapacityIn(ctx, c.Setup.wrap(), c.URL)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.Label, err)
		}
		blockSizes[i] = rc.BlockSize
	}
	var errs []error
	for _, c := range cases {
		row := make([]MirrorCell, len(cols))
		for rep := 0; rep < reps; rep++ {
			for i, col := range cols {
				if row[i].Err != nil {
					continue
				}
				if err := col.Setup.Demo.Alive(); err != nil {
					row[i].Err = err
					errs = append(errs, fmt.Errorf("%s on %s: %w", c.Name, col.Label, err))
					continue
				}
				// No run pays for the writeback of the one before.
				syscall.Sync()
				pids := col.Setup.PIDs()
				cpu0, err := ProcCPU(pids)
				var s BenchSample
				if err == nil {
					s, err = RunBenchCaseIn(ctx, col.Setup.wrap(), col.URL, c, blockSizes[i])
				}
				var cpu1 time.Duration
				if err == nil {
					cpu1, err = ProcCPU(pids)
				}
				if err != nil {
					row[i].Err = err
					errs = append(errs, fmt.Errorf("%s on %s: %w", c.Name, col.Label, err))
					logf("%-18s %-22s run %d: %v", c.Name, col.Label, rep+1, err)
					continue
				}
				ops := float64(c.Count)
				if c.Tool == "iscsi-perf" {
					ops = s.IOPS * float64(c.Seconds)
				}
				us := float64((cpu1 - cpu0).Microseconds()) / ops
				row[i].IOPS = append(row[i].IOPS, s.IOPS)
				row[i].CPUus = append(row[i].CPUus, us)
				logf("%-18s %-22s run %d: %9.0f IOPS %7.1f µs CPU/op", c.Name, col.Label, rep+1, s.IOPS, us)
			}
		}
		t.Cells = append(t.Cells, row)
		// A writer that moved (a lease that lapsed on a loaded machine)
		// swaps what its columns measure: say so.
		seen := map[*MirrorSetup]bool{}
		for _, col := range cols {
			s := col.Setup
			if seen[s] || len(s.Demo.File.DataMembers()) < 2 {
				continue
			}
			seen[s] = true
			w, err := s.writer(ctx)
			if want := s.Writer; err != nil || w != want {
				n := fmt.Sprintf("after %q, %s's writer is %q (%v), not %q", c.Name, s.Name, w, err, want)
				t.Notes = append(t.Notes, n)
				logf("%s", n)
				if err == nil {
					s.Writer = w
				}
			}
		}
	}
	if idle > 0 {
		seen := map[*MirrorSetup]bool{}
		var setups []*MirrorSetup
		for _, c := range cols {
			if !seen[c.Setup] {
				seen[c.Setup] = true
				setups = append(setups, c.Setup)
			}
		}
		// Every setup at once: the same window for all.
		cpu0 := make([]time.Duration, len(setups))
		for i, s := range setups {
			cpu0[i], _ = ProcCPU(s.PIDs())
		}
		start := time.Now()
		select {
		case <-ctx.Done():
			return t, ctx.Err()
		case <-time.After(idle):
		}
		el := time.Since(start)
		for i, s := range setups {
			c1, err := ProcCPU(s.PIDs())
			if err != nil {
				errs = append(errs, fmt.Errorf("idle CPU of %s: %w", s.Name, err))
				continue
			}
			t.Idle[s.Name] = 100 * float64(c1-cpu0[i]) / float64(el)
			logf("idle %-10s %.2f%% of a core over %v", s.Name, t.Idle[s.Name], el.Truncate(time.Millisecond))
		}
	}
	return t, errors.Join(errs...)
}

func (c MirrorCell) median() (iops, cpu float64) {
	if len(c.IOPS) == 0 {
		return 0, 0
	}
	return median(append([]float64(nil), c.IOPS...)), median(append([]float64(nil), c.CPUus...))
}

// WriteMarkdown writes the IOPS table (with each column's ratio to the
// first), the CPU table (µs of server CPU per operation, with the same
// ratios) and the idle CPU of each setup.
func (t *MirrorTable) WriteMarkdown(w io.Writer) error {
	bw := bufio.NewWriter(w)
	head := func(unit string) {
		fmt.Fprintf(bw, "| case |")
		for _, c := range t.Columns {
			fmt.Fprintf(bw, " %s %s |", c.Label, unit)
		}
		for _, c := range t.Columns[1:] {
			fmt.Fprintf(bw, " %s / %s |", c.Label, t.Columns[0].Label)
		}
		fmt.Fprintf(bw, "\n| --- |%s\n", strings.Repeat(" ---: |", 2*len(t.Columns)-1))
	}
	table := func(unit string, pick func(MirrorCell) float64, prec int) {
		head(unit)
		for ri, c := range t.Cases {
			fmt.Fprintf(bw, "| %s |", c.Name)
			row := t.Cells[ri]
			for _, cell := range row {
				if cell.Err != nil || len(cell.IOPS) == 0 {
					fmt.Fprintf(bw, " error |")
					continue
				}
				fmt.Fprintf(bw, " %s |", strconv.FormatFloat(pick(cell), 'f', prec, 64))
			}
			base := pick(row[0])
			for _, cell := range row[1:] {
				if cell.Err != nil || len(cell.IOPS) == 0 || row[0].Err != nil || base == 0 {
					fmt.Fprintf(bw, " - |")
					continue
				}
				fmt.Fprintf(bw, " %.2f |", pick(cell)/base)
			}
			fmt.Fprintln(bw)
		}
		fmt.Fprintln(bw)
	}
	table("IOPS", func(c MirrorCell) float64 { i, _ := c.median(); return i }, 0)
	table("µs CPU/op", func(c MirrorCell) float64 { _, u := c.median(); return u }, 1)
	if len(t.Idle) > 0 {
		fmt.Fprintf(bw, "Idle CPU over %v (every member process, %% of one core):", t.IdleWindow)
		seen := map[string]bool{}
		for _, c := range t.Columns {
			if n := c.Setup.Name; !seen[n] {
				seen[n] = true
				fmt.Fprintf(bw, " %s %.2f%%;", n, t.Idle[n])
			}
		}
		fmt.Fprintln(bw)
		fmt.Fprintln(bw)
	}
	for _, n := range t.Notes {
		fmt.Fprintf(bw, "Note: %s.\n", n)
	}
	fmt.Fprintf(bw, "Median of %d runs per cell, columns interleaved in every repetition; CPU is utime+stime of every member process of the column's cluster (/proc/PID/stat) over the run, per operation.\n", t.Reps)
	return bw.Flush()
}

// WriteErrors lists the cells that failed.
func (t *MirrorTable) WriteErrors(w io.Writer) {
	for ri, c := range t.Cases {
		for ci, cell := range t.Cells[ri] {
			if cell.Err != nil {
				fmt.Fprintf(w, "error: %s on %s: %v\n", c.Name, t.Columns[ci].Label, cell.Err)
			}
		}
	}
}
