package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/replica"
)

// TestStatusFollowsTheRaftState: `metrolun status` reports the members of
// the freshest Raft state, not of the config it started from: a member
// added at run time is asked too (and shows its resync progress), a
// removed one (still in the config, answering with an old state) is left
// out, and a member waiting to be added is shown as such.
func TestStatusFollowsTheRaftState(t *testing.T) {
	serve := func(st admin.Status) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			json.NewEncoder(w).Encode(st)
		}))
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	c := serve(admin.Status{Member: "c", Role: "data", Raft: admin.RaftStatus{State: "follower", CommitIndex: 10},
		Site:  &replica.SiteStatus{Name: "c", Role: "none"},
		Image: &admin.ImageStatus{UUID: "c0ffee00c0ffee00c0ffee00c0ffee00", Created: "empty backing store", Untrusted: "a new, empty image"}})
	info := []admin.MemberInfo{{Name: "a", Role: "data", InSync: true, Image: "trusted (aaaaaaaa gen 3)"}, {Name: "w", Role: "witness"}, {Name: "c", Role: "data", Admin: c}}
	a := serve(admin.Status{Member: "a", Role: "data",
		Raft: admin.RaftStatus{State: "leader", CommitIndex: 10, Writer: "a", InSync: []string{"a"}, Members: []string{"a/data", "w/witness", "c/data"}, MemberInfo: info},
		Site: &replica.SiteStatus{Name: "a", Role: "writer", Peers: []replica.PeerStatus{
			{Name: "c", State: "syncing", Connected: true, ResyncDone: 9, ResyncTotal: 20, ResyncPct: 45}}}})
	b := serve(admin.Status{Member: "b", Role: "data", Raft: admin.RaftStatus{State: "follower", CommitIndex: 5,
		Members: []string{"a/data", "b/data", "w/witness"}, MemberInfo: []admin.MemberInfo{{Name: "a"}, {Name: "b"}, {Name: "w"}}}})
	d := serve(admin.Status{Member: "d", Role: "data", Raft: admin.RaftStatus{State: "follower"}})
	config := []conf.Member{
		{Name: "a", Role: "data", Admin: a}, {Name: "b", Role: "data", Admin: b},
		{Name: "w", Role: "witness"}, {Name: "d", Role: "data", Admin: d},
	}
	client := &admin.Client{}
	reps := client.GatherCluster(t.Context(), endpoints(config))
	var names []string
	for _, r := range reps {
		names = append(names, r.Name)
	}
	if got := strings.Join(names, ","); got != "a,w,c,d" {
		t.Fatalf("members %s, want a,w,c,d (b removed, c added, d joining)", got)
	}
	var out bytes.Buffer
	printStatus(&out, reps)
	// Image identities (I8): a's from the state's record, c's from c.
	for _, want := range []string{"not in sync: resync 45.0% (9/20 regions)", "waiting to be added", "trusted (aaaaaaaa gen 3)", "untrusted: a new, empty image"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	if ep, err := client.Leader(t.Context(), endpoints(config)); err != nil || ep.Admin != a {
		t.Fatalf("leader at %q (%v), want %s", ep.Admin, err, a)
	}
}

// TestMemberFromConfig: `member add NAME --config FILE` reads NAME's block,
// and refuses NAME's own config when it would start a cluster of its own.
func TestMemberFromConfig(t *testing.T) {
	dir := t.TempDir()
	cfgs := conf.DefaultClusterPorts(dir, 3, true, 3260, 7400)
	own := cfgs[2] // site-c
	for _, join := range []bool{false, true} {
		text := renderConfig(own)
		if join {
			text = strings.Replace(text, "cluster {\n", "cluster {\n  join = true\n", 1)
		}
		path := filepath.Join(dir, "site-c.hcl")
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		req, err := memberFromConfig("site-c", "", path)
		if !join {
			if err == nil || !strings.Contains(err.Error(), "join = true") {
				t.Fatalf("a config without join: %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if req.Raft != "127.0.0.3:7400" || req.Replication != "127.0.0.3:7401" || req.PortalGroup != 3 || req.LUNSize != 1<<30 {
			t.Fatalf("request %+v", req)
		}
	}
}
