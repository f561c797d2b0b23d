package replica

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// FaultStore is a LocalFile whose system calls fail on demand, for the
// proving ground (unit tests here; the torture schedule and integration
// tests through a binary built with the metrolun_faults tag). It is the
// real store with its real error handling: the faults are injected below
// LocalFile, where the kernel's answers come in, so what a test sees is
// what a failing disk would cause.
//
// The faults follow Linux: a short write stores part of the buffer and
// reports the count; a full file system stores what fits, then answers
// ENOSPC; a failed write-back is reported to one fdatasync, and the pages
// it covered are dropped, so later reads return what was on disk before
// with no error.
type FaultStore struct {
	*LocalFile
	raw rawIO

	mu       sync.Mutex
	f        Faults
	pre      map[int64][]byte // page -> its bytes on disk before an unflushed write
	preBytes int64
	injected map[string]int
}

// Faults is what a FaultStore does now. The zero value injects nothing.
type Faults struct {
	// ShortWrite: every write stores at most half of what it is given
	// (at least one byte) and reports that count without an error.
	ShortWrite bool `json:"short_write,omitempty"`
	// NoSpace: writes fail with ENOSPC once SpaceLeft more bytes were
	// written (a write that does not fit stores the part that does).
	NoSpace   bool  `json:"no_space,omitempty"`
	SpaceLeft int64 `json:"space_left,omitempty"`
	// WriteEIO: writes fail with EIO and store nothing.
	WriteEIO bool `json:"write_eio,omitempty"`
	// ReadEIO: reads fail with EIO.
	ReadEIO bool `json:"read_eio,omitempty"`
	// FlushEIO: the next FlushEIO flushes fail with EIO, each dropping
	// the data written since the last successful flush.
	FlushEIO int `json:"flush_eio,omitempty"`
	// Delay is added to every system call (slow I/O).
	Delay time.Duration `json:"delay,omitempty"`
}

// faultPage is the granularity of the page cache being emulated.
const faultPage = 4096

// maxPreImage bounds the memory kept to emulate dropped pages; pages
// beyond it read back as zeros after a failed flush (also data that was
// not acknowledged, which is what the emulation must show).
const maxPreImage = 256 << 20

// NewFaultStore puts fault injection under st's system calls. Call it
// before st is used.
func NewFaultStore(st *LocalFile) *FaultStore {
	fs := &FaultStore{LocalFile: st, raw: st.io, pre: map[int64][]byte{}, injected: map[string]int{}}
	st.io = fs
	return fs
}

// Set replaces the faults in effect.
func (fs *FaultStore) Set(f Faults) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.f = f
}

// Faults returns the faults in effect (FlushEIO counts down as it fires).
func (fs *FaultStore) Faults() Faults {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.f
}

// Injected returns how many faults fired, by kind.
func (fs *FaultStore) Injected() map[string]int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := make(map[string]int, len(fs.injected))
	for k, v := range fs.injected {
		out[k] = v
	}
	return out
}

// Replace empties the image under the running store, as a backing file
// replaced by an empty one (a mount missing at boot) would be: every
// byte reads as zeros and nothing is allocated.
func (fs *FaultStore) Replace() error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.injected["replaced"]++
	clear(fs.pre)
	fs.preBytes = 0
	if fs.block {
		return fmt.Errorf("%s: a block device cannot be replaced", fs.path)
	}
	if err := fs.raw.punch(0, fs.size); err != nil {
		return err
	}
	return fs.raw.datasync()
}

func (fs *FaultStore) delay() {
	fs.mu.Lock()
	d := fs.f.Delay
	if d > 0 {
		fs.injected["slow"]++
	}
	fs.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
}

