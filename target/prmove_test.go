package target

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// REGISTER AND MOVE, SPEC_I_PT and APTPL (SPC-4 sections 5.13.7, 5.13.8,
// 6.16.3 and 6.16.4).

// cdbPROutN is a PERSISTENT RESERVE OUT CDB with parameter list length n.
func cdbPROutN(sa, rtype byte, n int) []byte {
	c := cdbPROut(sa, rtype)
	binary.BigEndian.PutUint32(c[5:], uint32(n))
	return c
}

// iscsiTID builds an iSCSI TransportID (SPC-4 section 7.6.4.6): format 0
// names a device, format 1 a port ("name,i,0xISID"); the name is NUL
// terminated and padded to a multiple of 4, at least 20 bytes.
func iscsiTID(format byte, name string) []byte {
	l := max(20, (len(name)+1+3)/4*4)
	b := make([]byte, 4+l)
	b[0] = format<<6 | 0x05
	binary.BigEndian.PutUint16(b[2:], uint16(l))
	copy(b[4:], name)
	return b
}

// moveParams is the REGISTER AND MOVE parameter list (SPC-4 6.16.4).
func moveParams(key, saKey uint64, flags byte, rel uint16, tid []byte) []byte {
	b := make([]byte, 24, 24+len(tid))
	binary.BigEndian.PutUint64(b, key)
	binary.BigEndian.PutUint64(b[8:], saKey)
	b[17] = flags // UNREG 0x02, APTPL 0x01
	binary.BigEndian.PutUint16(b[18:], rel)
	binary.BigEndian.PutUint32(b[20:], uint32(len(tid)))
	return append(b, tid...)
}

// specParams is a REGISTER parameter list with SPEC_I_PT and tids.
func specParams(key, saKey uint64, flags byte, tids ...[]byte) []byte {
	b := prParams(key, saKey, flags|0x08)
	all := bytes.Join(tids, nil)
	b = binary.BigEndian.AppendUint32(b, uint32(len(all)))
	return append(b, all...)
}

// prOutDo sends a PERSISTENT RESERVE OUT whose CDB announces the whole
// parameter list.
func prOutDo(e *lunEnv, n *Nexus, sa, rtype byte, params []byte) cmdResult {
	return e.do(n, cdbPROutN(sa, rtype, len(params)), params)
}

// wantInvalidParam checks INVALID FIELD IN PARAMETER LIST pointing at
// byte field and, unless bit is -1, bit.
func wantInvalidParam(tb testing.TB, r cmdResult, field, bit int, what string) {
	tb.Helper()
	wantSense(tb, r, senseIllegalRequest, ascInvalidFieldInParam, what)
	s := r.sense
	if s[15]&0xc0 != 0x80 || int(binary.BigEndian.Uint16(s[16:])) != field {
		tb.Fatalf("%s: sense key specific % x, want parameter list byte %d", what, s[15:18], field)
	}
	switch {
	case bit < 0 && s[15]&0x08 != 0:
		tb.Fatalf("%s: bit pointer %d, want none", what, s[15]&7)
	case bit >= 0 && (s[15]&0x08 == 0 || int(s[15]&7) != bit):
		tb.Fatalf("%s: sense key specific % x, want bit %d", what, s[15:18], bit)
	}
}

func wantPLLE(tb testing.TB, r cmdResult, what string) {
	tb.Helper()
	wantSense(tb, r, senseIllegalRequest, ascParamListLength, what)
}

// withPortGroups makes the sites see each other's port groups, as a
// cluster's PortGroupsFunc does: group i has relative port i.
func withPortGroups(sites ...*lunEnv) {
	groups := func(string) []PortGroup {
		var gs []PortGroup
		for _, s := range sites {
			gs = append(gs, PortGroup{ID: s.lu.portGroup, State: PathActiveNonOptimized})
		}
		return gs
	}
	for _, s := range sites {
		s.lu.groups = groups
	}
}

// caps returns REPORT CAPABILITIES' PTPL_C and PTPL_A.
func caps(tb testing.TB, e *lunEnv, n *Nexus) (ptplC, ptplA bool) {
	tb.Helper()
	r := e.do(n, cdbPRIn(2), nil)
	wantGood(tb, r, "report capabilities")
	return r.data[2]&0x01 != 0, r.data[3]&0x01 != 0
}

// fullStatus is one READ FULL STATUS descriptor.
type fullStatus struct {
	key    uint64
	holder bool
	rtype  byte
	rel    uint16
	tid    []byte
}

