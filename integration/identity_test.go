package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 12, item 4 (I8 "a copy knows it is a copy"): a data site whose
// image is lost while it is down must not rejoin the in-sync set on the
// strength of the writer's dirty bitmap. Each test takes a two-site demo
// past its first epoch (two promotes, so the writer resyncs from bitmaps),
// writes acknowledged blocks through the writer, stops site-b, damages
// its image, restarts it, waits until it is in sync again, checks that
// `metrolun verify` finds the sites identical, kills -9 the writer and
// reads back every acknowledged block at site-b.

// identityRig is a two-site demo past its first epoch with site-a writer.
type identityRig struct {
	d    *Demo
	bin  string
	cmds []*exec.Cmd
	img  string // site-b's backing file
	uuid string // site-b's image identity before it was damaged
}

func newIdentityRig(t *testing.T) *identityRig {
	t.Helper()
	base, err := ClusterBasePort(3)
	if err != nil {
		t.Fatal(err)
	}
	bin := metrolunBin(t)
	d := StartDemoT(t, DemoOptions{Bin: bin, Size: "64MiB", Dir: os.Getenv("METROLUN_IDENTITY_DIR"),
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
	r := &identityRig{d: d, bin: bin, img: filepath.Join(d.Dir, "site-b", "lun0.img")}
	t.Cleanup(func() {
		for _, c := range r.cmds {
			StopMember(c)
		}
	})
	ctx := t.Context()
	if err := WaitInSync(ctx, bin, d.Dir, "site-b", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"site-b", "site-a"} {
		if _, err := RunTool(ctx, 60*time.Second, nil, bin, "promote", to, "--dir", d.Dir); err != nil {
			t.Fatalf("promote %s: %v", to, err)
		}
	}
	ms, err := ClusterStatus(ctx, bin, d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if w := Writer(ms); w != "site-a" {
		t.Fatalf("after two promotes the writer is %q, want site-a", w)
	}
	if e := ms[0].Status.Raft.Epoch; e < 2 {
		t.Fatalf("epoch %d after two promotes", e)
	}
	return r
}

// write has a prober write blocks through site-a until n are acknowledged.
func (r *identityRig) write(t *testing.T, n int) *Prober {
	t.Helper()
	p, err := StartProber(context.Background(), "site-a", member(r.d, "site-a").ISCSI, 0, 2048)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(p.Acked()) < n {
		if time.Now().After(deadline) {
			p.Stop()
			t.Fatalf("fewer than %d writes acknowledged in 60s (%d errors)", n, p.Errors())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.Stop()
	return p
}

// stopB stops site-b with SIGTERM and waits until its process is gone.
func (r *identityRig) stopB(t *testing.T) {
	t.Helper()
	if st := r.image(t, "site-b"); st.Untrusted != "" || st.UUID == "" {
		t.Fatalf("site-b's image before the test: %+v", st)
	} else {
		r.uuid = st.UUID
	}
	pid := member(r.d, "site-b").PID
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, c := range r.cmds {
		if c.Process != nil && c.Process.Pid == pid {
			c.Wait()
		}
	}
	until(t, "site-b exits", 30*time.Second, func() bool { return !processAlive(pid) })
}

// startB starts site-b again from its config.
func (r *identityRig) startB(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd, err := RestartMember(r.d, "site-b")
	if err != nil {
		t.Fatal(err)
	}
	r.cmds = append(r.cmds, cmd)
	return cmd
}

// rejoinAndFailOver waits until site-b is in sync again, checks that
// verify finds the sites identical, kills -9 site-a and reads back every
// block p saw acknowledged at site-b.
func (r *identityRig) rejoinAndFailOver(t *testing.T, p *Prober) {
	t.Helper()
	ctx := t.Context()
	if err := WaitInSync(ctx, r.bin, r.d.Dir, "site-b", 120*time.Second); err != nil {
		t.Fatal(err)
	}
	// metrolun status shows the new image, trusted once it was copied.
	var st imageState
	until(t, "site-b's new image trusted", 30*time.Second, func() bool {
		st = r.image(t, "site-b")
		return st.Untrusted == ""
	})
	if st.UUID == r.uuid || st.Gen < 2 {
		t.Errorf("site-b's image after its copy: %+v (before: %s)", st, r.uuid)
	}
	if res, err := RunTool(ctx, 120*time.Second, nil, r.bin, "verify", "--dir", r.d.Dir); err != nil {
		t.Errorf("verify after site-b rejoined: %v\n%s", err, res.Stdout)
	}
	if err := syscall.Kill(member(r.d, "site-a").PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	until(t, "site-b becomes writer", 60*time.Second, func() bool {
		ms, err := ClusterStatus(ctx, r.bin, r.d.Dir)
		return err == nil && Writer(ms) == "site-b"
	})
	n, err := p.Verify(ctx, member(r.d, "site-b").ISCSI)
	if err != nil {
		t.Fatalf("after site-a was killed: %v", err)
	}
	t.Logf("%d acknowledged blocks read back at site-b", n)
}

// TestIdentityEmptyImageRejoins: site-b's backing file is replaced by an
// empty one while it is down (a mount missing at boot). It must be
// copied in full before it is in sync, so that every acknowledged block
// survives the loss of site-a.
func TestIdentityEmptyImageRejoins(t *testing.T) {
	r := newIdentityRig(t)
	p := r.write(t, 1500)
	r.stopB(t)
	if err := os.Remove(r.img); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r.startB(t)
	r.rejoinAndFailOver(t, p)
}

// TestIdentityMissingPath: site-b's backing file, then its directory,
// is gone while it is down. site-b must refuse to start (never create an
// empty image in its place) and say why; once the operator gives it an
// empty file it is copied in full.
func TestIdentityMissingPath(t *testing.T) {
	r := newIdentityRig(t)
	p := r.write(t, 1500)
	r.stopB(t)
	// The backing file in a directory of its own, as on a mount point.
	cfgPath := filepath.Join(r.d.Dir, "site-b", "metrolun.hcl")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(r.d.Dir, "site-b", "mnt")
	if !strings.Contains(string(cfg), strconv.Quote(r.img)) {
		t.Fatalf("site-b's config does not name %s", r.img)
	}
	moved := filepath.Join(mnt, "lun0.img")
	if err := os.WriteFile(cfgPath, []byte(strings.ReplaceAll(string(cfg), strconv.Quote(r.img), strconv.Quote(moved))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(r.img, moved); err != nil {
		t.Fatal(err)
	}
	// The mount is gone: the directory is missing.
	if err := os.RemoveAll(mnt); err != nil {
		t.Fatal(err)
	}
	r.mustNotStart(t, "directory")
	if _, err := os.Stat(moved); err == nil {
		t.Fatalf("site-b created %s", moved)
	}
	// An empty mount: the directory is there, the file is not.
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	r.mustNotStart(t, "missing")
	if _, err := os.Stat(moved); err == nil {
		t.Fatalf("site-b created %s", moved)
	}
	// The operator provides an empty image on purpose.
	if err := os.WriteFile(moved, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r.startB(t)
	r.rejoinAndFailOver(t, p)
}

type imageState struct {
	UUID, Untrusted string
	Gen             uint64
}

// image is what `metrolun status` says of site's own image.
func (r *identityRig) image(t *testing.T, site string) imageState {
	t.Helper()
	ms, err := ClusterStatus(t.Context(), r.bin, r.d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == site && m.Status != nil && m.Status.Image != nil {
			return imageState{m.Status.Image.UUID, m.Status.Image.Untrusted, m.Status.Image.Gen}
		}
	}
	t.Fatalf("metrolun status shows no image for %s", site)
	return imageState{}
}

// mustNotStart starts site-b and expects it to exit with an error whose
// log names why.
func (r *identityRig) mustNotStart(t *testing.T, why string) {
	t.Helper()
	cmd := r.startB(t)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err == nil {
			t.Fatal("site-b exited 0 without its backing store")
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("site-b started without its backing store (want an error saying %q)", why)
	}
	log, _ := os.ReadFile(filepath.Join(r.d.Dir, "site-b-restart.log"))
	last := strings.TrimSpace(string(log))
	if i := strings.LastIndex(last, "\n"); i >= 0 {
		last = last[i+1:]
	}
	if !strings.Contains(last, why) {
		t.Errorf("site-b's last log line does not say %q: %s", why, last)
	}
	t.Logf("site-b refused to start: %s", last)
}

// TestIdentityLostImageNeverWriter: both data sites die at once (site-b
// still in the in-sync set), and site-b comes back first with an empty
// image. With the witness it has a majority, but it must not become the
// writer on an image that holds none of the acknowledged writes; status
// says why. Once site-a is back, site-a writes and site-b is copied in
// full.
func TestIdentityLostImageNeverWriter(t *testing.T) {
	r := newIdentityRig(t)
	p := r.write(t, 1500)
	ctx := t.Context()
	for _, s := range []string{"site-a", "site-b"} {
		if err := syscall.Kill(member(r.d, s).PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []string{"site-a", "site-b"} {
		pid := member(r.d, s).PID
		until(t, s+" exits", 30*time.Second, func() bool { return !processAlive(pid) })
	}
	if err := os.WriteFile(r.img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r.startB(t)
	// Time for several elections and lease waits (demo timings: lease
	// 300ms, election 500ms): nobody may become writer meanwhile.
	var untrusted string
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		ms, err := ClusterStatus(ctx, r.bin, r.d.Dir)
		if err != nil {
			continue
		}
		if w := Writer(ms); w != "" {
			t.Fatalf("%s became writer while site-a was down and site-b's image was empty", w)
		}
		for _, m := range ms {
			if m.Name == "site-b" && m.Status != nil && m.Status.Image != nil {
				untrusted = m.Status.Image.Untrusted
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if untrusted == "" {
		t.Error("metrolun status does not say that site-b's image is untrusted")
	}
	t.Logf("site-b's image: untrusted: %s", untrusted)
	cmd, err := RestartMember(r.d, "site-a")
	if err != nil {
		t.Fatal(err)
	}
	r.cmds = append(r.cmds, cmd)
	until(t, "site-a becomes writer", 60*time.Second, func() bool {
		ms, err := ClusterStatus(ctx, r.bin, r.d.Dir)
		return err == nil && Writer(ms) == "site-a"
	})
	r.rejoinAndFailOver(t, p)
}