func (fs *FaultStore) pwrite(p []byte, off int64, dsync bool) (int, error) {
	fs.delay()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := &fs.f
	if f.WriteEIO {
		fs.injected["write_eio"]++
		return 0, unix.EIO
	}
	var err error
	if f.NoSpace {
		if f.SpaceLeft <= 0 {
			fs.injected["no_space"]++
			return 0, unix.ENOSPC
		}
		if int64(len(p)) > f.SpaceLeft {
			// As a file system does: what fits, then ENOSPC on the
			// next call for the rest.
			p = p[:f.SpaceLeft]
		}
	}
	if f.ShortWrite && len(p) > 1 {
		fs.injected["short_write"]++
		p = p[:len(p)/2]
	}
	if !dsync {
		fs.keepPreImage(off, int64(len(p)))
	}
	n, err := fs.raw.pwrite(p, off, dsync)
	if f.NoSpace {
		f.SpaceLeft -= int64(n)
	}
	if dsync && err == nil {
		fs.forgetPreImage(off, int64(n))
	}
	return n, err
}

// keepPreImage saves the on-disk bytes of the pages off..off+n touches,
// unless an unflushed write saved them already.
func (fs *FaultStore) keepPreImage(off, n int64) {
	for pg := off / faultPage; pg*faultPage < off+n; pg++ {
		if _, ok := fs.pre[pg]; ok {
			continue
		}
		if fs.preBytes >= maxPreImage {
			fs.pre[pg] = nil // zeros after a drop
			continue
		}
		b := make([]byte, faultPage)
		m, _ := fs.raw.pread(b, pg*faultPage)
		clear(b[m:])
		fs.pre[pg] = b
		fs.preBytes += faultPage
	}
}

func (fs *FaultStore) forgetPreImage(off, n int64) {
	for pg := off / faultPage; pg*faultPage < off+n; pg++ {
		if b, ok := fs.pre[pg]; ok {
			fs.preBytes -= int64(len(b))
			delete(fs.pre, pg)
		}
	}
}

func (fs *FaultStore) pread(p []byte, off int64) (int, error) {
	fs.delay()
	fs.mu.Lock()
	eio := fs.f.ReadEIO
	if eio {
		fs.injected["read_eio"]++
	}
	fs.mu.Unlock()
	if eio {
		return 0, unix.EIO
	}
	return fs.raw.pread(p, off)
}

func (fs *FaultStore) datasync() error {
	fs.delay()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.f.FlushEIO > 0 {
		fs.f.FlushEIO--
		fs.injected["flush_eio"]++
		// The write-back failed: the kernel drops the pages, and the
		// disk keeps what it had.
		zero := make([]byte, faultPage)
		for pg, b := range fs.pre {
			if b == nil {
				b = zero
			}
			end := min(int64(len(b)), fs.size-pg*faultPage)
			if end > 0 {
				fs.raw.pwrite(b[:end], pg*faultPage, false)
			}
		}
		clear(fs.pre)
		fs.preBytes = 0
		fs.raw.datasync()
		return unix.EIO
	}
	err := fs.raw.datasync()
	if err == nil {
		clear(fs.pre)
		fs.preBytes = 0
	}
	return err
}

func (fs *FaultStore) punch(off, n int64) error {
	fs.delay()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.f.WriteEIO {
		fs.injected["write_eio"]++
		return unix.EIO
	}
	fs.keepPreImage(off, n)
	return fs.raw.punch(off, n)
}

// Unflushed returns how many pages hold data written since the last
// successful flush: what a power loss would take.
func (fs *FaultStore) Unflushed() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.pre)
}

// PowerLoss puts back on the file what it held at the last successful
// flush, as a power cut does to a page cache, and returns how many pages
// it put back. Close the site first: a machine that lost power answers
// nothing more, and closing flushes nothing. The file is written by path
// because the store's own descriptor is closed by then.
func (fs *FaultStore) PowerLoss() (int, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.injected["power_loss"]++
	f, err := os.OpenFile(fs.path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	zero := make([]byte, faultPage)
	n := 0
	for pg, b := range fs.pre {
		if b == nil {
			b = zero
		}
		if end := min(int64(len(b)), fs.size-pg*faultPage); end > 0 {
			if _, err := f.WriteAt(b[:end], pg*faultPage); err != nil {
				return n, err
			}
			n++
		}
	}
	clear(fs.pre)
	fs.preBytes = 0
	return n, f.Sync()
}
