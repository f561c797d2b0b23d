package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/raftlog"
)

func (m *member) status() admin.Status {
	st := m.cluster.Status()
	cs := admin.Status{Member: m.cfg.Name, Role: m.cfg.Role, Raft: admin.RaftStatus{
		State: st.RaftState, Leader: st.Leader, Term: st.Term, CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex,
		Writer: st.State.Writer, Epoch: st.State.Epoch, InSync: st.State.InSync,
	}}
	if st.State.LUN != nil {
		cs.Raft.LUN = st.State.LUN.String()
	}
	for _, mm := range st.State.Members {
		cs.Raft.Members = append(cs.Raft.Members, mm.Name+"/"+mm.Role)
		mi := admin.MemberInfo{Name: mm.Name, Role: mm.Role, Raft: mm.Addrs.Raft, Replication: mm.Addrs.Replication,
			Admin: mm.Addrs.Admin, ISCSI: mm.Addrs.ISCSI, PortalGroup: mm.Addrs.PortalGroup,
			InSync: st.State.IsInSync(mm.Name), Leaving: st.State.IsLeaving(mm.Name)}
		if im, ok := st.State.Image(mm.Name); ok && im.Untrusted != "" {
			mi.Image = "untrusted: " + im.Untrusted
		} else if ok {
			mi.Image = fmt.Sprintf("trusted (%.8s gen %d)", im.UUID, im.Gen)
		}
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
		cs.Raft.Fenced = append(cs.Raft.Fenced, admin.FenceStatus{Site: f.Name, Until: time.UnixMilli(f.Until).Format(time.RFC3339)})
	}
	if m.site != nil {
		s := m.site.Status()
		cs.Site = &s
	}
	if m.store != nil {
		id, created, _ := m.store.Image()
		cs.Image = &admin.ImageStatus{UUID: id.UUID, Gen: id.Gen, Created: created,
			Untrusted: st.State.ImageDistrust(m.cfg.Name, raftlog.ImageID(id))}
	}
	return cs
}

// adminGuard is the admin endpoint's authentication and browser checks
// as the cluster block configures them (conf checked that there is a
// credential unless admin_insecure).
func adminGuard(cl *conf.Cluster, tcfg *tls.Config) (*admin.Guard, error) {
	g := &admin.Guard{PublicMetrics: cl.AdminPublicMetrics}
	if tcfg != nil {
		g.Auth = append(g.Auth, admin.ClientCert{})
	}
	if cl.AdminTokenFile != "" {
		tok, _, err := admin.LoadToken(cl.AdminTokenFile)
		if err != nil {
			return nil, err
		}
		g.Auth = append(g.Auth, tok)
	}
	if len(g.Auth) == 0 && !cl.AdminInsecure {
		return nil, errors.New("the admin endpoint has no credential: set admin_token_file or add a tls block (or admin_insecure = true)")
	}
	for _, a := range append([]string{cl.AdminListen}, memberAdmins(cl)...) {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" {
			g.Hosts = append(g.Hosts, h)
		}
	}
	return g, nil
}

func memberAdmins(cl *conf.Cluster) []string {
	var out []string
	for _, mb := range cl.Members {
		if mb.Admin != "" {
			out = append(out, mb.Admin)
		}
	}
	return out
}

// adminTLS is the admin listener's TLS config: the member's certificate;
// a client certificate from the cluster CA is optional (operators may
// use the token instead) and, when given, must verify.
func adminTLS(tcfg *tls.Config) *tls.Config {
	if tcfg == nil {
		return nil
	}
	c := tcfg.Clone()
	c.ClientAuth = tls.VerifyClientCertIfGiven
	c.VerifyConnection = nil
	c.NextProtos = []string{"http/1.1"}
	return c
}

// adminClient is how this member reads the other members' status
// (watch) and session lists (sessions.go): with the token, and over TLS
// with its own certificate. One client serves every ask, from several
// goroutines, so connections are reused, not leaked; the token file is
// read again for each call, so a rotated one is picked up.
func (m *member) adminClient() *admin.Client {
	m.adminOnce.Do(func() {
		m.admin = &admin.Client{Timeout: time.Second}
		if m.tls != nil {
			m.admin.TLS = &tls.Config{RootCAs: m.tls.RootCAs, Certificates: m.tls.Certificates, MinVersion: tls.VersionTLS13}
		}
		if f := m.cfg.Cluster.AdminTokenFile; f != "" {
			// A verifier (no token) leaves the certificate as the
			// credential.
			m.admin.TokenSource = func() string {
				_, tok, err := admin.LoadToken(f)
				if err != nil {
					m.log.Warn("reading the admin token to ask the other members", "error", err)
				}
				return tok
			}
		}
	})
	return m.admin
}

