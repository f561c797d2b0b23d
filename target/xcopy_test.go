package target

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// EXTENDED COPY(LID1) and RECEIVE COPY RESULTS, driven through
// prepare()+exec() like the other SCSI tests; expectations from SPC-4
// sections 5.17, 6.5, 6.21 to 6.23 and 6.25.

func cdbXcopy(n int) []byte {
	c := make([]byte, 16)
	c[0] = 0x83
	binary.BigEndian.PutUint32(c[10:], uint32(n))
	return c
}

func cdbRCR(sa, listID byte, alloc uint32) []byte {
	c := make([]byte, 16)
	c[0], c[1], c[2] = 0x84, sa, listID
	binary.BigEndian.PutUint32(c[10:], alloc)
	return c
}

// identCSCD is an identification CSCD descriptor (E4h) naming lu by its
// NAA designator, as an initiator builds it from VPD page 83h.
func identCSCD(lu *LU) []byte {
	d := make([]byte, 32)
	d[0] = 0xe4
	d[4] = 0x01 // binary
	d[5] = 0x03 // LU association, NAA
	d[7] = 8
	copy(d[8:], lu.naa[:])
	d[29], d[30], d[31] = byte(lu.blockSize>>16), byte(lu.blockSize>>8), byte(lu.blockSize)
	return d
}

func segB2B(src, dst uint16, blocks uint16, srcLBA, dstLBA uint64) []byte {
	d := make([]byte, 28)
	d[0] = 0x02
	binary.BigEndian.PutUint16(d[2:], 0x18)
	binary.BigEndian.PutUint16(d[4:], src)
	binary.BigEndian.PutUint16(d[6:], dst)
	binary.BigEndian.PutUint16(d[10:], blocks)
	binary.BigEndian.PutUint64(d[12:], srcLBA)
	binary.BigEndian.PutUint64(d[20:], dstLBA)
	return d
}

// xlist builds a parameter list: header, CSCD descriptors, segments.
func xlist(listID, usage byte, cscds, segs [][]byte) []byte {
	var c, s []byte
	for _, d := range cscds {
		c = append(c, d...)
	}
	for _, d := range segs {
		s = append(s, d...)
	}
	b := make([]byte, 16, 16+len(c)+len(s))
	b[0], b[1] = listID, usage<<3
	binary.BigEndian.PutUint16(b[2:], uint16(len(c)))
	binary.BigEndian.PutUint32(b[8:], uint32(len(s)))
	return append(append(b, c...), s...)
}

func (e *lunEnv) xcopy(lu *LU, n *Nexus, list []byte) cmdResult {
	return e.doLU(lu, n, cdbXcopy(len(list)), list)
}

// addLU adds LUN id over vol to the env's target.
func (e *lunEnv) addLU(id uint64, vol Volume, cfg LUNConfig) *LU {
	e.tb.Helper()
	cfg.ID, cfg.Volume = id, vol
	lu, err := newLU(e.tgt, cfg, 1)
	if err != nil {
		e.tb.Fatal(err)
	}
	e.tgt.lus[id] = lu
	e.tgt.lunList = append(e.tgt.lunList, id)
	return lu
}

// copyAborted checks COPY ABORTED sense data: ASC, the segment number,
// the segment pointer (sd, field; field < 0: none) and, when fwdASC is
// not zero, the forwarded sense data of the copy source or destination.
func copyAborted(t *testing.T, r cmdResult, asc uint16, seg int, sd bool, field int, fromSrc bool, fwdKey byte, fwdASC uint16) {
	t.Helper()
	s := r.sense
	if r.status != statusCheckCondition || len(s) < 18 || s[0]&0x7f != 0x70 || s[2]&0x0f != senseCopyAborted {
		t.Fatalf("got %v (% x), want COPY ABORTED", r, s)
	}
	if int(s[7])+8 != len(s) {
		t.Fatalf("additional sense length %d for %d bytes", s[7], len(s))
	}
	if got := uint16(s[12])<<8 | uint16(s[13]); got != asc {
		t.Fatalf("ASC/ASCQ 0x%04x, want 0x%04x", got, asc)
	}
	if got := int(binary.BigEndian.Uint16(s[10:])); got != seg {
		t.Fatalf("segment number %d, want %d", got, seg)
	}
	if field < 0 {
		if s[15]&0x80 != 0 {
			t.Fatalf("sense-key specific data % x, want none", s[15:18])
		}
	} else if s[15]&0x80 == 0 || (s[15]&0x20 != 0) != sd || int(binary.BigEndian.Uint16(s[16:])) != field {
		t.Fatalf("segment pointer % x, want SD=%v field %d", s[15:18], sd, field)
	}
	at, other := int(s[9]), int(s[8])
	if fromSrc {
		at, other = other, at
	}
	if fwdASC == 0 {
		if at != 0 || other != 0 {
			t.Fatalf("forwarded sense at %d/%d, want none", s[8], s[9])
		}
		return
	}
	if other != 0 || at < 18 || at+19 > len(s) {
		t.Fatalf("forwarded sense offsets %d/%d in %d bytes (from source: %v)", s[8], s[9], len(s), fromSrc)
	}
	f := s[at+1:]
	if s[at] != statusCheckCondition || f[2]&0x0f != fwdKey || uint16(f[12])<<8|uint16(f[13]) != fwdASC {
		t.Fatalf("forwarded status 0x%02x sense % x, want key 0x%x asc 0x%04x", s[at], f, fwdKey, fwdASC)
	}
}

