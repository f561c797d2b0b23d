package target

import (
	"encoding/binary"
	"testing"
)

// TestPhysicalBlockSize: a physical block of several logical blocks is
// reported in READ CAPACITY(16) (LOGICAL BLOCKS PER PHYSICAL BLOCK
// EXPONENT, SBC-3 5.16.2) and in the Block Limits VPD page's OPTIMAL
// TRANSFER LENGTH GRANULARITY and OPTIMAL UNMAP GRANULARITY (SBC-3 6.5.3).
func TestPhysicalBlockSize(t *testing.T) {
	for _, tc := range []struct {
		bs, phys int
		exp      byte
		gran     uint16
	}{
		{512, 0, 0, 1},
		{512, 512, 0, 1},
		{512, 4096, 3, 8},
		{4096, 16384, 2, 4},
	} {
		e := newLUEnv(t, LUNConfig{BlockSize: tc.bs, PhysicalBlockSize: tc.phys, Thin: true})
		n := e.nexus("i", 1)
		rc16 := make([]byte, 16)
		rc16[0], rc16[1], rc16[13] = 0x9e, 0x10, 32
		r := e.do(n, rc16, nil)
		wantGood(t, r, "read capacity 16")
		if got := r.data[13] & 0x0f; got != tc.exp {
			t.Errorf("%d/%d: exponent %d, want %d", tc.bs, tc.phys, got, tc.exp)
		}
		r = e.do(n, cdbInquiry(true, 0xb0, 64), nil)
		wantGood(t, r, "block limits")
		if got := binary.BigEndian.Uint16(r.data[6:]); got != tc.gran {
			t.Errorf("%d/%d: optimal transfer length granularity %d, want %d", tc.bs, tc.phys, got, tc.gran)
		}
		if got := binary.BigEndian.Uint32(r.data[28:]); got != uint32(tc.gran) {
			t.Errorf("%d/%d: optimal unmap granularity %d, want %d", tc.bs, tc.phys, got, tc.gran)
		}
	}
	for _, phys := range []int{1536, 3000} {
		if _, err := newLU(&Target{Name: "iqn.x"}, LUNConfig{Volume: newMemVolume(1 << 20), PhysicalBlockSize: phys}, 1); err == nil {
			t.Errorf("physical block size %d accepted", phys)
		}
	}
}
