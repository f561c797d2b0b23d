package target

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

func cdbPROut(sa, rtype byte) []byte {
	c := make([]byte, 10)
	c[0], c[1], c[2] = 0x5f, sa, rtype
	binary.BigEndian.PutUint32(c[5:], 24)
	return c
}

// prParams is the basic PERSISTENT RESERVE OUT parameter list (SPC-4 6.16.3).
func prParams(key, saKey uint64, flags byte) []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint64(b, key)
	binary.BigEndian.PutUint64(b[8:], saKey)
	b[20] = flags
	return b
}

func cdbPRIn(sa byte) []byte {
	c := make([]byte, 10)
	c[0], c[1] = 0x5e, sa
	binary.BigEndian.PutUint16(c[7:], 8192)
	return c
}

// readKeys returns PRgeneration and the registered keys.
func readKeys(tb testing.TB, e *lunEnv, n *Nexus) (uint32, []uint64) {
	tb.Helper()
	r := e.do(n, cdbPRIn(0), nil)
	wantGood(tb, r, "read keys")
	if l := binary.BigEndian.Uint32(r.data[4:]); int(l) != len(r.data)-8 || l%8 != 0 {
		tb.Fatalf("READ KEYS ADDITIONAL LENGTH %d with %d bytes", l, len(r.data)-8)
	}
	var keys []uint64
	for d := r.data[8:]; len(d) >= 8; d = d[8:] {
		keys = append(keys, binary.BigEndian.Uint64(d))
	}
	return binary.BigEndian.Uint32(r.data), keys
}

// readReservation returns the holder's key and type, or ok=false.
func readReservation(tb testing.TB, e *lunEnv, n *Nexus) (key uint64, rtype byte, ok bool) {
	tb.Helper()
	r := e.do(n, cdbPRIn(1), nil)
	wantGood(tb, r, "read reservation")
	l := binary.BigEndian.Uint32(r.data[4:])
	switch l {
	case 0:
		return 0, 0, false
	case 16:
		return binary.BigEndian.Uint64(r.data[8:]), r.data[8+13] & 0x0f, true
	}
	tb.Fatalf("READ RESERVATION ADDITIONAL LENGTH %d", l)
	return
}