func wantParamSense(t *testing.T, r cmdResult, asc uint16, field int, what string) {
	t.Helper()
	wantSense(t, r, senseIllegalRequest, asc, what)
	if field < 0 {
		return
	}
	if r.sense[15]&0xc0 != 0x80 || int(binary.BigEndian.Uint16(r.sense[16:])) != field {
		t.Fatalf("%s: field pointer % x, want parameter list byte %d", what, r.sense[15:18], field)
	}
}

// stamped is n blocks of 512 bytes, each carrying its index, so that
// data shifted by whole blocks differs (pattern repeats every 256 bytes).
func stamped(blocks int, seed byte) []byte {
	b := pattern(blocks*512, seed)
	for i := range blocks {
		binary.BigEndian.PutUint32(b[i*512:], uint32(i))
	}
	return b
}

func readLU(t *testing.T, lu *LU, lba uint64, blocks int) []byte {
	t.Helper()
	b := make([]byte, blocks*lu.blockSize)
	if err := lu.vol.ReadAt(b, int64(lba)*int64(lu.blockSize)); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeLU(t *testing.T, lu *LU, lba uint64, data []byte) {
	t.Helper()
	if err := lu.vol.WriteAt(data, int64(lba)*int64(lu.blockSize), false); err != nil {
		t.Fatal(err)
	}
}

// TestXcopyCopiesBlocks: a block to block segment copies the blocks
// within an LU (CSCD by NAA, and by the FFFFh "this LU" ID) and leaves
// the blocks around the destination alone.
func TestXcopyCopiesBlocks(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	src := stamped(64, 3)
	writeLU(t, e.lu, 10, src)
	wantGood(t, e.xcopy(e.lu, n, xlist(1, 0, [][]byte{identCSCD(e.lu)}, [][]byte{segB2B(0, 0, 64, 10, 1000)})), "copy by NAA")
	if got := readLU(t, e.lu, 1000, 64); !bytes.Equal(got, src) {
		t.Fatal("destination does not hold the source blocks")
	}
	for _, lba := range []uint64{999, 1064} {
		if !isZero(readLU(t, e.lu, lba, 1)) {
			t.Fatalf("block %d next to the destination was written", lba)
		}
	}
	// FFFFh is the LU the command was sent to; no CSCD descriptor needed.
	wantGood(t, e.xcopy(e.lu, n, xlist(0, 3, nil, [][]byte{segB2B(0xffff, 0xffff, 64, 1000, 1500)})), "copy by FFFFh")
	if got := readLU(t, e.lu, 1500, 64); !bytes.Equal(got, src) {
		t.Fatal("FFFFh copy: destination differs")
	}
	// Several segments run in order: the second copies what the first wrote.
	wantGood(t, e.xcopy(e.lu, n, xlist(2, 0, [][]byte{identCSCD(e.lu)}, [][]byte{
		segB2B(0, 0, 64, 10, 200), segB2B(0, 0, 64, 200, 300), segB2B(0, 0, 0, 0, 0),
	})), "three segments")
	if got := readLU(t, e.lu, 300, 64); !bytes.Equal(got, src) {
		t.Fatal("chained segments: destination differs")
	}
	// Parameter list length zero: nothing to do.
	wantGood(t, e.do(n, cdbXcopy(0), nil), "empty parameter list")
	if v := e.vol.violations; len(v) > 0 {
		t.Fatalf("volume misuse: %v", v)
	}
}

// TestXcopyBetweenLUs: source and destination LUs differ, with different
// block sizes; DC says which side NUMBER OF BLOCKS counts, and a count
// that is not whole blocks at both ends is an inexact segment.
func TestXcopyBetweenLUs(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	big := e.addLU(1, newMemVolume(1<<20), LUNConfig{BlockSize: 4096})
	n := e.nexus("i", 1)
	src := stamped(16, 9)
	writeLU(t, e.lu, 0, src)
	cscds := [][]byte{identCSCD(e.lu), identCSCD(big)}
	// 16 source blocks of 512 bytes are 2 destination blocks.
	wantGood(t, e.xcopy(e.lu, n, xlist(1, 0, cscds, [][]byte{segB2B(0, 1, 16, 0, 5)})), "DC=0")
	if got := readLU(t, big, 5, 2); !bytes.Equal(got, src) {
		t.Fatal("DC=0: destination LU differs")
	}
	dc := segB2B(1, 0, 16, 5, 100)
	dc[1] = 0x02 // DC: 16 destination blocks of 512 bytes, 2 source blocks
	wantGood(t, e.xcopy(big, n, xlist(2, 0, cscds, [][]byte{dc})), "DC=1")
	if got := readLU(t, e.lu, 100, 16); !bytes.Equal(got, src) {
		t.Fatal("DC=1: destination differs")
	}
	// 3 blocks of 512 bytes are not whole 4096-byte blocks.
	copyAborted(t, e.xcopy(e.lu, n, xlist(3, 0, cscds, [][]byte{segB2B(0, 1, 3, 0, 5)})),
		ascUnexpectedInexactSegment, 0, true, 10, false, 0, 0)
}

// TestXcopyOverlap: source and destination ranges in the same LU that
// overlap, in both directions and across chunk boundaries, give what
// copying through a separate buffer would.
func TestXcopyOverlap(t *testing.T) {
	const blocks = 3*xcopyChunk/512 + 7 // not a whole number of chunks
	for _, tc := range []struct {
		name     string
		src, dst uint64
	}{
		{"destination after source", 100, 100 + 1000},
		{"destination before source", 5000, 5000 - 1000},
		{"same range", 300, 300},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLUEnv(t, LUNConfig{Volume: newMemVolume(16 << 20)})
			n := e.nexus("i", 1)
			data := stamped(blocks, 5)
			writeLU(t, e.lu, tc.src, data)
			wantGood(t, e.xcopy(e.lu, n, xlist(0, 3, nil, [][]byte{segB2B(0xffff, 0xffff, blocks, tc.src, tc.dst)})), "copy")
			if got := readLU(t, e.lu, tc.dst, blocks); !bytes.Equal(got, data) {
				t.Fatal("destination differs from the source as it was before the copy")
			}
		})
	}
}