func readFullStatus(tb testing.TB, e *lunEnv, n *Nexus) []fullStatus {
	tb.Helper()
	r := e.do(n, cdbPRIn(3), nil)
	wantGood(tb, r, "read full status")
	var out []fullStatus
	for d := r.data[8:]; len(d) > 0; {
		l := int(binary.BigEndian.Uint32(d[20:]))
		out = append(out, fullStatus{binary.BigEndian.Uint64(d), d[12]&1 != 0, d[13] & 0x0f, binary.BigEndian.Uint16(d[18:]), d[24 : 24+l]})
		d = d[24+l:]
	}
	return out
}

func wantKeys(tb testing.TB, e *lunEnv, n *Nexus, want ...uint64) uint32 {
	tb.Helper()
	gen, keys := readKeys(tb, e, n)
	if fmt.Sprint(keys) != fmt.Sprint(want) {
		tb.Fatalf("keys %x, want %x", keys, want)
	}
	return gen
}

func wantReservation(tb testing.TB, e *lunEnv, n *Nexus, key uint64, rtype byte) {
	tb.Helper()
	k, typ, ok := readReservation(tb, e, n)
	if !ok || k != key || typ != rtype {
		tb.Fatalf("reservation key %x type %d (%v), want key %x type %d", k, typ, ok, key, rtype)
	}
}

