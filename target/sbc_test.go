package target

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

func cdbCAW(lba uint64, blocks byte) []byte {
	c := make([]byte, 16)
	c[0] = 0x89
	binary.BigEndian.PutUint64(c[2:], lba)
	c[13] = blocks
	return c
}

func cdbWriteSame(op byte, lba uint64, blocks uint32, flags byte) []byte {
	var c []byte
	if op == 0x41 {
		c = cdbRW(0x2a, lba, blocks)
	} else {
		c = cdbRW(0x8a, lba, blocks)
	}
	c[0], c[1] = op, flags
	return c
}

func cdbGetLBAStatus(lba uint64, alloc uint32) []byte {
	c := make([]byte, 16)
	c[0], c[1] = 0x9e, 0x12
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], alloc)
	return c
}

func cdbUnmap(paramLen uint16) []byte {
	c := make([]byte, 10)
	c[0] = 0x42
	binary.BigEndian.PutUint16(c[7:], paramLen)
	return c
}

// unmapParams builds an UNMAP parameter list (SBC-3 5.28.2).
func unmapParams(descs ...[2]uint64) []byte {
	b := make([]byte, 8+16*len(descs))
	binary.BigEndian.PutUint16(b[0:], uint16(len(b)-2))
	binary.BigEndian.PutUint16(b[2:], uint16(16*len(descs)))
	for i, d := range descs {
		binary.BigEndian.PutUint64(b[8+16*i:], d[0])
		binary.BigEndian.PutUint32(b[16+16*i:], uint32(d[1]))
	}
	return b
}

type lbaStatus struct {
	lba     uint64
	blocks  uint32
	dealloc bool
}

// parseLBAStatus decodes GET LBA STATUS parameter data (SBC-3 5.6.2).
func parseLBAStatus(tb testing.TB, b []byte) []lbaStatus {
	tb.Helper()
	if len(b) < 8 {
		tb.Fatalf("GET LBA STATUS data is %d bytes", len(b))
	}
	if n := binary.BigEndian.Uint32(b); int(n) != len(b)-4 {
		tb.Fatalf("PARAMETER DATA LENGTH %d, want %d", n, len(b)-4)
	}
	if (len(b)-8)%16 != 0 {
		tb.Fatalf("descriptor area of %d bytes", len(b)-8)
	}
	var out []lbaStatus
	for d := b[8:]; len(d) > 0; d = d[16:] {
		st := d[12] & 0x0f
		if st > 2 {
			tb.Fatalf("provisioning status %d", st)
		}
		out = append(out, lbaStatus{binary.BigEndian.Uint64(d), binary.BigEndian.Uint32(d[8:]), st == 1})
	}
	return out
}

func TestCompareAndWrite(t *testing.T) {
	const bs = 512
	for _, c := range []struct {
		name   string
		blocks int
		diffAt int // -1: match
	}{
		{"match 1 block", 1, -1},
		{"match 3 blocks", 3, -1},
		{"miscompare first byte", 1, 0},
		{"miscompare byte 17", 1, 17},
		{"miscompare last byte", 2, 2*bs - 1},
		{"miscompare second block", 2, bs + 5},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newLUEnv(t, LUNConfig{})
			n := e.nexus("iqn.init", 1)
			const lba = 9
			old := pattern(c.blocks*bs, 1)
			wantGood(t, e.do(n, cdbRW(0x2a, lba, uint32(c.blocks)), old), "prime")
			cmp := append([]byte(nil), old...)
			if c.diffAt >= 0 {
				cmp[c.diffAt] ^= 0x5a
			}
			neu := pattern(c.blocks*bs, 2)
			r := e.do(n, cdbCAW(lba, byte(c.blocks)), append(append([]byte(nil), cmp...), neu...))
			got := e.vol.bytes(lba*bs, int64(c.blocks*bs))
			if c.diffAt < 0 {
				wantGood(t, r, "compare and write")
				if !bytes.Equal(got, neu) {
					t.Fatal("matching COMPARE AND WRITE did not write")
				}
				return
			}
			// SBC-3 5.2: MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION,
			// INFORMATION = offset of the first differing byte in the
			// Data-Out buffer; nothing written.
			wantSense(t, r, senseMiscompare, ascMiscompareVerify, "miscompare")
			if r.sense[0]&0x80 == 0 {
				t.Fatal("VALID bit not set for INFORMATION")
			}
			if info := binary.BigEndian.Uint32(r.sense[3:]); int(info) != c.diffAt {
				t.Fatalf("INFORMATION %d, want %d", info, c.diffAt)
			}
			if !bytes.Equal(got, old) {
				t.Fatal("miscompare changed the medium")
			}
		})
	}
	t.Run("zero blocks", func(t *testing.T) {
		// SBC-3: NUMBER OF LOGICAL BLOCKS 0 is not an error.
		e := newLUEnv(t, LUNConfig{})
		wantGood(t, e.do(e.nexus("i", 1), cdbCAW(0, 0), nil), "caw 0")
		if e.vol.caws+e.vol.writes != 0 {
			t.Fatal("zero-block COMPARE AND WRITE touched the medium")
		}
	})
}

