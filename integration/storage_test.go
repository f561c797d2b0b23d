package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/metrolun/metrolun/integration/initiator"
)

// Storage faults against real processes (DESIGN.md Failures, "Storage
// fails"): a full file system under a thin LUN (a real tmpfs), and, in a
// binary built with the metrolun_faults tag, a failed write-back.

// tmpfsLUN mounts a tmpfs of size (mount's -o size=) and links
// siteDir/lun0.img into it, so that the LUN, and only the LUN, of the
// demo site siteDir lives on a small file system. It needs root. The
// mount goes in t.Cleanup, registered before the demo's stop, so it
// is undone after the processes are gone.
func tmpfsLUN(t *testing.T, siteDir, size string) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "tmpfs-"+filepath.Base(siteDir))
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount a %s tmpfs (the test needs root): %v: %s", size, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	if err := os.MkdirAll(siteDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(mnt, "lun0.img"), filepath.Join(siteDir, "lun0.img")); err != nil {
		t.Fatal(err)
	}
	return mnt
}

// fillTo leaves free bytes free on the file system at mnt (a filler file
// takes the rest) and returns the filler's path.
func fillTo(t *testing.T, mnt string, free int64) string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	avail := int64(st.Bavail) * st.Bsize
	if avail <= free {
		t.Fatalf("%s has %d bytes free, fewer than the %d to leave", mnt, avail, free)
	}
	path := filepath.Join(mnt, "filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, avail-free); err != nil {
		t.Fatalf("fill %s: %v", mnt, err)
	}
	return path
}

// dialLUN logs in to a demo member's LUN URL and takes the unit
// attention a new nexus gets.
func dialLUN(t *testing.T, ctx context.Context, url, who string) *initiator.Session {
	t.Helper()
	s, err := tryDialLUN(t, ctx, url, who)
	if err != nil {
		t.Fatalf("login to %s: %v", url, err)
	}
	return s
}

func tryDialLUN(t *testing.T, ctx context.Context, url, who string) (*initiator.Session, error) {
	portal, iqn, err := ParseISCSIURL(url)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := initiator.Dial(dctx, portal, iqn, "iqn.2026-11.io.metrolun:storage-"+who, initiator.Options{})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { s.Close() })
	for range 3 {
		if err := s.TestUnitReady(dctx, 0); err == nil {
			break
		}
	}
	return s, nil
}

// senseOf returns err's sense key and ASC/ASCQ; ok is false when err is
// not a CHECK CONDITION.
func senseOf(err error) (key, asc, ascq byte, ok bool) {
	var se *initiator.SCSIError
	if !errors.As(err, &se) || se.Status != initiator.StatusCheckCondition {
		return 0, 0, 0, false
	}
	return se.SenseKey, se.ASC, se.ASCQ, true
}