// TestPRRegisterAndMoveAcrossSites: the holder at site A moves its
// reservation to an I_T nexus at site B (relative port 2), which then
// holds it there; the new holder moves it back with UNREG.
func TestPRRegisterAndMoveAcrossSites(t *testing.T) {
	A, B, rec := newSites(t)
	withPortGroups(A, B)
	a, other, b := A.nexus("iqn.a", 1), A.nexus("iqn.o", 3), B.nexus("iqn.b", 2)
	wantTURs(t, A, a, other)
	wantTURs(t, B, b)
	rd, wr, blk := cdbRW(0x28, 0, 1), cdbRW(0x2a, 0, 1), make([]byte, 512)
	wantGood(t, A.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a")
	wantGood(t, A.do(other, cdbPROut(prsaRegister, 0), prParams(0, 0xe, 0)), "register other")
	wantGood(t, A.do(a, cdbPROut(prsaReserve, prExclusiveAccess), prParams(0xa, 0, 0)), "a reserves EA")
	gen := wantKeys(t, B, b, 0xa, 0xe)

	// b is not registered: the move registers it with the service action
	// key. SCOPE and TYPE in the CDB are ignored.
	wantGood(t, prOutDo(A, a, prsaRegisterMove, 0x0f, moveParams(0xa, 0xb, 0, 2, b.TransportID())), "a moves to b at B")
	if g := wantKeys(t, B, b, 0xa, 0xe, 0xb); g != gen+1 {
		t.Fatalf("PRgeneration %d after the move, want %d", g, gen+1)
	}
	wantReservation(t, B, b, 0xb, prExclusiveAccess)
	wantReservation(t, A, a, 0xb, prExclusiveAccess)
	wantGood(t, B.do(b, wr, blk), "b writes as holder at B")
	wantConflict(t, A.do(a, rd, nil), "a, registered but no longer the holder, reads under EA")
	// The holder is b through B's port only.
	bAtA := A.nexus("iqn.b", 2)
	wantConflict(t, A.do(bAtA, rd, nil), "b through A's port")
	fs := readFullStatus(t, A, a)
	if len(fs) != 3 || !fs[2].holder || fs[2].rel != 2 || fs[2].rtype != prExclusiveAccess || fs[0].holder || fs[1].holder {
		t.Fatalf("full status after the move: %+v", fs)
	}
	if !bytes.Equal(fs[2].tid, b.TransportID()) {
		t.Fatalf("holder TransportID % x, want b's", fs[2].tid)
	}
	// The old holder may not move it any more.
	wantConflict(t, prOutDo(A, a, prsaRegisterMove, 0, moveParams(0xa, 0xa1, 0, 2, iscsiTID(1, "iqn.z,i,0x800000000009"))), "a moves what it no longer holds")

	// Back to a, which is registered: it takes the new key; UNREG drops
	// b's registration.
	wantGood(t, prOutDo(B, b, prsaRegisterMove, 0, moveParams(0xb, 0xa2, 0x02, 1, a.TransportID())), "b moves back with UNREG")
	wantKeys(t, A, a, 0xa2, 0xe)
	wantReservation(t, B, b, 0xa2, prExclusiveAccess)
	wantGood(t, A.do(a, wr, blk), "a writes as holder again")
	wantConflict(t, B.do(b, rd, nil), "b, unregistered, reads under EA")
	wantConflict(t, A.do(a, cdbPROut(prsaRelease, prExclusiveAccess), prParams(0xa, 0, 0)), "a's old key is gone")
	wantGood(t, A.do(a, cdbPROut(prsaRelease, prExclusiveAccess), prParams(0xa2, 0, 0)), "a releases with its new key")
	if s, err := decodeShared(rec.data); err != nil || s.aptpl {
		t.Fatalf("record after moves without APTPL: aptpl %v, %v", s != nil && s.aptpl, err)
	}
}

// TestPRRegisterAndMoveToDevice: a format 00b TransportID names an
// initiator device; every port of it through that target port holds the
// reservation, READ FULL STATUS reports it in format 00b, and PREEMPT AND
// ABORT of its key aborts the tasks of each of its nexuses here.
func TestPRRegisterAndMoveToDevice(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	a, c4, c5, z := e.nexus("iqn.a", 1), e.nexus("iqn.c", 4), e.nexus("iqn.c", 5), e.nexus("iqn.z", 6)
	wantTURs(t, e, a, c4, c5, z)
	wr, blk := cdbRW(0x2a, 0, 1), make([]byte, 512)
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a")
	wantGood(t, e.do(a, cdbPROut(prsaReserve, prWriteExclusive), prParams(0xa, 0, 0)), "a reserves WE")
	wantGood(t, prOutDo(e, a, prsaRegisterMove, 0, moveParams(0xa, 0xc, 0, 1, iscsiTID(0, "iqn.c"))), "move to device iqn.c")
	wantReservation(t, e, z, 0xc, prWriteExclusive)
	wantGood(t, e.do(c4, wr, blk), "c port 4 writes")
	wantGood(t, e.do(c5, wr, blk), "c port 5 writes")
	wantConflict(t, e.do(a, wr, blk), "a writes")
	wantConflict(t, e.do(z, wr, blk), "z writes")
	fs := readFullStatus(t, e, z)
	if len(fs) != 2 || !fs[1].holder || !bytes.Equal(fs[1].tid, iscsiTID(0, "iqn.c")) {
		t.Fatalf("full status: %+v", fs)
	}
	// A port of the device is registered through the device's key.
	wantConflict(t, e.do(c4, cdbPROut(prsaRegister, 0), prParams(0, 0xc4, 0)), "c4 registers as if new")
	// Registrations do not overlap: SPEC_I_PT may not add a port of it.
	r := prOutDo(e, z, prsaRegister, 0, specParams(0, 0x2, 0, iscsiTID(1, "iqn.c,i,0x800000000007")))
	wantInvalidParam(t, r, 28, -1, "SPEC_I_PT of a port of a registered device")

	r = e.do(a, cdbPROut(prsaPreemptAbort, prWriteExclusive), prParams(0xa, 0xc, 0))
	wantGood(t, r, "a preempts and aborts c")
	if got := r.cmd.abortPorts; fmt.Sprint(got) != fmt.Sprint([]string{c4.id, c5.id}) {
		t.Fatalf("ports to abort %q, want c's two", got)
	}
	wantSense(t, e.do(c4, tur, nil), senseUnitAttention, ascRegistrationsPreempted, "c4's unit attention")
	wantSense(t, e.do(c5, tur, nil), senseUnitAttention, ascRegistrationsPreempted, "c5's unit attention")
	wantKeys(t, e, z, 0xa)
}

// TestPRRegisterAndMoveRefusals: each refusal, with its sense, leaves the
// state as it was.
func TestPRRegisterAndMoveRefusals(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	a, r, u := e.nexus("iqn.a", 1), e.nexus("iqn.r", 2), e.nexus("iqn.u", 3)
	wantTURs(t, e, a, r, u)
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a")
	wantGood(t, e.do(r, cdbPROut(prsaRegister, 0), prParams(0, 0x2, 0)), "register r")
	move := func(n *Nexus, p []byte) cmdResult { return prOutDo(e, n, prsaRegisterMove, 0, p) }
	dest := iscsiTID(1, "iqn.d,i,0x800000000009")
	wantConflict(t, move(a, moveParams(0xa, 0xd, 0, 1, dest)), "no reservation to move")
	wantGood(t, e.do(a, cdbPROut(prsaReserve, prWriteExclusive), prParams(0xa, 0, 0)), "a reserves WE")
	gen := wantKeys(t, e, u, 0xa, 0x2)

	wantConflict(t, move(u, moveParams(0, 0xd, 0, 1, dest)), "unregistered sender")
	wantConflict(t, move(a, moveParams(0xbad, 0xd, 0, 1, dest)), "wrong key")
	wantConflict(t, move(r, moveParams(0x2, 0xd, 0, 1, dest)), "registrant that is not the holder")
	wantInvalidParam(t, move(a, moveParams(0xa, 0, 0, 1, dest)), 8, -1, "service action key 0")
	wantInvalidParam(t, move(a, moveParams(0xa, 0xd, 0, 1, a.TransportID())), 24, -1, "to the sender's own port")
	wantInvalidParam(t, move(a, moveParams(0xa, 0xd, 0, 1, iscsiTID(0, "iqn.a"))), 24, -1, "to the sender's own device")
	wantInvalidParam(t, move(a, moveParams(0xa, 0xd, 0, 2, dest)), 18, -1, "relative port 2 does not exist here")
	wantInvalidParam(t, move(a, moveParams(0xa, 0xd, 0x01, 1, dest)), 17, 0, "APTPL without a state file")

	bad := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(dest)) }
	for _, c := range []struct {
		name       string
		tid        []byte
		field, bit int
	}{
		{"Fibre Channel TransportID", bad(func(b []byte) []byte { b[0] = 0x40; return b }), 24, 3},
		{"format 10b", bad(func(b []byte) []byte { b[0] = 0x80 | 0x05; return b }), 24, 7},
		{"additional length 18", bad(func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 18); return b[:22] }), 26, -1},
		{"additional length past the end", bad(func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 28); return b }), 26, -1},
		{"no NUL", iscsiTID(0, "")[:4:4], 26, -1},
		{"name not NUL terminated", append(iscsiTID(0, "")[:4], []byte("iqn.01234567890123456")[:20]...), 28, -1},
		{"empty name", iscsiTID(0, ""), 28, -1},
		{"garbage after the NUL", bad(func(b []byte) []byte { b[len(b)-1] = 'x'; return b }), 28, -1},
		{"port without a separator", iscsiTID(1, "iqn.d"), 28, -1},
		{"bad ISID", iscsiTID(1, "iqn.d,i,0xzz"), 38, -1},
		{"ISID too long", iscsiTID(1, "iqn.d,i,0x8000000000091"), 38, -1},
		{"device name with a comma", iscsiTID(0, "iqn.d,x"), 28, -1},
	} {
		wantInvalidParam(t, move(a, moveParams(0xa, 0xd, 0, 1, c.tid)), c.field, c.bit, c.name)
	}
	// Two TransportIDs where one is allowed.
	p := moveParams(0xa, 0xd, 0, 1, append(bytes.Clone(dest), dest...))
	wantInvalidParam(t, move(a, p), 20, -1, "two TransportIDs")
	// The TRANSPORTID PARAMETER DATA LENGTH and the CDB disagree.
	p = moveParams(0xa, 0xd, 0, 1, dest)
	wantPLLE(t, e.do(a, cdbPROutN(prsaRegisterMove, 0, len(p)-4), p[:len(p)-4]), "list shorter than the TransportID")
	wantPLLE(t, e.do(a, cdbPROutN(prsaRegisterMove, 0, len(p)+4), append(p, 0, 0, 0, 0)), "list longer than the TransportID")
	wantPLLE(t, e.do(a, cdbPROutN(prsaRegisterMove, 0, 20), p[:20]), "parameter list length 20")
	wantPLLE(t, e.do(a, cdbPROutN(prsaRegisterMove, 0, maxPROutParams+1), nil), "parameter list beyond the bound")

	if g := wantKeys(t, e, u, 0xa, 0x2); g != gen {
		t.Fatalf("refused commands changed PRgeneration %d -> %d", gen, g)
	}
	wantReservation(t, e, u, 0xa, prWriteExclusive)

	// All-registrants reservations have no one holder to move.
	wantGood(t, e.do(a, cdbPROut(prsaRelease, prWriteExclusive), prParams(0xa, 0, 0)), "release")
	wantGood(t, e.do(a, cdbPROut(prsaReserve, prWriteExclusiveAll), prParams(0xa, 0, 0)), "reserve WE all registrants")
	wantConflict(t, move(a, moveParams(0xa, 0xd, 0, 1, dest)), "move an all-registrants reservation")
	// Moving to a registered device's port is moving within the device.
	wantGood(t, e.do(a, cdbPROut(prsaRelease, prWriteExclusiveAll), prParams(0xa, 0, 0)), "release all registrants")
	wantGood(t, e.do(a, cdbPROut(prsaReserve, prExclusiveAccess), prParams(0xa, 0, 0)), "reserve EA")
	wantGood(t, move(a, moveParams(0xa, 0xd, 0, 1, iscsiTID(0, "iqn.d"))), "move to device iqn.d")
	d := e.nexus("iqn.d", 9)
	wantInvalidParam(t, prOutDo(e, d, prsaRegisterMove, 0, moveParams(0xd, 0xd2, 0, 1, dest)), 24, -1, "from a device to one of its ports")
	// A device whose ports are registered one by one takes no move.
	wantGood(t, e.do(e.nexus("iqn.p", 1), cdbPROut(prsaRegister, 0), prParams(0, 0xf, 0)), "register a port of iqn.p")
	wantInvalidParam(t, prOutDo(e, d, prsaRegisterMove, 0, moveParams(0xd, 0xd2, 0, 1, iscsiTID(0, "iqn.p"))), 24, -1, "to a device with a registered port")
	wantReservation(t, e, u, 0xd, prExclusiveAccess)
}

