package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startCluster runs a two-site demo with a witness on free ports.
func startCluster(t *testing.T) *Demo {
	t.Helper()
	base, err := ClusterBasePort(3)
	if err != nil {
		t.Fatal(err)
	}
	return StartDemoT(t, DemoOptions{Bin: metrolunBin(t), Size: "64MiB",
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
}

func qemuIO(ctx context.Context, url string, cmds ...string) error {
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, url)
	timeout := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	res, err := RunTool(ctx, timeout, nil, "qemu-io", args...)
	if err != nil {
		return err
	}
	// qemu-io reports a failed command on stdout and still exits 0.
	if bytes.Contains([]byte(res.Stdout), []byte("failed")) || bytes.Contains([]byte(res.Stdout), []byte("Pattern verification failed")) {
		return fmt.Errorf("qemu-io: %s", res.Stdout)
	}
	return nil
}

func member(d *Demo, name string) Member {
	for _, m := range d.File.Members {
		if m.Name == name {
			return m
		}
	}
	return Member{}
}

// TestClusterMirrorFailoverResync is the product's main story on real
// processes with a real client (qemu-io over iscsi://):
//   - a write through site A reads back through site B and vice versa;
//   - a stream of writes through site B (forwarded to the writer A) runs
//     while A is killed with SIGKILL; every write qemu-io saw acknowledged
//     reads back from B afterwards (I1), and B takes writes again within
//     seconds (the time is printed);
//   - A restarts, is resynced while B serves, rejoins the in-sync set,
//     and the two backing files are byte-identical (I4).
func TestClusterMirrorFailoverResync(t *testing.T) {
	d := startCluster(t)
	ctx := t.Context()
	bin := metrolunBin(t)
	a, b := member(d, "site-a"), member(d, "site-b")
	if a.ISCSI == "" || b.ISCSI == "" || member(d, "witness").Role != "witness" {
		t.Fatalf("demo.json: %+v", d.File)
	}
	ms, err := ClusterStatus(ctx, bin, d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	writer := Writer(ms)
	if writer == "" {
		t.Fatalf("no writer: %+v", ms)
	}
	w, other := a, b
	if writer == "site-b" {
		w, other = b, a
	}

	// Mirrored both ways.
	if err := qemuIO(ctx, w.ISCSI, "write -P 0xa1 0 1M"); err != nil {
		t.Fatal(err)
	}
	if err := qemuIO(ctx, other.ISCSI, "read -P 0xa1 0 1M", "write -P 0xb2 1M 256k"); err != nil {
		t.Fatal(err)
	}
	if err := qemuIO(ctx, w.ISCSI, "read -P 0xb2 1M 256k"); err != nil {
		t.Fatal(err)
	}

	// A write stream through the other site while the writer is killed.
	type acked struct {
		off int64
		pat int
	}
	var mu sync.Mutex
	var ok []acked
	var firstAfterKill time.Time
	var killed time.Time
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 400; i++ {
			select {
			case <-stop:
				return
			default:
			}
			off := int64(2<<20) + int64(i)*65536
			pat := 1 + i%250
			err := qemuIO(ctx, other.ISCSI, fmt.Sprintf("write -P %d %d 64k", pat, off))
			mu.Lock()
			if err == nil {
				ok = append(ok, acked{off, pat})
				if !killed.IsZero() && firstAfterKill.IsZero() {
					firstAfterKill = time.Now()
				}
			}
			mu.Unlock()
		}
	}()
	until(t, "10 writes before the kill", 60*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(ok) >= 10 })
	mu.Lock()
	killed = time.Now()
	mu.Unlock()
	if err := syscall.Kill(w.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	until(t, "a write acknowledged after the kill", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !firstAfterKill.IsZero() && len(ok) >= 30
	})
	close(stop)
	<-done
	mu.Lock()
	rto := firstAfterKill.Sub(killed)
	writes := slices.Clone(ok)
	mu.Unlock()
	t.Logf("writer %s killed: first write acknowledged through %s %v later (includes one qemu-io login)", w.Name, other.Name, rto.Truncate(time.Millisecond))

	// Every acknowledged write is at the survivor.
	for _, x := range writes {
		if err := qemuIO(ctx, other.ISCSI, fmt.Sprintf("read -P %d %d 64k", x.pat, x.off)); err != nil {
			t.Fatalf("acknowledged write at %d (pattern %d) lost: %v", x.off, x.pat, err)
		}
	}
	t.Logf("%d acknowledged writes read back from %s", len(writes), other.Name)

	// The old writer comes back and is resynced while writes go on.
	cmd, err := RestartMember(d, w.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopMember(cmd) })
	if err := qemuIO(ctx, other.ISCSI, "write -P 0xc3 8M 1M"); err != nil {
		t.Fatal(err)
	}
	// The writer counts it in sync, and the site itself knows it (its
	// Raft view) and holds a read lease.
	if err := WaitInSync(ctx, bin, d.Dir, w.Name, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := qemuIO(ctx, w.ISCSI, "read -P 0xc3 8M 1M", "flush"); err != nil {
		t.Fatalf("read at the resynced site: %v", err)
	}
	if err := qemuIO(ctx, other.ISCSI, "flush"); err != nil {
		t.Fatal(err)
	}
	same(t, filepath.Join(d.Dir, "site-a", "lun0.img"), filepath.Join(d.Dir, "site-b", "lun0.img"))
}

