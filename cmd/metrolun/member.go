package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/raftlog"
)

// Adding and removing a member while I/O runs (raftlog/members.go):
// `metrolun member add` and `metrolun member remove`, and the leader's
// admin endpoints POST /v1/members and DELETE /v1/members/NAME.

// addMember serves POST /v1/members at the leader.
func (m *member) addMember(w http.ResponseWriter, r *http.Request) {
	var req admin.AddMemberRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if err := req.Check(); err != nil {
		admin.WriteJSON(w, http.StatusBadRequest, admin.ErrorResponse{Error: err.Error()})
		return
	}
	if m.site != nil && req.LUNSize > 0 && req.LUNSize != m.site.Size() {
		admin.WriteJSON(w, http.StatusBadRequest, admin.ErrorResponse{Error: fmt.Sprintf(
			"%s's LUN has %d bytes, this cluster's %d: it could never be a copy", req.Name, req.LUNSize, m.site.Size())})
		return
	}
	start := time.Now()
	err := m.cluster.AddMember(raftlog.Member{Name: req.Name, Role: req.Role, Addrs: raftlog.Addrs{
		Raft: req.Raft, Replication: req.Replication, Admin: req.Admin, ISCSI: req.ISCSI, PortalGroup: req.PortalGroup,
	}}, req.LUN, 15*time.Second)
	if writeLeaderError(w, err) {
		return
	}
	added, _ := m.cluster.State().Member(req.Name)
	admin.WriteJSON(w, http.StatusOK, admin.AddMemberResponse{Added: req.Name, Role: added.Role, PortalGroup: added.Addrs.PortalGroup, Took: took(start)})
}

func memberCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "member",
		Short: "Add or remove a cluster member while I/O runs",
	}
	cmd.AddCommand(memberAddCmd(), memberRemoveCmd())
	return cmd
}