// TestXcopyRangeErrors: a segment that reaches past the end of its
// source or destination is COPY ABORTED, with the segment pointer at the
// LBA in error and the LBA OUT OF RANGE the LU would have answered; a
// copy up to the last block works.
func TestXcopyRangeErrors(t *testing.T) {
	e := newLUEnv(t, LUNConfig{}) // 2048 blocks
	n := e.nexus("i", 1)
	cscds := [][]byte{identCSCD(e.lu)}
	wantGood(t, e.xcopy(e.lu, n, xlist(1, 0, cscds, [][]byte{segB2B(0, 0, 48, 0, 2000)})), "to the last block")
	copyAborted(t, e.xcopy(e.lu, n, xlist(1, 0, cscds, [][]byte{segB2B(0, 0, 2048, 0, 2047)})),
		0, 0, true, 20, false, senseIllegalRequest, ascLBAOutOfRange)
	copyAborted(t, e.xcopy(e.lu, n, xlist(1, 0, cscds, [][]byte{segB2B(0, 0, 8, 1<<40, 0)})),
		0, 0, true, 12, true, senseIllegalRequest, ascLBAOutOfRange)
	// The second segment fails: the first one's copy stays, the segment
	// number says which failed.
	writeLU(t, e.lu, 0, pattern(512, 1))
	copyAborted(t, e.xcopy(e.lu, n, xlist(1, 0, cscds, [][]byte{segB2B(0, 0, 1, 0, 7), segB2B(0, 0, 2, 2047, 0)})),
		0, 1, true, 12, true, senseIllegalRequest, ascLBAOutOfRange)
	if !bytes.Equal(readLU(t, e.lu, 7, 1), pattern(512, 1)) {
		t.Fatal("the segment before the failing one was not copied")
	}
}

// TestXcopyParameterListErrors: errors found before any segment is
// processed are ILLEGAL REQUEST with the field pointer into the
// parameter list (SPC-4 5.17.7.3), and nothing is written.
func TestXcopyParameterListErrors(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	cs := identCSCD(e.lu)
	seg := segB2B(0, 0, 1, 0, 1)
	good := xlist(1, 0, [][]byte{cs}, [][]byte{seg})
	many := func(d []byte, k int) [][]byte {
		var out [][]byte
		for range k {
			out = append(out, d)
		}
		return out
	}
	bad := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	writeLU(t, e.lu, 0, pattern(512, 7))
	for _, tc := range []struct {
		name  string
		cdb   []byte
		list  []byte
		asc   uint16
		field int
	}{
		{"service action 1 (LID4)", func() []byte { c := cdbXcopy(len(good)); c[1] = 1; return c }(), good, ascInvalidFieldInCDB, -1},
		{"list shorter than the header", cdbXcopy(15), good[:15], ascParamListLength, -1},
		{"list longer than the limit", cdbXcopy(xcopyMaxParamList + 1), nil, ascParamListLength, -1},
		{"truncated CSCD descriptor", nil, good[:16+31], ascParamListLength, -1},
		{"truncated segment descriptor", nil, good[:len(good)-1], ascParamListLength, -1},
		{"descriptor lists over the maximum", nil, xlist(1, 0, many(cs, xcopyMaxCSCDs), many(seg, xcopyMaxSegments+1)), ascParamListLength, -1},
		{"too many CSCD descriptors", nil, xlist(1, 0, many(cs, xcopyMaxCSCDs+1), [][]byte{seg}), ascTooManyTargetDescs, 2},
		{"too many segment descriptors", nil, xlist(1, 0, [][]byte{cs}, many(seg, xcopyMaxSegments+1)), ascTooManySegmentDescs, 8},
		{"FC N_Port_Name CSCD", nil, bad(func(b []byte) []byte { b[16] = 0xe0; return b }), ascUnsupportedTargetDesc, 16},
		{"stream to stream segment", nil, bad(func(b []byte) []byte { b[48] = 0x03; return b }), ascUnsupportedSegmentDesc, 48},
		{"segment descriptor length", nil, bad(func(b []byte) []byte { b[51] = 0x14; return b }), ascInvalidFieldInParam, 50},
		{"LIST ID USAGE 01b", nil, bad(func(b []byte) []byte { b[1] = 1 << 3; return b }), ascInvalidFieldInParam, 1},
		{"LIST ID USAGE 11b with a list ID", nil, bad(func(b []byte) []byte { b[1] = 3 << 3; return b }), ascInvalidFieldInParam, 0},
		{"inline data", nil, append(bad(func(b []byte) []byte { b[15] = 4; return b }), 0, 0, 0, 0), ascInvalidFieldInParam, 12},
		{"CSCD list not whole descriptors", nil, bad(func(b []byte) []byte { b[3] = 31; return b }), ascInvalidFieldInParam, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cdb := tc.cdb
			if cdb == nil {
				cdb = cdbXcopy(len(tc.list))
			}
			writes := e.vol.writes
			wantParamSense(t, e.doLU(e.lu, n, cdb, tc.list), tc.asc, tc.field, tc.name)
			if e.vol.writes != writes {
				t.Fatal("a refused copy wrote")
			}
		})
	}
	wantGood(t, e.xcopy(e.lu, n, good), "the good list")
}