func isSense(err error, key, asc, ascq byte) bool {
	k, a, q, ok := senseOf(err)
	return ok && k == key && a == asc && q == ascq
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func logHas(t *testing.T, path string, parts ...string) bool {
	t.Helper()
	return logCount(t, path, parts...) > 0
}

// logCount counts the lines of the log at path that contain every part.
func logCount(t *testing.T, path string, parts ...string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// TestStorageFullThinLUN (issue 12, items 1 and 10): a single site whose
// thin LUN sits on a file system with 4 MiB free. An 8 MiB write, FUA or
// not, must not be answered GOOD (on the old code the FUA one was: a
// short pwritev2 count was ignored); it is DATA PROTECT, SPACE
// ALLOCATION FAILED WRITE PROTECT (07/27/07, SBC-3 section 4.7.3.6),
// logged with the LU and LBA. What was acknowledged before still reads
// back, and SYNCHRONIZE CACHE still succeeds: out of space loses nothing.
func TestStorageFullThinLUN(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	mnt := tmpfsLUN(t, filepath.Join(dir, "site-a"), "16m")
	d := StartDemoT(t, DemoOptions{Bin: metrolunBin(t), Dir: dir, Size: "64MiB"})
	ctx := t.Context()
	s := dialLUN(t, ctx, d.File.DataMembers()[0].ISCSI, "full")
	before := fill(0x11, 1<<20)
	if err := s.WriteBlocks(ctx, 0, 0, before, true); err != nil {
		t.Fatal(err)
	}
	fillTo(t, mnt, 4<<20)
	for _, fua := range []bool{true, false} {
		lba := uint64(16 << 11) // 16 MiB in 512-byte blocks
		if !fua {
			lba = 32 << 11
		}
		err := s.WriteBlocks(ctx, 0, lba, fill(0x22, 8<<20), fua)
		if err == nil {
			t.Fatalf("an 8 MiB WRITE (FUA %v) on a LUN with 4 MiB free was answered GOOD", fua)
		}
		if !isSense(err, initiator.SenseDataProtect, 0x27, 0x07) {
			t.Fatalf("8 MiB WRITE (FUA %v) with 4 MiB free: %v; want DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (07/27/07)", fua, err)
		}
		if !logHas(t, d.Log, "I/O failed", "lba="+strconv.FormatUint(lba, 10), "out of space") {
			t.Fatalf("no log line for the failed write at LBA %d (lun, lba and cause): %s", lba, tailFile(d.Log, 10))
		}
	}
	got, err := s.ReadBlocks(ctx, 0, 0, uint32(len(before)/512))
	if err != nil || !bytes.Equal(got, before) {
		t.Fatalf("data acknowledged before the disk filled: err %v, equal %v", err, bytes.Equal(got, before))
	}
	if err := s.SyncCache(ctx, 0); err != nil {
		t.Fatalf("SYNCHRONIZE CACHE after out of space: %v", err)
	}
}

// fullCluster is a two-site demo cluster whose LUNs sit on 48 MiB
// tmpfs mounts (the LUN is 64 MiB, thin).
type fullCluster struct {
	t    *testing.T
	d    *Demo
	bin  string
	mnts map[string]string
	w, r string // writer and replica at the start
}

func startFullCluster(t *testing.T) *fullCluster {
	requireTool(t, "qemu-io")
	base, err := ClusterBasePort(3)
	if err != nil {
		t.Fatal(err)
	}
	fc := &fullCluster{t: t, bin: metrolunBin(t), mnts: map[string]string{}}
	dir := filepath.Join(t.TempDir(), "demo")
	for _, n := range []string{"site-a", "site-b"} {
		fc.mnts[n] = tmpfsLUN(t, filepath.Join(dir, n), "48m")
	}
	fc.d = StartDemoT(t, DemoOptions{Bin: fc.bin, Dir: dir, Size: "64MiB",
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
	ms, err := ClusterStatus(t.Context(), fc.bin, fc.d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if fc.w = Writer(ms); fc.w == "" {
		t.Fatalf("no writer: %+v", ms)
	}
	fc.r = "site-a"
	if fc.w == "site-a" {
		fc.r = "site-b"
	}
	return fc
}

func (fc *fullCluster) inSync(name string) bool {
	ms, err := ClusterStatus(fc.t.Context(), fc.bin, fc.d.Dir)
	return err == nil && InSync(ms, name)
}

func (fc *fullCluster) verify(when string) {
	fc.t.Helper()
	verifySettles(fc.t, fc.bin, fc.d.Dir, when)
}

// verifySettles runs `metrolun verify` until it finds no difference,
// for up to a minute. A site the writer has still to drop and resync
// may show as in sync for a moment (the new writer learns that it
// diverged when it connects), so one failed verify right after a
// hand-over proves nothing; a difference that lasts does.
func verifySettles(t *testing.T, bin, dir, when string) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if _, err = RunTool(t.Context(), 60*time.Second, nil, bin, "verify", "--dir", dir); err == nil {
			return
		}
	}
	t.Fatalf("verify %s: %v", when, err)
}

// TestStorageFullForwardingSite (issue 12, item 2): in a two-site
// cluster, the site that is not the writer has 4 MiB free under its thin
// LUN. An 8 MiB write through it (forwarded to the writer) is not
// answered GOOD while it stays in sync without the data; once space is
// back it is resynced and `metrolun verify` finds no difference. On the
// old code the write got ABORTED COMMAND after the hold time, the site
// was resynced with 0 regions copied and verify found 4 regions
// different.
func TestStorageFullForwardingSite(t *testing.T) {
	fc := startFullCluster(t)
	ctx, d, r := t.Context(), fc.d, fc.r
	data := fill(0x5a, 8<<20)
	filler := fillTo(t, fc.mnts[r], 4<<20)
	sr := dialLUN(t, ctx, member(d, r).ISCSI, "via-"+r)
	const lba1 = 16 << 11
	err := sr.WriteBlocks(ctx, 0, lba1, data, true)
	t.Logf("8 MiB FUA write through the full %s: %v", r, err)
	if err == nil && fc.inSync(r) {
		t.Fatalf("a write %s could not store was answered GOOD with %s in sync", r, r)
	}
	if err != nil && !isSense(err, initiator.SenseDataProtect, 0x27, 0x07) {
		t.Errorf("the failed write's sense: %v; want DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT", err)
	}
	until(t, r+" out of the in-sync set", 30*time.Second, func() bool { return !fc.inSync(r) })
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	until(t, r+" back in sync", 60*time.Second, func() bool { return fc.inSync(r) })
	fc.verify("after the forwarding site's resync")

}

// TestStorageFullReplica (issue 12, item 1 in a cluster): the replica
// has 4 MiB free under its thin LUN. An 8 MiB FUA write through the
// writer is refused, or answered GOOD with the replica out of the
// in-sync set; after kill -9 of the writer the replica never serves
// other bytes than the acknowledged ones, and once the writer is back
// and space is free, the replica is resynced (verify: no difference).
// On the old code the write was answered GOOD with the replica in sync
// holding half of it (a short write ignored), so the survivor served
// zeros with GOOD.
func TestStorageFullReplica(t *testing.T) {
	fc := startFullCluster(t)
	ctx, d, w, r := t.Context(), fc.d, fc.w, fc.r
	data := fill(0x5a, 8<<20)
	var err error
	// A write through the writer while the replica is full, then the
	// writer dies.
	filler := fillTo(t, fc.mnts[r], 4<<20)
	sw := dialLUN(t, ctx, member(d, w).ISCSI, "via-"+w)
	const lba2 = 32 << 11
	werr := sw.WriteBlocks(ctx, 0, lba2, data, true)
	t.Logf("8 MiB FUA write through the writer %s with %s full: %v", w, r, werr)
	if werr == nil && fc.inSync(r) {
		// Go on: what the survivor serves after the writer dies is the
		// harm this does.
		t.Errorf("the write was answered GOOD with %s, which could not store it, in sync", r)
	}
	if err := syscall.Kill(member(d, w).PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// For a while the survivor either serves the acknowledged bytes or
	// refuses; never GOOD with other bytes (I1).
	var sr2 *initiator.Session
	served, refused := 0, 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if sr2 == nil {
			// A site that cannot serve may redirect or refuse the login.
			if sr2, err = tryDialLUN(t, ctx, member(d, r).ISCSI, "after-kill"); err != nil {
				refused++
				continue
			}
		}
		got, err := sr2.ReadBlocks(ctx, 0, lba2, uint32(len(data)/512))
		if err != nil {
			refused++
			if _, _, _, ok := senseOf(err); !ok {
				sr2.Close()
				sr2 = nil
			}
			continue
		}
		served++
		if werr == nil && !bytes.Equal(got, data) {
			i := 0
			for i < len(got) && got[i] == data[i] {
				i++
			}
			t.Fatalf("after kill -9 of the writer, %s answers GOOD with other bytes than the acknowledged write (first at byte %d)", r, i)
		}
	}
	t.Logf("after kill -9 of the writer, %s served the range %d times and refused %d times", r, served, refused)
	if sr2 != nil {
		sr2.Close()
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	cmd, err := RestartMember(d, w)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopMember(cmd) })
	until(t, "both sites in sync", 90*time.Second, func() bool { return fc.inSync(r) && fc.inSync(w) })
	fc.verify("after the writer's restart")
	if werr == nil {
		if err := qemuIO(ctx, member(d, r).ISCSI, fmt.Sprintf("read -P 0x5a %d 8M", lba2*512)); err != nil {
			t.Fatalf("the acknowledged write at %s: %v", r, err)
		}
	}
	if err := qemuIO(ctx, member(d, w).ISCSI, "flush"); err != nil {
		t.Fatal(err)
	}
	same(t, filepath.Join(d.Dir, "site-a", "lun0.img"), filepath.Join(d.Dir, "site-b", "lun0.img"))
}

// TestStorageFullWriter: the writer itself has 4 MiB free under its thin
// LUN. An 8 MiB FUA write through it is refused (07/27/07), never GOOD;
// the writer's image may now hold part of it, which the replica does not
// have, so the writer hands its role to the in-sync replica, which
// resyncs the old writer with a full compare; verify then finds no
// difference. On the old code the write was answered GOOD with half of
// it missing at the writer.
func TestStorageFullWriter(t *testing.T) {
	fc := startFullCluster(t)
	ctx, d, w, r := t.Context(), fc.d, fc.w, fc.r
	filler := fillTo(t, fc.mnts[w], 4<<20)
	sw := dialLUN(t, ctx, member(d, w).ISCSI, "via-"+w)
	err := sw.WriteBlocks(ctx, 0, 16<<11, fill(0x5a, 8<<20), true)
	t.Logf("8 MiB FUA write through the full writer %s: %v", w, err)
	if err == nil {
		t.Fatalf("a write the writer could not store was answered GOOD")
	}
	if !isSense(err, initiator.SenseDataProtect, 0x27, 0x07) {
		t.Errorf("the failed write's sense: %v; want DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT", err)
	}
	until(t, r+" becomes the writer", 60*time.Second, func() bool {
		ms, err := ClusterStatus(ctx, fc.bin, d.Dir)
		return err == nil && Writer(ms) == r
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	until(t, w+" resynced", 60*time.Second, func() bool { return fc.inSync(w) })
	fc.verify("after the full writer handed over")
	if err := qemuIO(ctx, member(d, r).ISCSI, "flush"); err != nil {
		t.Fatal(err)
	}
	same(t, filepath.Join(d.Dir, "site-a", "lun0.img"), filepath.Join(d.Dir, "site-b", "lun0.img"))
}

var (
	faultsOnce sync.Once
	faultsBin  string
	faultsErr  error
)

// metrolunFaultsBin builds (once) the metrolun_faults binary, whose
// store injects faults on demand (cmd/metrolun/faults.go).
func metrolunFaultsBin(t testing.TB) string {
	t.Helper()
	faultsOnce.Do(func() {
		faultsBin, faultsErr = BuildMetrolunTags(context.Background(), binDir, "metrolun-faults", "metrolun_faults")
	})
	if faultsErr != nil {
		t.Fatalf("no metrolun_faults binary: %v", faultsErr)
	}
	return faultsBin
}

// setFaults writes a site's fault control file (JSON replica.Faults) and
// waits until the process took it (its log says so).
func setFaults(t *testing.T, d *Demo, site, faults string) {
	t.Helper()
	path := filepath.Join(d.Dir, site, "faults.json")
	// The log quotes the JSON; the control file's path says which site
	// took it, one more line than before.
	logs := []string{d.Log, filepath.Join(d.Dir, site+"-restart.log")}
	count := func() int {
		n := 0
		for _, l := range logs {
			n += logCount(t, l, "faults set", path)
		}
		return n
	}
	before := count()
	if err := os.WriteFile(path, []byte(faults), 0o600); err != nil {
		t.Fatal(err)
	}
	until(t, site+" applies faults "+faults, 10*time.Second, func() bool { return count() > before })
}

// TestStorageWriteBackErrorSticky (issue 12, item 3): after a write-back
// fails (the metrolun_faults build makes the next fdatasync fail with
// EIO and drops the unflushed pages, as Linux does), the first
// SYNCHRONIZE CACHE reports MEDIUM ERROR and so does every later one,
// and reads of the data that was lost fail with MEDIUM ERROR, UNRECOVERED
// READ ERROR instead of returning the older bytes with GOOD, until the
// region is written again. (The old code had no fault build; with this
// build and the lost-region record disabled the second flush and the
// read answer GOOD.)
func TestStorageWriteBackErrorSticky(t *testing.T) {
	d := StartDemoT(t, DemoOptions{Bin: metrolunFaultsBin(t), Size: "64MiB"})
	ctx := t.Context()
	s := dialLUN(t, ctx, d.File.DataMembers()[0].ISCSI, "writeback")
	old, lost := fill(0x11, 1<<20), fill(0x22, 1<<20)
	if err := s.WriteBlocks(ctx, 0, 0, old, true); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteBlocks(ctx, 0, 0, lost, false); err != nil {
		t.Fatal(err)
	}
	setFaults(t, d, "site-a", `{"flush_eio":1}`)
	for i := range 3 {
		if err := s.SyncCache(ctx, 0); !isSense(err, initiator.SenseMediumError, 0x0c, 0x00) {
			t.Fatalf("SYNCHRONIZE CACHE %d after a failed write-back: %v; want MEDIUM ERROR, WRITE ERROR (03/0C/00)", i+1, err)
		}
	}
	got, err := s.ReadBlocks(ctx, 0, 8, 8)
	if !isSense(err, initiator.SenseMediumError, 0x11, 0x00) {
		t.Fatalf("read of data whose write-back failed: %v (data %x..); want MEDIUM ERROR, UNRECOVERED READ ERROR (03/11/00)", err, got[:min(4, len(got))])
	}
	if !logHas(t, d.Log, "flush failed", "lun0.img") {
		t.Fatalf("the failed write-back is not logged: %s", tailFile(d.Log, 10))
	}
	// Written again, whole: readable and flushable again.
	again := fill(0x33, 1<<20)
	if err := s.WriteBlocks(ctx, 0, 0, again, false); err != nil {
		t.Fatal(err)
	}
	if err := s.SyncCache(ctx, 0); err != nil {
		t.Fatalf("SYNCHRONIZE CACHE once the lost data was rewritten: %v", err)
	}
	if got, err := s.ReadBlocks(ctx, 0, 0, uint32(len(again)/512)); err != nil || !bytes.Equal(got, again) {
		t.Fatalf("read of the rewritten data: err %v, equal %v", err, bytes.Equal(got, again))
	}
}

// TestStorageWriteBackErrorCluster: failed write-backs in a two-site
// cluster (metrolun_faults build).
//   - At the replica: SYNCHRONIZE CACHE through the writer is refused or
//     answered with the replica out of the in-sync set; the replica is
//     resynced with a full compare and then holds the acknowledged data
//     (`metrolun verify`: no difference).
//   - At the writer: SYNCHRONIZE CACHE is not GOOD; the writer hands its
//     role to the in-sync replica, which resyncs the old writer; both
//     then hold the data the replica had, and verify finds no difference.
func TestStorageWriteBackErrorCluster(t *testing.T) {
	base, err := ClusterBasePort(3)
	if err != nil {
		t.Fatal(err)
	}
	bin := metrolunFaultsBin(t)
	d := StartDemoT(t, DemoOptions{Bin: bin, Size: "64MiB",
		Args: []string{"--sites", "2", "--cluster-port", strconv.Itoa(base)}})
	ctx := t.Context()
	status := func() []MemberStatus {
		ms, err := ClusterStatus(ctx, bin, d.Dir)
		if err != nil {
			return nil
		}
		return ms
	}
	w := Writer(status())
	if w == "" {
		t.Fatal("no writer")
	}
	r := "site-a"
	if w == "site-a" {
		r = "site-b"
	}
	verify := func(when string) {
		t.Helper()
		verifySettles(t, bin, d.Dir, when)
	}
	readAt := func(site string, lba uint64, want []byte) {
		t.Helper()
		s := dialLUN(t, ctx, member(d, site).ISCSI, "read-"+site)
		defer s.Close()
		got, err := s.ReadBlocks(ctx, 0, lba, uint32(len(want)/512))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read at %s, LBA %d: err %v, equal %v", site, lba, err, bytes.Equal(got, want))
		}
	}
	sw := dialLUN(t, ctx, member(d, w).ISCSI, "writer")
	if err := sw.WriteBlocks(ctx, 0, 0, fill(0x11, 4<<20), true); err != nil {
		t.Fatal(err)
	}

	// The replica's write-back fails.
	one := fill(0x22, 1<<20)
	if err := sw.WriteBlocks(ctx, 0, 0, one, false); err != nil {
		t.Fatal(err)
	}
	setFaults(t, d, r, `{"flush_eio":1}`)
	err = sw.SyncCache(ctx, 0)
	t.Logf("SYNCHRONIZE CACHE with %s's write-back failing: %v", r, err)
	if err == nil && InSync(status(), r) {
		t.Fatalf("SYNCHRONIZE CACHE answered GOOD with %s, whose write-back failed, in sync", r)
	}
	until(t, r+" resynced", 60*time.Second, func() bool { return InSync(status(), r) })
	verify("after the replica's failed write-back")
	readAt(r, 0, one)

	// The writer's write-back fails.
	two := fill(0x44, 1<<20)
	const lba = 2 << 11
	if err := sw.WriteBlocks(ctx, 0, lba, two, false); err != nil {
		t.Fatal(err)
	}
	setFaults(t, d, w, `{"flush_eio":1}`)
	if err := sw.SyncCache(ctx, 0); err == nil {
		t.Fatalf("SYNCHRONIZE CACHE answered GOOD although the writer's write-back failed")
	} else {
		t.Logf("SYNCHRONIZE CACHE with the writer's write-back failing: %v", err)
	}
	until(t, r+" becomes the writer", 60*time.Second, func() bool { return Writer(status()) == r })
	until(t, w+" resynced", 60*time.Second, func() bool { return InSync(status(), w) })
	verify("after the writer's failed write-back")
	readAt(w, lba, two)
	readAt(r, lba, two)
}
