// Package replica holds the mirrored volume: the local store, the
// replication stream, write ordering, resync and verify. This file is the
// local store, which on its own serves a single site.
package replica

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/metrolun/metrolun/target"

	"github.com/metrolun/metrolun/internal/durable"
)

// LocalFile is a volume backed by a regular file (sparse, thin) or a block
// device. It implements target.Volume.
//
// Storage errors are never swallowed (DESIGN.md Failures):
//   - a short write is continued until the whole buffer is written or the
//     kernel reports why not (ENOSPC maps to target.ErrNoSpace, EIO to
//     target.ErrMedium);
//   - write-back errors are sticky. Linux reports a failed write-back to
//     one fsync only and may then drop the dirty pages, so later reads
//     return what was on disk before with no error. LocalFile therefore
//     remembers the regions written since the last successful flush; when
//     a flush (or a FUA write) fails, they become lost: every later Flush
//     fails and every read touching them fails with MEDIUM ERROR, until
//     each region is completely rewritten (or unmapped) or a resync ends
//     (Resynced).
type LocalFile struct {
	f     *os.File
	io    rawIO // the system calls; a FaultStore interposes here
	path  string
	size  int64
	block bool   // a block device: discard instead of punching holes
	img   *image // the identity block of a cluster data site (identity.go)
	// cawLock makes COMPARE AND WRITE atomic against writes: writes share
	// it, a compare-and-write holds it alone.
	cawLock sync.RWMutex
	// blocks makes each logical block atomic between reads and writes
	// (rangelock.go).
	blocks blockLocks
	// flushMu serialises flushes, so that the regions one flush covers
	// are known (wb.flushing).
	flushMu sync.Mutex
	wb      writeBack
	log     hclog.Logger
	// lostFile keeps the lost ranges across restarts (PersistLost);
	// lostMu serialises its writes.
	lostFile string
	lostMu   sync.Mutex
}

var _ target.Volume = (*LocalFile)(nil)

// rawIO is the system calls LocalFile makes on its file. A short count
// without an error is possible from pwrite; LocalFile handles it.
type rawIO interface {
	pwrite(p []byte, off int64, dsync bool) (int, error)
	pread(p []byte, off int64) (int, error)
	datasync() error
	punch(off, n int64) error
}

// osFile is the real rawIO.
type osFile struct{ fd int }

