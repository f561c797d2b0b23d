package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/integration/initiator"
	"github.com/metrolun/metrolun/replica"
)

// Addresses the hostile clients of these tests connect from: loopback,
// but none a demo member uses, so per-address caps apply to them alone.
const (
	floodAddr  = "127.0.0.200"
	floodAddr2 = "127.0.0.201"
)

func dialFrom(src, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	return d.Dial("tcp", addr)
}

func memberConf(t *testing.T, d *Demo, name string) *conf.Config {
	t.Helper()
	c, err := conf.Load(filepath.Join(d.Dir, name, "metrolun.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// setNoFile sets a process's RLIMIT_NOFILE, as prlimit does. The hard
// limit is never raised again (that needs CAP_SYS_RESOURCE).
func setNoFile(t *testing.T, pid int, soft, hard uint64) {
	t.Helper()
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: soft, Max: hard}, nil); err != nil {
		t.Fatalf("prlimit --pid %d --nofile=%d:%d: %v", pid, soft, hard, err)
	}
}

func openFiles(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// vmRSS is a process's resident memory in bytes.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// closedWatch reads each connection until the server closes it, and
// counts those it has seen closed.
type closedWatch struct {
	n  atomic.Int64
	wg sync.WaitGroup
}

func watchClosed(conns []net.Conn, within time.Duration) *closedWatch {
	w := &closedWatch{}
	for _, c := range conns {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			c.SetReadDeadline(time.Now().Add(within))
			_, err := io.Copy(io.Discard, c)
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				w.n.Add(1)
			}
		}()
	}
	return w
}

