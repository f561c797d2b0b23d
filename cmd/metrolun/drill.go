package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/integration/checker"
	"github.com/metrolun/metrolun/integration/initiator"
)

// `metrolun drill` runs a failover drill against a live cluster (DESIGN.md
// Operations): a planned switchover to another in-sync data site and back
// and, with --fence-writer, a simulated loss of the writer site (fenced
// through the cluster, raftlog/fence.go), while a checked workload writes
// and reads a scratch region of the LUN through every data site. The report
// ends with "verdict: pass" or "verdict: fail: WHY"; the exit status is 0
// only on pass.

// errDrillFailed: the report was printed and says why; main prints nothing
// more and exits 1.
var errDrillFailed = errors.New("drill failed")

type drillOptions struct {
	scratch       string
	fenceWriter   bool
	to            string
	settle        time.Duration
	fenceFor      time.Duration
	stepTimeout   time.Duration
	resyncTimeout time.Duration
	plot          string
	history       string
	target        string
	lun           int
	initiator     string
	seed          uint64
	blocks        int
}

// demoScratch is the default scratch region of a demo cluster: the end of
// its LUN.
const demoScratch = 4 << 20

func drillCmd() *cobra.Command {
	var f clusterFlags
	var o drillOptions
	cmd := &cobra.Command{
		Use:   "drill (--config FILE --scratch OFFSET:LENGTH | --dir DIR) [--fence-writer] [--plot FILE.svg]",
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
"verdict: fail: WHY"; the exit status is 0 only on pass.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// The first signal ends the steps (the drill then unfences and
			// reports); a second one kills as usual.
			go func() { <-ctx.Done(); stop() }()
			d, err := newDrill(ctx, f, o)
			if err != nil {
				return fmt.Errorf("drill: %w", err)
			}
			if !d.run(ctx) {
				return errDrillFailed
			}
			return nil
		},
	}
	f.add(cmd)
	fl := cmd.Flags()
	fl.StringVar(&o.scratch, "scratch", "", "OFFSET:LENGTH of the LUN the drill may overwrite (required with --config; a demo defaults to its last 4MiB)")
	fl.BoolVar(&o.fenceWriter, "fence-writer", false, "also simulate the loss of the writer site by fencing it through the cluster")
	fl.StringVar(&o.to, "to", "", "the data site to switch over to (default: the first other in-sync data site)")
	fl.DurationVar(&o.settle, "settle", 3*time.Second, "workload time before the first step and after each step")
	fl.DurationVar(&o.fenceFor, "fence-for", 2*time.Minute, "the cluster lifts the fence by itself after this long, should the drill die")
	fl.DurationVar(&o.stepTimeout, "step-timeout", time.Minute, "how long a step may take to show its effect")
	fl.DurationVar(&o.resyncTimeout, "resync-timeout", 15*time.Minute, "how long the unfenced site may take to be in sync again")
	fl.StringVar(&o.plot, "plot", "", "write the write latency over time, steps marked, to this SVG file")
	fl.StringVar(&o.history, "history", "", "save every operation of the workload to this JSON file")
	fl.StringVar(&o.target, "target", "", "target IQN (default: the one in the config)")
	fl.IntVar(&o.lun, "lun", -1, "LUN number (default: the one in the config)")
	fl.StringVar(&o.initiator, "initiator", "iqn.2026-11.io.metrolun:drill", "initiator name prefix; client i logs in as PREFIX-cI")
	fl.Uint64Var(&o.seed, "seed", 0, "workload seed (default: from the clock)")
	fl.IntVar(&o.blocks, "blocks", 64, "blocks of the scratch region the workload writes and reads (from its start)")
	return cmd
}

// drill is one run.
type drill struct {
	o       drillOptions
	members []conf.Member
	eps     []admin.Endpoint
	client  *admin.Client
	cfgPath string
	iqn     string
	lun     uint64
	sites   []string          // data sites, in config order
	portals map[string]string // data site -> iSCSI portal
	opTime  time.Duration     // bound on one workload operation

	// Learned from the LUN and the flags.
	bs                     uint32
	lunBytes               int64
	scratchOff, scratchLen int64
	scratchWhy             string

	h       *checker.History
	steps   []*drillStep
	fails   []string
	fenced  string // fenced by this drill and not yet unfenced
	windows []errWindow
	writer0 string
	epoch0  uint64
	// stoppedAt: operations still running then were cut short by the
	// drill itself, not failed by the cluster.
	stoppedAt time.Duration
}

// drillStep is one action of the drill and what it caused.
type drillStep struct {
	name string
	at   time.Duration // the action, since the history began
	done time.Duration // its effect observed
	err  error
	note string
	// Raft: the writer and epoch before and after, and when the new
	// writer's lease began (its own clock).
	fromWriter, toWriter string
	fromEpoch, toEpoch   uint64
	writerSince          time.Time
	// Whether the step interrupts writes (the stall is measured).
	interrupts bool
}

