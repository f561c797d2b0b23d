package target

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

// The SCSI tests drive prepare()+exec() directly, the way task.go does,
// against an LU over a memVolume. Expectations come from SPC-4 and SBC-3.

const testTargetName = "iqn.2024-01.org.metrolun:test"

type lunEnv struct {
	tb  testing.TB
	srv *Server
	tgt *Target
	lu  *LU
	vol *memVolume
}

// newLUEnv builds a target with one LU (LUN cfg.ID, default 0). A nil
// cfg.Volume gets a 1 MiB memVolume.
func newLUEnv(tb testing.TB, cfg LUNConfig) *lunEnv {
	tb.Helper()
	vol, _ := cfg.Volume.(*memVolume)
	if cfg.Volume == nil {
		vol = newMemVolume(1 << 20)
		cfg.Volume = vol
	}
	tgt := &Target{Name: testTargetName, lus: map[uint64]*LU{}}
	lu, err := newLU(tgt, cfg, 1)
	if err != nil {
		tb.Fatalf("newLU: %v", err)
	}
	tgt.lus[cfg.ID] = lu
	tgt.lunList = append(tgt.lunList, cfg.ID)
	return &lunEnv{tb: tb, srv: NewServer(Config{}), tgt: tgt, lu: lu, vol: vol}
}

// nexus returns the I_T nexus of a session from initiator name with an
// ISID ending in isid, built the way a login builds it.
func (e *lunEnv) nexus(name string, isid byte) *Nexus {
	id := [6]byte{0x80, 0, 0, 0, 0, isid}
	return newSession(e.srv, e.tgt, Params{InitiatorName: name}, id, 1, 0).nexus
}

type cmdResult struct {
	status byte
	sense  []byte
	data   []byte
	cmd    *scsiCmd // nil when prepare refused the command
}

// do runs one command from n; out is the Data-Out buffer and its length
// the expected data transfer length, as a transport would pass them.
func (e *lunEnv) do(n *Nexus, cdb []byte, out []byte) cmdResult {
	return e.doLU(e.lu, n, cdb, out)
}

func (e *lunEnv) doLU(lu *LU, n *Nexus, cdb []byte, out []byte) cmdResult {
	cmd, res := prepare(e.tgt, lu, n, cdb, 0, len(out))
	if res != nil {
		return cmdResult{status: res.status, sense: res.sense, data: res.data}
	}
	data := out[:min(len(out), cmd.dataOut)]
	res = cmd.exec(data)
	r := cmdResult{status: res.status, sense: res.sense, data: append([]byte(nil), res.data...), cmd: cmd}
	if res.release != nil {
		res.release()
	}
	return r
}

func (r cmdResult) String() string {
	if r.status == statusCheckCondition && len(r.sense) >= 14 {
		return fmt.Sprintf("CHECK CONDITION key=0x%x asc=0x%02x%02x", r.sense[2]&0xf, r.sense[12], r.sense[13])
	}
	return fmt.Sprintf("status=0x%02x data=%d bytes", r.status, len(r.data))
}

func wantGood(tb testing.TB, r cmdResult, what string) {
	tb.Helper()
	if r.status != statusGood || len(r.sense) != 0 {
		tb.Fatalf("%s: got %v, want GOOD", what, r)
	}
}

// wantSense checks CHECK CONDITION with fixed-format sense data carrying
// key and asc (ASC<<8|ASCQ).
func wantSense(tb testing.TB, r cmdResult, key byte, asc uint16, what string) {
	tb.Helper()
	if r.status != statusCheckCondition {
		tb.Fatalf("%s: got %v, want CHECK CONDITION key 0x%x asc 0x%04x", what, r, key, asc)
	}
	checkFixedSense(tb, r.sense, what)
	if got := r.sense[2] & 0x0f; got != key {
		tb.Fatalf("%s: sense key 0x%x, want 0x%x (%v)", what, got, key, r)
	}
	if got := uint16(r.sense[12])<<8 | uint16(r.sense[13]); got != asc {
		tb.Fatalf("%s: ASC/ASCQ 0x%04x, want 0x%04x", what, got, asc)
	}
}

