package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
)

// Commands that talk to a running cluster through its members' admin
// endpoints: status, promote, verify, member. They find the cluster with
// --config FILE (any member's config) or --dir DIR (a demo's directory);
// members added since that config was written are found through the Raft
// state of those it lists (admin.Client.GatherCluster). They call with the
// operator's credential, which clusterFlags.client finds.

type clusterFlags struct {
	config        string
	dir           string
	tokenFile     string
	cert, key, ca string
}

func (f *clusterFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.config, "config", "", "a member's config file")
	cmd.Flags().StringVar(&f.dir, "dir", "", "a demo cluster's directory")
	cmd.Flags().StringVar(&f.tokenFile, "token-file", "", "file holding the admin token (default: $"+admin.TokenFileEnv+
		", DIR/admin.token with --dir, or the config's admin_token_file)")
	cmd.Flags().StringVar(&f.cert, "cert", "", "a client certificate to present, such as an operator's from `metrolun certs issue NAME --role operator` (needs --key)")
	cmd.Flags().StringVar(&f.key, "key", "", "the private key of --cert")
	cmd.Flags().StringVar(&f.ca, "ca", "", "the CA that signed the members' certificates (default: the config's tls block, or DIR/pki/ca.pem)")
}

// load finds the config the cluster is found with: --config, or the
// first demo member's under --dir.
func (f *clusterFlags) load() (*conf.Config, string, error) {
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
			return nil, "", fmt.Errorf("%s holds no cluster member config (DIR/*/metrolun.hcl); is it a multi-site demo?", f.dir)
		}
	}
	if path == "" {
		return nil, "", errors.New("--config FILE or --dir DIR is required")
	}
	c, err := conf.Load(path)
	if err != nil {
		return nil, "", err
	}
	if c.Cluster == nil {
		return nil, "", fmt.Errorf("%s has no cluster block: a single site has no cluster to ask", path)
	}
	return c, path, nil
}

// members returns the cluster's members from the config.
func (f *clusterFlags) members() ([]conf.Member, error) {
	c, _, err := f.load()
	if err != nil {
		return nil, err
	}
	return c.Cluster.Members, nil
}

// connect returns the cluster's members' admin endpoints and a client
// with the operator's credential.
func (f *clusterFlags) connect() ([]admin.Endpoint, *admin.Client, error) {
	c, path, err := f.load()
	if err != nil {
		return nil, nil, err
	}
	client, err := f.client(c, path)
	if err != nil {
		return nil, nil, err
	}
	return endpoints(c.Cluster.Members), client, nil
}

func endpoints(ms []conf.Member) []admin.Endpoint { return admin.Endpoints(ms) }

// client finds the credential (admin.NewClient): --token-file,
// $METROLUN_ADMIN_TOKEN_FILE, DIR/admin.token, the config's
// admin_token_file; the CA from the config's tls block or DIR/pki/ca.pem.
func (f *clusterFlags) client(c *conf.Config, path string) (*admin.Client, error) {
	tf := f.tokenFile
	if tf == "" {
		tf = os.Getenv(admin.TokenFileEnv)
	}
	return admin.NewClient(admin.Credential{TokenFile: tf, Dir: f.dir, Cluster: c.Cluster, Config: path, Cert: f.cert, Key: f.key, CA: f.ca})
}

// resyncNote says how far the writer's resync of name is, if it runs.
func resyncNote(reps []admin.MemberReport, name string) string {
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
			eps, client, err := f.connect()
			if err != nil {
				return err
			}
			reps := client.GatherCluster(cmd.Context(), eps)
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

func printStatus(w io.Writer, reps []admin.MemberReport) {
	// The most recent committed view among reachable members.
	view := admin.Freshest(reps)
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
			if n := st.Site.LostRegions; n > 0 {
				note = strings.TrimPrefix(note+"; "+lostNote(n, st.Site.LostRanges), "; ")
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
func memberNote(view *admin.RaftStatus, reps []admin.MemberReport, name, role string) string {
	if view == nil || len(view.MemberInfo) == 0 {
		return ""
	}
	if !slices.ContainsFunc(view.MemberInfo, func(mi admin.MemberInfo) bool { return mi.Name == name }) {
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
func imageNote(view *admin.RaftStatus, st *admin.Status, name string) string {
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

func promoteCmd() *cobra.Command {
	var f clusterFlags
	cmd := &cobra.Command{
		Use:   "promote SITE (--config FILE | --dir DIR)",
		Short: "Move the writer to SITE with no failed I/O (planned switchover)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			eps, client, err := f.connect()
			if err != nil {
				return err
			}
			var res admin.PromoteResponse
			err = client.AtLeader(cmd.Context(), eps, leaderAttempts, func(ep admin.Endpoint) (err error) {
				res, err = client.Promote(cmd.Context(), ep, args[0])
				return err
			})
			if err != nil {
				return fmt.Errorf("promote %s: %w", args[0], err)
			}
			fmt.Printf("writer is now %s (took %s)\n", res.Promoted, res.Took)
			return nil
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
			eps, client, err := f.connect()
			if err != nil {
				return err
			}
			reps := client.GatherCluster(cmd.Context(), eps)
			for _, r := range reps {
				if r.Status == nil || r.Status.Site == nil || r.Status.Site.Role != "writer" {
					continue
				}
				rep, err := client.Verify(cmd.Context(), admin.Endpoint{Name: r.Name, Role: r.Role, Admin: r.Admin})
				var ae *admin.Error
				if err != nil && !errors.As(err, &ae) {
					return err
				}
				fmt.Printf("verified %d of %d regions of %d bytes against %s\n", rep.Done, rep.Total, rep.Region, strings.Join(rep.Replicas, ", "))
				bad := 0
				for name, offs := range rep.Differ {
					bad += len(offs)
					fmt.Printf("  %s differs in %d regions, first at byte %d\n", name, len(offs), offs[0])
				}
				if len(rep.Lost) > 0 {
					fmt.Printf("  %d regions not compared: lost at the writer (reads fail there at every site), first at byte %d\n", len(rep.Lost), rep.Lost[0])
				}
				if err != nil {
					return fmt.Errorf("verify: %w", err)
				}
				if bad > 0 {
					return fmt.Errorf("verify: %d regions differ", bad)
				}
				if len(rep.Lost) > 0 {
					fmt.Println("all in-sync replicas are identical outside the lost regions")
					return nil
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

// leaderAttempts bounds how often a command looks for the Raft leader
// again (250 ms apart, admin.Client.AtLeader): an election under load
// can outlast a few hundred milliseconds, and an operator's command
// should ride it out rather than fail (5 s).
const leaderAttempts = 20

// lostNote says which bytes read as lost at a site (MEDIUM ERROR until
// rewritten).
func lostNote(regions int, rs [][2]int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d regions of 64 KiB lost (reads fail until rewritten):", regions)
	for i, r := range rs {
		if i == 3 {
			b.WriteString(" ...")
			break
		}
		fmt.Fprintf(&b, " bytes %d-%d", r[0], r[1])
	}
	return b.String()
}