// errWindow is a time when I/O errors at a site are expected: it was
// fenced, or resyncing after that.
type errWindow struct {
	site     string
	from, to time.Duration
}

func newDrill(ctx context.Context, f clusterFlags, o drillOptions) (*drill, error) {
	if o.settle < 0 || o.stepTimeout <= 0 || o.resyncTimeout <= 0 || o.blocks < 1 {
		return nil, errors.New("--settle, --step-timeout, --resync-timeout and --blocks must be positive")
	}
	if o.fenceFor <= 0 {
		return nil, errors.New("--fence-for must be positive: a fence always needs a deadline")
	}
	demo := f.config == "" && f.dir != ""
	if !demo && o.scratch == "" {
		return nil, errors.New("--scratch OFFSET:LENGTH is required with --config: the drill writes that region of the LUN " +
			"and must never touch user data; give it a region nothing uses (e.g. --scratch 100GiB:4MiB). " +
			"A demo cluster (--dir) defaults to the last 4MiB of its LUN")
	}
	members, err := f.members()
	if err != nil {
		return nil, err
	}
	eps, client, err := f.connect()
	if err != nil {
		return nil, err
	}
	d := &drill{o: o, members: members, eps: eps, client: client, portals: map[string]string{}}
	cfg, path, err := drillConfig(f)
	if err != nil {
		return nil, err
	}
	d.cfgPath = path
	d.iqn, d.lun = o.target, uint64(max(o.lun, 0))
	if len(cfg.Targets) > 0 {
		t := cfg.Targets[0]
		if d.iqn == "" {
			d.iqn = t.Name
		}
		if o.lun < 0 && len(t.LUNs) > 0 {
			d.lun = uint64(t.LUNs[0].ID)
		}
		if t.CHAP != nil {
			return nil, fmt.Errorf("target %s requires CHAP, which the drill's initiator does not do", t.Name)
		}
		if len(t.AllowInitiators) > 0 {
			var missing []string
			for _, n := range d.initiatorNames() {
				if !slices.Contains(t.AllowInitiators, n) {
					missing = append(missing, n)
				}
			}
			if len(missing) > 0 {
				return nil, fmt.Errorf("target %s admits only its allow_initiators; the drill logs in as %s (set --initiator, or allow them)",
					t.Name, strings.Join(missing, ", "))
			}
		}
	}
	if d.iqn == "" {
		return nil, fmt.Errorf("%s names no target: give --target IQN", path)
	}
	for _, m := range members {
		if m.Role != conf.RoleData {
			continue
		}
		if len(m.ISCSI) == 0 {
			return nil, fmt.Errorf("member %s lists no iscsi portal in %s: the drill runs one client at every data site's portal", m.Name, path)
		}
		d.sites = append(d.sites, m.Name)
		d.portals[m.Name] = m.ISCSI[0]
	}
	if len(d.sites) < 2 {
		return nil, errors.New("a drill needs at least two data sites")
	}
	hold := conf.DefaultReplicaTimeout + 2*conf.DefaultLease
	if cl := cfg.Cluster; cl != nil {
		hold = cl.ReplicaTimeout + 2*cl.Lease
	}
	// An operation is held (not failed) for up to hold while there is no
	// writer; the workload must wait longer than that.
	d.opTime = hold + 5*time.Second
	if d.o.seed == 0 {
		d.o.seed = uint64(time.Now().UnixNano())
	}
	if err := d.scratchRegion(ctx, demo); err != nil {
		return nil, err
	}
	return d, nil
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

func (d *drill) initiatorNames() []string {
	var out []string
	for i := 0; i <= len(d.portals); i++ { // the clients, then the prefill
		out = append(out, fmt.Sprintf("%s-c%d", d.o.initiator, i))
	}
	return append(out, d.o.initiator+"-read")
}

// scratchRegion learns the LUN's geometry and checks the scratch region.
func (d *drill) scratchRegion(ctx context.Context, demo bool) error {
	var lastErr error
	for _, site := range d.sites {
		s, err := d.dial(ctx, site, d.o.initiator+"-read")
		if err != nil {
			lastErr = err
			continue
		}
		bs, blocks, err := s.ReadCapacity16(ctx, d.lun)
		s.Close()
		if err != nil {
			lastErr = fmt.Errorf("READ CAPACITY at %s: %w", site, err)
			continue
		}
		d.bs, d.lunBytes = bs, int64(blocks)*int64(bs)
		break
	}
	if d.bs == 0 {
		return fmt.Errorf("no data site answers for LUN %d of %s: %w", d.lun, d.iqn, lastErr)
	}
	if d.bs < checker.MinStampBlock {
		return fmt.Errorf("block size %d is below %d", d.bs, checker.MinStampBlock)
	}
	if d.o.scratch == "" {
		if !demo {
			return errors.New("--scratch is required")
		}
		d.scratchLen = min(demoScratch, d.lunBytes)
		d.scratchOff = d.lunBytes - d.scratchLen
		d.scratchWhy = "the last 4 MiB of the LUN (the default for a demo cluster)"
	} else {
		off, n, err := parseScratch(d.o.scratch)
		if err != nil {
			return err
		}
		d.scratchOff, d.scratchLen = off, n
		d.scratchWhy = "given with --scratch"
	}
	bs := int64(d.bs)
	switch {
	case d.scratchOff%bs != 0 || d.scratchLen%bs != 0:
		return fmt.Errorf("scratch region %d:%d is not aligned to the %d-byte block", d.scratchOff, d.scratchLen, bs)
	case d.scratchLen < int64(d.o.blocks)*bs:
		return fmt.Errorf("scratch region of %d bytes is smaller than the %d blocks the workload uses (--blocks)", d.scratchLen, d.o.blocks)
	case d.scratchOff+d.scratchLen > d.lunBytes:
		return fmt.Errorf("scratch region %d:%d ends past the LUN (%d bytes)", d.scratchOff, d.scratchLen, d.lunBytes)
	}
	return nil
}

// parseScratch parses OFFSET:LENGTH, each a size with optional unit.
func parseScratch(s string) (int64, int64, error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("--scratch %q: want OFFSET:LENGTH, e.g. 100GiB:4MiB", s)
	}
	off, err := conf.ParseSize(a)
	if err != nil {
		return 0, 0, fmt.Errorf("--scratch offset: %w", err)
	}
	n, err := conf.ParseSize(b)
	if err != nil {
		return 0, 0, fmt.Errorf("--scratch length: %w", err)
	}
	if n == 0 {
		return 0, 0, errors.New("--scratch length is 0")
	}
	return off, n, nil
}