// TestXcopyCopyTargetErrors: CSCD problems found while processing a
// segment are COPY ABORTED: an ID with no descriptor, a designator of no
// LU here, a block length or device type that is not the LU's, the null
// LU. A LU ID TYPE is ignored in an identification descriptor (SPC-4).
func TestXcopyCopyTargetErrors(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	cs := identCSCD(e.lu)
	seg := segB2B(0, 1, 8, 0, 100)
	copyAborted(t, e.xcopy(e.lu, n, xlist(1, 0, [][]byte{cs}, [][]byte{seg})),
		ascUnreachableCopyTarget, 0, true, 6, false, 0, 0)
	copyAborted(t, e.xcopy(e.lu, n, xlist(1, 0, [][]byte{cs}, [][]byte{segB2B(0xc000, 0, 8, 0, 100)})),
		ascUnreachableCopyTarget, 0, true, 4, false, 0, 0)
	other := append([]byte(nil), cs...)
	other[15] ^= 0xff // an NAA of no LU of this target
	copyAborted(t, e.xcopy(e.lu, n, xlist(1, 0, [][]byte{cs, other}, [][]byte{seg})),
		ascCopyTargetNotReachable, 0, false, 48, false, 0, 0)
	wrongSize := append([]byte(nil), cs...)
	wrongSize[30] = 0x10 // 4096
	copyAborted(t, e.xcopy(e.lu, n, xlist(1, 0, [][]byte{wrongSize}, [][]byte{segB2B(0, 0, 8, 0, 100)})),
		ascIncorrectCopyTargetType, 0, false, 16, false, 0, 0)
	tape := append([]byte(nil), cs...)
	tape[1] = 0x01 // sequential-access device
	copyAborted(t, e.xcopy(e.lu, n, xlist(1, 0, [][]byte{tape}, [][]byte{segB2B(0, 0, 8, 0, 100)})),
		ascIncorrectCopyTargetType, 0, false, 16, false, 0, 0)
	luIDType := append([]byte(nil), cs...)
	luIDType[1] = 0x80 // LU ID TYPE 10b
	wantGood(t, e.xcopy(e.lu, n, xlist(1, 0, [][]byte{luIDType}, [][]byte{segB2B(0, 0, 8, 0, 100)})), "LU ID TYPE ignored")
	// Verify CSCD (07h): with TUR, a stopped LU is not ready.
	verify := []byte{0x07, 0, 0, 8, 0, 0, 0, 0, 1, 0, 0, 0}
	wantGood(t, e.xcopy(e.lu, n, xlist(1, 0, [][]byte{cs}, [][]byte{verify})), "verify CSCD")
	e.lu.mu.Lock()
	e.lu.stopped = true
	e.lu.mu.Unlock()
	r := e.xcopy(e.addLU(1, newMemVolume(1<<20), LUNConfig{}), n, xlist(1, 0, [][]byte{cs}, [][]byte{verify}))
	copyAborted(t, r, ascThirdPartyDeviceFailure, 0, false, 16, true, senseNotReady, ascNotReadyInitCmdRequired)
}

// TestXcopyWriteProtect: a read-only or software write protected
// destination refuses the copy with DATA PROTECT before anything moves;
// a read-only source is fine.
func TestXcopyWriteProtect(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	ro := e.addLU(1, newMemVolume(1<<20), LUNConfig{ReadOnly: true})
	n := e.nexus("i", 1)
	cscds := [][]byte{identCSCD(e.lu), identCSCD(ro)}
	wantSense(t, e.xcopy(e.lu, n, xlist(1, 0, cscds, [][]byte{segB2B(0, 1, 8, 0, 0)})), senseDataProtect, ascWriteProtected, "to a read-only LU")
	wantGood(t, e.xcopy(e.lu, n, xlist(1, 0, cscds, [][]byte{segB2B(1, 0, 8, 0, 0)})), "from a read-only LU")
	e.lu.mu.Lock()
	e.lu.swp = true
	e.lu.mu.Unlock()
	wv := newMemVolume(1 << 20)
	w := e.addLU(2, wv, LUNConfig{})
	cscds = append(cscds, identCSCD(w))
	// Even the segment before it, to a writable LU, is not copied: the
	// check comes before any data moves.
	wantSense(t, e.xcopy(ro, n, xlist(1, 0, cscds, [][]byte{segB2B(1, 2, 8, 0, 0), segB2B(1, 0, 8, 0, 0)})), senseDataProtect, ascWriteProtected, "to a SWP LU")
	if wv.writes != 0 {
		t.Fatal("copy ran before the write-protect check")
	}
	wantGood(t, e.xcopy(ro, n, xlist(1, 0, cscds, [][]byte{segB2B(1, 2, 8, 0, 0)})), "to the writable LU")
}

