package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/raftlog"
)

// Adding and removing a member while I/O runs (raftlog/members.go):
// `metrolun member add` and `metrolun member remove`, and the leader's
// admin endpoints POST /v1/members and DELETE /v1/members/NAME.

// memberRequest is the body of POST /v1/members.
type memberRequest struct {
	Name        string   `json:"name"`
	Role        string   `json:"role"`
	Raft        string   `json:"raft"`
	Replication string   `json:"replication,omitempty"`
	Admin       string   `json:"admin,omitempty"`
	ISCSI       []string `json:"iscsi,omitempty"`
	PortalGroup int      `json:"portal_group,omitempty"`
	// LUNSize, when known, is the new data site's LUN size; the leader
	// refuses a site whose LUN differs from its own.
	LUNSize int64 `json:"lun_size,omitempty"`
	// LUN, when the new data site's config was read, is its LU; the
	// cluster refuses one that differs from its own (raftlog/lun.go).
	LUN *raftlog.LUN `json:"lun,omitempty"`
}

func (r memberRequest) check() error {
	if r.Name == "" {
		return errors.New("no member name")
	}
	for _, a := range []struct{ what, addr string }{{"raft", r.Raft}, {"replication", r.Replication}, {"admin", r.Admin}} {
		if a.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("%s address %q: %v", a.what, a.addr, err)
		}
	}
	return nil
}

// addMember serves POST /v1/members at the leader.
func (m *member) addMember(w http.ResponseWriter, r *http.Request) {
	var req memberRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "request: " + err.Error()})
		return
	}
	if err := req.check(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	if m.site != nil && req.LUNSize > 0 && req.LUNSize != m.site.Size() {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf(
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
	writeJSON(w, http.StatusOK, map[string]any{"added": req.Name, "role": added.Role, "portal_group": added.Addrs.PortalGroup,
		"took": time.Since(start).Truncate(time.Millisecond).String()})
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
	var req memberRequest
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
			members, err := f.members()
			if err != nil {
				return err
			}
			if req.Raft != "" || cmd.Flags().Changed("role") {
				req.Name = name
			} else if req, err = memberFromConfig(name, from, f.config); err != nil {
				return err
			}
			if err := req.check(); err != nil {
				return err
			}
			ctx := cmd.Context()
			res, err := callLeader(ctx, members, http.MethodPost, "/v1/members", req)
			if err != nil {
				return fmt.Errorf("member add %s: %w", name, err)
			}
			fmt.Printf("added %s (%s, portal group %v) in %v\n", name, res["role"], res["portal_group"], res["took"])
			if req.Role != conf.RoleData || wait <= 0 {
				if req.Role == conf.RoleData {
					fmt.Println("the writer resyncs it now; `metrolun status` shows the progress")
				}
				return nil
			}
			return waitMemberInSync(ctx, members, name, wait)
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
func memberFromConfig(name, from, config string) (memberRequest, error) {
	path := from
	if path == "" {
		path = config
	}
	if path == "" {
		return memberRequest{}, errors.New("NAME's addresses: give --from FILE (a config with its member block) or --raft and the other address flags")
	}
	c, err := conf.Load(path)
	if err != nil {
		return memberRequest{}, err
	}
	mb, ok := c.Member(name)
	if !ok || c.Cluster == nil {
		return memberRequest{}, fmt.Errorf("%s has no member block %q", path, name)
	}
	req := memberRequest{Name: name, Role: mb.Role, Raft: mb.Raft, Replication: mb.Replication, Admin: mb.Admin,
		ISCSI: mb.ISCSI, PortalGroup: mb.PortalGroup}
	if c.Name == name {
		if !c.Cluster.Join {
			return memberRequest{}, fmt.Errorf("%s does not set join = true in its cluster block: %s started (or will start) a cluster of its own; "+
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
			members, err := f.members()
			if err != nil {
				return err
			}
			res, err := callLeader(cmd.Context(), members, http.MethodDelete, "/v1/members/"+url.PathEscape(args[0]), nil)
			if err != nil {
				return fmt.Errorf("member remove %s: %w", args[0], err)
			}
			fmt.Printf("removed %s in %v; its metrolun stops by itself once it learns of it (stop it by hand if it was down meanwhile)\n", args[0], res["took"])
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

// callLeader sends a request to the Raft leader, asking again when
// leadership moved meanwhile.
func callLeader(ctx context.Context, members []conf.Member, method, path string, body any) (map[string]any, error) {
	for attempt := 0; attempt < 3; attempt++ {
		addr, err := leaderAdmin(ctx, members)
		if err != nil {
			return nil, err
		}
		var res map[string]any
		code, err := adminSend(ctx, method, addr, path, body, &res)
		if err != nil {
			return nil, err
		}
		switch code {
		case http.StatusOK:
			return res, nil
		case http.StatusConflict:
			continue
		default:
			return nil, fmt.Errorf("%v", res["error"])
		}
	}
	return nil, errors.New("the Raft leader kept changing")
}

// waitMemberInSync polls the cluster until name is in sync, printing the
// resync progress as the writer reports it.
func waitMemberInSync(ctx context.Context, members []conf.Member, name string, d time.Duration) error {
	deadline := time.Now().Add(d)
	last := ""
	for {
		reps := gatherCluster(ctx, members)
		if view := freshestView(reps); view != nil {
			for _, mi := range view.MemberInfo {
				if mi.Name == name && mi.InSync {
					fmt.Printf("%s is in sync\n", name)
					return nil
				}
			}
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

// adminSend is adminCall with a JSON body (nil: none).
func adminSend(ctx context.Context, method, addr, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s%s: %v", addr, path, err)
		}
	}
	return resp.StatusCode, nil
}
