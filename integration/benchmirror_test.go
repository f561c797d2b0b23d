package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchMirror is `make bench-mirror` (scripts/bench-mirror.sh): a
// single site against a two-site cluster (two data sites and a witness),
// each `metrolun demo` in a network namespace of its own, through real
// clients (qemu-img bench, iscsi-perf) run in that namespace. Columns:
// the single site, the mirrored cluster at its writer and at the other
// site (whose writes are forwarded). Gated by METROLUN_BENCH_MIRROR=1
// and root (ip netns): it measures, it does not check.
//
// Environment: METROLUN_MIRROR_REPS (runs per cell, default 3),
// METROLUN_MIRROR_SCALE (multiplies request counts, default 1),
// METROLUN_MIRROR_CASES (regexp on the row names), METROLUN_MIRROR_IDLE
// (idle CPU window, default 10s; 0 skips it), METROLUN_MIRROR_PLAINTEXT=1
// (adds a two-site cluster whose members talk plain TCP: what TLS
// costs), METROLUN_MIRROR_OLD_BIN=PATH (adds a two-site cluster run by
// another metrolun binary: before and after side by side), BENCH_REPORT
// (write the tables as markdown), METROLUN_MIRROR_PPROF=HOST:PORT (the
// TLS two-site cluster's members serve net/http/pprof in its namespace
// from that port on: site-a on PORT, site-b on PORT+1),
// METROLUN_MIRROR_LOGS (where the demos' logs are kept, default the
// temporary directory: bench-mirror-SETUP-PID.log),
// METROLUN_MIRROR_FLOOR=1 (adds the floor of mirroring: two single sites
// whose writes are also made by a mirror floor echo over one TLS or
// plain connection, `demo --mirror-floor`, columns floor-tls and
// floor-plain; =all adds floor-tls-reader, whose acks a reader goroutine
// hands to the writes, and floor-tls-spawn, whose writes never run on
// the iSCSI reader (as a mirrored LU's); and after the table, REPS times, Go round trips of
// 4 KiB between this process and an echo that writes nothing, TLS and
// plain, bare and through mirrorfloor.Client).
func TestBenchMirror(t *testing.T) {
	if os.Getenv("METROLUN_BENCH_MIRROR") != "1" {
		t.Skip("set METROLUN_BENCH_MIRROR=1 to run the mirroring benchmark")
	}
	if os.Geteuid() != 0 {
		t.Skip("the mirroring benchmark creates network namespaces: run it as root")
	}
	requireTool(t, "qemu-img", "iscsi-perf", "iscsi-readcapacity16", "ip")
	reps := envInt(t, "METROLUN_MIRROR_REPS", 3)
	scale := 1.0
	if s := os.Getenv("METROLUN_MIRROR_SCALE"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f <= 0 {
			t.Fatalf("METROLUN_MIRROR_SCALE=%q: want a positive number", s)
		}
		scale = f
	}
	idle := 10 * time.Second
	if s := os.Getenv("METROLUN_MIRROR_IDLE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			t.Fatalf("METROLUN_MIRROR_IDLE=%q: want a duration", s)
		}
		idle = d
	}
	cases := MirrorCases(scale)
	if s := os.Getenv("METROLUN_MIRROR_CASES"); s != "" {
		re, err := regexp.Compile(s)
		if err != nil {
			t.Fatalf("METROLUN_MIRROR_CASES: %v", err)
		}
		var picked []BenchCase
		for _, c := range cases {
			if re.MatchString(c.Name) {
				picked = append(picked, c)
			}
		}
		if len(picked) == 0 {
			t.Fatalf("METROLUN_MIRROR_CASES=%q matches no row", s)
		}
		cases = picked
	}

	bin := metrolunBin(t)
	tag := strconv.Itoa(os.Getpid())
	setups := []*MirrorSetup{
		{Name: "single", Bin: bin, Args: []string{"--sites", "1"}},
		{Name: "mirrored", Bin: bin, Args: []string{"--sites", "2"}},
	}
	if pp := os.Getenv("METROLUN_MIRROR_PPROF"); pp != "" {
		setups[1].Env = []string{"METROLUN_PPROF=" + pp}
	}
	if os.Getenv("METROLUN_MIRROR_PLAINTEXT") == "1" {
		setups = append(setups, &MirrorSetup{Name: "plaintext", Bin: bin, Args: []string{"--sites", "2", "--plaintext"}})
	}
	floor := os.Getenv("METROLUN_MIRROR_FLOOR")
	if floor == "1" || floor == "all" {
		setups = append(setups,
			&MirrorSetup{Name: "floor-tls", Bin: bin, Args: []string{"--sites", "1", "--mirror-floor", "tls"}},
			&MirrorSetup{Name: "floor-plain", Bin: bin, Args: []string{"--sites", "1", "--mirror-floor", "plain"}})
	}
	if floor == "all" {
		setups = append(setups,
			&MirrorSetup{Name: "floor-tls-reader", Bin: bin, Args: []string{"--sites", "1", "--mirror-floor", "tls-reader"}},
			&MirrorSetup{Name: "floor-tls-spawn", Bin: bin, Args: []string{"--sites", "1", "--mirror-floor", "tls-spawn"}})
	}
	if old := os.Getenv("METROLUN_MIRROR_OLD_BIN"); old != "" {
		setups = append(setups, &MirrorSetup{Name: "old", Bin: old, Args: []string{"--sites", "2"}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
	defer cancel()
	logDir := os.Getenv("METROLUN_MIRROR_LOGS")
	if logDir == "" {
		logDir = os.TempDir()
	}
	var cols []MirrorColumn
	for _, s := range setups {
		s.NS = "mlbench-" + s.Name + "-" + tag
		del, err := NetNS(ctx, s.NS)
		if err != nil {
			t.Fatalf("network namespace for %s: %v", s.Name, err)
		}
		t.Cleanup(del)
		dir := filepath.Join(t.TempDir(), s.Name)
		// The members' logs outlive the run (a writer that moved says
		// why there).
		logPath := filepath.Join(logDir, "bench-mirror-"+s.Name+"-"+tag+".log")
		d, err := StartDemo(ctx, DemoOptions{Bin: s.Bin, Dir: dir, Port: 3260, Size: "1GiB", Args: s.Args,
			Wrap: s.wrap(), Env: s.Env, ReadyTimeout: time.Minute, Log: logPath})
		if err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		t.Cleanup(func() { d.Stop() })
		s.Demo = d
		data := d.File.DataMembers()
		if len(data) == 1 {
			cols = append(cols, MirrorColumn{Label: s.Name, Setup: s, URL: data[0].ISCSI})
			continue
		}
		writer := d.File.Writer
		if writer == "" {
			// An older binary's demo.json does not say; the first
			// data member is the first epoch's writer (raftlog).
			writer = data[0].Name
		}
		s.Writer = writer
		var w, f []MirrorColumn
		for _, m := range data {
			if m.Name == writer {
				w = append(w, MirrorColumn{Label: s.Name + "@writer", Setup: s, URL: m.ISCSI})
			} else if len(f) == 0 {
				f = append(f, MirrorColumn{Label: s.Name + "@fwd", Setup: s, URL: m.ISCSI})
			}
		}
		if len(w) != 1 || len(f) != 1 {
			t.Fatalf("%s: no writer %q and other data site in demo.json %+v", s.Name, writer, d.File)
		}
		cols = append(cols, w[0], f[0])
	}
	load0 := machineLoad()
	table, err := RunMirrorBench(ctx, cols, cases, reps, idle, t.Logf)
	if table == nil {
		t.Fatal(err)
	}
	var pp []PingPong
	if floor != "" {
		for range reps {
			for _, tls := range []bool{true, false} {
				for _, mode := range []string{"bare", "turns", "reader"} {
					r, perr := RunPingPong(ctx, bin, tls, mode, 4096, max(1000, int(20000*scale)))
					if perr != nil {
						t.Errorf("ping-pong: %v", perr)
						continue
					}
					t.Logf("ping-pong %v", r)
					pp = append(pp, r)
				}
			}
		}
	}
	var md bytes.Buffer
	table.WriteMarkdown(&md)
	table.WriteErrors(&md)
	for _, r := range pp {
		fmt.Fprintf(&md, "Go round trip of 4 KiB on loopback, %v.\n", r)
	}
	fmt.Fprintf(&md, "Machine load at the start: %s; at the end: %s.\n", load0, machineLoad())
	t.Log("\n" + md.String())
	if path := os.Getenv("BENCH_REPORT"); path != "" {
		if err := os.WriteFile(path, md.Bytes(), 0o644); err != nil {
			t.Error(err)
		} else {
			t.Logf("markdown tables: %s", path)
		}
	}
	if err != nil {
		t.Errorf("some runs failed: %v", err)
	}
}

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// machineLoad is the load average and the CPU pressure (some avg60), as
// a run's report notes them.
func machineLoad() string {
	la, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(la))
	if len(f) > 3 {
		f = f[:3]
	}
	out := "load average " + strings.Join(f, " ")
	if pr, err := os.ReadFile("/proc/pressure/cpu"); err == nil {
		for _, l := range strings.Split(string(pr), "\n") {
			if strings.HasPrefix(l, "some ") {
				for _, kv := range strings.Fields(l) {
					if strings.HasPrefix(kv, "avg60=") {
						out += ", cpu pressure some avg60 " + strings.TrimPrefix(kv, "avg60=") + "%"
					}
				}
			}
		}
	}
	return out
}