func TestVerifyByteCheck(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("iqn.init", 1)
	data := pattern(4*512, 4)
	wantGood(t, e.do(n, cdbRW(0x2a, 2, 4), data), "write")
	for _, op := range []byte{0x2f, 0xaf, 0x8f} {
		c := cdbRW(op, 2, 4)
		wantGood(t, e.do(n, c, nil), "verify bytchk 0")
		c[1] = 0x02 // BYTCHK=01b
		wantGood(t, e.do(n, c, data), "verify bytchk 1 match")
		bad := append([]byte(nil), data...)
		bad[1000] ^= 1
		r := e.do(n, c, bad)
		wantSense(t, r, senseMiscompare, ascMiscompareVerify, "verify miscompare")
		if info := binary.BigEndian.Uint32(r.sense[3:]); info != 1000 || r.sense[0]&0x80 == 0 {
			t.Fatalf("VERIFY miscompare INFORMATION %d (valid=%v), want 1000", info, r.sense[0]&0x80 != 0)
		}
		c[1] = 0x04 // BYTCHK=10b is reserved
		r = e.do(n, c, nil)
		wantSense(t, r, senseIllegalRequest, ascInvalidFieldInCDB, "bytchk 10b")
	}
}

func TestWriteSameUnmapThenGetLBAStatus(t *testing.T) {
	const nb = 64
	for _, op := range []byte{0x41, 0x93} {
		t.Run(fmt.Sprintf("op%02x", op), func(t *testing.T) {
			e := newLUEnv(t, LUNConfig{Thin: true, Volume: newMemVolume(nb * 512)})
			n := e.nexus("iqn.init", 1)
			wantGood(t, e.do(n, cdbRW(0x2a, 0, nb), pattern(nb*512, 7)), "fill")
			st := parseLBAStatus(t, e.do(n, cdbGetLBAStatus(0, 1024), nil).data)
			if len(st) != 1 || st[0] != (lbaStatus{0, nb, false}) {
				t.Fatalf("before unmap: %+v, want one mapped extent", st)
			}
			wantGood(t, e.do(n, cdbWriteSame(op, 4, 8, 0x08), make([]byte, 512)), "write same unmap")
			if !bytes.Equal(e.vol.bytes(4*512, 8*512), make([]byte, 8*512)) {
				t.Fatal("unmapped blocks do not read back as zeros (LBPRZ)")
			}
			r := e.do(n, cdbGetLBAStatus(0, 1024), nil)
			wantGood(t, r, "get lba status")
			want := []lbaStatus{{0, 4, false}, {4, 8, true}, {12, nb - 12, false}}
			if got := parseLBAStatus(t, r.data); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("GET LBA STATUS: %+v, want %+v", got, want)
			}
			// Starting inside the deallocated extent.
			got := parseLBAStatus(t, e.do(n, cdbGetLBAStatus(6, 1024), nil).data)
			if len(got) == 0 || got[0] != (lbaStatus{6, 6, true}) {
				t.Fatalf("GET LBA STATUS at 6: %+v", got)
			}
			// Writing maps the block again.
			wantGood(t, e.do(n, cdbRW(0x2a, 5, 1), pattern(512, 1)), "rewrite")
			got = parseLBAStatus(t, e.do(n, cdbGetLBAStatus(4, 1024), nil).data)
			want = []lbaStatus{{4, 1, true}, {5, 1, false}, {6, 6, true}, {12, nb - 12, false}}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("after rewrite: %+v, want %+v", got, want)
			}
		})
	}
}

