// Package admin is the contract of a member's admin HTTP API: the request
// and response of every endpoint, the Client that the metrolun commands,
// the members themselves and the integration tests call it with, and the
// Guard that authenticates and authorises every request at the member.
//
// Endpoints (all JSON; state-changing ones take a JSON body, even {}):
//
//	GET    /v1/status        Status               member or operator
//	POST   /v1/promote       PromoteRequest       operator (the leader serves it)
//	POST   /v1/fence         FenceRequest         operator (leader)
//	POST   /v1/unfence       UnfenceRequest       operator (leader)
//	POST   /v1/members       AddMemberRequest     operator (leader)
//	DELETE /v1/members/NAME  {}                   operator (leader)
//	POST   /v1/verify        {}                   operator (the writer serves it)
//	GET    /v1/sessions      SessionList          member or operator (this member's iSCSI sessions)
//	GET    /v1/hosts         HostsResponse        member or operator (every initiator in the cluster)
//	GET    /metrics, /healthz                     any credential, or none with admin_public_metrics
//
// A refusal is an ErrorResponse with 400, 401, 403, 409 (not the leader:
// Leader names it) or 415.
package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/metrolun/metrolun/cmd/paths"
	"github.com/metrolun/metrolun/raftlog"
	"github.com/metrolun/metrolun/replica"
)

// Paths of the endpoints.
const (
	PathStatus  = "/v1/status"
	PathPromote = "/v1/promote"
	PathFence   = "/v1/fence"
	PathUnfence = "/v1/unfence"
	PathMembers = "/v1/members"
	PathVerify  = "/v1/verify"
	// PathSessions lists a data site's own iSCSI sessions, live and
	// recently ended; the other members poll it (cmd/paths).
	PathSessions = "/v1/sessions"
	// PathHosts is every initiator logged in anywhere in the cluster.
	PathHosts   = "/v1/hosts"
	PathMetrics = "/metrics"
	PathHealth  = "/healthz"
)

// Status is what GET /v1/status answers and `metrolun status` shows.
type Status struct {
	Member string              `json:"member"`
	Role   string              `json:"role"`
	Raft   RaftStatus          `json:"raft"`
	Site   *replica.SiteStatus `json:"site,omitempty"`
	// Image is a data site's own image identity (replica/identity.go).
	Image *ImageStatus `json:"image,omitempty"`
}

// ImageStatus is a data site's own image identity and whether the
// cluster's record vouches for it.
type ImageStatus struct {
	UUID string `json:"uuid"`
	Gen  uint64 `json:"generation"`
	// Created says why this start gave the image a new identity.
	Created string `json:"created,omitempty"`
	// Untrusted says why the cluster does not take this image as its
	// own (it is copied in full before it is in sync, and never writer).
	Untrusted string `json:"untrusted,omitempty"`
}

// RaftStatus is a member's Raft node and the committed cluster state it
// has applied.
type RaftStatus struct {
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
	MemberInfo []MemberInfo `json:"member_info,omitempty"`
	LeaseLeft  string       `json:"writer_lease_left,omitempty"`
	// WriterSince is when this member became writer of Epoch (RFC 3339,
	// its own clock); only at the writer.
	WriterSince string        `json:"writer_since,omitempty"`
	Fenced      []FenceStatus `json:"fenced,omitempty"`
	// LUN is the clustered LU as the state records it (raftlog/lun.go).
	LUN string `json:"lun,omitempty"`
}

// IsFenced reports whether the state fences site.
func (r RaftStatus) IsFenced(site string) bool {
	return slices.ContainsFunc(r.Fenced, func(f FenceStatus) bool { return f.Site == site })
}

// MemberInfo is one member of the committed state.
type MemberInfo struct {
	Name        string   `json:"name"`
	Role        string   `json:"role"`
	Raft        string   `json:"raft,omitempty"`
	Replication string   `json:"replication,omitempty"`
	Admin       string   `json:"admin,omitempty"`
	ISCSI       []string `json:"iscsi,omitempty"`
	PortalGroup int      `json:"portal_group,omitempty"`
	InSync      bool     `json:"in_sync"`
	Leaving     bool     `json:"leaving,omitempty"`
	// Image is what the state records of a data site's image identity:
	// "trusted (<uuid prefix> gen <n>)", "untrusted: <why>", "" for none.
	Image string `json:"image,omitempty"`
}

// FenceStatus is a fenced site and when the leader lifts the fence.
type FenceStatus struct {
	Site  string `json:"site"`
	Until string `json:"until"` // RFC 3339
}

// MemberReport is one member as `metrolun status --json` prints it: what
// its admin endpoint answered, or why it did not.
type MemberReport struct {
	Name      string  `json:"name"`
	Role      string  `json:"role"`
	Admin     string  `json:"admin"`
	Reachable bool    `json:"reachable"`
	Error     string  `json:"error,omitempty"`
	Status    *Status `json:"status,omitempty"`
}

// PromoteRequest is the body of POST /v1/promote.
type PromoteRequest struct {
	Site string `json:"site"`
}

// PromoteResponse answers it.
type PromoteResponse struct {
	Promoted string `json:"promoted"`
	Took     string `json:"took"`
}

// FenceRequest is the body of POST /v1/fence: site is treated as lost
// (raftlog/fence.go) until the leader lifts the fence after For (a Go
// duration; "" is 60s).
type FenceRequest struct {
	Site string `json:"site"`
	For  string `json:"for,omitempty"`
}

