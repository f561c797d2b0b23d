package drill

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/integration/checker"
)

// runSteps runs the drill's steps; it stops at the first that fails.
func (d *drill) runSteps(ctx context.Context) {
	if !d.baseline(ctx) || !d.settle(ctx) {
		return
	}
	v := d.view(ctx)
	w := v.raft.Writer
	to := d.o.To
	if to == "" {
		for _, s := range d.sites {
			if s != w && slices.Contains(v.raft.InSync, s) && !v.isFenced(s) {
				to = s
				break
			}
		}
	}
	if w == "" {
		d.stop("the cluster has no writer")
		return
	}
	if to == "" {
		d.stop("no other in-sync data site to switch over to (in sync: %s)", strings.Join(v.raft.InSync, ", "))
		return
	}
	if to == w || !slices.Contains(d.sites, to) {
		d.stop("--to %s: not a data site other than the writer %s", to, w)
		return
	}
	if !d.promote(ctx, to) || !d.settle(ctx) || !d.promote(ctx, w) || !d.settle(ctx) {
		return
	}
	if !d.o.FenceWriter {
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
	d.progress("workload: one client per data site on %d blocks at byte %d", d.o.Blocks, d.scratchOff)
	deadline := time.Now().Add(d.o.StepTimeout)
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
			d.steps[0].Note = fmt.Sprintf("writes acknowledged at every site after %s", secs(d.h.Now()-d.steps[0].At))
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			why := "interrupted"
			if ctx.Err() == nil {
				why = fmt.Sprintf("no write acknowledged at %s within %v", strings.Join(missing, ", "), d.o.StepTimeout)
				if e := last[missing[0]]; e != "" {
					why += " (last error: " + e + ")"
				}
			}
			d.steps[0].Err = why
			d.stop("workload: %s", why)
			return false
		}
		pause(ctx, 50*time.Millisecond)
	}
}

func (d *drill) settle(ctx context.Context) bool {
	pause(ctx, d.o.Settle)
	if ctx.Err() != nil {
		d.stop("interrupted")
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
func (d *drill) begin(name string, kind checker.FaultKind, site string, v clusterView) *Step {
	st := &Step{Name: name, At: d.h.Now(), FromWriter: v.raft.Writer, FromEpoch: v.raft.Epoch}
	d.h.AddFault(checker.FaultEvent{At: st.At, Step: checker.Step{Kind: kind, Target: site}})
	d.steps = append(d.steps, st)
	d.progress("%s", name)
	return st
}

// finish records the step's outcome; it reports whether it succeeded.
func (d *drill) finish(st *Step, v clusterView, err error) bool {
	st.Done = d.h.Now()
	st.ToWriter, st.ToEpoch = v.raft.Writer, v.raft.Epoch
	st.WriterSince = v.writerSince()
	if err != nil {
		st.Err = err.Error()
		d.stop("%s: %v", st.Name, err)
		return false
	}
	return true
}

// promote is a planned switchover to site.
func (d *drill) promote(ctx context.Context, site string) bool {
	before := d.view(ctx)
	st := d.begin("promote "+site, checker.FaultPromote, site, before)
	st.Interrupts = true
	if err := d.atLeader(ctx, func(ep admin.Endpoint) error { _, err := d.o.Client.Promote(ctx, ep, site); return err }); err != nil {
		return d.finish(st, d.view(ctx), err)
	}
	v, err := d.waitView(ctx, "writer "+site, d.o.StepTimeout, func(v clusterView) bool {
		return v.raft.Writer == site && v.raft.Epoch > before.raft.Epoch && v.siteWriter() == site
	})
	if !d.finish(st, v, err) {
		return false
	}
	st.Note = fmt.Sprintf("%s writer of epoch %d", site, v.raft.Epoch)
	return d.writesAgain(ctx, st)
}

// fence simulates the loss of site (the writer) through the cluster.
func (d *drill) fence(ctx context.Context, site string) bool {
	before := d.view(ctx)
	st := d.begin("fence "+site, "fence", site, before)
	st.Interrupts = true
	d.windows = append(d.windows, errWindow{site: site, from: st.At, to: -1})
	if err := d.atLeader(ctx, func(ep admin.Endpoint) error { _, err := d.o.Client.Fence(ctx, ep, site, d.o.FenceFor); return err }); err != nil {
		return d.finish(st, d.view(ctx), err)
	}
	d.fenced = site
	v, err := d.waitView(ctx, "a writer other than "+site, d.o.StepTimeout, func(v clusterView) bool {
		return v.raft.Writer != site && v.raft.Writer != "" && v.raft.Epoch > before.raft.Epoch && v.siteWriter() == v.raft.Writer
	})
	if !d.finish(st, v, err) {
		return false
	}
	st.Note = fmt.Sprintf("%s writer of epoch %d", v.raft.Writer, v.raft.Epoch)
	v, err = d.waitView(ctx, site+" dropped from the in-sync set", d.o.StepTimeout, func(v clusterView) bool {
		return !slices.Contains(v.raft.InSync, site)
	})
	if err != nil {
		st.Err = err.Error()
		d.stop("%s: %v", st.Name, err)
		return false
	}
	st.Note += fmt.Sprintf("; %s out of the in-sync set after %s", site, secs(d.h.Now()-st.At))
	return d.writesAgain(ctx, st)
}

// unfence lifts the fence and waits for the site to be in sync again.
func (d *drill) unfence(ctx context.Context, site string) bool {
	before := d.view(ctx)
	st := d.begin("unfence "+site, "unfence", site, before)
	if err := d.atLeader(ctx, func(ep admin.Endpoint) error { _, err := d.o.Client.Unfence(ctx, ep, site); return err }); err != nil {
		return d.finish(st, d.view(ctx), err)
	}
	d.fenced = ""
	v, err := d.waitView(ctx, site+" back in sync", d.o.ResyncTimeout, func(v clusterView) bool {
		return v.inSync(site)
	})
	d.windows[len(d.windows)-1].to = d.h.Now()
	if !d.finish(st, v, err) {
		return false
	}
	st.Note = fmt.Sprintf("%s resynced and in sync after %s", site, secs(st.Done-st.At))
	d.h.AddFault(checker.FaultEvent{At: st.Done, Step: checker.Step{Kind: "in-sync", Target: site}})
	return true
}

// writesAgain waits for a write acknowledged after the step's effect.
func (d *drill) writesAgain(ctx context.Context, st *Step) bool {
	deadline := time.Now().Add(d.o.StepTimeout)
	for {
		for _, op := range d.h.Ops() {
			if op.Kind == checker.Write && op.Outcome == checker.OK && op.Call >= st.Done {
				return true
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			st.Err = fmt.Sprintf("no write acknowledged within %v after the new writer took over", d.o.StepTimeout)
			d.stop("%s: %s", st.Name, st.Err)
			return false
		}
		pause(ctx, 20*time.Millisecond)
	}
}

// atLeader calls fn at the Raft leader, following the leader while it
// moves.
func (d *drill) atLeader(ctx context.Context, fn func(admin.Endpoint) error) error {
	return d.o.Client.AtLeader(ctx, d.o.Endpoints, 20, fn)
}

// clusterView is what the members said at one moment.
type clusterView struct {
	raft admin.RaftStatus // the most recent committed view among them
	reps []admin.MemberReport
}

func (d *drill) view(ctx context.Context) clusterView {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v := clusterView{reps: d.o.Client.Gather(c, d.o.Endpoints)}
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