// TestPRSpecIPTAcrossSites: REGISTER with SPEC_I_PT at site A registers
// an initiator port and an initiator device that log in at site B,
// where they then act as registrants; their unit attentions reach them
// there.
func TestPRSpecIPTAcrossSites(t *testing.T) {
	A, B, _ := newSites(t)
	a := A.nexus("iqn.a", 1)
	x, y, z := B.nexus("iqn.x", 5), B.nexus("iqn.y", 7), B.nexus("iqn.z", 8)
	wantTURs(t, A, a)
	wantTURs(t, B, x, y, z)
	wr, blk := cdbRW(0x2a, 0, 1), make([]byte, 512)
	p := specParams(0, 0x5, 0, iscsiTID(1, "iqn.x,i,0x800000000005"), iscsiTID(0, "iqn.y"), a.TransportID(), iscsiTID(0, "iqn.y"))
	wantGood(t, prOutDo(A, a, prsaRegister, 0, p), "a registers itself, x and y (a and y listed again)")
	gen := wantKeys(t, B, z, 0x5, 0x5, 0x5)
	fs := readFullStatus(t, B, z)
	if len(fs) != 3 || !bytes.Equal(fs[1].tid, iscsiTID(1, "iqn.x,i,0x800000000005")) || !bytes.Equal(fs[2].tid, iscsiTID(0, "iqn.y")) || fs[1].rel != 1 {
		t.Fatalf("full status %+v", fs)
	}
	wantGood(t, B.do(x, cdbPROut(prsaReserve, prWriteExclusiveRegs), prParams(0x5, 0, 0)), "x reserves WE registrants only at B")
	wantGood(t, B.do(y, wr, blk), "y writes as a registrant")
	wantConflict(t, B.do(z, wr, blk), "z, not registered, writes")
	wantGood(t, A.do(a, wr, blk), "a writes as a registrant")
	wantGood(t, A.do(a, cdbPROut(prsaClear, 0), prParams(0x5, 0, 0)), "a clears")
	if g := wantKeys(t, B, z); g != gen+1 {
		t.Fatalf("PRgeneration %d after CLEAR, want %d", g, gen+1)
	}
	wantSense(t, B.do(x, tur, nil), senseUnitAttention, ascReservationsPreempted, "x hears of the CLEAR at B")
	wantSense(t, B.do(y, tur, nil), senseUnitAttention, ascReservationsPreempted, "y hears of the CLEAR at B")
	wantTURs(t, B, z)
	wantTURs(t, A, a)
}