func memberAddCmd() *cobra.Command {
	var f clusterFlags
	var from string
	var req admin.AddMemberRequest
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "add NAME (--config FILE | --dir DIR) [--from FILE | --raft ADDR ...]",
		Short: "Add a member to the running cluster; a data site is resynced, then joins the in-sync set",
		Long: `add makes NAME a member of the running cluster. NAME must be running
already, started with its own config, whose cluster block sets join = true and
lists the cluster's members and NAME itself.

NAME's addresses come from the member block NAME in --from FILE (by default the
--config file, so that "member add site-c --config site-c.hcl" is enough), or
from the flags --role, --raft, --replication, --admin, --iscsi and
--portal-group. A data site joins out of sync; the writer copies the LUN to it
while I/O goes on and then puts it in sync (watch "metrolun status", or use
--wait).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			eps, client, err := f.connect()
			if err != nil {
				return err
			}
			if req.Raft != "" || cmd.Flags().Changed("role") {
				req.Name = name
			} else if req, err = memberFromConfig(name, from, f.config); err != nil {
				return err
			}
			if err := req.Check(); err != nil {
				return err
			}
			ctx := cmd.Context()
			var res admin.AddMemberResponse
			err = client.AtLeader(ctx, eps, leaderAttempts, func(ep admin.Endpoint) (err error) {
				res, err = client.AddMember(ctx, ep, req)
				return err
			})
			if err != nil {
				return fmt.Errorf("member add %s: %w", name, err)
			}
			fmt.Printf("added %s (%s, portal group %v) in %v\n", name, res.Role, res.PortalGroup, res.Took)
			if req.Role != conf.RoleData || wait <= 0 {
				if req.Role == conf.RoleData {
					fmt.Println("the writer resyncs it now; `metrolun status` shows the progress")
				}
				return nil
			}
			return waitMemberInSync(ctx, client, eps, name, wait)
		},
	}
	f.add(cmd)
	fl := cmd.Flags()
	fl.StringVar(&from, "from", "", "config file with NAME's member block (default: the --config file)")
	fl.StringVar(&req.Role, "role", conf.RoleData, "with --raft: the member's role, data or witness")
	fl.StringVar(&req.Raft, "raft", "", "the member's Raft address (host:port the others dial)")
	fl.StringVar(&req.Replication, "replication", "", "a data site's replication address")
	fl.StringVar(&req.Admin, "admin", "", "the member's admin address")
	fl.StringSliceVar(&req.ISCSI, "iscsi", nil, "a data site's iSCSI portals (host:port), as initiators see them")
	fl.IntVar(&req.PortalGroup, "portal-group", 0, "a data site's portal group (default: the next free one)")
	fl.DurationVar(&wait, "wait", 0, "wait up to this long for a data site to be in sync")
	return cmd
}

// memberFromConfig reads NAME's member block from a config file. When the
// file is NAME's own, it also gives the LUN size and checks join.
func memberFromConfig(name, from, config string) (admin.AddMemberRequest, error) {
	path := from
	if path == "" {
		path = config
	}
	if path == "" {
		return admin.AddMemberRequest{}, errors.New("NAME's addresses: give --from FILE (a config with its member block) or --raft and the other address flags")
	}
	c, err := conf.Load(path)
	if err != nil {
		return admin.AddMemberRequest{}, err
	}
	mb, ok := c.Member(name)
	if !ok || c.Cluster == nil {
		return admin.AddMemberRequest{}, fmt.Errorf("%s has no member block %q", path, name)
	}
	req := admin.AddMemberRequest{Name: name, Role: mb.Role, Raft: mb.Raft, Replication: mb.Replication, Admin: mb.Admin,
		ISCSI: mb.ISCSI, PortalGroup: mb.PortalGroup}
	if c.Name == name {
		if !c.Cluster.Join {
			return admin.AddMemberRequest{}, fmt.Errorf("%s does not set join = true in its cluster block: %s started (or will start) a cluster of its own; "+
				"set join = true, delete %s/raft and restart it", path, name, c.DataDir)
		}
		if len(c.Targets) == 1 && len(c.Targets[0].LUNs) == 1 && mb.Role == conf.RoleData {
			l := c.Targets[0].LUNs[0]
			req.LUNSize = l.Size
			req.LUN = lunDef(c.Targets[0].Name, l, l.Size)
		}
	}
	return req, nil
}

func memberRemoveCmd() *cobra.Command {
	var f clusterFlags
	cmd := &cobra.Command{
		Use:   "remove NAME (--config FILE | --dir DIR)",
		Short: "Remove a member from the running cluster (never the writer: promote another site first)",
		Long: `remove takes NAME out of the running cluster while I/O goes on. A data site
in sync is dropped from the in-sync set by the writer first, which waits out its
read lease before it acknowledges writes without it. The writer cannot be
removed (promote another data site first), nor the last in-sync data site.
Stop NAME's metrolun afterwards: it gets no updates any more.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			eps, client, err := f.connect()
			if err != nil {
				return err
			}
			var res admin.RemoveMemberResponse
			err = client.AtLeader(cmd.Context(), eps, leaderAttempts, func(ep admin.Endpoint) (err error) {
				res, err = client.RemoveMember(cmd.Context(), ep, args[0])
				return err
			})
			if err != nil {
				return fmt.Errorf("member remove %s: %w", args[0], err)
			}
			fmt.Printf("removed %s in %v; its metrolun stops by itself once it learns of it (stop it by hand if it was down meanwhile)\n", args[0], res.Took)
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

// waitMemberInSync polls the cluster until name is in sync, printing the
// resync progress as the writer reports it.
func waitMemberInSync(ctx context.Context, client *admin.Client, eps []admin.Endpoint, name string, d time.Duration) error {
	deadline := time.Now().Add(d)
	last := ""
	for {
		reps := client.GatherCluster(ctx, eps)
		if admin.InSync(reps, name) {
			fmt.Printf("%s is in sync\n", name)
			return nil
		}
		if p := resyncNote(reps, name); p != "" && p != last {
			fmt.Printf("%s: %s\n", name, p)
			last = p
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not in sync after %v", name, d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