func TestWriteSame(t *testing.T) {
	const nb = 64
	e := newLUEnv(t, LUNConfig{Volume: newMemVolume(nb * 512)})
	n := e.nexus("iqn.init", 1)
	block := pattern(512, 3)
	wantGood(t, e.do(n, cdbWriteSame(0x93, 10, 5, 0), block), "write same 16")
	for i := int64(10); i < 15; i++ {
		if !bytes.Equal(e.vol.bytes(i*512, 512), block) {
			t.Fatalf("block %d not written", i)
		}
	}
	if !bytes.Equal(e.vol.bytes(15*512, 512), make([]byte, 512)) {
		t.Fatal("WRITE SAME wrote past its range")
	}
	cases := []struct {
		name string
		cdb  []byte
		out  []byte
	}{
		// WSNZ=1 in the Block Limits VPD page: zero blocks is refused.
		{"zero blocks", cdbWriteSame(0x41, 0, 0, 0), block},
		{"unmap on a thick LU", cdbWriteSame(0x93, 0, 1, 0x08), block},
		{"anchor", cdbWriteSame(0x93, 0, 1, 0x18), block},
		{"ndob on write same 10", cdbWriteSame(0x41, 0, 1, 0x01), block},
		{"wrprotect", cdbWriteSame(0x93, 0, 1, 0x20), block},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantSense(t, e.do(n, c.cdb, c.out), senseIllegalRequest, ascInvalidFieldInCDB, c.name)
		})
	}
}

func TestUnmapParameterList(t *testing.T) {
	const nb = 64
	newEnv := func(t *testing.T) *lunEnv {
		e := newLUEnv(t, LUNConfig{Thin: true, Volume: newMemVolume(nb * 512)})
		return e
	}
	t.Run("deallocates", func(t *testing.T) {
		e := newEnv(t)
		n := e.nexus("i", 1)
		wantGood(t, e.do(n, cdbRW(0x2a, 0, nb), pattern(nb*512, 1)), "fill")
		p := unmapParams([2]uint64{2, 3}, [2]uint64{20, 1}, [2]uint64{nb - 1, 1}, [2]uint64{30, 0})
		wantGood(t, e.do(n, cdbUnmap(uint16(len(p))), p), "unmap")
		got := parseLBAStatus(t, e.do(n, cdbGetLBAStatus(0, 4096), nil).data)
		want := []lbaStatus{{0, 2, false}, {2, 3, true}, {5, 15, false}, {20, 1, true}, {21, nb - 22, false}, {nb - 1, 1, true}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after UNMAP: %+v, want %+v", got, want)
		}
	})
	t.Run("zero length is not an error", func(t *testing.T) {
		e := newEnv(t)
		wantGood(t, e.do(e.nexus("i", 1), cdbUnmap(0), nil), "unmap 0")
	})
	for _, l := range []int{1, 4, 7} {
		t.Run(fmt.Sprintf("parameter list length %d", l), func(t *testing.T) {
			// SBC-3 5.28: more than zero and less than eight.
			e := newEnv(t)
			wantSense(t, e.do(e.nexus("i", 1), cdbUnmap(uint16(l)), make([]byte, l)), senseIllegalRequest, ascParamListLength, "short list")
		})
	}
	t.Run("lba out of range", func(t *testing.T) {
		e := newEnv(t)
		for _, d := range [][2]uint64{{nb, 1}, {nb - 1, 2}, {^uint64(0), 1}} {
			p := unmapParams(d)
			wantSense(t, e.do(e.nexus("i", 1), cdbUnmap(uint16(len(p))), p), senseIllegalRequest, ascLBAOutOfRange, fmt.Sprint(d))
		}
		if e.vol.unmaps != 0 {
			t.Fatal("a rejected UNMAP deallocated something")
		}
	})
	t.Run("too many descriptors", func(t *testing.T) {
		// More descriptors than MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT in the
		// Block Limits VPD page: INVALID FIELD IN PARAMETER LIST.
		e := newEnv(t)
		descs := make([][2]uint64, maxUnmapDescriptors+1)
		for i := range descs {
			descs[i] = [2]uint64{uint64(i % nb), 0}
		}
		p := unmapParams(descs...)
		wantSense(t, e.do(e.nexus("i", 1), cdbUnmap(uint16(len(p))), p), senseIllegalRequest, ascInvalidFieldInParam, "too many")
	})
	t.Run("thick LU", func(t *testing.T) {
		e := newLUEnv(t, LUNConfig{})
		p := unmapParams([2]uint64{0, 1})
		r := e.do(e.nexus("i", 1), cdbUnmap(uint16(len(p))), p)
		if r.status != statusCheckCondition || r.sense[2]&0xf != senseIllegalRequest {
			t.Fatalf("UNMAP on a thick LU: %v", r)
		}
	})
}

