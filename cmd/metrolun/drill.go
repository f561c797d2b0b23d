package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/cmd/drill"
	"github.com/metrolun/metrolun/conf"
)

// `metrolun drill` runs a failover drill against a live cluster. The
// engine is package drill (cmd/drill), which returns its verdict and
// findings as a drill.Result; this command parses the flags, finds the
// cluster and prints the Result as a report (its last line "verdict: pass"
// or "verdict: fail: WHY") or, with --json, as JSON. The exit status is 0
// only on pass.

// errDrillFailed: the report was printed and says why; main prints nothing
// more and exits 1.
var errDrillFailed = errors.New("drill failed")

func drillCmd() *cobra.Command {
	var f clusterFlags
	var o drill.Options
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "drill (--config FILE --scratch OFFSET:LENGTH | --dir DIR) [--fence-writer] [--plot FILE.svg] [--json]",
		Short: "Run a failover drill (switchover, optionally a simulated writer loss) under a checked workload",
		Long: `drill moves the writer to another in-sync data site and back while one
client per data site writes and reads a scratch region of the LUN through that
site's portal. With --fence-writer it then fences the writer through the
cluster (a simulated site loss: nothing is killed), lets another site take
over, unfences it, waits for its resync and promotes it back.

Only the scratch region is written. A cluster found with --config needs
--scratch OFFSET:LENGTH (bytes, units allowed: 10GiB:4MiB); a demo found with
--dir defaults to the last 4 MiB of its LUN.

The report gives each step with its time, how long no write was acknowledged
and the epoch changes, the I/O errors the workload saw, the linearizability
check of every operation, the scratch region read back at every site and the
result of an online verify. Its last line is "verdict: pass" or
"verdict: fail: WHY"; the exit status is 0 only on pass. With --json the
same result is printed as one JSON object: "verdict" is "pass" or "fail",
"reasons" says why.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// The first signal ends the steps (the drill then unfences and
			// reports); a second one kills as usual.
			go func() { <-ctx.Done(); stop() }()
			o.DefaultScratch = f.config == "" && f.dir != ""
			if err := o.Validate(); err != nil {
				return fmt.Errorf("drill: %w", err)
			}
			var err error
			if o.Members, err = f.members(); err != nil {
				return fmt.Errorf("drill: %w", err)
			}
			if o.Endpoints, o.Client, err = f.connect(); err != nil {
				return fmt.Errorf("drill: %w", err)
			}
			if o.Config, o.ConfigPath, err = drillConfig(f); err != nil {
				return fmt.Errorf("drill: %w", err)
			}
			// Progress goes to stderr; the report to stdout at the end.
			o.Progress = func(line string) { fmt.Fprintf(os.Stderr, "drill: %s\n", line) }
			r, err := drill.Run(ctx, o)
			if err != nil {
				return fmt.Errorf("drill: %w", err)
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(r); err != nil {
					return err
				}
			} else {
				printDrill(os.Stdout, r)
			}
			if !r.Passed() {
				return errDrillFailed
			}
			return nil
		},
	}
	f.add(cmd)
	fl := cmd.Flags()
	fl.StringVar(&o.Scratch, "scratch", "", "OFFSET:LENGTH of the LUN the drill may overwrite (required with --config; a demo defaults to its last 4MiB)")
	fl.BoolVar(&o.FenceWriter, "fence-writer", false, "also simulate the loss of the writer site by fencing it through the cluster")
	fl.StringVar(&o.To, "to", "", "the data site to switch over to (default: the first other in-sync data site)")
	fl.DurationVar(&o.Settle, "settle", 3*time.Second, "workload time before the first step and after each step")
	fl.DurationVar(&o.FenceFor, "fence-for", 2*time.Minute, "the cluster lifts the fence by itself after this long, should the drill die")
	fl.DurationVar(&o.StepTimeout, "step-timeout", time.Minute, "how long a step may take to show its effect")
	fl.DurationVar(&o.ResyncTimeout, "resync-timeout", 15*time.Minute, "how long the unfenced site may take to be in sync again")
	fl.StringVar(&o.Plot, "plot", "", "write the write latency over time, steps marked, to this SVG file")
	fl.StringVar(&o.History, "history", "", "save every operation of the workload to this JSON file")
	fl.StringVar(&o.Target, "target", "", "target IQN (default: the one in the config)")
	fl.IntVar(&o.LUN, "lun", -1, "LUN number (default: the one in the config)")
	fl.StringVar(&o.Initiator, "initiator", "iqn.2026-11.io.metrolun:drill", "initiator name prefix; client i logs in as PREFIX-cI")
	fl.Uint64Var(&o.Seed, "seed", 0, "workload seed (default: from the clock)")
	fl.IntVar(&o.Blocks, "blocks", 64, "blocks of the scratch region the workload writes and reads (from its start)")
	fl.BoolVar(&asJSON, "json", false, "print the result as JSON for scripts (its \"verdict\" and \"reasons\")")
	return cmd
}

// drillConfig loads the config the cluster is found with: --config, or a
// demo member's (one that serves the target, if any does).
func drillConfig(f clusterFlags) (*conf.Config, string, error) {
	if f.config != "" {
		c, err := conf.Load(f.config)
		return c, f.config, err
	}
	found, _ := filepath.Glob(filepath.Join(f.dir, "*", "metrolun.hcl"))
	slices.Sort(found)
	var first *conf.Config
	var firstPath string
	for _, p := range found {
		c, err := conf.Load(p)
		if err != nil || c.Cluster == nil {
			continue
		}
		if len(c.Targets) > 0 {
			return c, p, nil
		}
		if first == nil {
			first, firstPath = c, p
		}
	}
	if first == nil {
		return nil, "", fmt.Errorf("%s holds no cluster member config", f.dir)
	}
	return first, firstPath, nil
}

// printDrill prints r as the drill's report; its last line is the
// verdict.
func printDrill(w io.Writer, r *drill.Result) {
	start := r.Start
	clock := func(at time.Duration) string { return start.Add(at).Format("15:04:05.000") }
	since := func(at time.Duration) string { return fmt.Sprintf("+%.3fs", at.Seconds()) }

	fmt.Fprintf(w, "metrolun drill, %s\n", start.Format(time.RFC3339))
	var names []string
	for _, m := range r.Members {
		names = append(names, m.Name+" ("+m.Role+")")
	}
	fmt.Fprintf(w, "cluster: %s; config %s\n", strings.Join(names, ", "), r.ConfigPath)
	fmt.Fprintf(w, "LUN: %s LUN %d, %d bytes in %d-byte blocks\n", r.Target, r.LUN, r.LUNBytes, r.BlockSize)
	sc, bs := r.Scratch, int64(r.BlockSize)
	fmt.Fprintf(w, "scratch region: bytes %d to %d (%s, LBA %d to %d): %s; the drill overwrote it\n",
		sc.Offset, sc.Offset+sc.Length-1, sizeText(sc.Length), sc.Offset/bs, (sc.Offset+sc.Length)/bs-1, sc.Why)
	var clients []string
	for _, s := range r.Sites {
		clients = append(clients, s.Name+" at "+s.Portal)
	}
	fmt.Fprintf(w, "workload: one client per data site (%s) on the first %d blocks, reads:writes 1:1, seed %d\n",
		strings.Join(clients, ", "), r.Blocks, r.Seed)
	fmt.Fprintf(w, "writer: %s (epoch %d) at the start, %s (epoch %d) at the end\n",
		orDash(r.WriterStart), r.EpochStart, orDash(r.End.Writer), r.End.Epoch)

	fmt.Fprintln(w, "\nsteps:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range r.Steps {
		res := s.Note
		if s.Err != "" {
			res = "FAILED: " + s.Err
		} else if s.Done > 0 && s.Note != "" {
			res = fmt.Sprintf("ok after %s: %s", secs(s.Done-s.At), s.Note)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", clock(s.At), since(s.At), s.Name, res)
	}
	tw.Flush()

	fmt.Fprintln(w, "\ntime without a writer:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  STEP\tNO WRITE ACKNOWLEDGED\tRAFT")
	for _, s := range r.Steps {
		if s.Stall == nil {
			continue
		}
		ws := "-"
		if g := s.Stall; g.Gap > 0 {
			ws = fmt.Sprintf("%s (%s to %s)", secs(g.Gap), since(g.From), since(g.To))
		}
		rs := "no epoch change"
		if s.ToEpoch != s.FromEpoch {
			rs = fmt.Sprintf("epoch %d -> %d, writer %s -> %s", s.FromEpoch, s.ToEpoch, orDash(s.FromWriter), orDash(s.ToWriter))
			if !s.WriterSince.IsZero() {
				rs += fmt.Sprintf("; new writer's lease from %s, %s after the action", since(s.WriterSince.Sub(start)), secs(s.WriterSince.Sub(start.Add(s.At))))
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.Name, ws, rs)
	}
	tw.Flush()

	e := r.Errors
	fmt.Fprintf(w, "\nI/O errors seen by the workload: %d (%d unexpected)", e.Total, e.Unexpected)
	if st := r.Workload; st != nil {
		fmt.Fprintf(w, " in %d operations (%d failed, %d indeterminate; %d logins)", st.Ops, st.Failed, st.Indeterminate, st.Logins)
	}
	if e.CutShort > 0 {
		fmt.Fprintf(w, "; %d cut short when the workload stopped", e.CutShort)
	}
	fmt.Fprintln(w)
	for _, k := range e.Kinds {
		note := "UNEXPECTED"
		if k.Expected {
			note = "expected: the site was fenced or resyncing"
		}
		fmt.Fprintf(w, "  %5d  %s  %s  (%s)\n", k.Count, k.Site, k.Kind, note)
	}

	lin := r.Linearizability
	fmt.Fprintf(w, "\nlinearizability: %s\n", lin.Summary)
	for _, a := range lin.Anomalies {
		fmt.Fprintf(w, "  %s\n", a)
	}
	if len(lin.Anomalies) == 0 && lin.Explanation != "" {
		fmt.Fprintf(w, "  %s\n", lin.Explanation)
	}

	fmt.Fprint(w, "data: ")
	rb := r.ReadBack
	switch {
	case rb.Err != "":
		fmt.Fprintf(w, "scratch region not read back: %s\n", rb.Err)
	case rb.Differ != "":
		fmt.Fprintf(w, "scratch region read back at %s: DIFFERENT: %s\n", strings.Join(rb.Sites, ", "), rb.Differ)
	default:
		fmt.Fprintf(w, "scratch region read back at %s: identical (%d bytes, sha256 %s…)", strings.Join(rb.Sites, ", "), sc.Length, rb.SHA256)
		if len(rb.Corrupt) == 0 {
			fmt.Fprintf(w, "; all %d workload blocks hold a valid stamp\n", r.Blocks)
		} else {
			fmt.Fprintln(w)
		}
	}
	if rb.Err == "" && len(rb.Corrupt) > 0 {
		fmt.Fprintf(w, "  %d workload blocks hold no valid stamp, first LBA %d\n", len(rb.Corrupt), rb.Corrupt[0])
	}

	fmt.Fprint(w, "verify: ")
	v := r.Verify
	if v.Err != "" && v.Total == 0 {
		fmt.Fprintf(w, "failed: %s\n", v.Err)
	} else {
		fmt.Fprintf(w, "%d of %d regions of %d bytes compared against %s", v.Done, v.Total, v.Region, strings.Join(v.Replicas, ", "))
		if v.Differing() == 0 && v.Err == "" {
			fmt.Fprintln(w, ": all in-sync replicas identical")
		} else {
			fmt.Fprintln(w)
			names := slices.Sorted(maps.Keys(v.Differ))
			for _, name := range names {
				offs := v.Differ[name]
				fmt.Fprintf(w, "  %s differs in %d regions, first at byte %d\n", name, len(offs), offs[0])
			}
			if v.Err != "" {
				fmt.Fprintf(w, "  %s\n", v.Err)
			}
		}
	}
	if r.Plot != "" {
		if r.PlotErr != "" {
			fmt.Fprintf(w, "plot: %s\n", r.PlotErr)
		} else {
			fmt.Fprintf(w, "plot: %s\n", r.Plot)
		}
	}
	if r.History != "" {
		if r.HistoryErr != "" {
			fmt.Fprintf(w, "history: %s\n", r.HistoryErr)
		} else {
			fmt.Fprintf(w, "history: %s\n", r.History)
		}
	}
	if !r.Passed() {
		why := strings.Join(strings.Fields(strings.Join(r.Reasons, "; ")), " ")
		fmt.Fprintf(w, "verdict: fail: %s\n", why)
		return
	}
	fmt.Fprintln(w, "verdict: pass")
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func sizeText(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