func (d *drill) dial(ctx context.Context, site, iqn string) (*initiator.Session, error) {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := initiator.Dial(c, d.portals[site], d.iqn, iqn, initiator.Options{})
	if err != nil {
		return nil, fmt.Errorf("login at %s (%s): %w", site, d.portals[site], err)
	}
	return s, nil
}

// progress tells the operator what is going on (stderr; the report goes
// to stdout at the end).
func (d *drill) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "drill: "+format+"\n", args...)
}

func (d *drill) fail(format string, args ...any) {
	d.fails = append(d.fails, fmt.Sprintf(format, args...))
}

// run runs the drill and prints the report; it reports whether it passed.
func (d *drill) run(ctx context.Context) bool {
	d.h = checker.NewHistory()
	v := d.view(ctx)
	d.writer0, d.epoch0 = v.raft.Writer, v.raft.Epoch
	first := len(d.fails) == 0

	// The workload runs through every step.
	wl := checker.Workload{
		FirstLBA:     uint64(d.scratchOff / int64(d.bs)),
		Blocks:       d.o.blocks,
		Seed:         d.o.seed,
		OpTimeout:    d.opTime,
		InitiatorIQN: d.o.initiator,
		BlockSize:    d.bs,
		Prefill:      true,
	}
	for _, s := range d.sites {
		wl.Targets = append(wl.Targets, checker.Target{Site: s, Addr: d.portals[s], IQN: d.iqn, LUN: d.lun})
	}
	wctx, stopWorkload := context.WithCancel(context.Background())
	defer stopWorkload()
	type result struct {
		st  *checker.Stats
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := wl.Run(wctx, d.h)
		done <- result{st, err}
	}()
	d.steps = append(d.steps, &drillStep{name: "workload started", at: d.h.Now()})

	if first {
		d.runSteps(ctx)
	}
	// Whatever happened: no site stays fenced by this drill.
	if d.fenced != "" {
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := d.atLeader(c, func(ep admin.Endpoint) error { _, err := d.client.Unfence(c, ep, d.fenced); return err }); err != nil {
			d.fail("could not unfence %s after the drill (the cluster lifts the fence by itself within %v): %v", d.fenced, d.o.fenceFor, err)
		} else {
			d.progress("unfenced %s", d.fenced)
		}
		cancel()
	}
	end := d.h.Now()
	stopWorkload()
	res := <-done
	d.steps = append(d.steps, &drillStep{name: "workload stopped", at: end})
	d.stoppedAt = end
	if res.err != nil {
		d.fail("workload: %v", res.err)
	}

	rb := d.readBack(context.Background())
	ver := d.verify(context.Background())
	d.progress("checking %d operations for linearizability", d.h.Len())
	chk := checker.Check(d.h, 2*time.Minute)
	var plotErr error
	if d.o.plot != "" {
		plotErr = checker.PlotLatency(d.h, d.o.plot)
	}
	var histErr error
	if d.o.history != "" {
		histErr = d.h.SaveJSON(d.o.history)
	}
	vEnd := d.view(context.Background())
	return d.report(os.Stdout, res.st, chk, rb, ver, vEnd, end, plotErr, histErr)
}

