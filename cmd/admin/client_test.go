package admin

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metrolun/metrolun/cmd/paths"
)

// TestClientKeepsConnectionPerMember: a member's polls reuse one TLS
// connection (a handshake per poll cost more than all else an idle
// cluster did), and a connection verified for one member, or for an
// address, is never reused for a request that expects another member at
// the same address.
func TestClientKeepsConnectionPerMember(t *testing.T) {
	p := newPKI(t)
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(&backend{})
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.cert(t, "site-b", "data", true)}, MinVersion: tls.VersionTLS13}
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	c := &Client{TLS: &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS13}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	ctx := context.Background()
	siteB := Endpoint{Name: "site-b", Admin: addr}
	for i := range 5 {
		if _, err := c.Status(ctx, siteB); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("5 requests to one member took %d connections, want 1", n)
	}
	// site-b's certificate holds 127.0.0.1: a request that knows no name
	// takes it by address, and its connection must not then serve a
	// request that expects site-a.
	if _, err := c.Status(ctx, Endpoint{Admin: addr}); err != nil {
		t.Fatalf("by address: %v", err)
	}
	if _, err := c.Status(ctx, Endpoint{Name: "site-a", Admin: addr}); err == nil {
		t.Fatal("site-b's connection was taken for site-a's")
	}
	if _, err := c.Status(ctx, siteB); err != nil {
		t.Fatalf("site-b again: %v", err)
	}
}

// TestSessionsIfChanged: a poller that holds a member's list gets 304 and
// no body until the list changes; a change of the member's clock alone is
// no change.
func TestSessionsIfChanged(t *testing.T) {
	var mu sync.Mutex
	list := SessionList{Member: "site-b", Now: time.Now()}
	var bodies atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		l := list
		l.Now = time.Now()
		mu.Unlock()
		rec := &countingWriter{ResponseWriter: w}
		WriteSessions(rec, r, l)
		if rec.n > 0 {
			bodies.Add(1)
		}
	}))
	defer srv.Close()
	c := &Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	ep := Endpoint{Name: "site-b", Admin: srv.Listener.Addr().String()}
	ctx := context.Background()

	l, tag, same, err := c.SessionsIfChanged(ctx, ep, "")
	if err != nil || same || l.Member != "site-b" || tag == "" {
		t.Fatalf("first poll: %+v %q same=%v %v", l, tag, same, err)
	}
	for range 3 {
		_, tag2, same, err := c.SessionsIfChanged(ctx, ep, tag)
		if err != nil || !same || tag2 != tag {
			t.Fatalf("unchanged list: tag %q->%q same=%v %v", tag, tag2, same, err)
		}
	}
	if n := bodies.Load(); n != 1 {
		t.Fatalf("%d bodies sent for one list, want 1", n)
	}
	mu.Lock()
	list.Sessions = []paths.Session{{Site: "site-b", Initiator: "iqn.x:h", ISID: "1", Since: time.Now()}}
	mu.Unlock()
	l, tag3, same, err := c.SessionsIfChanged(ctx, ep, tag)
	if err != nil || same || len(l.Sessions) != 1 || tag3 == tag {
		t.Fatalf("changed list: %+v %q same=%v %v", l, tag3, same, err)
	}
}

type countingWriter struct {
	http.ResponseWriter
	n int
}

func (w *countingWriter) Write(b []byte) (int, error) {
	w.n += len(b)
	return w.ResponseWriter.Write(b)
}
