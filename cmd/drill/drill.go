// Package drill runs a failover drill against a live cluster (DESIGN.md
// Operations): a planned switchover to another in-sync data site and back
// and, with FenceWriter, a simulated loss of the writer site (fenced
// through the cluster, raftlog/fence.go), while a checked workload writes
// and reads a scratch region of the LUN through every data site. Run
// returns a Result: the verdict, pass or fail with its reasons, and
// everything the report shows, as data. The package prints nothing;
// `metrolun drill` (cmd/metrolun/drill.go) parses the flags and prints
// the Result as text or JSON.
package drill

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/integration/checker"
	"github.com/metrolun/metrolun/integration/initiator"
)

// Options say which cluster to drill and how. The flag of `metrolun drill`
// that sets each is named; error texts name the flags.
type Options struct {
	// Members are the cluster's members, Endpoints their admin
	// endpoints and Client the operator's admin client.
	Members   []conf.Member
	Endpoints []admin.Endpoint
	Client    *admin.Client
	// Config is the member config the cluster was found with (its
	// targets, cluster timing), read from ConfigPath.
	Config     *conf.Config
	ConfigPath string

	// Scratch is the region of the LUN the drill may overwrite,
	// OFFSET:LENGTH with units (--scratch). Empty is allowed only with
	// DefaultScratch: the last 4 MiB of the LUN, a demo cluster's.
	Scratch        string
	DefaultScratch bool
	// FenceWriter also simulates the loss of the writer site
	// (--fence-writer); To is the site to switch over to (--to; empty:
	// the first other in-sync data site).
	FenceWriter bool
	To          string
	// Settle is the workload time before the first step and after each
	// (--settle); FenceFor the fence's deadline, after which the cluster
	// lifts it by itself should the drill die (--fence-for);
	// StepTimeout how long a step may take to show its effect
	// (--step-timeout); ResyncTimeout how long the unfenced site may
	// take to be in sync again (--resync-timeout).
	Settle, FenceFor, StepTimeout, ResyncTimeout time.Duration
	// Plot and History: files to write the latency plot (SVG) and every
	// operation (JSON) to (--plot, --history; empty: none).
	Plot, History string
	// Target and LUN (--target, --lun): the LU; empty and negative take
	// the first of the config's.
	Target string
	LUN    int
	// Initiator is the initiator name prefix (--initiator): client i
	// logs in as PREFIX-cI, the read-back as PREFIX-read.
	Initiator string
	// Seed is the workload's seed (--seed; 0: from the clock), Blocks
	// how many blocks of the scratch region it uses (--blocks).
	Seed   uint64
	Blocks int

	// Progress, when set, is told what the drill is doing as it goes,
	// one line at a time.
	Progress func(line string)
}

// demoScratch is the default scratch region of a demo cluster: the end of
// its LUN.
const demoScratch = 4 << 20

// drill is one run.
type drill struct {
	o       Options
	iqn     string
	lun     uint64
	sites   []string          // data sites, in config order
	portals map[string]string // data site -> iSCSI portal
	opTime  time.Duration     // bound on one workload operation

	// Learned from the LUN and the options.
	bs                     uint32
	lunBytes               int64
	scratchOff, scratchLen int64
	scratchWhy             string

	h       *checker.History
	steps   []*Step
	stopped string // why the steps ended early
	fenced  string // fenced by this drill and not yet unfenced
	windows []errWindow
}

// Run runs a drill and returns what it found; the Result's verdict says
// whether it passed. An error means the drill did not start (bad options,
// no data site answering for the LU): nothing was written.
//
// Cancelling ctx ends the steps early (the verdict is then a fail); the
// drill still lifts a fence it set, stops its workload, checks and
// reads back before it returns.
func Run(ctx context.Context, o Options) (*Result, error) {
	d, err := newDrill(ctx, o)
	if err != nil {
		return nil, err
	}
	return d.run(ctx), nil
}