func (o osFile) pwrite(p []byte, off int64, dsync bool) (int, error) {
	for {
		var n int
		var err error
		if dsync {
			// RWF_DSYNC makes only this write durable, which is cheaper
			// than an fdatasync of the whole file (Linux 4.7+).
			n, err = unix.Pwritev2(o.fd, [][]byte{p}, off, unix.RWF_DSYNC)
		} else {
			n, err = unix.Pwrite(o.fd, p, off)
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return n, err
	}
}

func (o osFile) pread(p []byte, off int64) (int, error) {
	for {
		n, err := unix.Pread(o.fd, p, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return n, err
	}
}

func (o osFile) datasync() error {
	for {
		err := unix.Fdatasync(o.fd)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err
	}
}

func (o osFile) punch(off, n int64) error {
	return unix.Fallocate(o.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// OpenLocal opens the backing store at path. A missing regular file is
// created sparse with the given size; an existing one smaller than size is
// grown (never shrunk). size 0 means "use what is there".
func OpenLocal(path string, size int64) (*LocalFile, error) {
	if err := checkParent(path); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open backing store: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	v := &LocalFile{f: f, io: osFile{int(f.Fd())}, path: path, log: hclog.NewNullLogger()}
	switch {
	case st.Mode()&os.ModeDevice != 0:
		v.block = true
		n, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: size of block device: %w", path, err)
		}
		if size > 0 && n < size {
			f.Close()
			return nil, fmt.Errorf("%s: block device has %d bytes, config asks for %d", path, n, size)
		}
		v.size = n
	case st.Mode().IsRegular():
		v.size = st.Size()
		if size > v.size {
			if err := f.Truncate(size); err != nil {
				f.Close()
				return nil, fmt.Errorf("%s: grow to %d bytes: %w", path, size, err)
			}
			v.size = size
		}
	default:
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file or block device", path)
	}
	if v.size == 0 {
		f.Close()
		return nil, fmt.Errorf("%s: empty backing store and no size given", path)
	}
	v.wb.init(v.size)
	return v, nil
}

// SetLogger names where storage errors are logged (with the LU's fields).
func (v *LocalFile) SetLogger(l hclog.Logger) {
	if l != nil {
		v.log = l
	}
}

func (v *LocalFile) Size() int64 { return v.size }

func (v *LocalFile) ReadAt(p []byte, off int64) error {
	if lo, hi, ok := v.wb.lostIn(off, int64(len(p)), false); ok {
		// The write-back of these bytes failed earlier (here, or at the
		// writer that resynced this site): what the file returns now is
		// older data, not what was acknowledged.
		return &LostError{Path: v.path, Off: lo, End: hi}
	}
	v.blocks.rlock(off, int64(len(p)))
	defer v.blocks.runlock(off, int64(len(p)))
	for done := 0; done < len(p); {
		n, err := v.io.pread(p[done:], off+int64(done))
		if err != nil {
			return v.ioError("read", off, int64(len(p)), err)
		}
		if n == 0 {
			// Past the end of a regular file: a sparse tail reads as zeros.
			clear(p[done:])
			return nil
		}
		done += n
	}
	return nil
}

func (v *LocalFile) WriteAt(p []byte, off int64, fua bool) error {
	v.cawLock.RLock()
	defer v.cawLock.RUnlock()
	return v.writeAt(p, off, fua)
}

func (v *LocalFile) writeAt(p []byte, off int64, fua bool) error {
	n := int64(len(p))
	v.blocks.lock(off, n)
	err := v.pwriteAll(p, off, fua)
	v.blocks.unlock(off, n)
	if fua && err != nil && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)) {
		// No RWF_DSYNC here: a plain write, then a flush.
		v.blocks.lock(off, n)
		err = v.pwriteAll(p, off, false)
		v.blocks.unlock(off, n)
		if err == nil {
			if v.wb.wrote(off, n) {
				v.saveLost()
			}
			return v.Flush()
		}
	}
	if err != nil {
		if !isNoSpace(err) {
			// What the failed write left there is unknown, and a page
			// the kernel could not write back may be dropped: reads of
			// it must fail rather than return older data.
			v.wb.lose(off, n)
			v.log.Error("storage write failed; the range is lost until rewritten or resynced", "path", v.path, "offset", off, "bytes", n, "fua", fua, "error", err)
			v.saveLost()
		}
		return v.ioError("write", off, n, err)
	}
	var cleared bool
	if fua {
		cleared = v.wb.rewrote(off, n)
	} else {
		cleared = v.wb.wrote(off, n)
	}
	if cleared {
		v.saveLost()
	}
	return nil
}

// pwriteAll writes all of p: a short count (a file system running out of
// space, a signal) is continued until the kernel says why it stops.
func (v *LocalFile) pwriteAll(p []byte, off int64, dsync bool) error {
	for len(p) > 0 {
		n, err := v.io.pwrite(p, off, dsync)
		if bugShortWrite && err == nil {
			return nil // a known bug, for the torture test (bug_shortwrite_none.go)
		}
		if n > 0 {
			p, off = p[n:], off+int64(n)
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
	}
	return nil
}

// Flush makes every completed write stable (SYNCHRONIZE CACHE). It fails
// while any region is lost (see LocalFile).
func (v *LocalFile) Flush() error {
	v.flushMu.Lock()
	defer v.flushMu.Unlock()
	v.wb.startFlush()
	if err := v.io.datasync(); err != nil {
		lo, hi, regions := v.wb.flushFailed()
		v.saveLost()
		v.log.Error("storage flush failed; the data written since the last flush is lost until rewritten or resynced",
			"path", v.path, "from_offset", lo, "to_offset", hi, "regions", regions, "error", err)
		return v.ioError("flush", lo, hi-lo, err)
	}
	v.wb.flushed()
	if lo, hi, ok := v.wb.lostIn(0, v.size, true); ok {
		return fmt.Errorf("%w: %s bytes %d-%d: a write-back failed earlier and the data there was not rewritten since", target.ErrMedium, v.path, lo, hi)
	}
	return nil
}

// Lost reports how many regions are lost (see LocalFile).
func (v *LocalFile) Lost() int { return v.wb.lostCount() }

// Resynced forgets every region lost here: a resync rewrote whatever
// differed from the writer's copy. Regions the writer lost too
// (MarkLost) stay lost.
func (v *LocalFile) Resynced() {
	if n := int(v.wb.nlost.Load()); n > 0 {
		v.log.Info("resync ended; lost regions are whole again", "path", v.path, "regions", n)
	}
	if v.wb.clearLost() {
		v.saveLost()
	}
}

// MarkLost makes off..off+n read as lost here (MEDIUM ERROR), as it does
// at the writer whose store lost it (FrameLost): a resync cannot copy
// bytes the writer no longer has, and the older bytes here are not what
// was acknowledged. A write that covers a whole lost region (64 KiB)
// makes it whole again, here and at the writer alike.
func (v *LocalFile) MarkLost(off, n int64) {
	v.wb.markAbsent(off, n)
	v.saveLost()
	v.log.Error("the writer lost this range (a failed write-back there); reads of it fail here too until it is rewritten", "path", v.path, "offset", off, "bytes", n)
}

// PersistLost keeps this store's lost ranges in the file at path from
// now on (written durably whenever they change, removed when none is
// left), and first marks lost again the ones it lists: a write-back error
// is forgotten by the kernel at a restart, and without the file the
// restarted process would serve the older bytes there with GOOD. The
// file may list ranges rewritten since (a crash between the rewrite and
// the file's update): they read as lost until rewritten again or
// resynced, never as stale data. Call it before the store is used.
func (v *LocalFile) PersistLost(path string) error {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	default:
		var rs [][2]int64
		if err := json.Unmarshal(b, &rs); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for _, r := range rs {
			if r[0] < 0 || r[1] <= r[0] || r[0] >= v.size {
				return fmt.Errorf("%s: range %v is not within the LU (%d bytes)", path, r, v.size)
			}
			// Reloaded as lost at the writer's word: reads fail, and a
			// flush does not (the kernel's error is gone with the
			// process that saw it).
			v.wb.markAbsent(r[0], min(r[1], v.size)-r[0])
		}
		if len(rs) > 0 {
			v.log.Warn("ranges lost before this start read as lost until rewritten or resynced", "path", v.path, "ranges", len(rs), "state", path)
		}
	}
	v.lostMu.Lock()
	v.lostFile = path
	v.lostMu.Unlock()
	return nil
}

// saveLost writes the lost ranges to the PersistLost file, if any.
func (v *LocalFile) saveLost() {
	v.lostMu.Lock()
	defer v.lostMu.Unlock()
	if v.lostFile == "" {
		return
	}
	rs, _ := v.wb.lostRanges(-1)
	var err error
	if len(rs) == 0 {
		err = durable.Remove(v.lostFile)
	} else {
		var b []byte
		if b, err = json.Marshal(rs); err == nil {
			err = durable.Replace(v.lostFile, b, 0o600)
		}
	}
	if err != nil {
		v.log.Error("could not record the lost ranges; after a restart this site would read its older bytes there", "path", v.path, "state", v.lostFile, "error", err)
	}
}

// LostRanges returns up to max byte ranges that read as lost here, and
// how many 64 KiB regions are lost in all.
func (v *LocalFile) LostRanges(max int) ([][2]int64, int) { return v.wb.lostRanges(max) }

// LostError is a read of bytes this store lost (a write-back that failed
// here, or at the writer: MarkLost). It is a MEDIUM ERROR to initiators.
type LostError struct {
	Path     string
	Off, End int64 // the lost part of the read, in bytes
}

func (e *LostError) Error() string {
	return fmt.Sprintf("%v: %s bytes %d-%d: a write-back failed earlier and the data there was not rewritten since", target.ErrMedium, e.Path, e.Off, e.End)
}

func (e *LostError) Unwrap() error { return target.ErrMedium }

func (v *LocalFile) Unmap(off, length int64) error {
	v.cawLock.RLock()
	defer v.cawLock.RUnlock()
	if v.block {
		r := [2]uint64{uint64(off), uint64(length)}
		v.blocks.lock(off, length)
		err := ioctlDiscard(int(v.f.Fd()), &r)
		v.blocks.unlock(off, length)
		if err != nil {
			return v.ioError("unmap", off, length, err)
		}
		if v.wb.wrote(off, length) {
			v.saveLost()
		}
		return nil
	}
	v.blocks.lock(off, length)
	err := v.io.punch(off, length)
	v.blocks.unlock(off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		// A file system without hole punching: write zeros instead, so the
		// range still reads back as zeros (LBPRZ).
		zero := make([]byte, min(length, 1<<20))
		for done := int64(0); done < length; {
			n := min(int64(len(zero)), length-done)
			if err := v.writeAt(zero[:n], off+done, false); err != nil {
				return err
			}
			done += n
		}
		return nil
	}
	if err != nil {
		return v.ioError("unmap", off, length, err)
	}
	if v.wb.wrote(off, length) {
		v.saveLost()
	}
	return nil
}

func (v *LocalFile) CompareAndWrite(off int64, cmp, data []byte) (int, error) {
	v.cawLock.Lock()
	defer v.cawLock.Unlock()
	cur := make([]byte, len(cmp))
	if err := v.ReadAt(cur, off); err != nil {
		return 0, err
	}
	if !bytes.Equal(cur, cmp) {
		for i := range cur {
			if cur[i] != cmp[i] {
				return i, nil
			}
		}
	}
	return -1, v.writeAt(data, off, false)
}

// Mapped uses SEEK_DATA and SEEK_HOLE to find allocated extents.
func (v *LocalFile) Mapped(off int64) (bool, int64, error) {
	if v.block {
		return true, v.size - off, nil
	}
	fd := int(v.f.Fd())
	data, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return false, v.size - off, nil // only a hole from here to the end
	}
	if err != nil {
		return true, v.size - off, nil // the file system cannot tell
	}
	if data > off {
		return false, data - off, nil
	}
	hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if err != nil || hole > v.size {
		hole = v.size
	}
	return true, hole - off, nil
}

func (v *LocalFile) State() target.PathState { return target.PathActiveOptimized }

func (v *LocalFile) Close() error { return v.f.Close() }

// ioError says what failed where, and marks the cause for the target:
// ENOSPC (and EDQUOT) as out of space, EIO as a medium error.
func (v *LocalFile) ioError(op string, off, n int64, err error) error {
	return fmt.Errorf("%s %s bytes %d-%d: %w", op, v.path, off, off+n, wrapIO(err))
}

// wrapIO marks I/O errors from the device so that the initiator sees
// MEDIUM ERROR, or SPACE ALLOCATION FAILED WRITE PROTECT on a full thin
// LU (SBC-3 section 4.7.3.6), rather than a target failure.
func wrapIO(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EIO):
		return fmt.Errorf("%w: %v", target.ErrMedium, err)
	case isNoSpace(err):
		return fmt.Errorf("%w: %w", target.ErrNoSpace, err)
	}
	return err
}

func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, target.ErrNoSpace)
}

// ioctlDiscard issues BLKDISCARD on a block device.
func ioctlDiscard(fd int, r *[2]uint64) error {
	const blkDiscard = 0x1277
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), blkDiscard, uintptrOf(r))
	if e != 0 {
		return e
	}
	return nil
}