func TestPRScenario(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	a, b, c := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2), e.nexus("iqn.c", 3)
	tur := []byte{0, 0, 0, 0, 0, 0}
	for _, n := range []*Nexus{a, b, c} {
		wantGood(t, e.do(n, tur, nil), "tur")
	}
	rd, wr, blk := cdbRW(0x28, 0, 1), cdbRW(0x2a, 0, 1), make([]byte, 512)

	gen0, keys := readKeys(t, e, a)
	if len(keys) != 0 {
		t.Fatalf("fresh LU has keys %x", keys)
	}
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a")
	wantGood(t, e.do(b, cdbPROut(prsaRegister, 0), prParams(0, 0xb, 0)), "register b")
	gen, keys := readKeys(t, e, c)
	if gen != gen0+2 || fmt.Sprint(keys) != fmt.Sprint([]uint64{0xa, 0xb}) {
		t.Fatalf("after two registrations: generation %d keys %x; want %d [a b]", gen, keys, gen0+2)
	}

	wantGood(t, e.do(a, cdbPROut(prsaReserve, prWriteExclusive), prParams(0xa, 0, 0)), "a reserve WE")
	if k, typ, ok := readReservation(t, e, c); !ok || k != 0xa || typ != prWriteExclusive {
		t.Fatalf("READ RESERVATION: key %x type %d ok %v", k, typ, ok)
	}
	// SPC-4 6.16.2: RESERVE and RELEASE do not change PRgeneration.
	if g, _ := readKeys(t, e, c); g != gen {
		t.Fatalf("RESERVE changed PRgeneration %d -> %d", gen, g)
	}
	wantGood(t, e.do(a, wr, blk), "holder writes")
	wantConflict(t, e.do(b, wr, blk), "registrant b writes under WE")
	wantGood(t, e.do(b, rd, nil), "registrant b reads under WE")
	wantConflict(t, e.do(c, wr, blk), "unregistered c writes")
	wantGood(t, e.do(c, rd, nil), "unregistered c reads")
	wantGood(t, e.do(c, []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil), "read capacity is always allowed")
	wantConflict(t, e.do(b, cdbPROut(prsaReserve, prWriteExclusive), prParams(0xb, 0, 0)), "b reserve over a")
	// A conflict does not advance the generation.
	if g, _ := readKeys(t, e, c); g != gen {
		t.Fatalf("a conflicted command changed PRgeneration")
	}

	// b preempts a: a's registration is gone and the reservation moves to
	// b; a learns with REGISTRATIONS PREEMPTED (SPC-4 5.13.11.4).
	wantGood(t, e.do(b, cdbPROut(prsaPreempt, prWriteExclusive), prParams(0xb, 0xa, 0)), "b preempts a")
	gen2, keys := readKeys(t, e, c)
	if gen2 != gen+1 || fmt.Sprint(keys) != fmt.Sprint([]uint64{0xb}) {
		t.Fatalf("after preempt: generation %d keys %x; want %d [b]", gen2, keys, gen+1)
	}
	if k, typ, ok := readReservation(t, e, c); !ok || k != 0xb || typ != prWriteExclusive {
		t.Fatalf("after preempt: holder key %x type %d", k, typ)
	}
	wantSense(t, e.do(a, tur, nil), senseUnitAttention, ascRegistrationsPreempted, "a's unit attention")
	wantGood(t, e.do(a, tur, nil), "UA reported once")
	wantGood(t, e.do(b, tur, nil), "the preempting nexus has no UA")
	wantConflict(t, e.do(a, wr, blk), "a writes after losing its registration")
	wantGood(t, e.do(b, wr, blk), "b writes as holder")
	// a's old key no longer works.
	wantConflict(t, e.do(a, cdbPROut(prsaReserve, prWriteExclusive), prParams(0xa, 0, 0)), "a reserve with its preempted key")

	// CLEAR: every registration and the reservation go; other registrants
	// get RESERVATIONS PREEMPTED (SPC-4 5.13.11.3).
	wantGood(t, e.do(c, cdbPROut(prsaRegister, 0), prParams(0, 0xc, 0)), "register c")
	wantGood(t, e.do(b, cdbPROut(prsaClear, 0), prParams(0xb, 0, 0)), "b clear")
	gen3, keys := readKeys(t, e, a)
	if len(keys) != 0 || gen3 != gen2+2 {
		t.Fatalf("after clear: generation %d keys %x; want %d, none", gen3, keys, gen2+2)
	}
	if _, _, ok := readReservation(t, e, a); ok {
		t.Fatal("reservation survived CLEAR")
	}
	wantSense(t, e.do(c, tur, nil), senseUnitAttention, ascReservationsPreempted, "c after clear")
	wantGood(t, e.do(b, tur, nil), "the clearing nexus has no UA")
	wantGood(t, e.do(c, wr, blk), "c writes after clear")
}

// TestPRConflictMatrix applies SPC-4 5.13.1 table 43 to a read and a write
// from the holder, another registrant and an unregistered nexus.
func TestPRConflictMatrix(t *testing.T) {
	type access struct{ read, write bool } // true: allowed
	cases := []struct {
		rtype                     byte
		holder, reg, unregistered access
	}{
		{prWriteExclusive, access{true, true}, access{true, false}, access{true, false}},
		{prExclusiveAccess, access{true, true}, access{false, false}, access{false, false}},
		{prWriteExclusiveRegs, access{true, true}, access{true, true}, access{true, false}},
		{prExclusiveAccessRegs, access{true, true}, access{true, true}, access{false, false}},
		{prWriteExclusiveAll, access{true, true}, access{true, true}, access{true, false}},
		{prExclusiveAccessAll, access{true, true}, access{true, true}, access{false, false}},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("type%d", c.rtype), func(t *testing.T) {
			e := newLUEnv(t, LUNConfig{})
			h, r, u := e.nexus("iqn.h", 1), e.nexus("iqn.r", 2), e.nexus("iqn.u", 3)
			wantGood(t, e.do(h, cdbPROut(prsaRegister, 0), prParams(0, 1, 0)), "register h")
			wantGood(t, e.do(r, cdbPROut(prsaRegister, 0), prParams(0, 2, 0)), "register r")
			wantGood(t, e.do(h, cdbPROut(prsaReserve, c.rtype), prParams(1, 0, 0)), "reserve")
			for _, x := range []struct {
				name string
				n    *Nexus
				want access
			}{{"holder", h, c.holder}, {"registrant", r, c.reg}, {"unregistered", u, c.unregistered}} {
				check := func(op string, cdb, out []byte, allowed bool) {
					res := e.do(x.n, cdb, out)
					if allowed {
						wantGood(t, res, x.name+" "+op)
					} else {
						wantConflict(t, res, x.name+" "+op)
					}
				}
				check("read", cdbRW(0x28, 0, 1), nil, x.want.read)
				check("write", cdbRW(0x2a, 0, 1), make([]byte, 512), x.want.write)
			}
		})
	}
}