// runSteps runs the drill's steps; it stops at the first that fails.
func (d *drill) runSteps(ctx context.Context) {
	if !d.baseline(ctx) || !d.settle(ctx) {
		return
	}
	v := d.view(ctx)
	w := v.raft.Writer
	to := d.o.to
	if to == "" {
		for _, s := range d.sites {
			if s != w && slices.Contains(v.raft.InSync, s) && !v.isFenced(s) {
				to = s
				break
			}
		}
	}
	if w == "" {
		d.fail("the cluster has no writer")
		return
	}
	if to == "" {
		d.fail("no other in-sync data site to switch over to (in sync: %s)", strings.Join(v.raft.InSync, ", "))
		return
	}
	if to == w || !slices.Contains(d.sites, to) {
		d.fail("--to %s: not a data site other than the writer %s", to, w)
		return
	}
	if !d.promote(ctx, to) || !d.settle(ctx) || !d.promote(ctx, w) || !d.settle(ctx) {
		return
	}
	if !d.o.fenceWriter {
		return
	}
	if !d.fence(ctx, w) || !d.settle(ctx) || !d.unfence(ctx, w) || !d.settle(ctx) {
		return
	}
	if d.view(ctx).raft.Writer != w {
		if !d.promote(ctx, w) {
			return
		}
		d.settle(ctx)
	}
}

// baseline waits until a write was acknowledged at every site.
func (d *drill) baseline(ctx context.Context) bool {
	d.progress("workload: one client per data site on %d blocks at byte %d", d.o.blocks, d.scratchOff)
	deadline := time.Now().Add(d.o.stepTimeout)
	for {
		okAt := map[string]bool{}
		last := map[string]string{}
		for _, op := range d.h.Ops() {
			if op.Kind == checker.Write && op.Outcome == checker.OK {
				okAt[op.Site] = true
			}
			if op.Err != "" {
				last[op.Site] = op.Err
			}
		}
		var missing []string
		for _, s := range d.sites {
			if !okAt[s] {
				missing = append(missing, s)
			}
		}
		if len(missing) == 0 {
			d.steps[0].note = fmt.Sprintf("writes acknowledged at every site after %s", secs(d.h.Now()-d.steps[0].at))
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			why := "interrupted"
			if ctx.Err() == nil {
				why = fmt.Sprintf("no write acknowledged at %s within %v", strings.Join(missing, ", "), d.o.stepTimeout)
				if e := last[missing[0]]; e != "" {
					why += " (last error: " + e + ")"
				}
			}
			d.steps[0].err = errors.New(why)
			d.fail("workload: %s", why)
			return false
		}
		pause(ctx, 50*time.Millisecond)
	}
}

func (d *drill) settle(ctx context.Context) bool {
	pause(ctx, d.o.settle)
	if ctx.Err() != nil {
		d.fail("interrupted")
		return false
	}
	return true
}

