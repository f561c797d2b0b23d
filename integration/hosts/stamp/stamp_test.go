package stamp

import (
	"bytes"
	"strings"
	"testing"
)

func TestFillParse(t *testing.T) {
	b := make([]byte, BlockSize)
	Fill(b, 42, 2048)
	seq, ok, why := Parse(b, 2048)
	if !ok || seq != 42 {
		t.Fatalf("Parse = %d, %v, %q; want 42, true", seq, ok, why)
	}
	other := make([]byte, BlockSize)
	Fill(other, 43, 2048)
	if bytes.Equal(b[24:BlockSize-8], other[24:BlockSize-8]) {
		t.Fatal("two writes of one block have the same filler")
	}
	if _, ok, why := Parse(b, 2056); ok || !strings.Contains(why, "misplaced") {
		t.Fatalf("a block read at another LBA: ok %v, %q; want misplaced", ok, why)
	}
	// A block whose second half comes from another write (a torn write).
	torn := append(append([]byte(nil), b[:2048]...), other[2048:]...)
	if _, ok, why := Parse(torn, 2048); ok || !strings.Contains(why, "torn") {
		t.Fatalf("torn block: ok %v, %q; want torn", ok, why)
	}
	if _, ok, why := Parse(make([]byte, BlockSize), 0); ok || !strings.Contains(why, "never written") {
		t.Fatalf("zeros: ok %v, %q", ok, why)
	}
}

// image is an in-memory LUN for Verify.
type image []byte

func (m image) ReadAt(p []byte, off int64) (int, error) { return copy(p, m[off:]), nil }

func TestJournalVerify(t *testing.T) {
	j := &Journal{Offset: 8192, Blocks: 4, Acked: make([]uint64, 4), Unknown: map[int][]uint64{}}
	img := make(image, 8192+4*BlockSize)
	put := func(i int, seq uint64) { Fill(img[8192+i*BlockSize:], seq, j.LBA(i)) }
	put(0, 5)
	j.Acked[0] = 5
	put(1, 9) // write 9 of block 1 was in flight, 7 acknowledged before
	j.Acked[1] = 7
	j.Unknown[1] = []uint64{9}
	put(2, 3)
	j.Acked[2] = 3
	// block 3 never written
	if res := j.Verify(img, make([]byte, BlockSize)); res.Err() != nil || res.Written != 3 || res.Checked != 4 {
		t.Fatalf("good image: %v (%s)", res.Err(), res)
	}

	// Each of these must be caught.
	for name, tc := range map[string]struct {
		mutate func()
		want   string
	}{
		"lost write":      {func() { put(0, 4) }, "lost write"},
		"unknown seq":     {func() { put(2, 11) }, "never issued"},
		"torn":            {func() { copy(img[8192+2048:], make([]byte, 16)) }, "torn"},
		"zeroed":          {func() { copy(img[8192+2*BlockSize:], make([]byte, BlockSize)) }, "never written"},
		"stamp unwritten": {func() { put(3, 2) }, "none was issued"},
	} {
		saved := append(image(nil), img...)
		tc.mutate()
		err := j.Verify(img, make([]byte, BlockSize)).Err()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Verify = %v, want an error with %q", name, err, tc.want)
		}
		copy(img, saved)
	}
}

func TestJournalSaveLoad(t *testing.T) {
	path := t.TempDir() + "/j.json"
	j := &Journal{Offset: 4096, Blocks: 2, Acked: []uint64{1, 0}, Unknown: map[int][]uint64{1: {2}}, Writes: 1, Errors: 1}
	if err := j.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Offset != 4096 || got.Blocks != 2 || got.Acked[0] != 1 || got.Unknown[1][0] != 2 || got.Errors != 1 {
		t.Fatalf("Load = %+v", got)
	}
	bad := &Journal{Offset: 100, Blocks: 2, Acked: []uint64{1, 0}}
	if err := bad.Save(path); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil {
		t.Fatal("Load accepted an unaligned offset")
	}
}
