package replica

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/metrolun/metrolun/target"
)

func TestLocalFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lun.img")
	const size = 8 << 20
	v, err := OpenLocal(path, size)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.Size() != size {
		t.Fatalf("size %d, want %d", v.Size(), size)
	}
	if mapped, run, err := v.Mapped(0); err != nil || mapped || run != size {
		t.Fatalf("new sparse file: mapped=%v run=%d err=%v; want a hole over all %d bytes", mapped, run, err, size)
	}

	data := bytes.Repeat([]byte{0x5a}, 64<<10)
	if err := v.WriteAt(data, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(data, 2<<20, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	for _, off := range []int64{1 << 20, 2 << 20} {
		if err := v.ReadAt(got, off); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read at %d: err=%v equal=%v", off, err, bytes.Equal(got, data))
		}
	}
	if mapped, _, _ := v.Mapped(1 << 20); !mapped {
		t.Fatal("written range reported unmapped")
	}

	// UNMAP: the range reads back as zeros and is a hole again.
	if err := v.Unmap(1<<20, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, make([]byte, len(data))) {
		t.Fatal("unmapped range does not read back as zeros")
	}
	if mapped, run, _ := v.Mapped(1 << 20); mapped || run < int64(len(data)) {
		t.Fatalf("unmapped range: mapped=%v run=%d", mapped, run)
	}

	// COMPARE AND WRITE: a miscompare reports the first differing byte and
	// writes nothing; a match writes.
	cmp := append([]byte(nil), data[:512]...)
	cmp[100] ^= 0xff
	newData := bytes.Repeat([]byte{0x11}, 512)
	if at, err := v.CompareAndWrite(2<<20, cmp, newData); err != nil || at != 100 {
		t.Fatalf("miscompare: at=%d err=%v, want 100", at, err)
	}
	v.ReadAt(got[:512], 2<<20)
	if !bytes.Equal(got[:512], data[:512]) {
		t.Fatal("miscompare wrote data")
	}
	if at, err := v.CompareAndWrite(2<<20, data[:512], newData); err != nil || at != -1 {
		t.Fatalf("match: at=%d err=%v", at, err)
	}
	v.ReadAt(got[:512], 2<<20)
	if !bytes.Equal(got[:512], newData) {
		t.Fatal("compare-and-write did not write")
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}

	// Reopening with a larger size grows the file; a smaller one never shrinks it.
	v.Close()
	v2, err := OpenLocal(path, size/2)
	if err != nil || v2.Size() != size {
		t.Fatalf("reopen: size=%d err=%v", v2.Size(), err)
	}
	v2.Close()
}

func TestOpenLocalErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenLocal(filepath.Join(dir, "empty.img"), 0); err == nil {
		t.Fatal("an empty file with no size was accepted")
	}
	if _, err := OpenLocal(dir, 1<<20); err == nil {
		t.Fatal("a directory was accepted as a backing store")
	}
	if _, err := OpenLocal(filepath.Join(dir, "missing", "x.img"), 1<<20); err == nil {
		t.Fatal("a path in a missing directory was accepted")
	}
}

// TestWriteBackLostRanges: lost and absent regions are listed as merged
// byte ranges, capped, with the count of every region; a whole rewrite
// clears both kinds, a partial one neither.
func TestWriteBackLostRanges(t *testing.T) {
	var w writeBack
	w.init(100 * wbRegion)
	w.lose(0, 1)                            // region 0
	w.markAbsent(wbRegion, wbRegion)        // region 1: merges with 0
	w.markAbsent(5*wbRegion+10, 2*wbRegion) // regions 5-7
	w.lose(70*wbRegion, 1)                  // region 70 (another word)
	rs, n := w.lostRanges(16)
	want := [][2]int64{{0, 2 * wbRegion}, {5 * wbRegion, 8 * wbRegion}, {70 * wbRegion, 71 * wbRegion}}
	if n != 6 || !slices.Equal(rs, want) {
		t.Fatalf("lostRanges: %v (%d regions), want %v (6)", rs, n, want)
	}
	if rs, n := w.lostRanges(1); n != 6 || len(rs) != 1 {
		t.Fatalf("lostRanges(1): %v (%d regions)", rs, n)
	}
	if got := w.absentRanges(); !slices.Equal(got, [][2]int64{{wbRegion, 2 * wbRegion}, {5 * wbRegion, 8 * wbRegion}}) {
		t.Fatalf("absentRanges: %v", got)
	}
	if _, _, ok := w.lostIn(wbRegion, 10, true); ok {
		t.Fatal("an absent region counts as this store's own loss (flushes would fail)")
	}
	if _, _, ok := w.lostIn(wbRegion, 10, false); !ok {
		t.Fatal("an absent region reads as whole")
	}
	w.rewrote(5*wbRegion, wbRegion+100) // region 5 whole, 6 partly
	w.wrote(0, wbRegion)                // region 0 whole
	if rs, n := w.lostRanges(16); n != 4 || !slices.Equal(rs, [][2]int64{{wbRegion, 2 * wbRegion}, {6 * wbRegion, 8 * wbRegion}, {70 * wbRegion, 71 * wbRegion}}) {
		t.Fatalf("after rewrites: %v (%d regions)", rs, n)
	}
}

// TestLocalFileLostSurvivesRestart: a failed write-back leaves its
// regions unreadable, and a restart (a new LocalFile on the same file)
// must not make them readable again with the older bytes the file holds:
// the kernel forgets the error with the process that saw it.
func TestLocalFileLostSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	img, state := filepath.Join(dir, "lun.img"), filepath.Join(dir, "lost.ranges")
	const size = 1 << 20
	open := func() *LocalFile {
		t.Helper()
		v, err := OpenLocal(img, size)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.PersistLost(state); err != nil {
			t.Fatal(err)
		}
		return v
	}
	v := open()
	fs := NewFaultStore(v)
	if err := v.WriteAt(block(1, size), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(block(2, 4096), 3*wbRegion, false); err != nil {
		t.Fatal(err)
	}
	fs.Set(Faults{FlushEIO: 1})
	if err := v.Flush(); !errors.Is(err, target.ErrMedium) {
		t.Fatalf("flush: %v, want a medium error", err)
	}
	v.Close()

	v = open()
	if err := v.ReadAt(make([]byte, 512), 3*wbRegion); !errors.Is(err, target.ErrMedium) {
		t.Fatalf("read of the lost region after a restart: %v, want a medium error", err)
	}
	if err := v.ReadAt(make([]byte, 512), 4*wbRegion); err != nil {
		t.Fatalf("read of a region that was not lost: %v", err)
	}
	if err := v.Flush(); err != nil {
		t.Fatalf("flush after the restart: %v (the error was reported before it)", err)
	}
	// Rewritten whole: readable, and nothing left to remember.
	if err := v.WriteAt(block(3, wbRegion), 3*wbRegion, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("lost.ranges still there with nothing lost: %v", err)
	}
	v.Close()
	v = open()
	defer v.Close()
	got := make([]byte, wbRegion)
	if err := v.ReadAt(got, 3*wbRegion); err != nil || !bytes.Equal(got, block(3, wbRegion)) {
		t.Fatalf("rewritten region after a restart: %v, equal %v", err, bytes.Equal(got, block(3, wbRegion)))
	}
	// A damaged state file stops the start rather than being ignored.
	if err := os.WriteFile(state, []byte("[[0,"), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := OpenLocal(img, size)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.PersistLost(state); err == nil {
		t.Fatal("a damaged lost.ranges was accepted")
	}
}