// checkFixedSense applies SPC-4 section 4.5.3: fixed format sense data is
// 18 bytes here (additional sense length 10), response code 70h with the
// VALID bit optional.
func checkFixedSense(tb testing.TB, s []byte, what string) {
	tb.Helper()
	if len(s) != 18 {
		tb.Fatalf("%s: sense is %d bytes, want 18: % x", what, len(s), s)
	}
	if s[0]&0x7f != 0x70 {
		tb.Fatalf("%s: response code 0x%02x, want 0x70 (current, fixed)", what, s[0])
	}
	if s[7] != 10 {
		tb.Fatalf("%s: additional sense length %d, want 10", what, s[7])
	}
}

func wantConflict(tb testing.TB, r cmdResult, what string) {
	tb.Helper()
	if r.status != statusReservationConflict || len(r.sense) != 0 {
		tb.Fatalf("%s: got %v, want RESERVATION CONFLICT without sense", what, r)
	}
}

// cdbRW builds a READ/WRITE/VERIFY/WRITE AND VERIFY/PRE-FETCH/SYNCHRONIZE
// CACHE CDB; the layout follows from the group code (SPC-4 4.2.5.1).
func cdbRW(op byte, lba uint64, blocks uint32) []byte {
	switch op >> 5 {
	case 0:
		return []byte{op, byte(lba>>16) & 0x1f, byte(lba >> 8), byte(lba), byte(blocks), 0}
	case 1, 2:
		c := make([]byte, 10)
		c[0] = op
		binary.BigEndian.PutUint32(c[2:], uint32(lba))
		binary.BigEndian.PutUint16(c[7:], uint16(blocks))
		return c
	case 5:
		c := make([]byte, 12)
		c[0] = op
		binary.BigEndian.PutUint32(c[2:], uint32(lba))
		binary.BigEndian.PutUint32(c[6:], blocks)
		return c
	case 4:
		c := make([]byte, 16)
		c[0] = op
		binary.BigEndian.PutUint64(c[2:], lba)
		binary.BigEndian.PutUint32(c[10:], blocks)
		return c
	}
	panic("bad opcode")
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+int(seed)*31) ^ seed
	}
	return b
}

var (
	readOps  = []byte{0x08, 0x28, 0xa8, 0x88}
	writeOps = []byte{0x0a, 0x2a, 0xaa, 0x8a}
)

func TestReadWriteRoundTrip(t *testing.T) {
	for _, bs := range []int{512, 4096} {
		for i := range readOps {
			rd, wr := readOps[i], writeOps[i]
			t.Run(fmt.Sprintf("bs%d/op%02x", bs, wr), func(t *testing.T) {
				e := newLUEnv(t, LUNConfig{BlockSize: bs, Volume: newMemVolume(int64(bs) * 300)})
				n := e.nexus("iqn.init", 1)
				nb := uint64(300)
				for _, c := range []struct {
					lba    uint64
					blocks uint32
				}{{0, 1}, {7, 3}, {nb - 1, 1}, {nb - 5, 5}} {
					data := pattern(int(c.blocks)*bs, byte(c.lba))
					wantGood(t, e.do(n, cdbRW(wr, c.lba, c.blocks), data), "write")
					if got := e.vol.bytes(int64(c.lba)*int64(bs), int64(len(data))); !bytes.Equal(got, data) {
						t.Fatalf("volume at LBA %d differs from what was written", c.lba)
					}
					r := e.do(n, cdbRW(rd, c.lba, c.blocks), nil)
					wantGood(t, r, "read")
					if !bytes.Equal(r.data, data) {
						t.Fatalf("READ LBA %d x%d returned different data", c.lba, c.blocks)
					}
				}
			})
		}
	}
}

func TestWriteFUAAndCache(t *testing.T) {
	// With WCE=0 every write is durable before GOOD; FUA forces it too.
	for _, c := range []struct {
		name string
		wce  bool
		fua  bool
		want int
	}{{"wce0", false, false, 1}, {"wce1", true, false, 0}, {"wce1-fua", true, true, 1}} {
		t.Run(c.name, func(t *testing.T) {
			e := newLUEnv(t, LUNConfig{WriteCache: c.wce})
			cdb := cdbRW(0x2a, 0, 1)
			if c.fua {
				cdb[1] |= 0x08
			}
			wantGood(t, e.do(e.nexus("i", 1), cdb, make([]byte, 512)), "write")
			if e.vol.fuaWrites != c.want {
				t.Fatalf("fua writes %d, want %d", e.vol.fuaWrites, c.want)
			}
		})
	}
}