// TestXcopyReservations: the copy manager acts for the initiator, so a
// persistent reservation on a source or destination LU applies as it
// would to the initiator's own READ or WRITE.
func TestXcopyReservations(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	lu2 := e.addLU(1, newMemVolume(1<<20), LUNConfig{})
	holder, other := e.nexus("holder", 1), e.nexus("other", 2)
	cscds := [][]byte{identCSCD(e.lu), identCSCD(lu2)}
	wantGood(t, e.doLU(lu2, holder, cdbPROut(prsaRegister, 0), prParams(0, 0xabc, 0)), "register")
	wantGood(t, e.doLU(lu2, holder, cdbPROut(prsaReserve, 1), prParams(0xabc, 0, 0)), "reserve WE")
	// Write Exclusive: others may read lu2 but not write it.
	wantGood(t, e.xcopy(e.lu, other, xlist(1, 0, cscds, [][]byte{segB2B(1, 0, 8, 0, 0)})), "read a WE-reserved LU")
	wantConflict(t, e.xcopy(e.lu, other, xlist(1, 0, cscds, [][]byte{segB2B(0, 1, 8, 0, 0)})), "write a WE-reserved LU")
	wantConflict(t, e.xcopy(lu2, other, xlist(1, 0, cscds, [][]byte{segB2B(0, 0, 8, 0, 0)})), "EXTENDED COPY sent to a WE-reserved LU")
	wantGood(t, e.xcopy(e.lu, holder, xlist(1, 0, cscds, [][]byte{segB2B(0, 1, 8, 0, 0)})), "the holder writes")
	wantGood(t, e.doLU(lu2, holder, cdbPROut(prsaRelease, 1), prParams(0xabc, 0, 0)), "release")
	wantGood(t, e.doLU(lu2, holder, cdbPROut(prsaReserve, 3), prParams(0xabc, 0, 0)), "reserve EA")
	wantConflict(t, e.xcopy(e.lu, other, xlist(1, 0, cscds, [][]byte{segB2B(1, 0, 8, 0, 0)})), "read an EA-reserved LU")
}