func TestPRErrors(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	a, b := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2)
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a")
	gen, _ := readKeys(t, e, a)

	short := cdbPROut(prsaRegister, 0)
	binary.BigEndian.PutUint32(short[5:], 20)
	wantSense(t, e.do(b, short, make([]byte, 20)), senseIllegalRequest, ascParamListLength, "parameter list length 20")
	// PTPL_C=0 in REPORT CAPABILITIES: APTPL=1 is an invalid field.
	r := e.do(b, cdbPROut(prsaRegister, 0), prParams(0, 0xb, 0x01))
	wantSense(t, r, senseIllegalRequest, ascInvalidFieldInParam, "aptpl")
	// Registering from an unregistered nexus with a non-zero RESERVATION
	// KEY is a conflict (SPC-4 5.13.7 table 38).
	wantConflict(t, e.do(b, cdbPROut(prsaRegister, 0), prParams(5, 0xb, 0)), "unregistered with key")
	// Wrong key from a registered nexus.
	wantConflict(t, e.do(a, cdbPROut(prsaReserve, prWriteExclusive), prParams(0xbad, 0, 0)), "wrong key")
	wantConflict(t, e.do(b, cdbPROut(prsaReserve, prWriteExclusive), prParams(0, 0, 0)), "unregistered reserve")
	wantSense(t, e.do(a, cdbPROut(prsaReserve, 0x02), prParams(0xa, 0, 0)), senseIllegalRequest, ascInvalidFieldInCDB, "type 2")
	wantSense(t, e.do(a, cdbPROut(prsaReserve, 0x10|prWriteExclusive), prParams(0xa, 0, 0)), senseIllegalRequest, ascInvalidFieldInCDB, "scope 1")
	// REPLACE LOST RESERVATION (SPC-5) is refused as unsupported, and so
	// is every reserved service action.
	for _, sa := range []byte{prsaReplaceLost, 0x09, 0x1f} {
		wantSense(t, e.do(a, cdbPROut(sa, 0), prParams(0xa, 0, 0)), senseIllegalRequest, ascInvalidFieldInCDB, fmt.Sprintf("service action %d", sa))
	}
	// PREEMPT with SERVICE ACTION RESERVATION KEY 0 and no all-registrants
	// reservation: INVALID FIELD IN PARAMETER LIST.
	wantSense(t, e.do(a, cdbPROut(prsaPreempt, prWriteExclusive), prParams(0xa, 0, 0)), senseIllegalRequest, ascInvalidFieldInParam, "preempt key 0")
	// PREEMPT of a key nobody holds is a conflict.
	wantConflict(t, e.do(a, cdbPROut(prsaPreempt, prWriteExclusive), prParams(0xa, 0x99, 0)), "preempt unknown key")
	if g, _ := readKeys(t, e, a); g != gen {
		t.Fatalf("failed commands changed PRgeneration %d -> %d", gen, g)
	}
	// RELEASE with the wrong type: INVALID RELEASE OF PERSISTENT RESERVATION.
	wantGood(t, e.do(a, cdbPROut(prsaReserve, prExclusiveAccess), prParams(0xa, 0, 0)), "reserve EA")
	wantSense(t, e.do(a, cdbPROut(prsaRelease, prWriteExclusive), prParams(0xa, 0, 0)), senseIllegalRequest, ascInvalidReleasePR, "release wrong type")
	wantGood(t, e.do(a, cdbPROut(prsaRelease, prExclusiveAccess), prParams(0xa, 0, 0)), "release")
	if _, _, ok := readReservation(t, e, a); ok {
		t.Fatal("reservation survived RELEASE")
	}
	// REGISTER AND IGNORE EXISTING KEY works whatever the key says.
	wantGood(t, e.do(a, cdbPROut(prsaRegisterIgnore, 0), prParams(0x777, 0xaa, 0)), "register and ignore")
	if _, keys := readKeys(t, e, a); fmt.Sprint(keys) != fmt.Sprint([]uint64{0xaa}) {
		t.Fatalf("keys %x after REGISTER AND IGNORE EXISTING KEY", keys)
	}
}