// Validate checks the options that need no cluster: the times, the
// block count and that a scratch region is given. Run calls it first; a
// caller may call it before it connects.
func (o *Options) Validate() error {
	if o.Settle < 0 || o.StepTimeout <= 0 || o.ResyncTimeout <= 0 || o.Blocks < 1 {
		return errors.New("--settle, --step-timeout, --resync-timeout and --blocks must be positive")
	}
	if o.FenceFor <= 0 {
		return errors.New("--fence-for must be positive: a fence always needs a deadline")
	}
	if !o.DefaultScratch && o.Scratch == "" {
		return errors.New("--scratch OFFSET:LENGTH is required with --config: the drill writes that region of the LUN " +
			"and must never touch user data; give it a region nothing uses (e.g. --scratch 100GiB:4MiB). " +
			"A demo cluster (--dir) defaults to the last 4MiB of its LUN")
	}
	return nil
}

func newDrill(ctx context.Context, o Options) (*drill, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Config == nil || o.Client == nil {
		return nil, errors.New("no cluster config or admin client")
	}
	d := &drill{o: o, portals: map[string]string{}}
	cfg, path := o.Config, o.ConfigPath
	d.iqn, d.lun = o.Target, uint64(max(o.LUN, 0))
	if len(cfg.Targets) > 0 {
		t := cfg.Targets[0]
		if d.iqn == "" {
			d.iqn = t.Name
		}
		if o.LUN < 0 && len(t.LUNs) > 0 {
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
	for _, m := range o.Members {
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
	if d.o.Seed == 0 {
		d.o.Seed = uint64(time.Now().UnixNano())
	}
	if err := d.scratchRegion(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *drill) initiatorNames() []string {
	var out []string
	for i := 0; i <= len(d.portals); i++ { // the clients, then the prefill
		out = append(out, fmt.Sprintf("%s-c%d", d.o.Initiator, i))
	}
	return append(out, d.o.Initiator+"-read")
}

// scratchRegion learns the LUN's geometry and checks the scratch region.
func (d *drill) scratchRegion(ctx context.Context) error {
	var lastErr error
	for _, site := range d.sites {
		s, err := d.dial(ctx, site, d.o.Initiator+"-read")
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
	if d.o.Scratch == "" {
		d.scratchLen = min(demoScratch, d.lunBytes)
		d.scratchOff = d.lunBytes - d.scratchLen
		d.scratchWhy = "the last 4 MiB of the LUN (the default for a demo cluster)"
	} else {
		off, n, err := ParseScratch(d.o.Scratch)
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
	case d.scratchLen < int64(d.o.Blocks)*bs:
		return fmt.Errorf("scratch region of %d bytes is smaller than the %d blocks the workload uses (--blocks)", d.scratchLen, d.o.Blocks)
	case d.scratchOff+d.scratchLen > d.lunBytes:
		return fmt.Errorf("scratch region %d:%d ends past the LUN (%d bytes)", d.scratchOff, d.scratchLen, d.lunBytes)
	}
	return nil
}

// ParseScratch parses --scratch's OFFSET:LENGTH, each a size with an
// optional unit (conf.ParseSize).
func ParseScratch(s string) (off, length int64, err error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("--scratch %q: want OFFSET:LENGTH, e.g. 100GiB:4MiB", s)
	}
	off, err = conf.ParseSize(a)
	if err != nil {
		return 0, 0, fmt.Errorf("--scratch offset: %w", err)
	}
	length, err = conf.ParseSize(b)
	if err != nil {
		return 0, 0, fmt.Errorf("--scratch length: %w", err)
	}
	if length == 0 {
		return 0, 0, errors.New("--scratch length is 0")
	}
	return off, length, nil
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

// progress tells the operator what is going on.
func (d *drill) progress(format string, args ...any) {
	if d.o.Progress != nil {
		d.o.Progress(fmt.Sprintf(format, args...))
	}
}

// stop records why the steps end here.
func (d *drill) stop(format string, args ...any) {
	if d.stopped == "" {
		d.stopped = fmt.Sprintf(format, args...)
	}
}

// run runs the drill and returns its result.
func (d *drill) run(ctx context.Context) *Result {
	d.h = checker.NewHistory()
	v := d.view(ctx)
	r := &Result{WriterStart: v.raft.Writer, EpochStart: v.raft.Epoch}

	// The workload runs through every step.
	wl := checker.Workload{
		FirstLBA:     uint64(d.scratchOff / int64(d.bs)),
		Blocks:       d.o.Blocks,
		Seed:         d.o.Seed,
		OpTimeout:    d.opTime,
		InitiatorIQN: d.o.Initiator,
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
	d.steps = append(d.steps, &Step{Name: "workload started", At: d.h.Now()})

	d.runSteps(ctx)
	// Whatever happened: no site stays fenced by this drill.
	if d.fenced != "" {
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := d.atLeader(c, func(ep admin.Endpoint) error { _, err := d.o.Client.Unfence(c, ep, d.fenced); return err }); err != nil {
			r.Unfence = &UnfenceError{Site: d.fenced, Err: err.Error()}
		} else {
			d.progress("unfenced %s", d.fenced)
		}
		cancel()
	}
	end := d.h.Now()
	stopWorkload()
	res := <-done
	d.steps = append(d.steps, &Step{Name: "workload stopped", At: end})
	if res.err != nil {
		r.WorkloadErr = res.err.Error()
	}
	if st := res.st; st != nil {
		r.Workload = &WorkloadStats{Ops: st.Ops, Reads: st.Reads, Writes: st.Writes, OK: st.OK,
			Failed: st.Failed, Indeterminate: st.Indeterminate, Logins: st.Logins}
	}

	r.ReadBack = d.readBack(context.Background())
	r.Verify = d.verify(context.Background())
	d.progress("checking %d operations for linearizability", d.h.Len())
	chk := checker.Check(d.h, 2*time.Minute)
	r.Linearizability = Linearizability{Verdict: string(chk.Verdict), Summary: strings.SplitN(chk.String(), "\n", 2)[0]}
	if !chk.OK() {
		for _, a := range chk.Anomalies[:min(len(chk.Anomalies), 5)] {
			r.Linearizability.Anomalies = append(r.Linearizability.Anomalies, a.Text)
		}
		if len(chk.Anomalies) == 0 {
			r.Linearizability.Explanation = chk.Explanation
		}
	}
	if d.o.Plot != "" {
		r.Plot = d.o.Plot
		if err := checker.PlotLatency(d.h, d.o.Plot); err != nil {
			r.PlotErr = err.Error()
		}
	}
	if d.o.History != "" {
		r.History = d.o.History
		if err := d.h.SaveJSON(d.o.History); err != nil {
			r.HistoryErr = err.Error()
		}
	}
	vEnd := d.view(context.Background())
	r.End = EndView{Writer: vEnd.raft.Writer, Epoch: vEnd.raft.Epoch}
	for _, f := range vEnd.raft.Fenced {
		r.End.Fenced = append(r.End.Fenced, Fenced{Site: f.Site, Until: f.Until})
	}
	d.describe(r, end)
	r.judge()
	return r
}

// describe fills in what the drill was: the cluster, the LU, the scratch
// region, the workload, its steps and errors.
func (d *drill) describe(r *Result, end time.Duration) {
	r.Start = d.h.Start()
	for _, m := range d.o.Members {
		r.Members = append(r.Members, Member{Name: m.Name, Role: m.Role})
	}
	r.ConfigPath = d.o.ConfigPath
	r.Target, r.LUN, r.LUNBytes, r.BlockSize = d.iqn, d.lun, d.lunBytes, d.bs
	r.Scratch = Region{Offset: d.scratchOff, Length: d.scratchLen, Why: d.scratchWhy}
	for _, s := range d.sites {
		r.Sites = append(r.Sites, Site{Name: s, Portal: d.portals[s]})
	}
	r.Blocks, r.Seed, r.FenceFor = d.o.Blocks, d.o.Seed, d.o.FenceFor
	r.Stopped = d.stopped

	ops := d.h.Ops()
	var acks []time.Duration
	for _, op := range ops {
		if op.Kind == checker.Write && op.Outcome == checker.OK {
			acks = append(acks, op.Return)
		}
	}
	slices.Sort(acks)
	for _, s := range d.steps {
		st := *s
		if st.Interrupts && st.Done != 0 {
			sl := stall(acks, st.At, st.Done)
			st.Stall = &sl
		}
		r.Steps = append(r.Steps, st)
	}
	// Operations still running when the workload was stopped were cut
	// short by the drill itself, not failed by the cluster.
	r.Errors = countErrors(ops, d.windows, end, end)
}
