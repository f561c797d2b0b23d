package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/conf"
)

// Commands that talk to a running cluster through its members' admin
// endpoints: status, promote, verify, member. They find the cluster with
// --config FILE (any member's config) or --dir DIR (a demo's directory);
// members added since that config was written are found through the Raft
// state of those it lists (gatherCluster).

type clusterFlags struct {
	config string
	dir    string
}

func (f *clusterFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.config, "config", "", "a member's config file")
	cmd.Flags().StringVar(&f.dir, "dir", "", "a demo cluster's directory")
}

// members returns the cluster's members from the config.
func (f *clusterFlags) members() ([]conf.Member, error) {
	path := f.config
	if path == "" && f.dir != "" {
		found, _ := filepath.Glob(filepath.Join(f.dir, "*", "metrolun.hcl"))
		slices.Sort(found)
		for _, p := range found {
			if c, err := conf.Load(p); err == nil && c.Cluster != nil {
				path = p
				break
			}
		}
		if path == "" {
			return nil, fmt.Errorf("%s holds no cluster member config (DIR/*/metrolun.hcl); is it a multi-site demo?", f.dir)
		}
	}
	if path == "" {
		return nil, errors.New("--config FILE or --dir DIR is required")
	}
	c, err := conf.Load(path)
	if err != nil {
		return nil, err
	}
	if c.Cluster == nil {
		return nil, fmt.Errorf("%s has no cluster block: a single site has no cluster to ask", path)
	}
	return c.Cluster.Members, nil
}

var adminClient = &http.Client{Timeout: 15 * time.Second}

func adminCall(ctx context.Context, method, addr, path string, out any) (int, error) {
	return adminSend(ctx, method, addr, path, nil, out)
}

type memberReport struct {
	Name      string         `json:"name"`
	Role      string         `json:"role"`
	Admin     string         `json:"admin"`
	Reachable bool           `json:"reachable"`
	Error     string         `json:"error,omitempty"`
	Status    *clusterStatus `json:"status,omitempty"`
}

func gatherStatus(ctx context.Context, members []conf.Member) []memberReport {
	out := make([]memberReport, len(members))
	done := make(chan struct{}, len(members))
	for i, m := range members {
		out[i] = memberReport{Name: m.Name, Role: m.Role, Admin: m.Admin}
		go func() {
			defer func() { done <- struct{}{} }()
			if m.Admin == "" {
				out[i].Error = "no admin address in the config"
				return
			}
			c, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			var st clusterStatus
			if _, err := adminCall(c, http.MethodGet, m.Admin, "/v1/status", &st); err != nil {
				out[i].Error = err.Error()
				return
			}
			out[i].Reachable, out[i].Status = true, &st
		}()
	}
	for range members {
		<-done
	}
	return out
}

// gatherCluster asks the members the config lists, then the members the
// freshest Raft state among their answers has and the config does not
// (added at run time). It reports the state's members, in its order, so
// a member removed since the config was written is left out, and then the
// members that have no state at all (started with join = true, waiting to
// be added); without a state it reports the config's members.
func gatherCluster(ctx context.Context, members []conf.Member) []memberReport {
	reps := gatherStatus(ctx, members)
	view := freshestView(reps)
	if view == nil || len(view.MemberInfo) == 0 {
		return reps
	}
	byName := map[string]memberReport{}
	for _, r := range reps {
		byName[r.Name] = r
	}
	var missing []conf.Member
	for _, mi := range view.MemberInfo {
		if _, ok := byName[mi.Name]; !ok {
			missing = append(missing, conf.Member{Name: mi.Name, Role: mi.Role, Admin: mi.Admin})
		}
	}
	for _, r := range gatherStatus(ctx, missing) {
		byName[r.Name] = r
	}
	out := make([]memberReport, 0, len(view.MemberInfo))
	in := map[string]bool{}
	for _, mi := range view.MemberInfo {
		out = append(out, byName[mi.Name])
		in[mi.Name] = true
	}
	for _, r := range reps {
		if !in[r.Name] && r.Status != nil && len(r.Status.Raft.Members) == 0 && r.Status.Raft.CommitIndex == 0 {
			out = append(out, r)
		}
	}
	return out
}