func TestPRSpecIPTRefusals(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	a, r := e.nexus("iqn.a", 1), e.nexus("iqn.r", 2)
	wantTURs(t, e, a, r)
	wantGood(t, e.do(r, cdbPROut(prsaRegister, 0), prParams(0, 0x2, 0)), "register r")
	gen := wantKeys(t, e, a, 0x2)
	x := iscsiTID(1, "iqn.x,i,0x800000000005")

	wantInvalidParam(t, prOutDo(e, a, prsaRegisterIgnore, 0, specParams(0, 0x5, 0, x)), 20, 3, "SPEC_I_PT with REGISTER AND IGNORE EXISTING KEY")
	wantInvalidParam(t, prOutDo(e, r, prsaRegister, 0, specParams(0x2, 0x5, 0, x)), 20, 3, "SPEC_I_PT from a registered nexus")
	wantInvalidParam(t, prOutDo(e, a, prsaReserve, prWriteExclusive, specParams(0, 0, 0)), 20, 3, "SPEC_I_PT with RESERVE")
	wantInvalidParam(t, prOutDo(e, a, prsaRegister, 0, specParams(0, 0x5, 0, x, r.TransportID())), 28+len(x), -1, "a port already registered")
	wantInvalidParam(t, prOutDo(e, a, prsaRegister, 0, specParams(0, 0x5, 0, iscsiTID(0, "iqn.r"))), 28, -1, "a device with a registered port")
	wantInvalidParam(t, prOutDo(e, a, prsaRegister, 0, specParams(0, 0x5, 0, x, iscsiTID(0, "iqn.x"))), 28+len(x), -1, "a port and its device")
	wantInvalidParam(t, prOutDo(e, a, prsaRegister, 0, specParams(0, 0x5, 0, iscsiTID(0, "iqn.a"))), 28, -1, "the sender's own device")
	fc := bytes.Clone(x)
	fc[0] = 0x41
	wantInvalidParam(t, prOutDo(e, a, prsaRegister, 0, specParams(0, 0x5, 0, x, fc)), 28+len(x), 3, "a second TransportID of another protocol")
	wantInvalidParam(t, prOutDo(e, a, prsaRegister, 0, specParams(0, 0x5, 0, x, []byte{0x45, 0})), 28+len(x), -1, "a truncated TransportID")
	wantInvalidParam(t, prOutDo(e, a, prsaRegister, 0, specParams(0, 0x5, 0x01, x)), 20, 0, "APTPL without a state file")

	p := specParams(0, 0x5, 0, x)
	wantPLLE(t, e.do(a, cdbPROut(prsaRegister, 0), p[:24]), "SPEC_I_PT in a 24-byte list")
	wantPLLE(t, e.do(a, cdbPROutN(prsaRegister, 0, len(p)-4), p[:len(p)-4]), "list shorter than its TransportIDs")
	wantPLLE(t, e.do(a, cdbPROutN(prsaRegister, 0, len(p)+4), append(bytes.Clone(p), 0, 0, 0, 0)), "list longer than its TransportIDs")
	wantPLLE(t, e.do(a, cdbPROutN(prsaRegister, 0, 28), append(prParams(0, 0x5, 0), 0, 0, 0, 0)), "28 bytes without SPEC_I_PT")
	wantPLLE(t, e.do(a, cdbPROutN(prsaReserve, prWriteExclusive, 28), append(prParams(0x2, 0, 0), 0, 0, 0, 0)), "28 bytes for RESERVE")
	if g := wantKeys(t, e, a, 0x2); g != gen {
		t.Fatalf("refused commands changed PRgeneration %d -> %d", gen, g)
	}

	// Key 0 registers nobody; an empty list registers the sender alone.
	wantGood(t, prOutDo(e, a, prsaRegister, 0, specParams(0, 0, 0, x)), "SPEC_I_PT with key 0")
	wantKeys(t, e, a, 0x2)
	wantGood(t, prOutDo(e, a, prsaRegister, 0, specParams(0, 0x5, 0)), "SPEC_I_PT with no TransportID")
	wantKeys(t, e, a, 0x2, 0x5)
	// Unregistering with SPEC_I_PT=0 works as ever.
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0x5, 0, 0)), "a unregisters")
	wantKeys(t, e, a, 0x2)
}

