package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/metrolun/metrolun/raftlog"
	"github.com/metrolun/metrolun/replica"
)

// clusterStatus is what /v1/status answers and `metrolun status` shows.
type clusterStatus struct {
	Member string              `json:"member"`
	Role   string              `json:"role"`
	Raft   raftStatus          `json:"raft"`
	Site   *replica.SiteStatus `json:"site,omitempty"`
}

type raftStatus struct {
	State       string `json:"state"`
	Leader      string `json:"leader"`
	Term        uint64 `json:"term"`
	CommitIndex uint64 `json:"commit_index"`
	// AppliedIndex is how far the state below (writer, in-sync set,
	// members) has applied the log.
	AppliedIndex uint64   `json:"applied_index,omitempty"`
	Writer       string   `json:"writer"`
	Epoch        uint64   `json:"epoch"`
	InSync       []string `json:"in_sync"`
	Members      []string `json:"members"`
	// MemberInfo is every member of the committed state with what the
	// state knows of it: how `metrolun status` finds members added at run
	// time, and knows which were removed.
	MemberInfo []memberInfo `json:"member_info,omitempty"`
	LeaseLeft  string       `json:"writer_lease_left,omitempty"`
	// WriterSince is when this member became writer of Epoch (RFC 3339,
	// its own clock); only at the writer.
	WriterSince string        `json:"writer_since,omitempty"`
	Fenced      []fenceStatus `json:"fenced,omitempty"`
	// LUN is the clustered LU as the state records it (raftlog/lun.go).
	LUN string `json:"lun,omitempty"`
}

type memberInfo struct {
	Name        string   `json:"name"`
	Role        string   `json:"role"`
	Raft        string   `json:"raft,omitempty"`
	Replication string   `json:"replication,omitempty"`
	Admin       string   `json:"admin,omitempty"`
	ISCSI       []string `json:"iscsi,omitempty"`
	PortalGroup int      `json:"portal_group,omitempty"`
	InSync      bool     `json:"in_sync"`
	Leaving     bool     `json:"leaving,omitempty"`
}

type fenceStatus struct {
	Site  string `json:"site"`
	Until string `json:"until"` // RFC 3339: the leader unfences it then
}

func (m *member) status() clusterStatus {
	st := m.cluster.Status()
	cs := clusterStatus{Member: m.cfg.Name, Role: m.cfg.Role, Raft: raftStatus{
		State: st.RaftState, Leader: st.Leader, Term: st.Term, CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex,
		Writer: st.State.Writer, Epoch: st.State.Epoch, InSync: st.State.InSync,
	}}
	if st.State.LUN != nil {
		cs.Raft.LUN = st.State.LUN.String()
	}
	for _, mm := range st.State.Members {
		cs.Raft.Members = append(cs.Raft.Members, mm.Name+"/"+mm.Role)
		mi := memberInfo{Name: mm.Name, Role: mm.Role, Raft: mm.Addrs.Raft, Replication: mm.Addrs.Replication,
			Admin: mm.Addrs.Admin, ISCSI: mm.Addrs.ISCSI, PortalGroup: mm.Addrs.PortalGroup,
			InSync: st.State.IsInSync(mm.Name), Leaving: st.State.IsLeaving(mm.Name)}
		// This member's config may know better (a proxy, an admin
		// address the state was not told).
		if cm, ok := m.cfg.Member(mm.Name); ok && cm.Admin != "" {
			mi.Admin = cm.Admin
		}
		cs.Raft.MemberInfo = append(cs.Raft.MemberInfo, mi)
	}
	if st.WriterEpoch != 0 {
		cs.Raft.LeaseLeft = st.LeaseRemaining.Truncate(time.Millisecond).String()
		cs.Raft.WriterSince = st.WriterSince.Format(time.RFC3339Nano)
	}
	for _, f := range st.State.Fenced {
		cs.Raft.Fenced = append(cs.Raft.Fenced, fenceStatus{Site: f.Name, Until: time.UnixMilli(f.Until).Format(time.RFC3339)})
	}
	if m.site != nil {
		s := m.site.Status()
		cs.Site = &s
	}
	return cs
}

// adminHandler serves status, promote, verify and metrics.
func (m *member) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, m.status())
	})
	mux.HandleFunc("POST /v1/promote", func(w http.ResponseWriter, r *http.Request) {
		to := r.URL.Query().Get("site")
		timeout := 10 * time.Second
		start := time.Now()
		var err error
		if m.site != nil {
			err = m.site.Handover(timeout, func() error { return m.cluster.Promote(to, timeout) })
		} else {
			err = m.cluster.Promote(to, timeout)
		}
		var nl *raftlog.NotLeaderError
		switch {
		case errors.As(err, &nl):
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error(), "leader": nl.Leader})
		case err != nil:
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		default:
			writeJSON(w, http.StatusOK, map[string]string{"promoted": to, "took": time.Since(start).Truncate(time.Millisecond).String()})
		}
	})
	// Fencing simulates the loss of a data site through the cluster, for
	// drills (raftlog/fence.go). The leader serves it; "for" (default
	// 60s) is when it lifts the fence by itself.
	mux.HandleFunc("POST /v1/fence", func(w http.ResponseWriter, r *http.Request) {
		site := r.URL.Query().Get("site")
		d := 60 * time.Second
		if v := r.URL.Query().Get("for"); v != "" {
			var err error
			if d, err = time.ParseDuration(v); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "for: " + err.Error()})
				return
			}
		}
		until, err := m.cluster.Fence(site, d)
		if writeLeaderError(w, err) {
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"fenced": site, "until": until.Format(time.RFC3339Nano)})
	})
	mux.HandleFunc("POST /v1/unfence", func(w http.ResponseWriter, r *http.Request) {
		site := r.URL.Query().Get("site")
		was, err := m.cluster.Unfence(site)
		if writeLeaderError(w, err) {
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"unfenced": site, "was_fenced": was})
	})
	// Membership changes while I/O runs (raftlog/members.go); the leader
	// serves them.
	mux.HandleFunc("POST /v1/members", m.addMember)
	mux.HandleFunc("DELETE /v1/members/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		start := time.Now()
		err := m.cluster.RemoveMember(name, 30*time.Second)
		if writeLeaderError(w, err) {
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"removed": name, "took": time.Since(start).Truncate(time.Millisecond).String()})
	})
	mux.HandleFunc("POST /v1/verify", func(w http.ResponseWriter, r *http.Request) {
		if m.site == nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "a witness holds no data"})
			return
		}
		rep, err := m.site.Verify(r.Context(), m.cfg.Cluster.VerifyBandwidth)
		if err != nil {
			writeJSON(w, http.StatusConflict, map[string]any{"error": err.Error(), "report": rep})
			return
		}
		writeJSON(w, http.StatusOK, rep)
	})
	mux.Handle("GET /metrics", m.metricsHandler())
	return mux
}

// writeLeaderError answers err, if any: 409 naming the leader when this
// member does not lead, else 400. It reports whether it answered.
func writeLeaderError(w http.ResponseWriter, err error) bool {
	var nl *raftlog.NotLeaderError
	switch {
	case err == nil:
		return false
	case errors.As(err, &nl):
		writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error(), "leader": nl.Leader})
	default:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
