package target

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
)

// memVolume is the in-memory twin of a Volume for tests. Data lives in
// 64 KiB chunks allocated on first write, so a test can present a large
// LU cheaply; unwritten bytes read as zeros. It tracks deallocated ranges
// exactly (Unmap deallocates, a write maps), and records every access that
// falls outside [0, size) or is not 512-byte aligned as a violation rather
// than silently clamping it.
type memVolume struct {
	mu      sync.Mutex
	size    int64
	chunks  map[int64][]byte
	unalloc []byteRange // sorted, disjoint, non-adjacent deallocated ranges
	state   PathState

	// failNext, when set, is returned by the next data operation.
	failNext error

	writes, flushes, unmaps, caws int
	fuaWrites                     int
	violations                    []string
	closed                        bool
}

type byteRange struct{ start, end int64 } // [start, end)

const memChunk = 64 << 10

var _ Volume = (*memVolume)(nil)

// newMemVolume returns a volume of size bytes, all mapped and zero.
func newMemVolume(size int64) *memVolume {
	return &memVolume{size: size, chunks: map[int64][]byte{}}
}

// newThinMemVolume returns a volume whose every block starts deallocated.
func newThinMemVolume(size int64) *memVolume {
	v := newMemVolume(size)
	v.unalloc = []byteRange{{0, size}}
	return v
}

func (v *memVolume) check(op string, off, n int64) error {
	if off < 0 || n < 0 || off > v.size || n > v.size-off {
		v.violations = append(v.violations, fmt.Sprintf("%s [%d,+%d) outside [0,%d)", op, off, n, v.size))
		return fmt.Errorf("memVolume: %s [%d,+%d) out of range", op, off, n)
	}
	if off%512 != 0 || n%512 != 0 {
		v.violations = append(v.violations, fmt.Sprintf("%s [%d,+%d) not 512-aligned", op, off, n))
	}
	if v.closed {
		return errors.New("memVolume: closed")
	}
	if err := v.failNext; err != nil {
		v.failNext = nil
		return err
	}
	return nil
}

func (v *memVolume) Size() int64 { return v.size }

func (v *memVolume) readLocked(p []byte, off int64) {
	for len(p) > 0 {
		ci, co := off/memChunk, off%memChunk
		n := min(int64(len(p)), memChunk-co)
		if c := v.chunks[ci]; c != nil {
			copy(p[:n], c[co:co+n])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
}

func (v *memVolume) writeLocked(p []byte, off int64) {
	v.mapRange(off, off+int64(len(p)))
	for len(p) > 0 {
		ci, co := off/memChunk, off%memChunk
		n := min(int64(len(p)), memChunk-co)
		c := v.chunks[ci]
		if c == nil {
			c = make([]byte, memChunk)
			v.chunks[ci] = c
		}
		copy(c[co:co+n], p[:n])
		p, off = p[n:], off+n
	}
}

func (v *memVolume) ReadAt(p []byte, off int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check("read", off, int64(len(p))); err != nil {
		return err
	}
	v.readLocked(p, off)
	return nil
}

func (v *memVolume) WriteAt(p []byte, off int64, fua bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check("write", off, int64(len(p))); err != nil {
		return err
	}
	v.writes++
	if fua {
		v.fuaWrites++
	}
	v.writeLocked(p, off)
	return nil
}

func (v *memVolume) Flush() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.flushes++
	if err := v.failNext; err != nil {
		v.failNext = nil
		return err
	}
	return nil
}

func (v *memVolume) Unmap(off, length int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check("unmap", off, length); err != nil {
		return err
	}
	v.unmaps++
	if length == 0 {
		return nil
	}
	// Deallocated blocks read back as zeros.
	for o := off; o < off+length; {
		ci, co := o/memChunk, o%memChunk
		n := min(off+length-o, memChunk-co)
		if c := v.chunks[ci]; c != nil {
			if co == 0 && n == memChunk {
				delete(v.chunks, ci)
			} else {
				clear(c[co : co+n])
			}
		}
		o += n
	}
	v.unmapRange(off, off+length)
	return nil
}

func (v *memVolume) CompareAndWrite(off int64, cmp, data []byte) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(cmp) != len(data) {
		v.violations = append(v.violations, fmt.Sprintf("caw: len(cmp)=%d len(data)=%d", len(cmp), len(data)))
		return 0, errors.New("memVolume: compare and write with unequal lengths")
	}
	if err := v.check("caw", off, int64(len(cmp))); err != nil {
		return 0, err
	}
	v.caws++
	cur := make([]byte, len(cmp))
	v.readLocked(cur, off)
	for i := range cur {
		if cur[i] != cmp[i] {
			return i, nil
		}
	}
	v.writeLocked(data, off)
	return -1, nil
}