// aptplEnv opens a single-site LU whose reservations persist in path, as
// serve builds one, over a fresh volume: a restart.
func aptplEnv(t *testing.T, path string) *lunEnv {
	t.Helper()
	e := newLUEnv(t, LUNConfig{PRStateFile: path})
	t.Cleanup(func() { e.lu.close() })
	return e
}

// TestPRAPTPLRestart: with APTPL=1 a single site's registrations and
// reservation come back after a restart (PRgeneration starts at zero);
// with APTPL=0 they do not, and setting it to 0 removes the file.
func TestPRAPTPLRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", PRStateFileName("iqn.2026-01.test:t", 0))
	e := aptplEnv(t, path)
	a, b := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2)
	if c, act := caps(t, e, a); !c || act {
		t.Fatalf("PTPL_C %v PTPL_A %v before any APTPL, want true false", c, act)
	}
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0x01)), "register a, APTPL")
	wantGood(t, e.do(b, cdbPROut(prsaRegisterIgnore, 0), prParams(0, 0xb, 0x01)), "register b, APTPL")
	wantGood(t, e.do(a, cdbPROut(prsaReserve, prExclusiveAccessRegs), prParams(0xa, 0, 0)), "a reserves EA registrants only")
	wantGood(t, e.do(a, cdbPROut(prsaReserve, prExclusiveAccessRegs), prParams(0xa, 0, 0x01)), "RESERVE ignores APTPL")
	if c, act := caps(t, e, a); !c || !act {
		t.Fatalf("PTPL_C %v PTPL_A %v after APTPL=1", c, act)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no state file after APTPL=1: %v", err)
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("temporary file left: %v", err)
	}

	e = aptplEnv(t, path)
	a, b, c := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2), e.nexus("iqn.c", 3)
	if gen := wantKeys(t, e, c, 0xa, 0xb); gen != 0 {
		t.Fatalf("PRgeneration %d after a restart, want 0", gen)
	}
	wantReservation(t, e, c, 0xa, prExclusiveAccessRegs)
	wantGood(t, e.do(a, cdbRW(0x2a, 0, 1), make([]byte, 512)), "a writes as holder after the restart")
	wantGood(t, e.do(b, cdbRW(0x28, 0, 1), nil), "b reads as registrant")
	wantConflict(t, e.do(c, cdbRW(0x28, 0, 1), nil), "c, unregistered, reads")
	if c, act := caps(t, e, a); !c || !act {
		t.Fatalf("PTPL_C %v PTPL_A %v after the restart", c, act)
	}
	// A change after the restart is kept too.
	wantGood(t, e.do(a, cdbPROut(prsaPreempt, prWriteExclusive), prParams(0xa, 0xb, 0)), "a preempts b")
	e = aptplEnv(t, path)
	a, b = e.nexus("iqn.a", 1), e.nexus("iqn.b", 2)
	wantKeys(t, e, b, 0xa)
	wantReservation(t, e, b, 0xa, prExclusiveAccessRegs)

	// The last APTPL received wins: 0 drops the file.
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0xa, 0xa2, 0)), "a registers again, APTPL=0")
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("state file after APTPL=0: %v", err)
	}
	if _, act := caps(t, e, a); act {
		t.Fatal("PTPL_A after APTPL=0")
	}
	e = aptplEnv(t, path)
	a = e.nexus("iqn.a", 1)
	wantKeys(t, e, a)
	if _, _, ok := readReservation(t, e, a); ok {
		t.Fatal("a reservation survived a restart with APTPL=0")
	}

	// APTPL=0 from the start: nothing is written, nothing comes back.
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a")
	wantGood(t, e.do(a, cdbPROut(prsaReserve, prWriteExclusive), prParams(0xa, 0, 0)), "reserve")
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("state file without APTPL: %v", err)
	}
	e = aptplEnv(t, path)
	wantKeys(t, e, e.nexus("iqn.a", 1))
}

