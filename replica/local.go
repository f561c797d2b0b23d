// Package replica holds the mirrored volume: the local store, the
// replication stream, write ordering, resync and verify. This file is the
// local store, which on its own serves a single site.
package replica

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/metrolun/metrolun/target"
)

// LocalFile is a volume backed by a regular file (sparse, thin) or a block
// device. It implements target.Volume.
type LocalFile struct {
	f     *os.File
	path  string
	size  int64
	block bool   // a block device: discard instead of punching holes
	img   *image // the identity block of a cluster data site (identity.go)
	// cawLock makes COMPARE AND WRITE atomic against writes: writes share
	// it, a compare-and-write holds it alone.
	cawLock sync.RWMutex
}

var _ target.Volume = (*LocalFile)(nil)

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
	v := &LocalFile{f: f, path: path}
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
	return v, nil
}

func (v *LocalFile) Size() int64 { return v.size }

func (v *LocalFile) ReadAt(p []byte, off int64) error {
	_, err := v.f.ReadAt(p, off)
	if err == io.EOF {
		err = nil // a sparse tail reads as zeros
	}
	return wrapIO(err)
}

func (v *LocalFile) WriteAt(p []byte, off int64, fua bool) error {
	v.cawLock.RLock()
	defer v.cawLock.RUnlock()
	return v.writeAt(p, off, fua)
}

func (v *LocalFile) writeAt(p []byte, off int64, fua bool) error {
	if fua {
		// RWF_DSYNC makes only this write durable, which is cheaper than
		// an fdatasync of the whole file (Linux 4.7+).
		_, err := unix.Pwritev2(int(v.f.Fd()), [][]byte{p}, off, unix.RWF_DSYNC)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
			return wrapIO(err)
		}
		if _, err := v.f.WriteAt(p, off); err != nil {
			return wrapIO(err)
		}
		return v.Flush()
	}
	_, err := v.f.WriteAt(p, off)
	return wrapIO(err)
}

func (v *LocalFile) Flush() error {
	return wrapIO(unix.Fdatasync(int(v.f.Fd())))
}

func (v *LocalFile) Unmap(off, length int64) error {
	v.cawLock.RLock()
	defer v.cawLock.RUnlock()
	if v.block {
		r := [2]uint64{uint64(off), uint64(length)}
		return wrapIO(ioctlDiscard(int(v.f.Fd()), &r))
	}
	err := unix.Fallocate(int(v.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		// A file system without hole punching: write zeros instead, so the
		// range still reads back as zeros (LBPRZ).
		zero := make([]byte, min(length, 1<<20))
		for done := int64(0); done < length; {
			n := min(int64(len(zero)), length-done)
			if _, err := v.f.WriteAt(zero[:n], off+done); err != nil {
				return wrapIO(err)
			}
			done += n
		}
		return nil
	}
	return wrapIO(err)
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

// wrapIO marks I/O errors from the device as medium errors so that the
// initiator sees MEDIUM ERROR rather than a target failure.
func wrapIO(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EIO) {
		return fmt.Errorf("%w: %v", target.ErrMedium, err)
	}
	return err
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
