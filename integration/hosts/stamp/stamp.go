// Package stamp is the block format and the journal of the host tests'
// workload: every 4 KiB block written carries its write's sequence
// number, its own LBA and a CRC32C of the rest, so a reader can tell
// which write a block holds, whether it landed at the right place and
// whether it is whole. The workload runs inside the Linux guest on the
// multipath device; the harness checks the same journal against each
// site's image on the host.
package stamp

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
)

// BlockSize is the size of one stamped block.
const BlockSize = 4096

// SectorSize is the LBA unit (the LUN's logical block size).
const SectorSize = 512

var magic = [8]byte{'M', 'L', 'S', 'T', 'A', 'M', 'P', '1'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Fill writes the block of write seq at lba (in 512-byte sectors) into
// b: magic, seq, lba, a filler that depends on seq (so two writes of the
// same block differ everywhere), and a CRC32C of everything before it in
// the last 4 bytes.
func Fill(b []byte, seq, lba uint64) {
	_ = b[BlockSize-1]
	copy(b[0:8], magic[:])
	binary.BigEndian.PutUint64(b[8:16], seq)
	binary.BigEndian.PutUint64(b[16:24], lba)
	x := seq*0x9e3779b97f4a7c15 + lba
	for i := 24; i+8 <= BlockSize-8; i += 8 {
		// xorshift64: cheap, and no two seqs give the same filler.
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.BigEndian.PutUint64(b[i:], x)
	}
	binary.BigEndian.PutUint32(b[BlockSize-8:], 0)
	binary.BigEndian.PutUint32(b[BlockSize-4:], crc32.Checksum(b[:BlockSize-4], castagnoli))
}

// Parse reads a block: the seq it holds, or ok=false with why when it is
// not a whole stamped block for lba (never written, torn, misplaced or
// corrupt).
func Parse(b []byte, lba uint64) (seq uint64, ok bool, why string) {
	if len(b) < BlockSize {
		return 0, false, fmt.Sprintf("short block (%d bytes)", len(b))
	}
	if [8]byte(b[0:8]) != magic {
		if allZero(b[:BlockSize]) {
			return 0, false, "zeros (never written)"
		}
		return 0, false, "no stamp"
	}
	if got, want := binary.BigEndian.Uint32(b[BlockSize-4:]), crc32.Checksum(b[:BlockSize-4], castagnoli); got != want {
		return binary.BigEndian.Uint64(b[8:16]), false, fmt.Sprintf("crc %08x, want %08x (torn or corrupt)", got, want)
	}
	seq = binary.BigEndian.Uint64(b[8:16])
	if at := binary.BigEndian.Uint64(b[16:24]); at != lba {
		return seq, false, fmt.Sprintf("stamped for LBA %d (misplaced)", at)
	}
	return seq, true, ""
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Journal is what the workload knows when it stops: for every block of
// its region the last acknowledged write, and the writes whose outcome it
// never learned (an error, or still in flight when it stopped).
type Journal struct {
	// Offset is the region's first byte on the device.
	Offset int64 `json:"offset"`
	// Blocks is the region's size in BlockSize blocks.
	Blocks int `json:"blocks"`
	// Acked[i] is the seq of the last acknowledged write of block i, 0
	// for none (seqs start at 1).
	Acked []uint64 `json:"acked"`
	// Unknown[i] lists writes of block i issued after Acked[i] whose
	// outcome is unknown: the block may hold any of them instead.
	Unknown map[int][]uint64 `json:"unknown,omitempty"`
	Writes  uint64           `json:"writes"`
	Errors  uint64           `json:"errors"`
}

// LBA is the sector address of block i.
func (j *Journal) LBA(i int) uint64 {
	return uint64(j.Offset)/SectorSize + uint64(i)*(BlockSize/SectorSize)
}

// Check compares the block i read back with the journal; nil if it holds
// the last acknowledged write or a later one of unknown outcome.
func (j *Journal) Check(i int, b []byte) error {
	want := j.Acked[i]
	seq, ok, why := Parse(b, j.LBA(i))
	if want == 0 && len(j.Unknown[i]) == 0 {
		// Never written: anything but a stamp of ours is fine.
		if ok {
			return fmt.Errorf("block %d (LBA %d): holds write %d, but none was issued", i, j.LBA(i), seq)
		}
		return nil
	}
	if !ok {
		return fmt.Errorf("block %d (LBA %d): %s; last acknowledged write %d", i, j.LBA(i), why, want)
	}
	if seq == want || slices.Contains(j.Unknown[i], seq) {
		return nil
	}
	if seq < want {
		return fmt.Errorf("block %d (LBA %d): holds write %d, older than acknowledged write %d (lost write)", i, j.LBA(i), seq, want)
	}
	return fmt.Errorf("block %d (LBA %d): holds write %d, acknowledged %d, and %d was never issued for it", i, j.LBA(i), seq, want, seq)
}

// Result counts a verification.
type Result struct {
	Checked, Written int
	Bad              []error
}

func (r Result) String() string {
	return fmt.Sprintf("%d blocks checked (%d written), %d bad", r.Checked, r.Written, len(r.Bad))
}

// Err is nil when no block was bad, else the first few problems.
func (r Result) Err() error {
	if len(r.Bad) == 0 {
		return nil
	}
	errs := r.Bad
	if len(errs) > 8 {
		errs = append(errs[:8:8], fmt.Errorf("... and %d more", len(r.Bad)-8))
	}
	return fmt.Errorf("%s: %w", r, errors.Join(errs...))
}

// Verify reads every block of the region from r (a device or an image
// file whose byte 0 is the LUN's byte 0) and checks it.
func (j *Journal) Verify(r io.ReaderAt, buf []byte) Result {
	var res Result
	for i := 0; i < j.Blocks; i++ {
		if j.Acked[i] != 0 {
			res.Written++
		}
		res.Checked++
		n, err := r.ReadAt(buf[:BlockSize], j.Offset+int64(i)*BlockSize)
		if n < BlockSize {
			res.Bad = append(res.Bad, fmt.Errorf("block %d: read %d bytes: %v", i, n, err))
			continue
		}
		if err := j.Check(i, buf[:BlockSize]); err != nil {
			res.Bad = append(res.Bad, err)
		}
	}
	return res
}

// Save writes the journal as JSON (atomically: a reader sees the old or
// the new file).
func (j *Journal) Save(path string) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Load reads a journal written by Save and checks its shape.
func Load(path string) (*Journal, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var j Journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if j.Blocks <= 0 || len(j.Acked) != j.Blocks || j.Offset < 0 || j.Offset%BlockSize != 0 {
		return nil, fmt.Errorf("%s: bad journal: %d blocks, %d acked entries, offset %d", path, j.Blocks, len(j.Acked), j.Offset)
	}
	return &j, nil
}
