package integration

import (
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestResync100MiB: a replica is killed, misses 100 MiB of writes (qemu-io
// through the writer), and is restarted while a prober keeps writing
// through the writer, so the resync copies regions with writes landing
// behind and ahead of its cursor. It must rejoin the in-sync set with a
// resync progress figure along the way, and the two backing files must
// then be byte-identical (I4).
func TestResync100MiB(t *testing.T) {
	requireTool(t, "qemu-io")
	base, err := ClusterBasePort(3)
	if err != nil {
		t.Fatal(err)
	}
	bin := metrolunBin(t)
	d := StartDemoT(t, DemoOptions{Bin: bin, Size: "256MiB",
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
	ctx := t.Context()
	ms, err := ClusterStatus(ctx, bin, d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	w := Writer(ms)
	if w == "" {
		t.Fatalf("no writer: %+v", ms)
	}
	r := "site-a"
	if w == "site-a" {
		r = "site-b"
	}
	if err := syscall.Kill(member(d, r).PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The writer drops the dead replica, then writes without it.
	until(t, w+" drops "+r, 30*time.Second, func() bool {
		ms, err := ClusterStatus(ctx, bin, d.Dir)
		if err != nil {
			return false
		}
		for _, m := range ms {
			if m.Name == w && m.Status != nil && m.Status.Site != nil {
				for _, p := range m.Status.Site.Peers {
					if p.Name == r && p.State != "in-sync" && p.State != "dropping" {
						return true
					}
				}
			}
		}
		return false
	})
	start := time.Now()
	if err := qemuIOTimeout(ctx, 5*time.Minute, member(d, w).ISCSI, "write -P 0x5a 16M 100M"); err != nil {
		t.Fatal(err)
	}
	t.Logf("100 MiB written through %s without %s in %v", w, r, time.Since(start).Round(time.Millisecond))

	// The prober writes 4 KiB blocks over [160 MiB, 164 MiB) and the
	// first 4 MiB too, so the resync meets writes on both sides of its
	// cursor.
	p1, err := StartProber(ctx, w, member(d, w).ISCSI, 0, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := StartProber(ctx, w+"-hi", member(d, w).ISCSI, 160<<11, 1024)
	if err != nil {
		t.Fatal(err)
	}
	probers := []*Prober{p1, p2}
	defer func() {
		for _, p := range probers {
			p.Stop()
		}
	}()
	var cmd *exec.Cmd
	if cmd, err = RestartMember(d, r); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopMember(cmd) })
	restarted := time.Now()
	maxDirty, sawProgress := 0, false
	for {
		ms, err := ClusterStatus(ctx, bin, d.Dir)
		if err == nil {
			if InSync(ms, r) {
				break
			}
			for _, m := range ms {
				if m.Name == w && m.Status != nil && m.Status.Site != nil {
					for _, p := range m.Status.Site.Peers {
						if p.Name == r {
							maxDirty = max(maxDirty, p.DirtyRegions)
							if p.ResyncTotal > 0 && p.ResyncDone < p.ResyncTotal {
								sawProgress = true
							}
						}
					}
				}
			}
		}
		if time.Since(restarted) > 3*time.Minute {
			t.Fatalf("%s not back in sync within 3 minutes", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s resynced in %v (restart included); %d dirty regions of 1 MiB at most; progress seen in status: %v",
		r, time.Since(restarted).Round(time.Millisecond), maxDirty, sawProgress)
	if maxDirty < 100 {
		t.Errorf("the writer recorded %d dirty regions for 100 MiB missed", maxDirty)
	}
	p1.Stop()
	p2.Stop()
	for _, p := range probers {
		if p.Errors() > 0 {
			t.Errorf("prober %s: %d writes failed during the resync", p.Site, p.Errors())
		}
		if n, err := p.Verify(ctx, member(d, r).ISCSI); err != nil {
			t.Fatal(err)
		} else {
			t.Logf("%d blocks of prober %s read back at %s", n, p.Site, r)
		}
	}
	if err := qemuIO(ctx, member(d, w).ISCSI, "flush"); err != nil {
		t.Fatal(err)
	}
	if err := qemuIO(ctx, member(d, r).ISCSI, "read -P 0x5a 16M 100M"); err != nil {
		t.Fatal(err)
	}
	same(t, filepath.Join(d.Dir, "site-a", "lun0.img"), filepath.Join(d.Dir, "site-b", "lun0.img"))
}

func qemuIOTimeout(ctx context.Context, d time.Duration, url string, cmds ...string) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return qemuIO(ctx, url, cmds...)
}