// TestReceiveCopyResults: OPERATING PARAMETERS reports the limits the
// parameter list checks enforce; COPY STATUS, RECEIVE DATA and FAILED
// SEGMENT DETAILS report a held copy's outcome to the nexus that ran it,
// once, and a LU reset discards them.
func TestReceiveCopyResults(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n, other := e.nexus("i", 1), e.nexus("j", 2)
	r := e.do(n, cdbRCR(3, 0, 1024), nil)
	wantGood(t, r, "operating parameters")
	p := r.data
	if int(binary.BigEndian.Uint32(p)) != len(p)-4 || len(p) != 44+3 {
		t.Fatalf("available data %d, %d bytes", binary.BigEndian.Uint32(p), len(p))
	}
	if binary.BigEndian.Uint16(p[8:]) != xcopyMaxCSCDs || binary.BigEndian.Uint16(p[10:]) != xcopyMaxSegments ||
		binary.BigEndian.Uint32(p[12:]) != xcopyMaxDescListLen || binary.BigEndian.Uint32(p[16:]) != 0xffff*512 || p[4]&1 != 1 {
		t.Fatalf("limits % x", p[4:24])
	}
	if !bytes.Equal(p[44:], []byte{0x02, 0x07, 0xe4}) || p[43] != 3 {
		t.Fatalf("implemented descriptor types % x", p[43:])
	}
	if r := e.do(n, cdbRCR(3, 0, 8), nil); len(r.data) != 8 || !bytes.Equal(r.data, p[:8]) {
		t.Fatalf("allocation length 8: % x", r.data)
	}

	wantSense(t, e.do(n, cdbRCR(0, 5, 64), nil), senseIllegalRequest, ascInvalidFieldInCDB, "status of an unknown list")
	wantSense(t, e.do(n, cdbRCR(2, 5, 64), nil), senseIllegalRequest, ascInvalidFieldInCDB, "service action 2")
	cs := [][]byte{identCSCD(e.lu)}
	wantGood(t, e.xcopy(e.lu, n, xlist(5, 0, cs, [][]byte{segB2B(0, 0, 8, 0, 100), segB2B(0, 0, 4, 0, 200)})), "held copy")
	wantSense(t, e.do(other, cdbRCR(0, 5, 64), nil), senseIllegalRequest, ascInvalidFieldInCDB, "another nexus's list")
	r = e.do(n, cdbRCR(1, 5, 64), nil)
	wantGood(t, r, "receive data")
	if !bytes.Equal(r.data, []byte{0, 0, 0, 0}) {
		t.Fatalf("receive data % x, want no held data", r.data)
	}
	r = e.do(n, cdbRCR(0, 5, 64), nil)
	wantGood(t, r, "copy status")
	want := []byte{0, 0, 0, 8, 0x01, 0, 2, 0, 0, 0, 0x18, 0} // completed, 2 segments, 6144 bytes
	if !bytes.Equal(r.data, want) {
		t.Fatalf("copy status % x, want % x", r.data, want)
	}
	wantSense(t, e.do(n, cdbRCR(0, 5, 64), nil), senseIllegalRequest, ascInvalidFieldInCDB, "status again")

	// A failed copy: COPY STATUS says so, FAILED SEGMENT DETAILS has the
	// command's status and sense data until they are transferred.
	fr := e.xcopy(e.lu, n, xlist(6, 0, cs, [][]byte{segB2B(0, 1, 8, 0, 100)}))
	r = e.do(n, cdbRCR(0, 6, 64), nil)
	wantGood(t, r, "status of a failed copy")
	if r.data[4] != 0x02 {
		t.Fatalf("copy command status 0x%02x, want 02h (completed with errors)", r.data[4])
	}
	if r := e.do(n, cdbRCR(4, 6, 20), nil); len(r.data) != 20 || int(binary.BigEndian.Uint32(r.data)) != 60+len(fr.sense)-4 {
		t.Fatalf("truncated details % x", r.data)
	}
	r = e.do(n, cdbRCR(4, 6, 1024), nil)
	wantGood(t, r, "failed segment details")
	if r.data[56] != statusCheckCondition || int(binary.BigEndian.Uint16(r.data[58:])) != len(fr.sense) || !bytes.Equal(r.data[60:], fr.sense) {
		t.Fatalf("details % x, want status 02h and sense % x", r.data, fr.sense)
	}
	wantSense(t, e.do(n, cdbRCR(4, 6, 1024), nil), senseIllegalRequest, ascInvalidFieldInCDB, "details again")

	// LIST ID USAGE 10b: nothing is held.
	wantGood(t, e.xcopy(e.lu, n, xlist(7, 2, cs, [][]byte{segB2B(0, 0, 8, 0, 100)})), "unheld copy")
	wantSense(t, e.do(n, cdbRCR(0, 7, 64), nil), senseIllegalRequest, ascInvalidFieldInCDB, "status of an unheld copy")

	// A LU reset discards held results.
	wantGood(t, e.xcopy(e.lu, n, xlist(8, 0, cs, [][]byte{segB2B(0, 0, 8, 0, 100)})), "copy before reset")
	e.lu.reset(other)
	for range 4 {
		if e.do(n, make([]byte, 6), nil).status == statusGood {
			break // unit attentions taken
		}
	}
	wantSense(t, e.do(n, cdbRCR(0, 8, 64), nil), senseIllegalRequest, ascInvalidFieldInCDB, "status after a LU reset")
}

// TestReceiveCopyResultsHeldBounded: the held results are bounded, the
// oldest going first.
func TestReceiveCopyResultsHeldBounded(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	for id := range xcopyMaxHeld + 5 {
		wantGood(t, e.xcopy(e.lu, n, xlist(byte(id), 0, nil, [][]byte{segB2B(0xffff, 0xffff, 1, 0, 1)})), "copy")
	}
	e.lu.xcopy.mu.Lock()
	held := len(e.lu.xcopy.ops)
	e.lu.xcopy.mu.Unlock()
	if held != xcopyMaxHeld {
		t.Fatalf("%d results held, want %d", held, xcopyMaxHeld)
	}
	wantSense(t, e.do(n, cdbRCR(0, 0, 64), nil), senseIllegalRequest, ascInvalidFieldInCDB, "oldest")
	wantGood(t, e.do(n, cdbRCR(0, xcopyMaxHeld+4, 64), nil), "newest")
}

// gateVolume holds every write until release is closed, after telling
// first about the first one.
type gateVolume struct {
	*memVolume
	writes  atomic.Int32
	once    sync.Once
	first   chan struct{}
	release chan struct{}
}

func newGateVolume(size int64) *gateVolume {
	return &gateVolume{memVolume: newMemVolume(size), first: make(chan struct{}), release: make(chan struct{})}
}

func (g *gateVolume) WriteAt(p []byte, off int64, fua bool) error {
	g.writes.Add(1)
	g.once.Do(func() { close(g.first) })
	select {
	case <-g.release:
	case <-time.After(e2eTimeout):
		return errors.New("gateVolume: never released")
	}
	return g.memVolume.WriteAt(p, off, fua)
}