// decodeBody reads a state-changing request's JSON body into v.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		admin.WriteJSON(w, http.StatusBadRequest, admin.ErrorResponse{Error: "request: " + err.Error()})
		return false
	}
	return true
}

func took(start time.Time) string { return time.Since(start).Truncate(time.Millisecond).String() }

// adminHandler serves the admin API (package admin has the contract)
// behind the guard.
func (m *member) adminHandler(g *admin.Guard) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+admin.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, m.status())
	})
	mux.HandleFunc("GET "+admin.PathHealth, func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, map[string]string{"member": m.cfg.Name, "raft": m.cluster.Status().RaftState})
	})
	mux.HandleFunc("POST "+admin.PathPromote, func(w http.ResponseWriter, r *http.Request) {
		var req admin.PromoteRequest
		if !decodeBody(w, r, &req) {
			return
		}
		timeout := 10 * time.Second
		start := time.Now()
		var err error
		if m.site != nil {
			err = m.site.Handover(timeout, func() error { return m.cluster.Promote(req.Site, timeout) })
		} else {
			err = m.cluster.Promote(req.Site, timeout)
		}
		if writeLeaderError(w, err) {
			return
		}
		admin.WriteJSON(w, http.StatusOK, admin.PromoteResponse{Promoted: req.Site, Took: took(start)})
	})
	// Fencing simulates the loss of a data site through the cluster, for
	// drills (raftlog/fence.go). The leader serves it; "for" (default
	// 60s) is when it lifts the fence by itself.
	mux.HandleFunc("POST "+admin.PathFence, func(w http.ResponseWriter, r *http.Request) {
		var req admin.FenceRequest
		if !decodeBody(w, r, &req) {
			return
		}
		d := 60 * time.Second
		if req.For != "" {
			var err error
			if d, err = time.ParseDuration(req.For); err != nil {
				admin.WriteJSON(w, http.StatusBadRequest, admin.ErrorResponse{Error: "for: " + err.Error()})
				return
			}
		}
		until, err := m.cluster.Fence(req.Site, d)
		if writeLeaderError(w, err) {
			return
		}
		admin.WriteJSON(w, http.StatusOK, admin.FenceResponse{Fenced: req.Site, Until: until.Format(time.RFC3339Nano)})
	})
	mux.HandleFunc("POST "+admin.PathUnfence, func(w http.ResponseWriter, r *http.Request) {
		var req admin.UnfenceRequest
		if !decodeBody(w, r, &req) {
			return
		}
		was, err := m.cluster.Unfence(req.Site)
		if writeLeaderError(w, err) {
			return
		}
		admin.WriteJSON(w, http.StatusOK, admin.UnfenceResponse{Unfenced: req.Site, WasFenced: was})
	})
	// Membership changes while I/O runs (raftlog/members.go); the leader
	// serves them.
	mux.HandleFunc("POST "+admin.PathMembers, m.addMember)
	mux.HandleFunc("DELETE "+admin.PathMembers+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		start := time.Now()
		err := m.cluster.RemoveMember(name, 30*time.Second)
		if writeLeaderError(w, err) {
			return
		}
		admin.WriteJSON(w, http.StatusOK, admin.RemoveMemberResponse{Removed: name, Took: took(start)})
	})
	mux.HandleFunc("POST "+admin.PathVerify, func(w http.ResponseWriter, r *http.Request) {
		if m.site == nil {
			admin.WriteJSON(w, http.StatusBadRequest, admin.ErrorResponse{Error: "a witness holds no data"})
			return
		}
		rep, err := m.site.Verify(r.Context(), m.cfg.Cluster.VerifyBandwidth)
		if err != nil {
			admin.WriteJSON(w, http.StatusConflict, admin.ErrorResponse{Error: err.Error(), Report: &rep})
			return
		}
		admin.WriteJSON(w, http.StatusOK, rep)
	})
	mux.HandleFunc("GET "+admin.PathSessions, func(w http.ResponseWriter, r *http.Request) {
		own, now := m.book.own()
		admin.WriteSessions(w, r, admin.SessionList{Member: m.cfg.Name, Now: now, Sessions: own})
	})
	mux.HandleFunc("GET "+admin.PathHosts, func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, m.hosts())
	})
	mux.Handle("GET "+admin.PathMetrics, m.metricsHandler())
	return g.Wrap(mux)
}

// writeLeaderError answers err, if any: 409 naming the leader when this
// member does not lead, else 400. It reports whether it answered.
func writeLeaderError(w http.ResponseWriter, err error) bool {
	var nl *raftlog.NotLeaderError
	switch {
	case err == nil:
		return false
	case errors.As(err, &nl):
		admin.WriteJSON(w, http.StatusConflict, admin.ErrorResponse{Error: err.Error(), Leader: nl.Leader})
	default:
		admin.WriteJSON(w, http.StatusBadRequest, admin.ErrorResponse{Error: err.Error()})
	}
	return true
}
