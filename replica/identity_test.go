package replica

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testLU = 4 << 20

func openImageT(t *testing.T, path string, size int64, create bool) *LocalFile {
	t.Helper()
	v, err := OpenImage(path, size, ImageOptions{Create: create})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func imageOf(t *testing.T, v *LocalFile) (ImageID, string) {
	t.Helper()
	id, created, ok := v.Image()
	if !ok {
		t.Fatal("no image identity")
	}
	return id, created
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestImageCreateReopen: a new image gets a fresh identity at the end of
// a file of LU plus reserve, which a reopen finds intact; a raised
// generation survives the reopen and clears "empty".
func TestImageCreateReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lun.img")
	v := openImageT(t, path, testLU, true)
	id, created := imageOf(t, v)
	if v.Size() != testLU || id.Gen != 0 || !id.Empty || len(id.UUID) != 32 || created == "" {
		t.Fatalf("new image: size %d, %v, created %q", v.Size(), id, created)
	}
	if st, _ := os.Stat(path); st.Size() != testLU+imageReserve {
		t.Fatalf("file of %d bytes, want %d", st.Size(), testLU+imageReserve)
	}
	data := bytes.Repeat([]byte{0xa5}, 4096)
	if err := v.WriteAt(data, testLU-4096, true); err != nil {
		t.Fatal(err)
	}
	if got, err := v.RaiseGeneration(7); err != nil || got.Gen != 7 || got.Empty || got.UUID != id.UUID {
		t.Fatalf("raise: %v %v", got, err)
	}
	if got, _ := v.RaiseGeneration(3); got.Gen != 7 {
		t.Fatalf("the generation went back to %d", got.Gen)
	}
	v.Close()

	v = openImageT(t, path, 0, false)
	defer v.Close()
	again, created := imageOf(t, v)
	if created != "" || again != (ImageID{UUID: id.UUID, Gen: 7}) || v.Size() != testLU {
		t.Fatalf("reopened: %v created %q size %d; want %s gen 7 intact", again, created, v.Size(), id.UUID)
	}
	got := make([]byte, len(data))
	if err := v.ReadAt(got, testLU-4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the LU's last block did not survive: %v", err)
	}
}

// TestImageReplacedByEmpty: the file replaced by an empty one (a mount
// missing at boot) is a new, empty image with another UUID.
func TestImageReplacedByEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lun.img")
	v := openImageT(t, path, testLU, true)
	old, _ := imageOf(t, v)
	v.RaiseGeneration(3)
	v.Close()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	v = openImageT(t, path, testLU, false)
	defer v.Close()
	id, created := imageOf(t, v)
	if id.UUID == old.UUID || !id.Empty || id.Gen != 0 || !strings.Contains(created, "empty") {
		t.Fatalf("replaced image: %v created %q (old %v)", id, created, old)
	}
}

// TestImageTruncated: a truncated file loses its identity block; its
// data is kept, under a new identity that is not "empty".
func TestImageTruncated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lun.img")
	v := openImageT(t, path, testLU, true)
	old, _ := imageOf(t, v)
	if err := v.WriteAt(bytes.Repeat([]byte{1}, 4096), 0, true); err != nil {
		t.Fatal(err)
	}
	v.RaiseGeneration(3)
	v.Close()
	if err := os.Truncate(path, testLU/2); err != nil {
		t.Fatal(err)
	}
	v = openImageT(t, path, testLU, false)
	defer v.Close()
	id, created := imageOf(t, v)
	if id.UUID == old.UUID || id.Empty || id.Gen != 0 || created == "" {
		t.Fatalf("truncated image: %v created %q (old %v)", id, created, old)
	}
	if st, _ := os.Stat(path); st.Size() != testLU+imageReserve {
		t.Fatalf("file of %d bytes after reopen, want %d", st.Size(), testLU+imageReserve)
	}
	b := make([]byte, 4096)
	if err := v.ReadAt(b, 0); err != nil || b[0] != 1 {
		t.Fatal("data lost")
	}
}

// TestImageForeignAndStale: another image put in place reads as its own
// identity (another UUID), and an older copy of this one as an older
// generation; raftlog refuses both (TestImageDistrust).
func TestImageForeignAndStale(t *testing.T) {
	dir := t.TempDir()
	path, other, backup := filepath.Join(dir, "lun.img"), filepath.Join(dir, "other.img"), filepath.Join(dir, "backup.img")
	v := openImageT(t, path, testLU, true)
	mine, _ := imageOf(t, v)
	v.RaiseGeneration(2)
	v.Close()
	copyFile(t, path, backup)
	v = openImageT(t, path, 0, false)
	v.RaiseGeneration(5)
	v.Close()
	w := openImageT(t, other, testLU, true)
	foreign, _ := imageOf(t, w)
	w.Close()

	copyFile(t, other, path)
	v = openImageT(t, path, 0, false)
	if id, created := imageOf(t, v); id.UUID != foreign.UUID || created != "" {
		t.Fatalf("foreign image read as %v (created %q), want %s", id, created, foreign.UUID)
	}
	v.Close()
	copyFile(t, backup, path)
	v = openImageT(t, path, 0, false)
	defer v.Close()
	if id, _ := imageOf(t, v); id.UUID != mine.UUID || id.Gen != 2 {
		t.Fatalf("older copy read as %v, want %s gen 2", id, mine.UUID)
	}
}

// TestImageDamagedBlock: a bit flipped in the block fails its checksum.
func TestImageDamagedBlock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lun.img")
	v := openImageT(t, path, testLU, true)
	old, _ := imageOf(t, v)
	v.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff}, testLU+imageReserve-imageBlock+41); err != nil {
		t.Fatal(err)
	}
	f.Close()
	v = openImageT(t, path, testLU, false)
	defer v.Close()
	if id, created := imageOf(t, v); id.UUID == old.UUID || !strings.Contains(created, "checksum") {
		t.Fatalf("damaged block: %v created %q", id, created)
	}
}

// TestImageMissing: a missing path is an error unless creating is
// allowed; a missing directory always is, and nothing is created.
func TestImageMissing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lun.img")
	if _, err := OpenImage(path, testLU, ImageOptions{}); !errors.Is(err, ErrNoBackingStore) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := os.Stat(path); err == nil {
		t.Fatal("the missing file was created")
	}
	nodir := filepath.Join(dir, "mnt", "lun.img")
	for _, create := range []bool{false, true} {
		if _, err := OpenImage(nodir, testLU, ImageOptions{Create: create}); !errors.Is(err, ErrNoBackingStore) || !strings.Contains(err.Error(), "directory") {
			t.Fatalf("missing directory (create %v): %v", create, err)
		}
	}
	if _, err := OpenLocal(nodir, testLU); !errors.Is(err, ErrNoBackingStore) {
		t.Fatalf("single site, missing directory: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(nodir)); err == nil {
		t.Fatal("the missing directory was created")
	}
}

// TestImageSizes: a plain image from before identities keeps its data
// and grows by the reserve; a config size that differs from the image's
// LU is refused.
func TestImageSizes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lun.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{9}, testLU), 0o600); err != nil {
		t.Fatal(err)
	}
	v := openImageT(t, path, 0, false)
	id, created := imageOf(t, v)
	if v.Size() != testLU || id.Empty || created == "" {
		t.Fatalf("plain image: size %d, %v, created %q", v.Size(), id, created)
	}
	v.Close()
	if _, err := OpenImage(path, 2*testLU, ImageOptions{}); err == nil || !strings.Contains(err.Error(), "config asks") {
		t.Fatalf("size mismatch: %v", err)
	}
}