func TestPRUnregisterHolderReleases(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	a, b := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2)
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a")
	wantGood(t, e.do(b, cdbPROut(prsaRegister, 0), prParams(0, 0xb, 0)), "register b")
	wantGood(t, e.do(a, cdbPROut(prsaReserve, prWriteExclusiveRegs), prParams(0xa, 0, 0)), "reserve WE_RO")
	wantGood(t, e.do(b, []byte{0, 0, 0, 0, 0, 0}, nil), "b tur")
	// Unregistering the holder of a registrants-only reservation releases
	// it and tells the other registrants (SPC-4 5.13.11.2.2).
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0xa, 0, 0)), "unregister a")
	if _, _, ok := readReservation(t, e, a); ok {
		t.Fatal("reservation survived its holder's unregistration")
	}
	wantSense(t, e.do(b, []byte{0, 0, 0, 0, 0, 0}, nil), senseUnitAttention, ascReservationsReleased, "b's UA")
}

func TestPRReadFullStatusAndCapabilities(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	a := e.nexus("iqn.2024-01.org.example:a", 7)
	wantGood(t, e.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register")
	wantGood(t, e.do(a, cdbPROut(prsaReserve, prExclusiveAccess), prParams(0xa, 0, 0)), "reserve")
	r := e.do(a, cdbPRIn(3), nil)
	wantGood(t, r, "read full status")
	d := r.data[8:]
	if l := binary.BigEndian.Uint32(r.data[4:]); int(l) != len(d) {
		t.Fatalf("ADDITIONAL LENGTH %d, %d bytes follow", l, len(d))
	}
	if binary.BigEndian.Uint64(d) != 0xa || d[12]&1 == 0 || d[13]&0x0f != prExclusiveAccess {
		t.Fatalf("full status descriptor % x", d[:24])
	}
	tidLen := int(binary.BigEndian.Uint32(d[20:]))
	tid := d[24 : 24+tidLen]
	// SPC-4 7.6.4.6: iSCSI TransportID, format 01b: "name,i,0xISID", NUL
	// terminated, ADDITIONAL LENGTH a multiple of 4 and at least 20.
	if tid[0] != 0x45 {
		t.Fatalf("TransportID byte 0 0x%02x, want 0x45", tid[0])
	}
	al := int(binary.BigEndian.Uint16(tid[2:]))
	if al%4 != 0 || al < 20 || al != len(tid)-4 {
		t.Fatalf("TransportID ADDITIONAL LENGTH %d (total %d)", al, len(tid))
	}
	name := string(tid[4:])
	name = name[:strings.IndexByte(name, 0)]
	if want := "iqn.2024-01.org.example:a,i,0x800000000007"; name != want {
		t.Fatalf("initiator port name %q, want %q", name, want)
	}

	r = e.do(a, cdbPRIn(2), nil)
	wantGood(t, r, "report capabilities")
	if binary.BigEndian.Uint16(r.data) != 8 || len(r.data) != 8 {
		t.Fatalf("REPORT CAPABILITIES % x", r.data)
	}
	if r.data[2]&0x01 != 0 {
		t.Fatal("PTPL_C set, but an LU without a state file refuses APTPL")
	}
	if r.data[2]&0x08 == 0 {
		t.Fatal("SIP_C clear, but SPEC_I_PT is supported")
	}
	if r.data[3]&0x01 != 0 {
		t.Fatal("PTPL_A set without PTPL_C")
	}
}
