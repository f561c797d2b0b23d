package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchTable compares metrolun with Debian's tgtd, both serving a
// 1 GiB sparse LUN on loopback, through real clients (qemu-img bench and
// iscsi-perf over iscsi://). Gated by METROLUN_BENCH=1: it takes minutes
// and measures, it does not check.
//
// Environment: METROLUN_BENCH_REPS (runs per cell, default 5),
// METROLUN_BENCH_SCALE (multiplies request counts and run time, default
// 1), METROLUN_BENCH_CASES (regexp on the row names),
// METROLUN_BENCH_TGTD_ONLY=1 (a second tgtd stands in for metrolun, to
// check the harness and the noise), METROLUN_BENCH_URL (an already running
// target instead of the demo), BENCH_REPORT (write the table as markdown).
func TestBenchTable(t *testing.T) {
	if os.Getenv("METROLUN_BENCH") != "1" {
		t.Skip("set METROLUN_BENCH=1 to run the metrolun/tgtd benchmark")
	}
	requireTool(t, "qemu-img", "iscsi-perf", "iscsi-readcapacity16", "tgtd", "tgtadm")
	reps := 5
	if s := os.Getenv("METROLUN_BENCH_REPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("METROLUN_BENCH_REPS=%q: want a positive integer", s)
		}
		reps = n
	}
	scale := 1.0
	if s := os.Getenv("METROLUN_BENCH_SCALE"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f <= 0 {
			t.Fatalf("METROLUN_BENCH_SCALE=%q: want a positive number", s)
		}
		scale = f
	}
	cases := DefaultBenchCases(scale)
	if s := os.Getenv("METROLUN_BENCH_CASES"); s != "" {
		re, err := regexp.Compile(s)
		if err != nil {
			t.Fatalf("METROLUN_BENCH_CASES: %v", err)
		}
		var picked []BenchCase
		for _, c := range cases {
			if re.MatchString(c.Name) {
				picked = append(picked, c)
			}
		}
		if len(picked) == 0 {
			t.Fatalf("METROLUN_BENCH_CASES=%q matches no row", s)
		}
		cases = picked
	}

	const size = 1 << 30
	var subject BenchTarget
	switch {
	case os.Getenv("METROLUN_BENCH_URL") != "":
		subject = BenchTarget{Name: "target", URL: os.Getenv("METROLUN_BENCH_URL")}
	case os.Getenv("METROLUN_BENCH_TGTD_ONLY") == "1":
		subject = BenchTarget{Name: "tgtd-a", URL: StartTgtdT(t, TgtdOptions{Size: size, IQN: "iqn.2026-11.io.metrolun:tgtd-a"}).URL}
	default:
		d := StartDemoT(t, DemoOptions{Bin: metrolunBin(t), Size: "1GiB"})
		subject = BenchTarget{Name: "metrolun", URL: d.File.DataMembers()[0].ISCSI}
	}
	ref := BenchTarget{Name: "tgtd", URL: StartTgtdT(t, TgtdOptions{Size: size}).URL}

	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	table, err := RunBench(ctx, []BenchTarget{subject, ref}, cases, reps, t.Logf)
	if table == nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	table.WriteText(&text)
	t.Log("\n" + text.String())
	if path := os.Getenv("BENCH_REPORT"); path != "" {
		var md bytes.Buffer
		table.WriteMarkdown(&md)
		if err := os.WriteFile(path, md.Bytes(), 0o644); err != nil {
			t.Error(err)
		} else {
			t.Logf("markdown table: %s", path)
		}
	}
	if err != nil {
		t.Errorf("some runs failed: %v", err)
	}
}

func TestParseBenchOutput(t *testing.T) {
	c := BenchCase{Name: "x", Tool: "qemu-img", Size: 4096, Count: 20000}
	s, err := parseQemuBench("Sending 20000 read requests, 4096 bytes each, 1 in parallel (starting at offset 0, step size 4096)\nRun completed in 2.500 seconds.\n", c)
	if err != nil || s.IOPS != 8000 || s.MBps != 32.768 {
		t.Errorf("qemu-img: %+v %v", s, err)
	}
	if _, err := parseQemuBench("qemu-img: Could not open 'iscsi://...'", c); err == nil {
		t.Error("qemu-img: accepted output without a run time")
	}

	perf := "iscsi-perf version 0.1\n\nconnected to iscsi://127.0.0.1:3260/iqn.x/1\ncapacity is 2097152 blocks or 1073741824 byte (1024 MB)\n" +
		"performing RANDOM READ with 32 parallel requests\nFIXED transfer size of 8 blocks (4096 byte)\nwill run for 3 seconds.\n\n" +
		"\r00:00:02 - lba 118733, iops current 28372 (110 MB/s), iops average 28372 (110 MB/s), in_flight 32, busy 0        " +
		"\r00:00:01 - lba 1586630, iops current 27856 (108 MB/s), iops average 28114 (109 MB/s), in_flight 32, busy 0        " +
		"\riops average 28566 (111 MB/s)                                                        \n\nfinished.\n"
	s, err = parseISCSIPerf(perf, BenchCase{Size: 4096})
	if err != nil || s.IOPS != 28566 {
		t.Errorf("iscsi-perf: %+v %v", s, err)
	}
	if _, err := parseISCSIPerf(strings.Replace(perf, "finished.", "ABORTED!", 1), BenchCase{Size: 4096}); err == nil {
		t.Error("iscsi-perf: accepted an aborted run")
	}
}

func TestBenchTableFormat(t *testing.T) {
	table := &BenchTable{
		Targets: []BenchTarget{{Name: "metrolun"}, {Name: "tgtd"}},
		Reps:    3,
		Rows: []BenchRow{{
			Case: BenchCase{Name: "4k seq read qd1"},
			Cells: []BenchCell{
				{Median: medianSample([]BenchSample{{IOPS: 900, MBps: 3.6}, {IOPS: 4000, MBps: 16}, {IOPS: 1000, MBps: 4}})},
				{Median: BenchSample{IOPS: 2000, MBps: 8}},
			},
		}},
	}
	var md bytes.Buffer
	table.WriteMarkdown(&md)
	want := "| case | metrolun IOPS | metrolun MB/s | tgtd IOPS | tgtd MB/s | metrolun/tgtd |\n" +
		"| --- | ---: | ---: | ---: | ---: | ---: |\n" +
		"| 4k seq read qd1 | 1000 | 4.0 | 2000 | 8.0 | 0.50 |\n"
	if !strings.HasPrefix(md.String(), want) {
		t.Errorf("markdown:\n%s\nwant prefix:\n%s", md.String(), want)
	}
	var text bytes.Buffer
	table.WriteText(&text)
	if !strings.Contains(text.String(), "0.50") || !strings.HasPrefix(text.String(), "bench: median of 3 runs") {
		t.Errorf("text:\n%s", text.String())
	}
}

// TestBenchSmoke runs every bench row once, tiny, against tgtd: it keeps
// the client flags and output parsing honest on every `go test` run.
func TestBenchSmoke(t *testing.T) {
	requireTool(t, "qemu-img", "iscsi-perf", "iscsi-readcapacity16", "tgtd", "tgtadm")
	tg := StartTgtdT(t, TgtdOptions{Size: 64 << 20, Dir: filepath.Join(t.TempDir())})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	table, err := RunBench(ctx, []BenchTarget{{Name: "tgtd", URL: tg.URL}}, DefaultBenchCases(0.01), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range table.Rows {
		if m := r.Cells[0].Median; m.IOPS <= 0 || m.MBps <= 0 {
			t.Errorf("%s: %+v", r.Case.Name, m)
		}
	}
}