// waitFor polls cond every 20 ms until it holds or within passes.
func waitFor(within time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(within); ; time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// loginAndIO logs in with the Go initiator from 127.0.0.1 and writes and
// reads back one block.
func loginAndIO(ctx context.Context, url string, lba uint64) error {
	portal, iqn, err := ParseISCSIURL(url)
	if err != nil {
		return err
	}
	s, err := initiator.Dial(ctx, portal, iqn, "iqn.2026-11.io.metrolun:limits", initiator.Options{})
	if err != nil {
		return fmt.Errorf("login: %w", err)
	}
	defer s.Close()
	bs, err := s.BlockSize(ctx, 0)
	if err != nil {
		return err
	}
	data := bytes.Repeat([]byte{byte(lba) | 1}, int(bs))
	if err := s.WriteBlocks(ctx, 0, lba, data, true); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := s.ReadBlocks(ctx, 0, lba, 1)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, data) {
		return errors.New("read back other bytes than written")
	}
	return nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// TestLimitsISCSIFlood reproduces issue 12 item 8: enough TCP connects
// to the iSCSI port made accept fail with EMFILE, and the member exited.
// The member runs with RLIMIT_NOFILE 1024 so that a thousand sockets
// show it. Now connections beyond the per-address cap are closed at once,
// the member lives and an initiator from another address logs in and
// does I/O while the flood is held; when the process does run out of
// descriptors, accept waits and goes on once they are back.
func TestLimitsISCSIFlood(t *testing.T) {
	d := StartDemoT(t, DemoOptions{Bin: metrolunBin(t), Size: "64MiB"})
	m := d.File.DataMembers()[0]
	portal, _, err := ParseISCSIURL(m.ISCSI)
	if err != nil {
		t.Fatal(err)
	}
	setNoFile(t, m.PID, 1024, 1024)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const flood = 1100
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	for start := time.Now(); len(conns) < flood && time.Since(start) < 30*time.Second; {
		c, err := dialFrom(floodAddr, portal)
		if err != nil {
			// The kernel's accept queue is full while the member
			// waits out EMFILE (or it is gone): enough.
			t.Logf("connect %d: %v", len(conns), err)
			break
		}
		conns = append(conns, c)
	}
	t.Logf("%d connections from %s held", len(conns), floodAddr)
	w := watchClosed(conns, 10*time.Second)
	// The guard's per-address cap on this port is 256.
	refused := waitFor(10*time.Second, func() bool { return w.n.Load() >= int64(len(conns)-256) || d.Alive() != nil })
	if err := d.Alive(); err != nil {
		t.Fatalf("member did not survive %d connections: %v", len(conns), err)
	}
	if !refused {
		t.Fatalf("%d of %d connections from one address closed by the member, want all but 256", w.n.Load(), len(conns))
	}
	if err := loginAndIO(ctx, m.ISCSI, 8); err != nil {
		t.Fatalf("initiator from 127.0.0.1 during the flood: %v", err)
	}
	w.wg.Wait()

	// Out of descriptors for real: the member waits and goes on.
	setNoFile(t, m.PID, uint64(openFiles(m.PID)+8), 1024)
	var more []net.Conn
	defer func() { closeAll(more) }()
	for len(more) < 64 {
		c, err := dialFrom(floodAddr2, portal)
		if err != nil {
			break
		}
		more = append(more, c)
	}
	if !waitFor(10*time.Second, func() bool { return strings.Contains(tailFile(d.Log, 400), "accept failed; retrying") }) {
		t.Errorf("no EMFILE logged after %d more connections with %d descriptors: %s", len(more), openFiles(m.PID), tailFile(d.Log, 5))
	}
	if waitFor(3*time.Second, func() bool { return d.Alive() != nil }) {
		t.Fatalf("member exited out of descriptors: %v", d.Alive())
	}
	closeAll(conns)
	closeAll(more)
	setNoFile(t, m.PID, 1024, 1024)
	var lastErr error
	if !waitFor(30*time.Second, func() bool { lastErr = loginAndIO(ctx, m.ISCSI, 16); return lastErr == nil }) {
		t.Fatalf("initiator after descriptors came back: %v", lastErr)
	}
	if err := d.Alive(); err != nil {
		t.Fatal(err)
	}
}

// frameFlood is the outcome of floodFrames.
type frameFlood struct {
	base, peak int64 // the member's RSS before and at its highest
	sent       int64 // bytes of frame bodies that got through
	closed     int64 // connections the member closed before they gave up
}

// floodFrames opens conns connections with dial at once; on each it sends
// a length prefix of frame bytes and all of the body but its last byte,
// then holds the connection (up to 3s) to see whether the member closes
// it. It samples pid's RSS all along.
func floodFrames(t *testing.T, pid, conns, frame int, dial func() (net.Conn, error)) frameFlood {
	t.Helper()
	var r frameFlood
	var err error
	if r.base, err = vmRSS(pid); err != nil {
		t.Fatal(err)
	}
	filler := make([]byte, 1<<20)
	var wg sync.WaitGroup
	var sent, closed atomic.Int64
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial()
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write(binary.BigEndian.AppendUint32(nil, uint32(frame))); err == nil {
				// All of the body but its last byte: a member that
				// took the prefix holds the frame and waits.
				for left := frame - 1; left > 0; {
					n, err := c.Write(filler[:min(left, len(filler))])
					sent.Add(int64(n))
					if err != nil {
						break
					}
					left -= n
				}
			}
			// Hold it while the member's memory is sampled.
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, err = io.Copy(io.Discard, c)
			if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
				closed.Add(1)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	r.peak = r.base
	for sampling := true; sampling; {
		select {
		case <-done:
			sampling = false
		case <-time.After(20 * time.Millisecond):
		}
		if rss, err := vmRSS(pid); err == nil {
			r.peak = max(r.peak, rss)
		}
	}
	r.sent, r.closed = sent.Load(), closed.Load()
	return r
}

// TestLimitsReplicationFrameMemory reproduces issue 12 item 9: each
// replication connection allocated a 32 MiB frame from its length
// prefix, so 16 connections sending one added over 500 MB of RSS. Now a
// connection's first frame may be 4 KiB: the prefix is refused before any
// allocation, logged, and the member's RSS does not move. The port speaks
// TLS and takes only data members' certificates, so the 16 connections
// come as a data member would, with site-b's certificate from the demo's
// PKI: they are past the handshake and their first frame is read. Then
// connections without a certificate (plain TCP, and TLS without a client
// certificate) sending the same are refused at the handshake: closed at
// once, before their bodies get through, and logged.
func TestLimitsReplicationFrameMemory(t *testing.T) {
	d := startCluster(t)
	cfg := memberConf(t, d, "site-a")
	if cfg.Cluster.TLS == nil {
		t.Fatal("the demo's cluster has no tls block: its replication port is not authenticated")
	}
	pki := filepath.Dir(cfg.Cluster.TLS.CA)
	var pid int
	for _, m := range d.File.Members {
		if m.Name == "site-a" {
			pid = m.PID
		}
	}
	const conns, frame = 16, 32 << 20
	addr := cfg.Cluster.ReplicationListen
	// dialTLS connects from src and completes the handshake with cfg.
	dialTLS := func(src string, cfg *tls.Config) (net.Conn, error) {
		c, err := dialFrom(src, addr)
		if err != nil {
			return nil, err
		}
		cfg = cfg.Clone()
		cfg.ServerName = "site-a"
		tc := tls.Client(c, cfg)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS handshake with site-a's replication port: %w", err)
		}
		tc.SetDeadline(time.Time{})
		return tc, nil
	}

	asSite := peerTLS(t, pki, "site-b")
	r := floodFrames(t, pid, conns, frame, func() (net.Conn, error) { return dialTLS(floodAddr, asSite) })
	t.Logf("as site-b: site-a RSS %d MiB before, peak %d MiB; %d MiB of frame bodies got through; %d of %d connections closed by site-a",
		r.base>>20, r.peak>>20, r.sent>>20, r.closed, conns)
	if grew := r.peak - r.base; grew > 100<<20 {
		t.Errorf("%d connections each announcing a %d MiB frame grew site-a's RSS by %d MiB", conns, frame>>20, grew>>20)
	}
	if err := d.Alive(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, func() bool {
		return logHas(t, d.Log, "bad frame", "length prefix "+strconv.Itoa(frame)+" not in 1.."+strconv.Itoa(replica.MaxHelloLen))
	}) {
		t.Error("the oversize first frames were not logged as refused at their length prefix")
	}

	// Without a data member's certificate nothing is read at all.
	none := peerTLS(t, pki, "")
	none.ServerName = "site-a"
	var n atomic.Int64
	r = floodFrames(t, pid, conns, frame, func() (net.Conn, error) {
		c, err := dialFrom(floodAddr2, addr)
		if err != nil || n.Add(1)%2 == 0 {
			return c, err
		}
		// The handshake runs with the first write; the refusal may end
		// it there or just after (TLS 1.3 sends the client's
		// certificate last).
		return tls.Client(c, none), nil
	})
	t.Logf("unauthenticated: site-a RSS %d MiB before, peak %d MiB; %d MiB of frame bodies got through; %d of %d connections closed by site-a",
		r.base>>20, r.peak>>20, r.sent>>20, r.closed, conns)
	if r.closed != conns {
		t.Errorf("%d of %d unauthenticated connections closed by site-a within 3s", r.closed, conns)
	}
	// Each could get no more through than the socket buffers hold.
	if r.sent >= conns*(frame-1) {
		t.Errorf("unauthenticated connections sent all %d MiB of their frame bodies: site-a kept reading", r.sent>>20)
	}
	if grew := r.peak - r.base; grew > 100<<20 {
		t.Errorf("%d unauthenticated connections grew site-a's RSS by %d MiB", conns, grew>>20)
	}
	if !waitFor(5*time.Second, func() bool { return logHas(t, d.Log, "refused replication peer before its hello", floodAddr2) }) {
		t.Error("the unauthenticated connections' refusal was not logged")
	}
	if err := d.Alive(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := loginAndIO(ctx, d.File.DataMembers()[0].ISCSI, 24); err != nil {
		t.Fatalf("mirrored I/O after the frames: %v", err)
	}
}

// TestLimitsIdlePorts: connections that are opened and never speak are
// closed on every cluster port: Raft (they never were, issue 12 item 8;
// now when not answered within 10 s), replication (the hello must come
// within the replica timeout), admin (headers within 5 s). And one
// address cannot hold more than its share of the Raft port.
func TestLimitsIdlePorts(t *testing.T) {
	d := startCluster(t)
	cfg := memberConf(t, d, "site-a")
	ports := map[string]string{
		"raft":        cfg.Cluster.RaftListen,
		"replication": cfg.Cluster.ReplicationListen,
		"admin":       cfg.Cluster.AdminListen,
	}
	const idle = 4
	watches := map[string]*closedWatch{}
	var all []net.Conn
	defer func() { closeAll(all) }()
	for name, addr := range ports {
		var conns []net.Conn
		for range idle {
			c, err := dialFrom(floodAddr, addr)
			if err != nil {
				t.Fatalf("%s port: %v", name, err)
			}
			conns = append(conns, c)
		}
		if name == "admin" {
			// A request whose headers never end.
			for _, c := range conns {
				c.Write([]byte("GET /v1/status HTTP/1.1\r\nHost: x\r\n"))
			}
		}
		all = append(all, conns...)
		watches[name] = watchClosed(conns, 20*time.Second)
	}

	// Beyond the per-address cap (128), Raft connections are closed at
	// once, long before the bound on unanswered ones.
	var capped []net.Conn
	defer func() { closeAll(capped) }()
	for range 200 {
		c, err := dialFrom(floodAddr2, cfg.Cluster.RaftListen)
		if err != nil {
			t.Fatal(err)
		}
		capped = append(capped, c)
	}
	cw := watchClosed(capped, 20*time.Second)
	if !waitFor(2*time.Second, func() bool { return cw.n.Load() >= 200-128 }) {
		t.Errorf("200 Raft connections from one address: %d closed within 2s, want at least 72", cw.n.Load())
	}

	for name, w := range watches {
		w.wg.Wait()
		if n := w.n.Load(); n != idle {
			t.Errorf("%s port: %d of %d silent connections closed within 20s", name, n, idle)
		}
	}
	if err := d.Alive(); err != nil {
		t.Fatal(err)
	}
}