func TestUnmapTotalLBACountLimit(t *testing.T) {
	// SBC-3 5.28.1: if the total number of logical blocks in the UNMAP
	// block descriptors exceeds MAXIMUM UNMAP LBA COUNT of the Block Limits
	// VPD page, ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
	nb := uint64(3 * maxUnmapBlocks)
	e := newLUEnv(t, LUNConfig{Thin: true, Volume: newMemVolume(int64(nb) * 512)})
	n := e.nexus("i", 1)
	r := e.do(n, []byte{0x12, 1, 0xb0, 0, 64, 0}, nil)
	wantGood(t, r, "block limits")
	maxCount := uint64(binary.BigEndian.Uint32(r.data[20:]))
	p := unmapParams([2]uint64{0, maxCount}, [2]uint64{maxCount, 1})
	wantSense(t, e.do(n, cdbUnmap(uint16(len(p))), p), senseIllegalRequest, ascInvalidFieldInParam, "total > MAXIMUM UNMAP LBA COUNT")
	if e.vol.unmaps != 0 {
		t.Fatal("an UNMAP over the limit deallocated blocks")
	}
}

func TestReadCapacity(t *testing.T) {
	for _, c := range []struct {
		bs   int
		nb   int64
		thin bool
	}{{512, 2048, false}, {4096, 100, true}, {512, 1, false}} {
		t.Run(fmt.Sprintf("bs%d-nb%d", c.bs, c.nb), func(t *testing.T) {
			e := newLUEnv(t, LUNConfig{BlockSize: c.bs, Thin: c.thin, Volume: newMemVolume(c.nb * int64(c.bs))})
			n := e.nexus("i", 1)
			r := e.do(n, []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil)
			wantGood(t, r, "read capacity 10")
			if len(r.data) != 8 {
				t.Fatalf("READ CAPACITY(10) returned %d bytes", len(r.data))
			}
			if got := binary.BigEndian.Uint32(r.data); int64(got) != c.nb-1 {
				t.Fatalf("RETURNED LOGICAL BLOCK ADDRESS %d, want %d", got, c.nb-1)
			}
			if got := binary.BigEndian.Uint32(r.data[4:]); int(got) != c.bs {
				t.Fatalf("block length %d, want %d", got, c.bs)
			}
			rc16 := make([]byte, 16)
			rc16[0], rc16[1], rc16[13] = 0x9e, 0x10, 32
			r = e.do(n, rc16, nil)
			wantGood(t, r, "read capacity 16")
			if len(r.data) != 32 {
				t.Fatalf("READ CAPACITY(16) returned %d bytes, want 32", len(r.data))
			}
			if got := binary.BigEndian.Uint64(r.data); int64(got) != c.nb-1 {
				t.Fatalf("RC16 last LBA %d, want %d", got, c.nb-1)
			}
			if got := binary.BigEndian.Uint32(r.data[8:]); int(got) != c.bs {
				t.Fatalf("RC16 block length %d", got)
			}
			lbpme, lbprz := r.data[14]&0x80 != 0, r.data[14]&0x40 != 0
			if lbpme != c.thin || lbprz != c.thin {
				t.Fatalf("LBPME=%v LBPRZ=%v for thin=%v", lbpme, lbprz, c.thin)
			}
		})
	}
	t.Run("over 2^32 blocks", func(t *testing.T) {
		nb := int64(1)<<32 + 10
		e := newLUEnv(t, LUNConfig{Volume: newMemVolume(nb * 512)})
		n := e.nexus("i", 1)
		r := e.do(n, []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil)
		wantGood(t, r, "rc10")
		if got := binary.BigEndian.Uint32(r.data); got != 0xffffffff {
			t.Fatalf("RC10 on a huge LU: 0x%x, want 0xffffffff", got)
		}
		rc16 := make([]byte, 16)
		rc16[0], rc16[1], rc16[13] = 0x9e, 0x10, 32
		r = e.do(n, rc16, nil)
		if got := binary.BigEndian.Uint64(r.data); int64(got) != nb-1 {
			t.Fatalf("RC16 on a huge LU: %d", got)
		}
	})
	t.Run("lba without pmi", func(t *testing.T) {
		e := newLUEnv(t, LUNConfig{})
		wantSense(t, e.do(e.nexus("i", 1), []byte{0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0}, nil), senseIllegalRequest, ascInvalidFieldInCDB, "lba without pmi")
	})
}

func TestGetLBAStatusShortAllocation(t *testing.T) {
	// SPC-4 4.2.5.6: the allocation length only truncates; the bytes sent
	// are those of the full parameter data.
	e := newLUEnv(t, LUNConfig{Thin: true, Volume: newMemVolume(64 * 512)})
	n := e.nexus("i", 1)
	full := e.do(n, cdbGetLBAStatus(0, 1024), nil)
	wantGood(t, full, "full")
	for alloc := 1; alloc < 8; alloc++ {
		r := e.do(n, cdbGetLBAStatus(0, uint32(alloc)), nil)
		wantGood(t, r, "short")
		if !bytes.Equal(r.data, full.data[:alloc]) {
			t.Fatalf("alloc %d: % x, want % x", alloc, r.data, full.data[:alloc])
		}
	}
}