// FenceResponse answers it.
type FenceResponse struct {
	Fenced string `json:"fenced"`
	Until  string `json:"until"` // RFC 3339
}

// UnfenceRequest is the body of POST /v1/unfence.
type UnfenceRequest struct {
	Site string `json:"site"`
}

// UnfenceResponse answers it.
type UnfenceResponse struct {
	Unfenced  string `json:"unfenced"`
	WasFenced bool   `json:"was_fenced"`
}

// AddMemberRequest is the body of POST /v1/members.
type AddMemberRequest struct {
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

// Check says what is wrong with the request before it is sent or served.
func (r AddMemberRequest) Check() error {
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

// AddMemberResponse answers POST /v1/members.
type AddMemberResponse struct {
	Added       string `json:"added"`
	Role        string `json:"role"`
	PortalGroup int    `json:"portal_group"`
	Took        string `json:"took"`
}

// RemoveMemberResponse answers DELETE /v1/members/NAME.
type RemoveMemberResponse struct {
	Removed string `json:"removed"`
	Took    string `json:"took"`
}

// VerifyReport answers POST /v1/verify.
type VerifyReport = replica.VerifyStatus

// ErrorResponse is every refusal.
type ErrorResponse struct {
	Error string `json:"error"`
	// Leader names the Raft leader when this member does not lead (409).
	Leader string `json:"leader,omitempty"`
	// Report is how far a verify got before it failed.
	Report *VerifyReport `json:"report,omitempty"`
}

// Freshest is the committed view that has applied the most of the log
// among the members that answered (a member may know an entry is
// committed before its state has it), or nil.
func Freshest(reps []MemberReport) *RaftStatus {
	var view *RaftStatus
	for _, r := range reps {
		if r.Status != nil && (view == nil || r.Status.Raft.AppliedIndex > view.AppliedIndex ||
			r.Status.Raft.AppliedIndex == view.AppliedIndex && r.Status.Raft.CommitIndex > view.CommitIndex) {
			v := r.Status.Raft
			view = &v
		}
	}
	return view
}

// SiteWriter is the data site whose volume acts as writer, or "".
func SiteWriter(reps []MemberReport) string {
	for _, r := range reps {
		if r.Status != nil && r.Status.Site != nil && r.Status.Site.Role == "writer" {
			return r.Name
		}
	}
	return ""
}

func find(reps []MemberReport, name string) *Status {
	for _, r := range reps {
		if r.Name == name {
			return r.Status
		}
	}
	return nil
}

// InSync is the one definition of "site is in sync" that every caller
// uses: the freshest committed view counts it in sync and does not fence
// it; the site itself sees itself in the in-sync set and acts as writer,
// or as a replica that the writer streams to as in sync.
func InSync(reps []MemberReport, site string) bool {
	view := Freshest(reps)
	if view == nil || !slices.Contains(view.InSync, site) || view.IsFenced(site) {
		return false
	}
	self := find(reps, site)
	if self == nil || self.Site == nil || !slices.Contains(self.Raft.InSync, site) {
		return false
	}
	if self.Site.Role == "writer" {
		return true
	}
	w := find(reps, SiteWriter(reps))
	if self.Site.Role != "replica" || w == nil || w.Site == nil {
		return false
	}
	for _, p := range w.Site.Peers {
		if p.Name == site {
			return p.State == "in-sync"
		}
	}
	return false
}

// Session is one iSCSI session at a site (cmd/paths has its meaning).
type Session = paths.Session

// MaxSessions bounds the sessions a member lists and takes from another
// member's list: every live one a site can hold (target lists at most
// 4096) and the recently ended ones it remembers.
const MaxSessions = 4096 + paths.MaxEnded

// SessionList answers GET /v1/sessions: the member's own sessions, live
// ones first, then those that ended within paths.Recent.
type SessionList struct {
	Member string `json:"member"`
	// Now is the member's clock when it answered: a reader takes the
	// times below relative to it, not to its own clock.
	Now      time.Time `json:"now"`
	Sessions []Session `json:"sessions"`
}

// SessionsETag names a member's session list by its content (not its
// clock), for GET /v1/sessions with If-None-Match: a poller that holds
// the list gets 304 and no body while it is unchanged.
func SessionsETag(list []Session) string {
	b, err := json.Marshal(list)
	if err != nil {
		return "" // no tag: every answer is sent whole
	}
	sum := sha256.Sum256(b)
	return `"` + hex.EncodeToString(sum[:12]) + `"`
}

// WriteSessions answers GET /v1/sessions with l, or with 304 and no body
// when the request names l's sessions by their ETag (If-None-Match).
func WriteSessions(w http.ResponseWriter, r *http.Request, l SessionList) {
	if tag := SessionsETag(l.Sessions); tag != "" {
		w.Header().Set("ETag", tag)
		if r.Header.Get("If-None-Match") == tag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	WriteJSON(w, http.StatusOK, l)
}

// Host is one initiator as GET /v1/hosts shows it.
type Host = paths.Host

// HostsResponse answers GET /v1/hosts.
type HostsResponse struct {
	// Member is who answered; Sites the data sites it knows.
	Member string   `json:"member"`
	Sites  []string `json:"sites"`
	// Unheard are data sites whose session lists the member has not
	// had (down, or not reached yet): their paths are missing below.
	Unheard []string `json:"unheard,omitempty"`
	Hosts   []Host   `json:"hosts"`
}
