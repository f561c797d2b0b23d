package replica

import (
	"path/filepath"
	"testing"
)

// BenchmarkLocalFile4K: one 4 KiB write and one 4 KiB read of a LocalFile
// per op, over 256 blocks (the cost of the block locks shows here).
func BenchmarkLocalFile4K(b *testing.B) {
	v, err := OpenLocal(filepath.Join(b.TempDir(), "lun.img"), 1<<20)
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	buf := make([]byte, 4096)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		off := int64(i%256) * 4096
		if err := v.WriteAt(buf, off, false); err != nil {
			b.Fatal(err)
		}
		if err := v.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
}