func TestLBAOutOfRange(t *testing.T) {
	const nb = 64
	e := newLUEnv(t, LUNConfig{Volume: newMemVolume(nb * 512), Thin: true})
	n := e.nexus("iqn.init", 1)
	ws16 := func(lba uint64, blocks uint32) []byte {
		c := cdbRW(0x8a, lba, blocks)
		c[0] = 0x93
		return c
	}
	caw := func(lba uint64, blocks byte) []byte {
		c := make([]byte, 16)
		c[0] = 0x89
		binary.BigEndian.PutUint64(c[2:], lba)
		c[13] = blocks
		return c
	}
	gls := make([]byte, 16)
	gls[0], gls[1] = 0x9e, 0x12
	binary.BigEndian.PutUint64(gls[2:], nb)
	binary.BigEndian.PutUint32(gls[10:], 64)
	cases := []struct {
		name string
		cdb  []byte
		out  []byte
	}{
		{"read10 at capacity", cdbRW(0x28, nb, 1), nil},
		{"read10 crossing end", cdbRW(0x28, nb-1, 2), nil},
		{"read10 zero blocks past end", cdbRW(0x28, nb+1, 0), nil},
		{"read6 past end", cdbRW(0x08, nb, 1), nil},
		{"read12 past end", cdbRW(0xa8, nb-3, 4), nil},
		{"read16 wraps 2^64", cdbRW(0x88, ^uint64(0), 2), nil},
		{"read16 huge lba", cdbRW(0x88, 1<<40, 1), nil},
		{"write10 crossing end", cdbRW(0x2a, nb-1, 2), make([]byte, 1024)},
		{"write16 past end", cdbRW(0x8a, nb, 1), make([]byte, 512)},
		{"verify10 past end", cdbRW(0x2f, nb, 1), nil},
		{"write and verify16 past end", cdbRW(0x8e, nb, 1), make([]byte, 512)},
		{"prefetch10 past end", cdbRW(0x34, nb, 1), nil},
		{"sync cache16 past end", cdbRW(0x91, nb+1, 0), nil},
		{"write same16 crossing end", ws16(nb-1, 2), make([]byte, 512)},
		{"compare and write past end", caw(nb, 1), make([]byte, 1024)},
		{"get lba status at capacity", gls, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.do(n, c.cdb, c.out)
			wantSense(t, r, senseIllegalRequest, ascLBAOutOfRange, c.name)
		})
	}
	if v := e.vol.violationList(); len(v) > 0 {
		t.Fatalf("volume accessed out of range: %v", v)
	}
	if e.vol.writes+e.vol.unmaps+e.vol.caws != 0 {
		t.Fatalf("a rejected command modified the volume")
	}
}

func TestTransferLengthZero(t *testing.T) {
	e := newLUEnv(t, LUNConfig{Volume: newMemVolume(512 * 512)})
	n := e.nexus("iqn.init", 1)
	for _, op := range []byte{0x28, 0xa8, 0x88, 0x2a, 0xaa, 0x8a, 0x2f, 0x8e} {
		t.Run(fmt.Sprintf("op%02x", op), func(t *testing.T) {
			r := e.do(n, cdbRW(op, 5, 0), nil)
			wantGood(t, r, "zero length")
			if len(r.data) != 0 {
				t.Fatalf("zero-length command returned %d bytes", len(r.data))
			}
			if r.cmd.dataOut != 0 {
				t.Fatalf("zero-length command wants %d bytes of Data-Out", r.cmd.dataOut)
			}
		})
	}
	if e.vol.writes != 0 {
		t.Fatalf("zero-length writes touched the volume %d times", e.vol.writes)
	}
	// SBC-3 5.11/5.41: in READ(6) and WRITE(6) a TRANSFER LENGTH of zero
	// means 256 logical blocks.
	t.Run("read6 means 256", func(t *testing.T) {
		r := e.do(n, cdbRW(0x08, 0, 0), nil)
		wantGood(t, r, "read6")
		if len(r.data) != 256*512 {
			t.Fatalf("READ(6) length 0 returned %d bytes, want %d", len(r.data), 256*512)
		}
	})
	t.Run("write6 means 256", func(t *testing.T) {
		data := pattern(256*512, 3)
		r := e.do(n, cdbRW(0x0a, 10, 0), data)
		wantGood(t, r, "write6")
		if r.cmd.dataOut != 256*512 {
			t.Fatalf("WRITE(6) length 0 wants %d bytes, want %d", r.cmd.dataOut, 256*512)
		}
		if !bytes.Equal(e.vol.bytes(10*512, 256*512), data) {
			t.Fatal("WRITE(6) length 0 did not write 256 blocks")
		}
	})
}