// TestPRAPTPLFileErrors: a state file that cannot be written fails the
// command and changes nothing; one that cannot be read stops the LU.
func TestPRAPTPLFileErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pr.state")
	// A directory where the temporary file goes (root may write anywhere).
	if err := os.Mkdir(path+".tmp", 0o755); err != nil {
		t.Fatal(err)
	}
	e := aptplEnv(t, path)
	a := e.nexus("iqn.a", 1)
	wantSense(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0x01)), senseHardwareError, ascInternalTargetFailure, "APTPL=1 with an unwritable state file")
	if gen := wantKeys(t, e, a); gen != 0 {
		t.Fatalf("PRgeneration %d after a failed REGISTER", gen)
	}
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "APTPL=0 needs no file")

	for name, data := range map[string][]byte{
		"garbage":    []byte("not a record"),
		"no APTPL":   mustEncode(t, &prState{regs: []registration{{port: "iqn.a,i,0x1", rel: 1, key: 1}}}),
		"truncated":  mustEncode(t, (&prState{regs: []registration{{port: "iqn.a,i,0x1", rel: 1, key: 1}}}).durable())[:20],
		"empty file": {},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := newLU(&Target{Name: testTargetName, lus: map[uint64]*LU{}}, LUNConfig{Volume: newMemVolume(1 << 20), PRStateFile: path}, 1)
		if name == "empty file" {
			// An empty record is the state of an LU nobody touched, but
			// without APTPL: refused like any file that lacks it.
			if err == nil || !strings.Contains(err.Error(), "APTPL") {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: newLU error %v, want one naming the file", name, err)
		}
	}
}

