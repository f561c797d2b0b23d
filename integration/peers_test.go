package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/metrolun/metrolun/replica"
)

// peerTLS is the client config of a peer that presents the certificate
// NAME in pki (nil: none at all); it does not check the server, it is
// the one attacking.
func peerTLS(t *testing.T, pki, name string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	if name == "" {
		return cfg
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(pki, name+".pem"), filepath.Join(pki, name+"-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Certificates = []tls.Certificate{pair}
	return cfg
}

// dialPeer connects to addr as a peer would: plain TCP with cfg nil,
// else TLS naming server.
func dialPeer(ctx context.Context, addr, server string, cfg *tls.Config) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if cfg == nil {
		return d.DialContext(ctx, "tcp", addr)
	}
	cfg = cfg.Clone()
	cfg.ServerName = server
	td := tls.Dialer{NetDialer: &d, Config: cfg}
	return td.DialContext(ctx, "tcp", addr)
}

// replicationImpostor says hello on a replication port and, if the hello
// is taken, sends one write of marker at off: a stream frame, or a
// forwarded write with forward. It reports what was taken.
func replicationImpostor(ctx context.Context, addr, server string, cfg *tls.Config, from string, epoch uint64, forward bool, off int64, marker []byte) (string, bool) {
	c, err := dialPeer(ctx, addr, server, cfg)
	if err != nil {
		return "dial: " + err.Error(), false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	hello := &replica.Frame{Kind: replica.FrameHello, Epoch: epoch, From: from}
	if forward {
		hello.Flags = replica.FlagForward
	}
	if err := replica.WriteFrame(c, hello); err != nil {
		return "hello: " + err.Error(), false
	}
	br := bufio.NewReader(c)
	ack, err := replica.ReadFrame(br, replica.MaxHelloAckLen)
	if err != nil {
		return "hello answer: " + err.Error(), false
	}
	if ack.Kind != replica.FrameHelloAck || ack.Err != "" {
		return "refused: " + ack.Err, false
	}
	f := &replica.Frame{Kind: replica.FrameWrite, Epoch: epoch, Seq: 1, Offset: off, Length: uint32(len(marker)), Data: marker, CRC: replica.Checksum(marker)}
	if forward {
		f.Kind = replica.FrameFwdWrite
	}
	if err := replica.WriteFrame(c, f); err != nil {
		return "hello taken; write: " + err.Error(), true
	}
	for {
		ans, err := replica.ReadFrame(br, replica.MaxControlLen)
		if err != nil {
			return "hello taken; write answer: " + err.Error(), true
		}
		switch ans.Kind {
		case replica.FrameAck:
			return "hello taken; write acknowledged", true
		case replica.FrameFwdResult:
			return "hello taken; forwarded write answered " + ans.Err, true
		case replica.FrameNack:
			return "hello taken; write refused: " + ans.Err, true
		}
	}
}

// voteLayer is the client side of a raft.NetworkTransport for a peer
// that only sends: it dials with its own TLS config.
type voteLayer struct {
	ln     net.Listener
	cfg    *tls.Config
	server string
}

func (v *voteLayer) Accept() (net.Conn, error) { return v.ln.Accept() }
func (v *voteLayer) Close() error              { return v.ln.Close() }
func (v *voteLayer) Addr() net.Addr            { return v.ln.Addr() }
func (v *voteLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := dialPeer(ctx, string(addr), v.server, v.cfg)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*tls.Conn); ok {
		// The transport writes first; make the handshake's refusal an
		// error here rather than a lost RPC.
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// sendVote sends member the RequestVote that left a cluster leaderless
// for good (issue 12 item 7): term 2^64-1, as a leadership transfer, from
// a voter's ID. It reports whether the member answered.
func sendVote(t *testing.T, addr, server, as string, cfg *tls.Config) (raft.RequestVoteResponse, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransport(&voteLayer{ln: ln, cfg: cfg, server: server}, 1, 5*time.Second, io.Discard)
	defer trans.Close()
	req := &raft.RequestVoteRequest{
		RPCHeader:          raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(as), Addr: []byte(as)},
		Term:               math.MaxUint64,
		LastLogIndex:       math.MaxUint64,
		LastLogTerm:        math.MaxUint64,
		LeadershipTransfer: true,
	}
	var resp raft.RequestVoteResponse
	err = trans.RequestVote(raft.ServerID(server), raft.ServerAddress(addr), req, &resp)
	return resp, err
}

// TestAdversarialPeers plays hostile peers against a real cluster of two
// data sites and a witness (issue 12 items 6 and 7): replication hellos
// over plain TCP, with the witness's certificate, with a certificate of
// the CA that names no member, with a data site's certificate claiming
// the other site's name, and an authenticated data site claiming to be
// the writer at an epoch never committed; and Raft RequestVotes with term
// 2^64-1 from no certificate, a non-member's and an operator's. The
// cluster must keep its writer, epoch and in-sync set, no impostor byte
// may reach either image, and writes must still mirror afterwards.
func TestAdversarialPeers(t *testing.T) {
	requireTool(t, "qemu-io")
	bin := metrolunBin(t)
	base, err := ClusterBasePort(3)
	if err != nil {
		t.Fatal(err)
	}
	d := StartDemoT(t, DemoOptions{Bin: bin, Size: "16MiB",
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
	ctx := t.Context()
	ms := mustStatus(t, ctx, bin, d.Dir)
	w := Writer(ms)
	if w == "" {
		t.Fatalf("no writer: %+v", ms)
	}
	r := "site-a"
	if w == "site-a" {
		r = "site-b"
	}
	if err := WaitInSync(ctx, bin, d.Dir, r, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	before := raftView(t, ctx, bin, d.Dir)
	type addr struct{ name, raft, replication string }
	var members []addr
	addrs := map[string]addr{}
	for _, m := range ms {
		if m.Name != w || m.Status == nil {
			continue
		}
		for _, mi := range m.Status.Raft.MemberInfo {
			a := addr{mi.Name, mi.Raft, mi.Replication}
			members = append(members, a)
			addrs[mi.Name] = a
		}
	}
	if len(members) != 3 {
		t.Fatalf("members %+v", members)
	}

	// A non-member's data certificate and an operator's, from the
	// cluster's own CA: the CA signs operators, and a leaked or extra
	// certificate must not make its holder a member.
	pki := filepath.Join(d.Dir, "pki")
	if _, err := os.Stat(filepath.Join(pki, "ca.pem")); err != nil {
		t.Errorf("the demo made no PKI: %v", err)
	} else if out, err := exec.CommandContext(ctx, bin, "certs", "issue", "site-x", "--role", "data", "--dir", pki).CombinedOutput(); err != nil {
		t.Fatalf("certs issue: %v: %s", err, out)
	}
	withCert := func(name string) *tls.Config {
		if _, err := os.Stat(filepath.Join(pki, name+".pem")); err != nil {
			return nil
		}
		return peerTLS(t, pki, name)
	}

	const markOff = 8 << 20
	marker := bytes.Repeat([]byte{0xE6}, 4096)
	huge := uint64(1) << 62
	attacks := []struct {
		what     string
		cfg      *tls.Config // nil: plain TCP
		needCert bool
		to, from string
		epoch    uint64
		forward  bool
	}{
		{"plain TCP, stream into the replica as the writer, poisoned epoch", nil, false, r, w, huge, false},
		{"plain TCP, stream into the replica as the writer", nil, false, r, w, before.Epoch, false},
		{"plain TCP, forwarded through the writer as the replica", nil, false, w, r, before.Epoch, true},
		{"TLS without a certificate, as the writer", peerTLS(t, pki, ""), false, r, w, before.Epoch, false},
		{"witness certificate, as the writer", withCert("witness"), true, r, w, before.Epoch, false},
		{"witness certificate, as itself", withCert("witness"), true, r, "witness", before.Epoch, false},
		{"non-member data certificate, as the writer", withCert("site-x"), true, r, w, before.Epoch, false},
		{"non-member data certificate, forwarded as the replica", withCert("site-x"), true, w, r, before.Epoch, true},
		{"operator certificate, forwarded as the replica", withCert("operator"), true, w, r, before.Epoch, true},
		{"the replica's certificate, as the writer", withCert(r), true, r, w, huge, false},
		{"the replica's certificate, stream into the writer, poisoned epoch", withCert(r), true, w, r, huge, false},
	}
	for _, a := range attacks {
		if a.needCert && a.cfg == nil {
			t.Errorf("%s: no certificate to try", a.what)
			continue
		}
		what, taken := replicationImpostor(ctx, addrs[a.to].replication, a.to, a.cfg, a.from, a.epoch, a.forward, markOff, marker)
		t.Logf("%s: %s", a.what, what)
		if taken {
			t.Errorf("%s: the hello was taken: %s", a.what, what)
		}
	}

	votes := []struct {
		what     string
		cfg      *tls.Config
		needCert bool
	}{
		{"plain TCP", nil, false},
		{"non-member data certificate", withCert("site-x"), true},
		{"operator certificate", withCert("operator"), true},
	}
	for _, v := range votes {
		if v.needCert && v.cfg == nil {
			t.Errorf("vote with %s: no certificate to try", v.what)
			continue
		}
		for _, m := range members {
			resp, err := sendVote(t, m.raft, m.name, r, v.cfg)
			t.Logf("vote with %s to %s: %+v, %v", v.what, m.name, resp, err)
			if err == nil {
				t.Errorf("vote with %s to %s was answered (term %d)", v.what, m.name, resp.Term)
			}
		}
	}

	// The cluster is as it was: same writer, same epoch, both in sync,
	// terms sane, and it still commits (a write mirrors).
	if err := qemuIO(ctx, member(d, w).ISCSI, "write -P 0x5a 0 1M", "write -P 0x3c 12M 64k"); err != nil {
		t.Fatalf("write through the writer after the attacks: %v", err)
	}
	after := raftView(t, ctx, bin, d.Dir)
	if after.Writer != before.Writer || after.Epoch != before.Epoch || !slices.Equal(after.InSync, before.InSync) {
		t.Errorf("cluster was %+v, is %+v", before, after)
	}
	if after.MaxTerm > 1<<32 {
		t.Errorf("a member's Raft term is %d", after.MaxTerm)
	}
	if ms := mustStatus(t, ctx, bin, d.Dir); !InSync(ms, r) {
		t.Errorf("%s is not in sync after the attacks", r)
	}
	imgW, imgR := filepath.Join(d.Dir, w, "lun0.img"), filepath.Join(d.Dir, r, "lun0.img")
	for _, img := range []string{imgW, imgR} {
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, marker[:512]) {
			t.Errorf("%s holds the impostor's bytes", img)
		}
	}
	if err := qemuIO(ctx, member(d, r).ISCSI, "read -P 0x5a 0 1M", "read -P 0x3c 12M 64k"); err != nil {
		t.Errorf("the writes after the attacks do not read back at %s: %v", r, err)
	}
	same(t, imgW, imgR)
}

// clusterView is what a test compares before and after an attack: the
// writer's view, and the highest Raft term of any member.
type clusterView struct {
	Writer  string
	Epoch   uint64
	InSync  []string
	MaxTerm uint64
}

func raftView(t *testing.T, ctx context.Context, bin, dir string) clusterView {
	t.Helper()
	ms := mustStatus(t, ctx, bin, dir)
	var v clusterView
	for _, m := range ms {
		if m.Status == nil {
			t.Fatalf("%s did not answer status", m.Name)
		}
		v.MaxTerm = max(v.MaxTerm, m.Status.Raft.Term)
		if m.Status.Site != nil && m.Status.Site.Role == "writer" {
			v.Writer, v.Epoch = m.Name, m.Status.Raft.Epoch
			v.InSync = slices.Sorted(slices.Values(m.Status.Raft.InSync))
		}
	}
	return v
}