func TestReadOnlyLURejectsWrites(t *testing.T) {
	e := newLUEnv(t, LUNConfig{ReadOnly: true, Thin: true})
	n := e.nexus("iqn.init", 1)
	ws10 := cdbRW(0x2a, 0, 1)
	ws10[0] = 0x41
	ws16 := cdbRW(0x8a, 0, 1)
	ws16[0] = 0x93
	caw := make([]byte, 16)
	caw[0], caw[13] = 0x89, 1
	unmap := make([]byte, 10)
	unmap[0], unmap[8] = 0x42, 24
	cases := []struct {
		name string
		cdb  []byte
		out  int
	}{
		{"write6", cdbRW(0x0a, 0, 1), 512},
		{"write10", cdbRW(0x2a, 0, 1), 512},
		{"write12", cdbRW(0xaa, 0, 1), 512},
		{"write16", cdbRW(0x8a, 0, 1), 512},
		{"write and verify10", cdbRW(0x2e, 0, 1), 512},
		{"write and verify16", cdbRW(0x8e, 0, 1), 512},
		{"write same10", ws10, 512},
		{"write same16", ws16, 512},
		{"compare and write", caw, 1024},
		{"unmap", unmap, 24},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantSense(t, e.do(n, c.cdb, make([]byte, c.out)), senseDataProtect, ascWriteProtected, c.name)
		})
	}
	wantGood(t, e.do(n, cdbRW(0x28, 0, 1), nil), "read on read-only LU")
	if e.vol.writes+e.vol.unmaps+e.vol.caws != 0 {
		t.Fatal("read-only LU's volume was modified")
	}
	// SBC-3 6.4.1: the WP bit in the mode parameter header says so too.
	r := e.do(n, []byte{0x1a, 0x08, 0x3f, 0, 255, 0}, nil)
	wantGood(t, r, "mode sense")
	if r.data[2]&0x80 == 0 {
		t.Fatal("MODE SENSE of a read-only LU has WP=0")
	}
}

func TestUnknownLUN(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("iqn.init", 1)
	// SPC-4 / SAM-5: a command to a LUN without an LU gets LOGICAL UNIT
	// NOT SUPPORTED, except INQUIRY, REPORT LUNS and REQUEST SENSE.
	wantSense(t, e.doLU(nil, n, cdbRW(0x28, 0, 1), nil), senseIllegalRequest, ascLUNotSupported, "read")
	wantSense(t, e.doLU(nil, n, []byte{0, 0, 0, 0, 0, 0}, nil), senseIllegalRequest, ascLUNotSupported, "tur")
	r := e.doLU(nil, n, []byte{0x12, 0, 0, 0, 96, 0}, nil)
	wantGood(t, r, "inquiry")
	if r.data[0] != 0x7f {
		t.Fatalf("INQUIRY on an unknown LUN: peripheral byte 0x%02x, want 0x7f", r.data[0])
	}
	rl := []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}
	wantGood(t, e.doLU(nil, n, rl, nil), "report luns")
	r = e.doLU(nil, n, []byte{0x03, 0, 0, 0, 18, 0}, nil)
	wantGood(t, r, "request sense")
	checkFixedSense(t, r.data, "request sense data")
	if r.data[2]&0xf != senseIllegalRequest || r.data[12] != 0x25 {
		t.Fatalf("REQUEST SENSE on unknown LUN: % x", r.data)
	}
}