// TestXcopyRunningCopy: while a copy runs, COPY STATUS reports it in
// progress, its list identifier cannot be reused on the same nexus
// (OPERATION IN PROGRESS), and an abort stops it after the chunk under
// way.
func TestXcopyRunningCopy(t *testing.T) {
	g := newGateVolume(64 << 20)
	e := newLUEnv(t, LUNConfig{Volume: g})
	n := e.nexus("i", 1)
	list := xlist(9, 0, nil, [][]byte{segB2B(0xffff, 0xffff, 0xffff, 0, 0x10000)}) // 32 chunks
	cmd, res := prepare(e.tgt, e.lu, n, cdbXcopy(len(list)), 0, len(list))
	if res != nil {
		t.Fatalf("prepare: %+v", res)
	}
	var aborted atomic.Bool
	cmd.aborted = aborted.Load
	done := make(chan *scsiResult, 1)
	go func() { done <- cmd.exec(list) }()
	select {
	case <-g.first:
	case <-time.After(e2eTimeout):
		t.Fatal("the copy never wrote")
	}
	r := e.do(n, cdbRCR(0, 9, 64), nil)
	wantGood(t, r, "status while running")
	if r.data[4] != 0x00 || binary.BigEndian.Uint16(r.data[5:]) != 1 {
		t.Fatalf("running copy status % x, want in progress, segment 1", r.data)
	}
	wantSense(t, e.xcopy(e.lu, n, xlist(9, 0, nil, nil)), senseIllegalRequest, ascXcopyListIDInUse, "list ID in use")
	wantGood(t, e.xcopy(e.lu, e.nexus("j", 2), xlist(9, 0, nil, nil)), "same list ID from another nexus")
	aborted.Store(true)
	close(g.release)
	select {
	case res = <-done:
	case <-time.After(e2eTimeout):
		t.Fatal("aborted copy did not stop")
	}
	if res.status != statusTaskAborted {
		t.Fatalf("aborted copy answered %+v", res)
	}
	if w := g.writes.Load(); w != 1 {
		t.Fatalf("%d chunks written after the abort at the first, want 1", w)
	}
}

// countVolume stores nothing: reads give zeros. It records the largest
// single read or write and the bytes written.
type countVolume struct {
	size          int64
	mu            sync.Mutex
	largest       int
	writtenBytes  int64
	reads, writes int
}

func (v *countVolume) Size() int64 { return v.size }
func (v *countVolume) note(n int) {
	v.mu.Lock()
	v.largest = max(v.largest, n)
	v.mu.Unlock()
}
func (v *countVolume) ReadAt(p []byte, off int64) error {
	v.note(len(p))
	clear(p)
	return nil
}
func (v *countVolume) WriteAt(p []byte, off int64, fua bool) error {
	v.note(len(p))
	v.mu.Lock()
	v.writtenBytes += int64(len(p))
	v.mu.Unlock()
	return nil
}
func (v *countVolume) Flush() error                  { return nil }
func (v *countVolume) Unmap(off, length int64) error { return nil }
func (v *countVolume) CompareAndWrite(int64, []byte, []byte) (int, error) {
	return -1, nil
}
func (v *countVolume) Mapped(off int64) (bool, int64, error) { return true, v.size - off, nil }
func (v *countVolume) State() PathState                      { return PathActiveOptimized }
func (v *countVolume) Close() error                          { return nil }

