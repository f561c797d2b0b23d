package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Bitmap is the persistent record of the regions one replica missed
// (DESIGN.md, Failures): a bit per region, set on disk before a write that
// the replica did not get is acknowledged, so that a crash of the writer
// cannot forget what the replica needs. Full means "everything": the
// replica may differ anywhere (it was a writer that stopped uncleanly, or
// no record survives), and resync compares checksums region by region.
type Bitmap struct {
	mu     sync.Mutex
	f      *os.File
	region int64
	size   int64
	full   bool
	epoch  uint64 // the last writer epoch that kept this record
	bits   []byte
	count  int // bits set
	// marks counts Mark, MarkRegions and SetFull calls, so that ClearIf
	// keeps what was recorded after a resync's last pass.
	marks uint64
}

const (
	bitmapMagic  = "MLDB"
	bitmapHeader = 40 // magic, version, flags, region size, volume size, epoch
	bitmapFull   = 1
)

// OpenBitmap opens or creates the bitmap at path for a volume of size
// bytes in regions of region bytes. A file for another geometry is an
// error; a missing file is created with full set when full is true (no
// record of what the replica has) and empty otherwise.
func OpenBitmap(path string, size, region int64, full bool) (*Bitmap, error) {
	if region <= 0 || size <= 0 {
		return nil, fmt.Errorf("bitmap %s: bad geometry %d/%d", path, size, region)
	}
	n := (size + region - 1) / region
	b := &Bitmap{region: region, size: size, bits: make([]byte, (n+7)/8)}
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, err
		}
		b.f, b.full = f, full
		if err := b.writeAll(); err != nil {
			f.Close()
			os.Remove(path)
			return nil, err
		}
		return b, nil
	}
	if err != nil {
		return nil, err
	}
	b.f = f
	hdr := make([]byte, bitmapHeader)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("bitmap %s: %w", path, err)
	}
	if string(hdr[:4]) != bitmapMagic || binary.BigEndian.Uint32(hdr[4:]) != 1 {
		f.Close()
		return nil, fmt.Errorf("bitmap %s: not a metrolun dirty bitmap", path)
	}
	if r, s := int64(binary.BigEndian.Uint64(hdr[16:])), int64(binary.BigEndian.Uint64(hdr[24:])); r != region || s != size {
		f.Close()
		return nil, fmt.Errorf("bitmap %s: made for %d-byte regions of %d bytes, not %d of %d", path, r, s, region, size)
	}
	b.full = binary.BigEndian.Uint32(hdr[8:])&bitmapFull != 0
	b.epoch = binary.BigEndian.Uint64(hdr[32:])
	if _, err := f.ReadAt(b.bits, bitmapHeader); err != nil {
		f.Close()
		return nil, fmt.Errorf("bitmap %s: %w", path, err)
	}
	for _, x := range b.bits {
		for ; x != 0; x &= x - 1 {
			b.count++
		}
	}
	return b, nil
}

func (b *Bitmap) writeAll() error {
	hdr := make([]byte, bitmapHeader)
	copy(hdr, bitmapMagic)
	binary.BigEndian.PutUint32(hdr[4:], 1)
	if b.full {
		binary.BigEndian.PutUint32(hdr[8:], bitmapFull)
	}
	binary.BigEndian.PutUint64(hdr[16:], uint64(b.region))
	binary.BigEndian.PutUint64(hdr[24:], uint64(b.size))
	binary.BigEndian.PutUint64(hdr[32:], b.epoch)
	if _, err := b.f.WriteAt(append(hdr, b.bits...), 0); err != nil {
		return err
	}
	return unix.Fdatasync(int(b.f.Fd()))
}

// Regions is the number of regions.
func (b *Bitmap) Regions() int { return int((b.size + b.region - 1) / b.region) }

// RegionSize is the bytes per bit.
func (b *Bitmap) RegionSize() int64 { return b.region }

// Mark records that the bytes off..off+n are missing at the replica and
// returns once that is on disk.
func (b *Bitmap) Mark(off, n int64) error {
	if n <= 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.marks++
	if b.full {
		return nil
	}
	first, last := off/b.region, (off+n-1)/b.region
	lo, hi := -1, -1
	for r := first; r <= last && r < int64(b.Regions()); r++ {
		i, m := r/8, byte(1)<<(r%8)
		if b.bits[i]&m == 0 {
			b.bits[i] |= m
			b.count++
			if lo < 0 {
				lo = int(i)
			}
			hi = int(i)
		}
	}
	if lo < 0 {
		return nil // every region was marked already: nothing to persist
	}
	if _, err := b.f.WriteAt(b.bits[lo:hi+1], bitmapHeader+int64(lo)); err != nil {
		return err
	}
	return unix.Fdatasync(int(b.f.Fd()))
}

// MarkRegions records that regions rs are missing at the replica and
// returns once that is on disk (one write and one sync for all of them).
func (b *Bitmap) MarkRegions(rs []int64) error {
	if len(rs) == 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.marks++
	if b.full {
		return nil
	}
	lo, hi := -1, -1
	for _, r := range rs {
		if r < 0 || r >= int64(b.Regions()) {
			continue
		}
		i, m := int(r/8), byte(1)<<(r%8)
		if b.bits[i]&m == 0 {
			b.bits[i] |= m
			b.count++
			if lo < 0 || i < lo {
				lo = i
			}
			hi = max(hi, i)
		}
	}
	if lo < 0 {
		return nil
	}
	if _, err := b.f.WriteAt(b.bits[lo:hi+1], bitmapHeader+int64(lo)); err != nil {
		return err
	}
	return unix.Fdatasync(int(b.f.Fd()))
}

// SetFull marks everything as possibly different, persistently.
func (b *Bitmap) SetFull() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.marks++
	if b.full {
		return nil
	}
	b.full = true
	return b.writeAll()
}

// Epoch is the last writer epoch that kept this record.
func (b *Bitmap) Epoch() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.epoch
}

// SetEpoch records, persistently, that the writer of epoch keeps it now.
func (b *Bitmap) SetEpoch(epoch uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.epoch == epoch {
		return nil
	}
	b.epoch = epoch
	return b.writeAll()
}

// Full reports whether every region must be compared.
func (b *Bitmap) Full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.full
}

// Test reports whether region r must be copied.
func (b *Bitmap) Test(r int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.full || b.bits[r/8]&(1<<(r%8)) != 0
}

// Dirty returns the number of regions to copy (all of them when full).
func (b *Bitmap) Dirty() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.full {
		return b.Regions()
	}
	return b.count
}

// Clear forgets everything, persistently: the replica is whole again.
func (b *Bitmap) Clear() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.bits)
	b.count, b.full = 0, false
	return b.writeAll()
}

// Marks is a token for ClearIf.
func (b *Bitmap) Marks() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.marks
}

// ClearIf clears as Clear does, unless something was marked since Marks
// returned marks: a replica that failed after its resync's last pass has
// its new misses kept. It reports whether it cleared.
func (b *Bitmap) ClearIf(marks uint64) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.marks != marks {
		return false, nil
	}
	clear(b.bits)
	b.count, b.full = 0, false
	return true, b.writeAll()
}

// Close closes the file. A Mark after it fails.
func (b *Bitmap) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.f.Close()
}