func TestUnitAttentionOrdering(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	a, b := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2)
	tur := []byte{0, 0, 0, 0, 0, 0}
	wantGood(t, e.do(a, tur, nil), "a tur")
	wantGood(t, e.do(b, tur, nil), "b tur")

	// A LOGICAL UNIT RESET from b: a gets BUS DEVICE RESET FUNCTION
	// OCCURRED.
	e.lu.reset(b)
	e.lu.mu.Lock()
	e.lu.queueUA(ascModeParamsChanged, b)
	e.lu.mu.Unlock()

	// SAM-5 5.14: INQUIRY and REPORT LUNS neither report nor clear it.
	for i := 0; i < 2; i++ {
		wantGood(t, e.do(a, []byte{0x12, 0, 0, 0, 36, 0}, nil), "inquiry with UA pending")
		wantGood(t, e.do(a, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil), "report luns with UA pending")
	}
	// Pending conditions come out one per command, oldest first, then the
	// unit is clean.
	wantSense(t, e.do(a, tur, nil), senseUnitAttention, ascBusDeviceReset, "first tur")
	wantSense(t, e.do(a, cdbRW(0x28, 0, 1), nil), senseUnitAttention, ascModeParamsChanged, "second command")
	wantGood(t, e.do(a, tur, nil), "third tur")

	// The same condition is not queued twice (SAM-5 5.14).
	e.lu.reset(b)
	e.lu.reset(b)
	wantSense(t, e.do(a, tur, nil), senseUnitAttention, ascBusDeviceReset, "after double reset")
	wantGood(t, e.do(a, tur, nil), "duplicate UA was queued")

	// REQUEST SENSE returns the UA as sense data and clears it.
	e.lu.reset(b)
	r := e.do(a, []byte{0x03, 0, 0, 0, 252, 0}, nil)
	wantGood(t, r, "request sense")
	checkFixedSense(t, r.data, "request sense")
	if r.data[2]&0xf != senseUnitAttention || r.data[12] != 0x29 || r.data[13] != 0x03 {
		t.Fatalf("REQUEST SENSE data % x, want UNIT ATTENTION 29/03", r.data)
	}
	wantGood(t, e.do(a, tur, nil), "UA consumed by REQUEST SENSE")
}

func TestSenseFormat(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("iqn.init", 1)
	rd10 := cdbRW(0x28, 0, 1)
	rd10[1] = 0x20 // RDPROTECT=001b
	cases := []struct {
		name  string
		cdb   []byte
		key   byte
		asc   uint16
		cd    bool
		field uint16
		bit   int // -1: BPV=0
	}{
		{"inquiry page code without EVPD", []byte{0x12, 0, 0x80, 0, 36, 0}, senseIllegalRequest, ascInvalidFieldInCDB, true, 2, -1},
		{"inquiry unsupported VPD page", []byte{0x12, 1, 0x01, 0, 255, 0}, senseIllegalRequest, ascInvalidFieldInCDB, true, 2, -1},
		{"read10 RDPROTECT", rd10, senseIllegalRequest, ascInvalidFieldInCDB, true, 1, 7},
		{"invalid opcode", []byte{0xff, 0, 0, 0, 0, 0}, senseIllegalRequest, ascInvalidOpcode, true, 0, -1},
		{"report luns alloc < 16", []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0}, senseIllegalRequest, ascInvalidFieldInCDB, true, 6, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.do(n, c.cdb, nil)
			wantSense(t, r, c.key, c.asc, c.name)
			s := r.sense
			// SPC-4 4.5.2.4.2: SKSV, C/D, BPV, BIT POINTER, FIELD POINTER.
			if s[15]&0x80 == 0 {
				t.Fatalf("SKSV not set: % x", s)
			}
			if got := s[15]&0x40 != 0; got != c.cd {
				t.Fatalf("C/D = %v, want %v", got, c.cd)
			}
			if c.bit >= 0 {
				if s[15]&0x08 == 0 || int(s[15]&7) != c.bit {
					t.Fatalf("bit pointer byte 0x%02x, want BPV with bit %d", s[15], c.bit)
				}
			} else if s[15]&0x08 != 0 {
				t.Fatalf("BPV set without a bit: 0x%02x", s[15])
			}
			if got := binary.BigEndian.Uint16(s[16:]); got != c.field {
				t.Fatalf("field pointer %d, want %d", got, c.field)
			}
			if s[0]&0x80 != 0 {
				t.Fatalf("VALID set without an INFORMATION field")
			}
		})
	}
}