// freshestView is the committed view that has applied the most of the
// log among the members that answered (a member may know an entry is
// committed before its state has it).
func freshestView(reps []memberReport) *raftStatus {
	var view *raftStatus
	for _, r := range reps {
		if r.Status != nil && (view == nil || r.Status.Raft.AppliedIndex > view.AppliedIndex ||
			r.Status.Raft.AppliedIndex == view.AppliedIndex && r.Status.Raft.CommitIndex > view.CommitIndex) {
			v := r.Status.Raft
			view = &v
		}
	}
	return view
}

// resyncNote says how far the writer's resync of name is, if it runs.
func resyncNote(reps []memberReport, name string) string {
	for _, r := range reps {
		if r.Status == nil || r.Status.Site == nil || r.Status.Site.Role != "writer" {
			continue
		}
		for _, p := range r.Status.Site.Peers {
			if p.Name == name && p.ResyncTotal > 0 {
				return fmt.Sprintf("resync %.1f%% (%d/%d regions)", p.ResyncPct, p.ResyncDone, p.ResyncTotal)
			}
		}
	}
	return ""
}

func statusCmd() *cobra.Command {
	var f clusterFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status (--config FILE | --dir DIR)",
		Short: "Show the cluster: members, writer, epoch, in-sync set, lag, resync progress",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			members, err := f.members()
			if err != nil {
				return err
			}
			reps := gatherCluster(cmd.Context(), members)
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(reps)
			}
			printStatus(os.Stdout, reps)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