func same(t *testing.T, pa, pb string) {
	t.Helper()
	x, err := os.ReadFile(pa)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(pb)
	if err != nil {
		t.Fatal(err)
	}
	x, y = luOnly(x), luOnly(y)
	if len(x) != len(y) {
		t.Fatalf("%s and %s differ in size", pa, pb)
	}
	for i := 0; i < len(x); i += 4096 {
		if !bytes.Equal(x[i:min(i+4096, len(x))], y[i:min(i+4096, len(y))]) {
			t.Fatalf("backing files differ at byte %d", i)
		}
	}
}

func until(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterPromoteNoFailedIO: `metrolun promote` moves the writer back
// and forth while a client writes through one site; no write fails, and
// `metrolun verify` then finds the replicas identical.
func TestClusterPromoteNoFailedIO(t *testing.T) {
	d := startCluster(t)
	ctx := t.Context()
	bin := metrolunBin(t)
	a := member(d, "site-a")
	var failed []string
	done := make(chan struct{})
	var n int
	stop := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 300; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := qemuIO(ctx, a.ISCSI, fmt.Sprintf("write -P %d %d 64k", 1+i%250, int64(i%500)*65536)); err != nil {
				failed = append(failed, err.Error())
			}
			n++
		}
	}()
	for _, to := range []string{"site-b", "site-a", "site-b"} {
		res, err := RunTool(ctx, 60*time.Second, nil, bin, "promote", to, "--dir", d.Dir)
		if err != nil {
			t.Fatalf("promote %s: %v", to, err)
		}
		t.Logf("promote %s: %s", to, bytes.TrimSpace([]byte(res.Stdout)))
		ms, err := ClusterStatus(ctx, bin, d.Dir)
		if err != nil {
			t.Fatal(err)
		}
		if w := Writer(ms); w != to {
			t.Fatalf("after promote %s the writer is %q", to, w)
		}
	}
	close(stop)
	<-done
	if len(failed) > 0 {
		t.Fatalf("%d of %d writes failed during promotes; first: %s", len(failed), n, failed[0])
	}
	t.Logf("%d writes through site-a during 3 promotes, none failed", n)
	if _, err := RunTool(ctx, 60*time.Second, nil, bin, "verify", "--dir", d.Dir); err != nil {
		t.Fatalf("verify after promotes: %v", err)
	}
}