// TestPRAPTPLCluster: a cluster's record carries APTPL (flags bit 0),
// which every site reports, and a site opened later over the record has
// the reservation (a site's restart).
func TestPRAPTPLCluster(t *testing.T) {
	A, B, rec := newSites(t)
	withPortGroups(A, B)
	a, b := A.nexus("iqn.a", 1), B.nexus("iqn.b", 2)
	if c, act := caps(t, B, b); !c || act {
		t.Fatalf("cluster PTPL_C %v PTPL_A %v, want true false", c, act)
	}
	wantGood(t, A.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0x01)), "register a, APTPL")
	wantGood(t, A.do(a, cdbPROut(prsaReserve, prWriteExclusive), prParams(0xa, 0, 0)), "reserve")
	if _, act := caps(t, B, b); !act {
		t.Fatal("PTPL_A not reported at B")
	}
	if rec.data[5]&1 == 0 {
		t.Fatalf("record flags 0x%02x, want APTPL", rec.data[5])
	}
	// REGISTER AND MOVE sets APTPL as well: here to 0.
	wantGood(t, prOutDo(A, a, prsaRegisterMove, 0, moveParams(0xa, 0xb, 0, 2, b.TransportID())), "move to b, APTPL=0")
	if _, act := caps(t, B, b); act || rec.data[5]&1 != 0 {
		t.Fatal("APTPL still set after REGISTER AND MOVE with APTPL=0")
	}
	C, err := newLU(&Target{Name: testTargetName, lus: map[uint64]*LU{}}, LUNConfig{Volume: &sharedVolume{newMemVolume(1 << 20), rec}, PRStateFile: filepath.Join(t.TempDir(), "ignored")}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if C.pr.rtype != prWriteExclusive || C.pr.holder != (itNexus{b.id, 2}) || C.shared.file != "" {
		t.Fatalf("a site opened over the record: %+v, file %q", C.pr, C.shared.file)
	}
}

// TestRSOCRegisterAndMove: REGISTER AND MOVE is reported supported,
// REPLACE LOST RESERVATION is not (SPC-4 6.35).
func TestRSOCRegisterAndMove(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	for _, c := range []struct {
		sa   uint16
		want byte
	}{{prsaRegisterMove, 3}, {prsaReplaceLost, 1}} {
		cdb := make12(0xa3, 0x0c)
		cdb[2], cdb[3] = 2, 0x5f
		binary.BigEndian.PutUint16(cdb[4:], c.sa)
		binary.BigEndian.PutUint32(cdb[6:], 1<<16)
		r := e.do(n, cdb, nil)
		wantGood(t, r, "rsoc one")
		if r.data[1]&7 != c.want {
			t.Fatalf("SUPPORT %d for 5f/%d, want %d", r.data[1]&7, c.sa, c.want)
		}
	}
}

// TestTransportIDParse: iSCSI TransportIDs decode to the names metrolun
// gives initiator ports and devices, and back.
func TestTransportIDParse(t *testing.T) {
	for _, c := range []struct {
		tid  []byte
		want string
	}{
		{iscsiTID(1, "iqn.x,i,0x800000000005"), "iqn.x,i,0x800000000005"},
		{iscsiTID(1, "iqn.x,I,0X80000000000A"), "iqn.x,i,0x80000000000a"},
		{iscsiTID(1, "iqn.x,i,0x23d000001"), "iqn.x,i,0x00023d000001"},
		{iscsiTID(0, "iqn.2026-01.org.example:host"), "iqn.2026-01.org.example:host"},
	} {
		who, n, bad := parseTransportID(append(bytes.Clone(c.tid), 0xff))
		if bad != nil || who != c.want || n != len(c.tid) {
			t.Errorf("% x: %q, %d bytes, %v; want %q", c.tid, who, n, bad, c.want)
		}
		if back := transportID(who); slices.Compare(back[:1], c.tid[:1]) != 0 {
			t.Errorf("%q encodes with byte 0 0x%02x, want 0x%02x", who, back[0], c.tid[0])
		}
	}
}