func printStatus(w io.Writer, reps []memberReport) {
	// The most recent committed view among reachable members.
	view := freshestView(reps)
	if view != nil {
		fmt.Fprintf(w, "writer: %s   epoch: %d   in sync: %s   raft leader: %s\n", orDash(view.Writer), view.Epoch, strings.Join(view.InSync, ","), orDash(view.Leader))
		if view.LUN != "" {
			fmt.Fprintf(w, "LU: %s\n", view.LUN)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintln(w, "no member answered")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tROLE\tREACHABLE\tRAFT\tSITE ROLE\tSEQ\tLEASE\tIMAGE\tNOTE")
	for _, r := range reps {
		if r.Status == nil {
			fmt.Fprintf(tw, "%s\t%s\tno\t-\t-\t-\t-\t%s\t%s\n", r.Name, r.Role, imageNote(view, nil, r.Name), r.Error)
			continue
		}
		st := r.Status
		siteRole, seq, lease, note := "-", "-", "-", ""
		if st.Site != nil {
			siteRole, seq, lease = st.Site.Role, fmt.Sprint(st.Site.Seq), orDash(st.Site.Lease)
			if st.Site.Stale {
				note = "may hold unacknowledged writes (full resync pending)"
			}
		}
		if n := memberNote(view, reps, r.Name, r.Role); n != "" {
			note = strings.TrimPrefix(note+"; "+n, "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\tyes\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Role, st.Raft.State, siteRole, seq, lease, imageNote(view, st, r.Name), note)
	}
	tw.Flush()
	for _, r := range reps {
		if r.Status == nil || r.Status.Site == nil || len(r.Status.Site.Peers) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nreplicas of writer %s:\n", r.Name)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "REPLICA\tSTATE\tCONNECTED\tLAG\tDIRTY REGIONS\tRESYNC")
		for _, p := range r.Status.Site.Peers {
			resync := "-"
			if p.ResyncTotal > 0 {
				resync = fmt.Sprintf("%.1f%% (%d/%d regions)", p.ResyncPct, p.ResyncDone, p.ResyncTotal)
			}
			if p.Error != "" && !p.Connected {
				resync = "last error: " + p.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%v\t%d frames, %d bytes\t%d\t%s\n", p.Name, p.State, p.Connected, p.LagFrames, p.LagBytes, p.DirtyRegions, resync)
		}
		tw.Flush()
	}
}

// memberNote says what the committed view says of a member that is not
// simply there: being removed, or a data site not in sync (with the
// writer's resync progress, for a site that is joining or returning).
func memberNote(view *raftStatus, reps []memberReport, name, role string) string {
	if view == nil || len(view.MemberInfo) == 0 {
		return ""
	}
	if !slices.ContainsFunc(view.MemberInfo, func(mi memberInfo) bool { return mi.Name == name }) {
		return "not a member: waiting to be added (join)"
	}
	for _, mi := range view.MemberInfo {
		if mi.Name != name {
			continue
		}
		switch {
		case mi.Leaving:
			return "leaving"
		case role == conf.RoleData && !mi.InSync:
			if p := resyncNote(reps, name); p != "" {
				return "not in sync: " + p
			}
			return "not in sync"
		}
	}
	return ""
}

// imageNote is a data site's image identity state: the site's own
// account when it answered (it knows its image), else the state's record.
func imageNote(view *raftStatus, st *clusterStatus, name string) string {
	if st != nil && st.Image != nil {
		if st.Image.Untrusted != "" {
			return "untrusted: " + st.Image.Untrusted
		}
		return fmt.Sprintf("trusted (%.8s gen %d)", st.Image.UUID, st.Image.Gen)
	}
	if view != nil {
		for _, mi := range view.MemberInfo {
			if mi.Name == name && mi.Image != "" {
				return mi.Image
			}
		}
	}
	return "-"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// leaderAdmin finds the Raft leader's admin address.
func leaderAdmin(ctx context.Context, members []conf.Member) (string, error) {
	reps := gatherCluster(ctx, members)
	byName := map[string]string{}
	for _, r := range reps {
		byName[r.Name] = r.Admin
	}
	for _, r := range reps {
		if r.Status != nil && r.Status.Raft.State == "leader" {
			return r.Admin, nil
		}
	}
	for _, r := range reps {
		if r.Status != nil && r.Status.Raft.Leader != "" {
			if a := byName[r.Status.Raft.Leader]; a != "" {
				return a, nil
			}
		}
	}
	return "", errors.New("no member knows a Raft leader")
}

func promoteCmd() *cobra.Command {
	var f clusterFlags
	cmd := &cobra.Command{
		Use:   "promote SITE (--config FILE | --dir DIR)",
		Short: "Move the writer to SITE with no failed I/O (planned switchover)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			members, err := f.members()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			for attempt := 0; attempt < 3; attempt++ {
				addr, err := leaderAdmin(ctx, members)
				if err != nil {
					return err
				}
				var res map[string]string
				code, err := adminCall(ctx, http.MethodPost, addr, "/v1/promote?site="+url.QueryEscape(args[0]), &res)
				if err != nil {
					return err
				}
				switch code {
				case http.StatusOK:
					fmt.Printf("writer is now %s (took %s)\n", res["promoted"], res["took"])
					return nil
				case http.StatusConflict:
					continue // leadership moved meanwhile: ask again
				default:
					return fmt.Errorf("promote %s: %s", args[0], res["error"])
				}
			}
			return errors.New("promote: the Raft leader kept changing")
		},
	}
	f.add(cmd)
	return cmd
}

func verifyCmd() *cobra.Command {
	var f clusterFlags
	cmd := &cobra.Command{
		Use:   "verify (--config FILE | --dir DIR)",
		Short: "Compare every in-sync replica with the writer online and report differing regions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			members, err := f.members()
			if err != nil {
				return err
			}
			reps := gatherCluster(cmd.Context(), members)
			for _, r := range reps {
				if r.Status == nil || r.Status.Site == nil || r.Status.Site.Role != "writer" {
					continue
				}
				var rep struct {
					Done     int                `json:"regions_done"`
					Total    int                `json:"regions_total"`
					Differ   map[string][]int64 `json:"differ"`
					Region   int64              `json:"region_bytes"`
					Replicas []string           `json:"replicas"`
					Error    string             `json:"error"`
				}
				old := adminClient.Timeout
				adminClient.Timeout = 0
				code, err := adminCall(cmd.Context(), http.MethodPost, r.Admin, "/v1/verify", &rep)
				adminClient.Timeout = old
				if err != nil {
					return err
				}
				fmt.Printf("verified %d of %d regions of %d bytes against %s\n", rep.Done, rep.Total, rep.Region, strings.Join(rep.Replicas, ", "))
				bad := 0
				for name, offs := range rep.Differ {
					bad += len(offs)
					fmt.Printf("  %s differs in %d regions, first at byte %d\n", name, len(offs), offs[0])
				}
				if code != http.StatusOK {
					return fmt.Errorf("verify: %s", rep.Error)
				}
				if bad > 0 {
					return fmt.Errorf("verify: %d regions differ", bad)
				}
				fmt.Println("all in-sync replicas are identical")
				return nil
			}
			return errors.New("no reachable writer")
		},
	}
	f.add(cmd)
	return cmd
}
