package raftlog

import (
	"context"
	"crypto/tls"
	"io"
	"math"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// outsiderLayer is the client side of a raft.NetworkTransport for a test
// that plays a peer: it dials with its own TLS config (nil: plain TCP)
// and accepts nothing.
type outsiderLayer struct {
	tls    *tls.Config
	ln     net.Listener
	server string // the member's name, for ServerName
}

func (o *outsiderLayer) Accept() (net.Conn, error) { return o.ln.Accept() }
func (o *outsiderLayer) Close() error              { return o.ln.Close() }
func (o *outsiderLayer) Addr() net.Addr            { return o.ln.Addr() }
func (o *outsiderLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil || o.tls == nil {
		return c, err
	}
	cfg := o.tls.Clone()
	cfg.ServerName, cfg.InsecureSkipVerify = o.server, true
	tc := tls.Client(c, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// TestOutsiderVoteRefused: a RequestVote with term 2^64-1 (issue 12 item
// 7: it left the cluster leaderless for good) from anyone who is not a
// member — no certificate, another CA's, a certificate of the CA that
// names no member, an operator's naming a member — is refused before it
// is decoded: no member's term moves, the writer stays and the cluster
// still commits.
func TestOutsiderVoteRefused(t *testing.T) {
	ca := newCA(t, "metrolun test CA")
	tc := newMembers(t)
	for _, m := range tc.members {
		m.tls = memberTLS(ca, ca.issueRole(t, m.name, true, m.role))
	}
	tc.startAll()
	x, epoch := tc.writer(0)
	y := tc.other(x)
	terms := map[string]uint64{}
	for _, m := range tc.members {
		terms[m.name] = m.c.Status().Term
	}
	outsiders := []struct {
		name string
		tls  *tls.Config
	}{
		{"no certificate", &tls.Config{}},
		{"another CA", memberTLS(newCA(t, "other CA"), newCA(t, "other CA").issueRole(t, x.name, true, RoleData))},
		{"no member", memberTLS(ca, ca.issueRole(t, "mallory", true, RoleData))},
		{"operator naming a member", memberTLS(ca, ca.issueRole(t, y.name, true, RoleOperator))},
	}
	for _, o := range outsiders {
		for _, target := range tc.members {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			trans := raft.NewNetworkTransport(&outsiderLayer{tls: o.tls, ln: ln, server: target.name}, 1, 2*time.Second, io.Discard)
			req := &raft.RequestVoteRequest{
				RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(y.name), Addr: []byte(y.name)},
				Term:      math.MaxUint64, LastLogIndex: math.MaxUint64, LastLogTerm: math.MaxUint64,
				// Past the "we have a leader" refusal, as a leadership
				// transfer is.
				LeadershipTransfer: true,
			}
			var resp raft.RequestVoteResponse
			err = trans.RequestVote(raft.ServerID(target.name), raft.ServerAddress(target.listen), req, &resp)
			trans.Close()
			if err == nil {
				t.Errorf("%s: RequestVote to %s answered %+v", o.name, target.name, resp)
			}
		}
	}
	for _, m := range tc.members {
		if got := m.c.Status().Term; got > terms[m.name]+1 || got > 1<<32 {
			t.Errorf("%s's term went from %d to %d", m.name, terms[m.name], got)
		}
	}
	if w, e := tc.writer(0); w != x || e != epoch {
		t.Fatalf("writer %s epoch %d after the votes, was %s %d", w.name, e, x.name, epoch)
	}
	if err := x.c.DropInSync(y.name, epoch); err != nil {
		t.Fatalf("the cluster cannot commit after the votes: %v", err)
	}
}

// TestMemberInsaneTermRefused: even a member (here the witness, with its
// own valid certificate) cannot push a term near 2^64 on the others, by
// RequestVote or by a heartbeat: the RPC is refused before Raft sees it,
// so the cluster keeps its writer and can still elect leaders later.
func TestMemberInsaneTermRefused(t *testing.T) {
	ca := newCA(t, "metrolun test CA")
	tc := newMembers(t)
	for _, m := range tc.members {
		m.tls = memberTLS(ca, ca.issueRole(t, m.name, true, m.role))
	}
	tc.startAll()
	x, epoch := tc.writer(0)
	w := tc.get("w")
	for _, target := range tc.members {
		if target == w {
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		trans := raft.NewNetworkTransport(&outsiderLayer{tls: w.tls, ln: ln, server: target.name}, 1, 2*time.Second, io.Discard)
		hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(w.name), Addr: []byte(w.name)}
		var vr raft.RequestVoteResponse
		err = trans.RequestVote(raft.ServerID(target.name), raft.ServerAddress(target.listen), &raft.RequestVoteRequest{
			RPCHeader: hdr, Term: math.MaxUint64, LastLogIndex: math.MaxUint64, LastLogTerm: math.MaxUint64, LeadershipTransfer: true,
		}, &vr)
		if err == nil {
			t.Errorf("RequestVote with term 2^64-1 to %s answered %+v", target.name, vr)
		}
		var ar raft.AppendEntriesResponse
		err = trans.AppendEntries(raft.ServerID(target.name), raft.ServerAddress(target.listen), &raft.AppendEntriesRequest{
			RPCHeader: hdr, Term: math.MaxUint64 - 1, Leader: []byte(w.name),
		}, &ar)
		if err == nil {
			t.Errorf("heartbeat with term 2^64-2 to %s answered %+v", target.name, ar)
		}
		trans.Close()
	}
	for _, m := range tc.members {
		if got := m.c.Status().Term; got > 1<<32 {
			t.Errorf("%s's term is %d", m.name, got)
		}
	}
	if err := x.c.DropInSync(tc.other(x).name, epoch); err != nil {
		t.Fatalf("the cluster cannot commit after the votes: %v", err)
	}
}