func (v *memVolume) Mapped(off int64) (bool, int64, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if off < 0 || off >= v.size {
		v.violations = append(v.violations, fmt.Sprintf("mapped at %d outside [0,%d)", off, v.size))
		return false, 0, errors.New("memVolume: mapped out of range")
	}
	i := sort.Search(len(v.unalloc), func(i int) bool { return v.unalloc[i].end > off })
	if i < len(v.unalloc) && v.unalloc[i].start <= off {
		return false, v.unalloc[i].end - off, nil
	}
	next := v.size
	if i < len(v.unalloc) {
		next = v.unalloc[i].start
	}
	return true, next - off, nil
}

func (v *memVolume) State() PathState {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.state
}

func (v *memVolume) setState(s PathState) {
	v.mu.Lock()
	v.state = s
	v.mu.Unlock()
}

func (v *memVolume) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.closed = true
	return nil
}

// unmapRange marks [s, e) deallocated.
func (v *memVolume) unmapRange(s, e int64) {
	v.mapRange(s, e)
	out := make([]byteRange, 0, len(v.unalloc)+1)
	inserted := false
	for _, r := range v.unalloc {
		if !inserted && r.start >= e {
			out = append(out, byteRange{s, e})
			inserted = true
		}
		out = append(out, r)
	}
	if !inserted {
		out = append(out, byteRange{s, e})
	}
	// Merge adjacent ranges.
	merged := out[:0]
	for _, r := range out {
		if n := len(merged); n > 0 && merged[n-1].end >= r.start {
			merged[n-1].end = max(merged[n-1].end, r.end)
			continue
		}
		merged = append(merged, r)
	}
	v.unalloc = merged
}

// mapRange marks [s, e) allocated.
func (v *memVolume) mapRange(s, e int64) {
	if s >= e {
		return
	}
	var out []byteRange
	for _, r := range v.unalloc {
		if r.end <= s || r.start >= e {
			out = append(out, r)
			continue
		}
		if r.start < s {
			out = append(out, byteRange{r.start, s})
		}
		if r.end > e {
			out = append(out, byteRange{e, r.end})
		}
	}
	v.unalloc = out
}

// bytes returns a copy of [off, off+n).
func (v *memVolume) bytes(off, n int64) []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	b := make([]byte, n)
	v.readLocked(b, off)
	return b
}

func (v *memVolume) violationList() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.violations...)
}

func TestMemVolume(t *testing.T) {
	v := newMemVolume(4 * memChunk)
	data := pattern(3*memChunk/2, 1)
	if err := v.WriteAt(data, 512, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := v.ReadAt(got, 512); err != nil || string(got) != string(data) {
		t.Fatalf("read back: %v", err)
	}
	if m, run, _ := v.Mapped(0); !m || run != v.size {
		t.Fatalf("fresh volume: mapped=%v run=%d", m, run)
	}
	if err := v.Unmap(1024, 2048); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		off    int64
		mapped bool
		run    int64
	}{{0, true, 1024}, {1024, false, 2048}, {2560, false, 512}, {3072, true, v.size - 3072}} {
		if m, run, err := v.Mapped(c.off); err != nil || m != c.mapped || run != c.run {
			t.Fatalf("Mapped(%d) = %v, %d, %v; want %v, %d", c.off, m, run, err, c.mapped, c.run)
		}
	}
	if b := v.bytes(1024, 2048); string(b) != string(make([]byte, 2048)) {
		t.Fatal("unmapped range does not read as zeros")
	}
	v.WriteAt(make([]byte, 512), 1536, false)
	if m, run, _ := v.Mapped(1024); m || run != 512 {
		t.Fatalf("after a write inside: %v %d", m, run)
	}
	if at, err := v.CompareAndWrite(0, make([]byte, 512), pattern(512, 9)); err != nil || at != 0 && at != -1 {
		t.Fatalf("caw: %d %v", at, err)
	}
	if len(v.violationList()) != 0 {
		t.Fatal(v.violationList())
	}
	if err := v.WriteAt(make([]byte, 512), v.size-256, false); err == nil || len(v.violationList()) != 1 {
		t.Fatal("write past the end not refused and recorded")
	}
	thin := newThinMemVolume(8192)
	if m, run, _ := thin.Mapped(512); m || run != 8192-512 {
		t.Fatalf("thin volume: %v %d", m, run)
	}
}