// TestXcopyBoundedMemory: a copy of 1 GiB (four segments of 65535
// blocks of 4 KiB) moves at most xcopyChunk bytes per volume call and
// allocates a small fraction of what it copies.
func TestXcopyBoundedMemory(t *testing.T) {
	v := &countVolume{size: 2 << 30}
	e := newLUEnv(t, LUNConfig{Volume: v, BlockSize: 4096})
	n := e.nexus("i", 1)
	var segs [][]byte
	for i := range uint64(4) {
		segs = append(segs, segB2B(0xffff, 0xffff, 0xffff, i*0xffff, 1<<18+i*0xffff))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	wantGood(t, e.xcopy(e.lu, n, xlist(1, 0, nil, segs)), "1 GiB copy")
	runtime.ReadMemStats(&after)
	total := int64(4 * 0xffff * 4096)
	if v.writtenBytes != total {
		t.Fatalf("%d bytes written, want %d", v.writtenBytes, total)
	}
	if v.largest > xcopyChunk {
		t.Fatalf("a volume call of %d bytes, over the %d-byte chunk", v.largest, xcopyChunk)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 32<<20 {
		t.Fatalf("copying %d MiB allocated %d MiB", total>>20, alloc>>20)
	}
	r := e.do(n, cdbRCR(0, 1, 64), nil)
	wantGood(t, r, "status")
	if r.data[7] != 0 || int64(binary.BigEndian.Uint32(r.data[8:])) != total || binary.BigEndian.Uint16(r.data[5:]) != 4 {
		t.Fatalf("copy status % x, want 4 segments, %d bytes", r.data, total)
	}
}

// failVolume fails reads after the first n bytes, and writes with
// failWrite.
type failVolume struct {
	*memVolume
	okReads  atomic.Int64
	failRead error
}

func (f *failVolume) ReadAt(p []byte, off int64) error {
	if f.okReads.Add(-int64(len(p))) < 0 {
		return f.failRead
	}
	return f.memVolume.ReadAt(p, off)
}

// TestXcopyVolumeErrors: a read that fails during a copy is COPY
// ABORTED, THIRD PARTY DEVICE FAILURE with the copy source's sense data;
// the residual counts the destination blocks not written when part of
// the segment was.
func TestXcopyVolumeErrors(t *testing.T) {
	for _, tc := range []struct {
		err    error
		key    byte
		asc    uint16
		okRead int64
	}{
		{ErrMedium, senseMediumError, ascUnrecoveredReadError, 0},
		{&NotReadyError{ASC: ascNotReadyUnavailable}, senseNotReady, ascNotReadyUnavailable, 2 * xcopyChunk},
	} {
		t.Run(fmt.Sprint(tc.err), func(t *testing.T) {
			f := &failVolume{memVolume: newMemVolume(16 << 20), failRead: tc.err}
			f.okReads.Store(tc.okRead)
			e := newLUEnv(t, LUNConfig{Volume: f})
			r := e.xcopy(e.lu, e.nexus("i", 1), xlist(0, 3, nil, [][]byte{segB2B(0xffff, 0xffff, 3*xcopyChunk/512, 0, 3*xcopyChunk/512)}))
			copyAborted(t, r, ascThirdPartyDeviceFailure, 0, false, -1, true, tc.key, tc.asc)
			valid := r.sense[0]&0x80 != 0
			if residual := binary.BigEndian.Uint32(r.sense[3:]); valid != (tc.okRead > 0) || valid && residual != xcopyChunk/512 {
				t.Fatalf("INFORMATION valid=%v residual %d after %d bytes written", valid, residual, tc.okRead)
			}
		})
	}
}

// TestThirdPartyCopyVPD: page 8Fh lists the copy commands and the same
// limits as OPERATING PARAMETERS (SPC-4 7.8.17, 6.22).
func TestThirdPartyCopyVPD(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	r := e.do(e.nexus("i", 1), cdbInquiry(true, 0x8f, 0xffff), nil)
	wantGood(t, r, "vpd 8f")
	descs := map[uint16][]byte{}
	for b := r.data[4:]; len(b) > 0; {
		if len(b) < 4 {
			t.Fatalf("truncated descriptor % x", b)
		}
		l := int(binary.BigEndian.Uint16(b[2:]))
		if l%4 != 0 || 4+l > len(b) {
			t.Fatalf("descriptor length %d of % x", l, b)
		}
		descs[binary.BigEndian.Uint16(b)] = b[:4+l]
		b = b[4+l:]
	}
	cmds := descs[0x0001]
	if cmds == nil || !bytes.Contains(cmds[5:5+cmds[4]], []byte{0x83, 1, 0x00}) || !bytes.Contains(cmds[5:5+cmds[4]], []byte{0x84, 4, 0x00, 0x01, 0x03, 0x04}) {
		t.Fatalf("supported commands % x", cmds)
	}
	pd := descs[0x0004]
	if len(pd) != 32 || binary.BigEndian.Uint16(pd[8:]) != xcopyMaxCSCDs || binary.BigEndian.Uint16(pd[10:]) != xcopyMaxSegments ||
		binary.BigEndian.Uint32(pd[12:]) != xcopyMaxDescListLen {
		t.Fatalf("parameter data % x", pd)
	}
	if sd := descs[0x0008]; sd == nil || !bytes.Equal(sd[5:5+sd[4]], []byte{0x02, 0x07, 0xe4}) {
		t.Fatalf("supported descriptors % x", sd)
	}
	if g := descs[0x8001]; len(g) != 36 || binary.BigEndian.Uint32(g[12:]) != 0xffff*512 || g[16] != 9 {
		t.Fatalf("general copy operations % x", g)
	}
}

// TestE2EXcopyLUNReset: a LUN RESET stops a running EXTENDED COPY after
// the chunk under way, and the reset is answered once the copy is gone.
// The NOP-Out after the reset is answered only after the target has
// read the reset (PDUs are read in order), so the held write is let go
// only once the copy's task is marked aborted.
func TestE2EXcopyLUNReset(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	g := &gateVolume{memVolume: s.vol, first: make(chan struct{}), release: make(chan struct{})}
	s.srv.mu.Lock()
	s.srv.targets[e2eTarget].lus[0].vol = g
	s.srv.mu.Unlock()
	in := dial(t, s.addr)
	in.login(loginOpts{})
	in.settle()
	var segs [][]byte
	for i := range uint64(8) {
		segs = append(segs, segB2B(0xffff, 0xffff, 128, i*128, 1024+i*128))
	}
	list := xlist(1, 0, nil, segs)
	cmd := in.scsiCmd(cdbXcopy(len(list)), len(list), false, true, true)
	cmd.Data = list
	in.send(cmd)
	select {
	case <-g.first:
	case <-time.After(e2eTimeout):
		t.Fatal("the copy never wrote")
	}
	p := &PDU{}
	p.BHS[0] = 0x40 | opTaskMgmt
	p.BHS[1] = 0x80 | tmfLUNReset
	itt := in.nextITT()
	p.put32(16, itt)
	p.put32(20, 0xffffffff)
	p.put32(24, in.cmdSN)
	p.put32(28, in.expStatSN)
	in.send(p)
	in.nopPing([]byte("after reset"))
	close(g.release)
	r := in.recv()
	if r.Opcode() != opTaskMgmtRsp || r.ITT() != itt || r.BHS[2] != tmfComplete {
		t.Fatalf("got opcode 0x%02x ITT %x response %d, want LUN RESET complete", r.Opcode(), r.ITT(), r.BHS[2])
	}
	if w := g.writes.Load(); w != 1 {
		t.Fatalf("%d of 8 segments written, want the copy to stop after the first", w)
	}
}
