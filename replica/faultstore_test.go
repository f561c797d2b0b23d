package replica

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/metrolun/metrolun/target"
)

// TestStoreFaults runs the local store through each storage fault and
// checks that none is swallowed: no short or failed write is reported
// as done, and a failed write-back stays visible (DESIGN.md Failures).
func TestStoreFaults(t *testing.T) {
	const size = 16 << 20
	pat := func(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
	type env struct {
		t  *testing.T
		v  *LocalFile
		fs *FaultStore
	}
	read := func(e env, off int64, n int) ([]byte, error) {
		b := make([]byte, n)
		err := e.v.ReadAt(b, off)
		return b, err
	}
	mustRead := func(e env, off int64, want []byte) {
		e.t.Helper()
		got, err := read(e, off, len(want))
		if err != nil {
			e.t.Fatalf("read at %d: %v", off, err)
		}
		if !bytes.Equal(got, want) {
			e.t.Fatalf("read at %d: got %x.., want %x..", off, got[:8], want[:8])
		}
	}
	cases := []struct {
		name string
		run  func(e env)
	}{
		{"short writes are continued", func(e env) {
			e.fs.Set(Faults{ShortWrite: true})
			for _, fua := range []bool{true, false} {
				data := pat(0xa1, 8<<20)
				if err := e.v.WriteAt(data, 1<<20, fua); err != nil {
					e.t.Fatalf("fua=%v: %v", fua, err)
				}
				mustRead(e, 1<<20, data)
			}
			if e.fs.Injected()["short_write"] == 0 {
				e.t.Fatal("no short write was injected")
			}
		}},
		{"a full file system is out of space, not a medium error", func(e env) {
			e.fs.Set(Faults{NoSpace: true, SpaceLeft: 4 << 20})
			err := e.v.WriteAt(pat(0xa2, 8<<20), 0, true)
			if !errors.Is(err, target.ErrNoSpace) || errors.Is(err, target.ErrMedium) {
				e.t.Fatalf("8 MiB FUA write with 4 MiB free: %v, want ErrNoSpace", err)
			}
			// Out of space loses nothing that was acknowledged: reads
			// and flushes go on.
			e.fs.Set(Faults{})
			if _, err := read(e, 0, 8<<20); err != nil {
				e.t.Fatalf("read after ENOSPC: %v", err)
			}
			if err := e.v.Flush(); err != nil {
				e.t.Fatalf("flush after ENOSPC: %v", err)
			}
		}},
		{"a write EIO loses the range until it is rewritten", func(e env) {
			e.v.WriteAt(pat(0x01, 128<<10), 0, true)
			e.fs.Set(Faults{WriteEIO: true})
			if err := e.v.WriteAt(pat(0xa3, 64<<10), 0, true); !errors.Is(err, target.ErrMedium) {
				e.t.Fatalf("write with EIO: %v, want ErrMedium", err)
			}
			e.fs.Set(Faults{})
			if _, err := read(e, 0, 4096); !errors.Is(err, target.ErrMedium) {
				e.t.Fatalf("read of a range whose write failed: %v, want ErrMedium", err)
			}
			mustRead(e, 64<<10, pat(0x01, 64<<10)) // the next region is whole
			if err := e.v.WriteAt(pat(0xa4, 64<<10), 0, false); err != nil {
				e.t.Fatal(err)
			}
			mustRead(e, 0, pat(0xa4, 64<<10))
			if err := e.v.Flush(); err != nil {
				e.t.Fatalf("flush after the rewrite: %v", err)
			}
		}},
		{"a failed flush is sticky: flushes and reads fail until rewritten", func(e env) {
			old := pat(0x02, 256<<10)
			if err := e.v.WriteAt(old, 0, true); err != nil {
				e.t.Fatal(err)
			}
			e.v.WriteAt(pat(0xa5, 256<<10), 0, false)
			e.fs.Set(Faults{FlushEIO: 1})
			if err := e.v.Flush(); !errors.Is(err, target.ErrMedium) {
				e.t.Fatalf("first flush: %v, want ErrMedium", err)
			}
			// Linux reports the error once; the store must not forget.
			if err := e.v.Flush(); !errors.Is(err, target.ErrMedium) {
				e.t.Fatalf("second flush: %v, want ErrMedium (sticky)", err)
			}
			if b, err := read(e, 64<<10, 4096); !errors.Is(err, target.ErrMedium) {
				e.t.Fatalf("read after a failed write-back: err %v, data %x.. (the kernel dropped the pages); want ErrMedium", err, b[:4])
			}
			if e.v.Lost() != 4 {
				e.t.Fatalf("%d lost regions, want 4", e.v.Lost())
			}
			// Rewriting three of four regions leaves one lost.
			e.v.WriteAt(pat(0xa6, 192<<10), 0, false)
			mustRead(e, 0, pat(0xa6, 192<<10))
			if _, err := read(e, 192<<10, 512); !errors.Is(err, target.ErrMedium) {
				e.t.Fatalf("read of the region not rewritten: %v", err)
			}
			if err := e.v.Flush(); !errors.Is(err, target.ErrMedium) {
				e.t.Fatalf("flush with a region still lost: %v", err)
			}
			if err := e.v.Unmap(192<<10, 64<<10); err != nil {
				e.t.Fatal(err)
			}
			if err := e.v.Flush(); err != nil {
				e.t.Fatalf("flush once every region was rewritten: %v", err)
			}
			mustRead(e, 192<<10, make([]byte, 64<<10))
		}},
		{"a resync ends the loss", func(e env) {
			e.v.WriteAt(pat(0xa7, 4096), 5<<20, false)
			e.fs.Set(Faults{FlushEIO: 1})
			e.v.Flush()
			if _, err := read(e, 5<<20, 4096); !errors.Is(err, target.ErrMedium) {
				e.t.Fatalf("read: %v, want ErrMedium", err)
			}
			e.v.Resynced()
			if err := e.v.Flush(); err != nil {
				e.t.Fatalf("flush after resync: %v", err)
			}
			if _, err := read(e, 5<<20, 4096); err != nil {
				e.t.Fatalf("read after resync: %v", err)
			}
		}},
		{"a FUA write is not lost by a later failed flush", func(e env) {
			e.v.WriteAt(pat(0xa8, 64<<10), 0, true)
			e.fs.Set(Faults{FlushEIO: 1})
			e.v.Flush() // nothing unflushed: nothing lost
			mustRead(e, 0, pat(0xa8, 64<<10))
			if err := e.v.Flush(); err != nil {
				e.t.Fatalf("flush: %v", err)
			}
		}},
		{"read EIO is a medium error", func(e env) {
			e.fs.Set(Faults{ReadEIO: true})
			if _, err := read(e, 0, 512); !errors.Is(err, target.ErrMedium) {
				e.t.Fatalf("read: %v, want ErrMedium", err)
			}
		}},
		{"slow I/O is slow and correct", func(e env) {
			e.fs.Set(Faults{Delay: 20 * time.Millisecond})
			start := time.Now()
			if err := e.v.WriteAt(pat(0xa9, 4096), 0, true); err != nil {
				e.t.Fatal(err)
			}
			if d := time.Since(start); d < 20*time.Millisecond {
				e.t.Fatalf("write took %v with a 20ms delay", d)
			}
			mustRead(e, 0, pat(0xa9, 4096))
		}},
		{"a replaced image reads as zeros and is empty", func(e env) {
			e.v.WriteAt(pat(0xaa, 1<<20), 0, true)
			if storeEmpty(e.v) {
				e.t.Fatal("a written image reported empty")
			}
			if err := e.fs.Replace(); err != nil {
				e.t.Fatal(err)
			}
			mustRead(e, 0, make([]byte, 1<<20))
			if !storeEmpty(e.v) {
				e.t.Fatal("a replaced image is not empty")
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := OpenLocal(filepath.Join(t.TempDir(), "lun.img"), size)
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			c.run(env{t: t, v: v, fs: NewFaultStore(v)})
		})
	}
}