func TestStartStopAndPathState(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("iqn.init", 1)
	rd := cdbRW(0x28, 0, 1)
	wantGood(t, e.do(n, []byte{0x1b, 0, 0, 0, 0x00, 0}, nil), "stop")
	if e.vol.flushes == 0 {
		t.Fatal("STOP without NO_FLUSH did not flush the cache")
	}
	wantSense(t, e.do(n, rd, nil), senseNotReady, ascNotReadyInitCmdRequired, "read while stopped")
	wantGood(t, e.do(n, []byte{0x12, 0, 0, 0, 36, 0}, nil), "inquiry while stopped")
	wantGood(t, e.do(n, []byte{0x1b, 0, 0, 0, 0x01, 0}, nil), "start")
	wantGood(t, e.do(n, rd, nil), "read after start")

	for _, c := range []struct {
		st  PathState
		asc uint16
	}{{PathStandby, ascNotReadyStandby}, {PathUnavailable, ascNotReadyUnavailable}, {PathTransitioning, ascNotReadyTransition}} {
		e.vol.setState(c.st)
		wantSense(t, e.do(n, rd, nil), senseNotReady, c.asc, fmt.Sprintf("read in state %d", c.st))
		// REPORT TARGET PORT GROUPS still answers, with the state.
		rtpg := []byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}
		r := e.do(n, rtpg, nil)
		wantGood(t, r, "rtpg")
		if PathState(r.data[4]&0x0f) != c.st {
			t.Fatalf("RTPG state %d, want %d", r.data[4]&0x0f, c.st)
		}
	}
	e.vol.setState(PathActiveNonOptimized)
	wantGood(t, e.do(n, rd, nil), "read active/non-optimized")
}

func TestVolumeErrors(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("iqn.init", 1)
	e.vol.failNext = ErrMedium
	wantSense(t, e.do(n, cdbRW(0x28, 0, 1), nil), senseMediumError, ascUnrecoveredReadError, "read medium error")
	e.vol.failNext = ErrMedium
	wantSense(t, e.do(n, cdbRW(0x2a, 0, 1), make([]byte, 512)), senseMediumError, ascWriteError, "write medium error")
	e.vol.failNext = &NotReadyError{ASC: ascNotReadyUnavailable}
	wantSense(t, e.do(n, cdbRW(0x28, 0, 1), nil), senseNotReady, ascNotReadyUnavailable, "not ready")
	e.vol.failNext = fmt.Errorf("disk on fire")
	wantSense(t, e.do(n, cdbRW(0x28, 0, 1), nil), senseHardwareError, ascInternalTargetFailure, "other error")
}

func TestShortDataOut(t *testing.T) {
	// A WRITE whose expected transfer length covers fewer blocks than the
	// CDB writes the whole blocks received; the transport reports the
	// residual. Nothing lands beyond what was sent.
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("iqn.init", 1)
	data := pattern(1024+100, 9)
	r := e.do(n, cdbRW(0x2a, 4, 4), data)
	wantGood(t, r, "short write")
	if !bytes.Equal(e.vol.bytes(4*512, 1024), data[:1024]) {
		t.Fatal("the whole blocks received were not written")
	}
	if !bytes.Equal(e.vol.bytes(6*512, 1024), make([]byte, 1024)) {
		t.Fatal("a short write wrote beyond the data received")
	}
	// COMPARE AND WRITE needs all of its data: ILLEGAL REQUEST (INVALID
	// FIELD IN CDB or INVALID FIELD IN INFORMATION UNIT) and no write.
	caw := make([]byte, 16)
	caw[0], caw[13] = 0x89, 1
	r = e.do(n, caw, make([]byte, 600))
	if r.status != statusCheckCondition || len(r.sense) < 14 || r.sense[2]&0xf != senseIllegalRequest {
		t.Fatalf("short COMPARE AND WRITE: %v, want ILLEGAL REQUEST", r)
	}
	if asc := uint16(r.sense[12])<<8 | uint16(r.sense[13]); asc != ascInvalidFieldInCDB && asc != ascInvalidFieldInIU {
		t.Fatalf("short COMPARE AND WRITE: ASC 0x%04x", asc)
	}
	if e.vol.caws != 0 {
		t.Fatal("short COMPARE AND WRITE reached the volume")
	}
}
