package main

import (
	"testing"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/cmd/paths"
)

// TestSessionBookHeard: a site's list is taken on this member's clock,
// names its own site only, and is capped.
func TestSessionBookHeard(t *testing.T) {
	b := &sessionBook{peers: map[string]*peerSessions{}}
	at := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	peerNow := at.Add(-90 * time.Second) // its clock is 90 s behind
	l := admin.SessionList{Member: "site-b", Now: peerNow, Sessions: []paths.Session{
		{Site: "site-c", Initiator: "iqn.x:h", ISID: "1", Since: peerNow.Add(-time.Hour)},
		{Site: "site-b", Initiator: "iqn.x:h", ISID: "2", Since: peerNow.Add(-time.Hour), Ended: peerNow.Add(-100 * time.Second)},
	}}
	b.heard("site-b", l, at)
	got := b.peers["site-b"].sessions
	if got[0].Site != "site-b" || !got[0].Since.Equal(at.Add(-time.Hour)) || !got[0].Live() {
		t.Fatalf("live session: %+v", got[0])
	}
	if !got[1].Ended.Equal(at.Add(-100 * time.Second)) {
		t.Fatalf("ended session on this clock: %v, want %v", got[1].Ended, at.Add(-100*time.Second))
	}
	big := admin.SessionList{Now: at, Sessions: make([]paths.Session, admin.MaxSessions+5)}
	b.heard("site-c", big, at)
	if n := len(b.peers["site-c"].sessions); n != admin.MaxSessions {
		t.Fatalf("%d sessions kept of %d", n, admin.MaxSessions+5)
	}
}