func pause(ctx context.Context, t time.Duration) {
	tm := time.NewTimer(t)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

// begin starts a step: it records the action in the history (the plot
// marks it) and the writer before it.
func (d *drill) begin(name string, kind checker.FaultKind, site string, v clusterView) *drillStep {
	st := &drillStep{name: name, at: d.h.Now(), fromWriter: v.raft.Writer, fromEpoch: v.raft.Epoch}
	d.h.AddFault(checker.FaultEvent{At: st.at, Step: checker.Step{Kind: kind, Target: site}})
	d.steps = append(d.steps, st)
	d.progress("%s", name)
	return st
}

// finish records the step's outcome; it reports whether it succeeded.
func (d *drill) finish(st *drillStep, v clusterView, err error) bool {
	st.done = d.h.Now()
	st.toWriter, st.toEpoch = v.raft.Writer, v.raft.Epoch
	st.writerSince = v.writerSince()
	if err != nil {
		st.err = err
		d.fail("%s: %v", st.name, err)
		return false
	}
	return true
}

// promote is a planned switchover to site.
func (d *drill) promote(ctx context.Context, site string) bool {
	before := d.view(ctx)
	st := d.begin("promote "+site, checker.FaultPromote, site, before)
	st.interrupts = true
	if err := d.atLeader(ctx, func(ep admin.Endpoint) error { _, err := d.client.Promote(ctx, ep, site); return err }); err != nil {
		return d.finish(st, d.view(ctx), err)
	}
	v, err := d.waitView(ctx, "writer "+site, d.o.stepTimeout, func(v clusterView) bool {
		return v.raft.Writer == site && v.raft.Epoch > before.raft.Epoch && v.siteWriter() == site
	})
	if !d.finish(st, v, err) {
		return false
	}
	st.note = fmt.Sprintf("%s writer of epoch %d", site, v.raft.Epoch)
	return d.writesAgain(ctx, st)
}

// fence simulates the loss of site (the writer) through the cluster.
func (d *drill) fence(ctx context.Context, site string) bool {
	before := d.view(ctx)
	st := d.begin("fence "+site, "fence", site, before)
	st.interrupts = true
	d.windows = append(d.windows, errWindow{site: site, from: st.at, to: -1})
	if err := d.atLeader(ctx, func(ep admin.Endpoint) error { _, err := d.client.Fence(ctx, ep, site, d.o.fenceFor); return err }); err != nil {
		return d.finish(st, d.view(ctx), err)
	}
	d.fenced = site
	v, err := d.waitView(ctx, "a writer other than "+site, d.o.stepTimeout, func(v clusterView) bool {
		return v.raft.Writer != site && v.raft.Writer != "" && v.raft.Epoch > before.raft.Epoch && v.siteWriter() == v.raft.Writer
	})
	if !d.finish(st, v, err) {
		return false
	}
	st.note = fmt.Sprintf("%s writer of epoch %d", v.raft.Writer, v.raft.Epoch)
	v, err = d.waitView(ctx, site+" dropped from the in-sync set", d.o.stepTimeout, func(v clusterView) bool {
		return !slices.Contains(v.raft.InSync, site)
	})
	if err != nil {
		st.err = err
		d.fail("%s: %v", st.name, err)
		return false
	}
	st.note += fmt.Sprintf("; %s out of the in-sync set after %s", site, secs(d.h.Now()-st.at))
	return d.writesAgain(ctx, st)
}

// unfence lifts the fence and waits for the site to be in sync again.
func (d *drill) unfence(ctx context.Context, site string) bool {
	before := d.view(ctx)
	st := d.begin("unfence "+site, "unfence", site, before)
	if err := d.atLeader(ctx, func(ep admin.Endpoint) error { _, err := d.client.Unfence(ctx, ep, site); return err }); err != nil {
		return d.finish(st, d.view(ctx), err)
	}
	d.fenced = ""
	v, err := d.waitView(ctx, site+" back in sync", d.o.resyncTimeout, func(v clusterView) bool {
		return v.inSync(site)
	})
	d.windows[len(d.windows)-1].to = d.h.Now()
	if !d.finish(st, v, err) {
		return false
	}
	st.note = fmt.Sprintf("%s resynced and in sync after %s", site, secs(st.done-st.at))
	d.h.AddFault(checker.FaultEvent{At: st.done, Step: checker.Step{Kind: "in-sync", Target: site}})
	return true
}

// writesAgain waits for a write acknowledged after the step's effect.
func (d *drill) writesAgain(ctx context.Context, st *drillStep) bool {
	deadline := time.Now().Add(d.o.stepTimeout)
	for {
		for _, op := range d.h.Ops() {
			if op.Kind == checker.Write && op.Outcome == checker.OK && op.Call >= st.done {
				return true
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			st.err = fmt.Errorf("no write acknowledged within %v after the new writer took over", d.o.stepTimeout)
			d.fail("%s: %v", st.name, st.err)
			return false
		}
		pause(ctx, 20*time.Millisecond)
	}
}

// atLeader calls fn at the Raft leader, following the leader while it
// moves.
func (d *drill) atLeader(ctx context.Context, fn func(admin.Endpoint) error) error {
	return d.client.AtLeader(ctx, d.eps, 20, fn)
}

// clusterView is what the members said at one moment.
type clusterView struct {
	raft admin.RaftStatus // the most recent committed view among them
	reps []admin.MemberReport
}

func (d *drill) view(ctx context.Context) clusterView {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v := clusterView{reps: d.client.Gather(c, d.eps)}
	if f := admin.Freshest(v.reps); f != nil {
		v.raft = *f
	}
	return v
}

func (d *drill) waitView(ctx context.Context, what string, timeout time.Duration, cond func(clusterView) bool) (clusterView, error) {
	deadline := time.Now().Add(timeout)
	for {
		v := d.view(ctx)
		if cond(v) {
			return v, nil
		}
		if ctx.Err() != nil {
			return v, fmt.Errorf("interrupted waiting for %s", what)
		}
		if time.Now().After(deadline) {
			return v, fmt.Errorf("no %s within %v (writer %s, epoch %d, in sync: %s)", what, timeout,
				orDash(v.raft.Writer), v.raft.Epoch, strings.Join(v.raft.InSync, ","))
		}
		pause(ctx, 50*time.Millisecond)
	}
}

func (v clusterView) member(name string) *admin.Status {
	for _, r := range v.reps {
		if r.Name == name {
			return r.Status
		}
	}
	return nil
}

// siteWriter is the data site whose volume acts as writer.
func (v clusterView) siteWriter() string { return admin.SiteWriter(v.reps) }

func (v clusterView) writerSince() time.Time {
	if st := v.member(v.raft.Writer); st != nil && st.Raft.Epoch == v.raft.Epoch && st.Raft.WriterSince != "" {
		t, err := time.Parse(time.RFC3339Nano, st.Raft.WriterSince)
		if err == nil {
			return t
		}
	}
	return time.Time{}
}

func (v clusterView) isFenced(site string) bool { return v.raft.IsFenced(site) }

// inSync is admin.InSync: the one definition of in sync.
func (v clusterView) inSync(site string) bool { return admin.InSync(v.reps, site) }

// readBackResult: the scratch region as every site returned it.
type readBackResult struct {
	err     error
	sites   []string
	differ  string // first difference, if any
	sum     string
	corrupt []uint64 // workload blocks that hold no valid stamp
}

// readBack reads the whole scratch region at every data site and
// compares, chunk by chunk.
func (d *drill) readBack(ctx context.Context) readBackResult {
	var r readBackResult
	d.progress("reading the scratch region back at %s", strings.Join(d.sites, ", "))
	sess := map[string]*initiator.Session{}
	defer func() {
		for _, s := range sess {
			s.Close()
		}
	}()
	for _, site := range d.sites {
		s, err := d.dial(ctx, site, d.o.initiator+"-read")
		if err != nil {
			r.err = err
			return r
		}
		s.SetBlockSize(d.lun, d.bs)
		sess[site] = s
	}
	r.sites = d.sites
	h := sha256.New()
	const chunk = 256 << 10
	first := d.sites[0]
	for off := int64(0); off < d.scratchLen; off += chunk {
		n := min(chunk, d.scratchLen-off)
		lba := uint64((d.scratchOff + off) / int64(d.bs))
		var ref []byte
		for _, site := range d.sites {
			c, cancel := context.WithTimeout(ctx, d.opTime)
			b, err := sess[site].ReadBlocks(c, d.lun, lba, uint32(n/int64(d.bs)))
			cancel()
			if err != nil {
				r.err = fmt.Errorf("read at %s, byte %d: %w", site, d.scratchOff+off, err)
				return r
			}
			if ref == nil {
				ref = b
				h.Write(b)
				continue
			}
			if r.differ == "" {
				if i := firstDiffAt(ref, b); i >= 0 {
					r.differ = fmt.Sprintf("%s and %s differ at byte %d", first, site, d.scratchOff+off+int64(i))
				}
			}
		}
		for i := int64(0); i < n; i += int64(d.bs) {
			blk := uint64(d.scratchOff+off+i) / uint64(d.bs)
			if blk >= uint64(d.scratchOff/int64(d.bs))+uint64(d.o.blocks) {
				break
			}
			if _, bad := checker.ReadValue(blk, ref[i:i+int64(d.bs)]); bad {
				r.corrupt = append(r.corrupt, blk)
			}
		}
	}
	r.sum = hex.EncodeToString(h.Sum(nil))[:16]
	return r
}

func firstDiffAt(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// verifyResult is the online verify at the writer (/v1/verify).
type verifyResult struct {
	err      error
	done     int
	total    int
	region   int64
	replicas []string
	differ   map[string][]int64
}

func (d *drill) verify(ctx context.Context) verifyResult {
	var r verifyResult
	v := d.view(ctx)
	w := v.siteWriter()
	i := slices.IndexFunc(d.eps, func(ep admin.Endpoint) bool { return ep.Name == w })
	if w == "" || i < 0 || d.eps[i].Admin == "" {
		r.err = errors.New("no reachable writer to run it")
		return r
	}
	d.progress("online verify at %s", w)
	rep, err := d.client.Verify(ctx, d.eps[i])
	r.err = err
	r.done, r.total, r.region, r.replicas, r.differ = rep.Done, rep.Total, rep.Region, rep.Replicas, rep.Differ
	return r
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

func (d *drill) expected(op checker.Op, end time.Duration) bool {
	for _, w := range d.windows {
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

// stall is the longest time without an acknowledged write from the
// step's action to the first write acknowledged after its effect was
// seen, with where it began and ended.
func stall(acks []time.Duration, st *drillStep) (gap, from, to time.Duration) {
	prev := st.at
	for _, a := range acks {
		if a < st.at {
			continue
		}
		if a-prev > gap {
			gap, from, to = a-prev, prev, a
		}
		prev = a
		if a >= st.done {
			break
		}
	}
	return gap, from, to
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

// report prints the report and returns whether the drill passed.
func (d *drill) report(w io.Writer, st *checker.Stats, chk checker.Result, rb readBackResult, ver verifyResult, vEnd clusterView,
	end time.Duration, plotErr, histErr error) bool {
	start := d.h.Start()
	clock := func(at time.Duration) string { return start.Add(at).Format("15:04:05.000") }
	since := func(at time.Duration) string { return fmt.Sprintf("+%.3fs", at.Seconds()) }
	ops := d.h.Ops()

	fmt.Fprintf(w, "metrolun drill, %s\n", start.Format(time.RFC3339))
	var names []string
	for _, m := range d.members {
		names = append(names, m.Name+" ("+m.Role+")")
	}
	fmt.Fprintf(w, "cluster: %s; config %s\n", strings.Join(names, ", "), d.cfgPath)
	fmt.Fprintf(w, "LUN: %s LUN %d, %d bytes in %d-byte blocks\n", d.iqn, d.lun, d.lunBytes, d.bs)
	fmt.Fprintf(w, "scratch region: bytes %d to %d (%s, LBA %d to %d): %s; the drill overwrote it\n",
		d.scratchOff, d.scratchOff+d.scratchLen-1, sizeText(d.scratchLen),
		d.scratchOff/int64(d.bs), (d.scratchOff+d.scratchLen)/int64(d.bs)-1, d.scratchWhy)
	var clients []string
	for _, s := range d.sites {
		clients = append(clients, s+" at "+d.portals[s])
	}
	fmt.Fprintf(w, "workload: one client per data site (%s) on the first %d blocks, reads:writes 1:1, seed %d\n",
		strings.Join(clients, ", "), d.o.blocks, d.o.seed)
	fmt.Fprintf(w, "writer: %s (epoch %d) at the start, %s (epoch %d) at the end\n",
		orDash(d.writer0), d.epoch0, orDash(vEnd.raft.Writer), vEnd.raft.Epoch)
	if fs := vEnd.raft.Fenced; len(fs) > 0 {
		for _, f := range fs {
			d.fail("%s is still fenced (until %s)", f.Site, f.Until)
		}
	}
	if d.writer0 != "" && len(d.fails) == 0 && vEnd.raft.Writer != d.writer0 {
		d.fail("the writer did not come back to %s (it is %s)", d.writer0, orDash(vEnd.raft.Writer))
	}

	fmt.Fprintln(w, "\nsteps:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range d.steps {
		res := s.note
		if s.err != nil {
			res = "FAILED: " + s.err.Error()
		} else if s.done > 0 && s.note != "" {
			res = fmt.Sprintf("ok after %s: %s", secs(s.done-s.at), s.note)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", clock(s.at), since(s.at), s.name, res)
	}
	tw.Flush()

	var acks []time.Duration
	for _, op := range ops {
		if op.Kind == checker.Write && op.Outcome == checker.OK {
			acks = append(acks, op.Return)
		}
	}
	slices.Sort(acks)
	fmt.Fprintln(w, "\ntime without a writer:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  STEP\tNO WRITE ACKNOWLEDGED\tRAFT")
	for _, s := range d.steps {
		if !s.interrupts || s.done == 0 {
			continue
		}
		gap, from, to := stall(acks, s)
		ws := "-"
		if gap > 0 {
			ws = fmt.Sprintf("%s (%s to %s)", secs(gap), since(from), since(to))
		}
		rs := "no epoch change"
		if s.toEpoch != s.fromEpoch {
			rs = fmt.Sprintf("epoch %d -> %d, writer %s -> %s", s.fromEpoch, s.toEpoch, orDash(s.fromWriter), orDash(s.toWriter))
			if !s.writerSince.IsZero() {
				rs += fmt.Sprintf("; new writer's lease from %s, %s after the action", since(s.writerSince.Sub(start)), secs(s.writerSince.Sub(start.Add(s.at))))
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.name, ws, rs)
	}
	tw.Flush()

	// I/O errors.
	type errCount struct {
		site, kind string
		expected   bool
		n          int
	}
	counts := map[[3]string]*errCount{}
	total, unexpected, cut := 0, 0, 0
	for _, op := range ops {
		if op.Outcome == checker.OK {
			continue
		}
		if op.Return >= d.stoppedAt && strings.Contains(op.Err, context.Canceled.Error()) {
			cut++
			continue
		}
		exp := d.expected(op, end)
		total++
		if !exp {
			unexpected++
		}
		k := [3]string{op.Site, errKind(op.Err), strconv.FormatBool(exp)}
		if counts[k] == nil {
			counts[k] = &errCount{site: op.Site, kind: k[1], expected: exp}
		}
		counts[k].n++
	}
	fmt.Fprintf(w, "\nI/O errors seen by the workload: %d (%d unexpected)", total, unexpected)
	if st != nil {
		fmt.Fprintf(w, " in %d operations (%d failed, %d indeterminate; %d logins)", st.Ops, st.Failed, st.Indeterminate, st.Logins)
	}
	if cut > 0 {
		fmt.Fprintf(w, "; %d cut short when the workload stopped", cut)
	}
	fmt.Fprintln(w)
	var cs []*errCount
	for _, c := range counts {
		cs = append(cs, c)
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].n != cs[j].n {
			return cs[i].n > cs[j].n
		}
		return cs[i].site+cs[i].kind < cs[j].site+cs[j].kind
	})
	for _, c := range cs {
		note := "UNEXPECTED"
		if c.expected {
			note = "expected: the site was fenced or resyncing"
		}
		fmt.Fprintf(w, "  %5d  %s  %s  (%s)\n", c.n, c.site, c.kind, note)
	}
	if unexpected > 0 {
		d.fail("%d I/O errors the drill should not cause (sites that were neither fenced nor resyncing)", unexpected)
	}

	fmt.Fprintf(w, "\nlinearizability: %s\n", strings.SplitN(chk.String(), "\n", 2)[0])
	if !chk.OK() {
		for _, a := range chk.Anomalies[:min(len(chk.Anomalies), 5)] {
			fmt.Fprintf(w, "  %s\n", a.Text)
		}
		if len(chk.Anomalies) == 0 && chk.Explanation != "" {
			fmt.Fprintf(w, "  %s\n", chk.Explanation)
		}
		d.fail("the history is not linearizable (%s)", chk.Verdict)
	}

	fmt.Fprint(w, "data: ")
	switch {
	case rb.err != nil:
		fmt.Fprintf(w, "scratch region not read back: %v\n", rb.err)
		d.fail("scratch region not read back: %v", rb.err)
	case rb.differ != "":
		fmt.Fprintf(w, "scratch region read back at %s: DIFFERENT: %s\n", strings.Join(rb.sites, ", "), rb.differ)
		d.fail("scratch region: %s", rb.differ)
	default:
		fmt.Fprintf(w, "scratch region read back at %s: identical (%d bytes, sha256 %s…)", strings.Join(rb.sites, ", "), d.scratchLen, rb.sum)
		if len(rb.corrupt) == 0 {
			fmt.Fprintf(w, "; all %d workload blocks hold a valid stamp\n", d.o.blocks)
		} else {
			fmt.Fprintln(w)
		}
	}
	if rb.err == nil && len(rb.corrupt) > 0 {
		fmt.Fprintf(w, "  %d workload blocks hold no valid stamp, first LBA %d\n", len(rb.corrupt), rb.corrupt[0])
		d.fail("%d workload blocks corrupt, first LBA %d", len(rb.corrupt), rb.corrupt[0])
	}

	fmt.Fprint(w, "verify: ")
	bad := 0
	for _, offs := range ver.differ {
		bad += len(offs)
	}
	switch {
	case ver.err != nil && ver.total == 0:
		fmt.Fprintf(w, "failed: %v\n", ver.err)
		d.fail("verify: %v", ver.err)
	default:
		fmt.Fprintf(w, "%d of %d regions of %d bytes compared against %s", ver.done, ver.total, ver.region, strings.Join(ver.replicas, ", "))
		if bad == 0 && ver.err == nil {
			fmt.Fprintln(w, ": all in-sync replicas identical")
			break
		}
		fmt.Fprintln(w)
		for name, offs := range ver.differ {
			fmt.Fprintf(w, "  %s differs in %d regions, first at byte %d\n", name, len(offs), offs[0])
		}
		if ver.err != nil {
			fmt.Fprintf(w, "  %v\n", ver.err)
		}
		if bad > 0 {
			d.fail("verify: %d regions differ", bad)
		} else {
			d.fail("verify: %v", ver.err)
		}
	}
	if d.o.plot != "" {
		if plotErr != nil {
			fmt.Fprintf(w, "plot: %v\n", plotErr)
		} else {
			fmt.Fprintf(w, "plot: %s\n", d.o.plot)
		}
	}
	if d.o.history != "" {
		if histErr != nil {
			fmt.Fprintf(w, "history: %v\n", histErr)
		} else {
			fmt.Fprintf(w, "history: %s\n", d.o.history)
		}
	}
	if len(d.fails) > 0 {
		why := strings.Join(strings.Fields(strings.Join(d.fails, "; ")), " ")
		fmt.Fprintf(w, "verdict: fail: %s\n", why)
		return false
	}
	fmt.Fprintln(w, "verdict: pass")
	return true
}

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
