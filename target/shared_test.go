package target

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeShared is the in-memory twin of the record a clustered volume keeps
// at every site: one record, versioned, replaced by compare-and-set.
type fakeShared struct {
	version atomic.Uint64

	mu   sync.Mutex
	data []byte
	sets int // successful SetSharedState calls
	lost int // calls that found the version changed
	// failWith, when set, is what every SetSharedState returns.
	failWith error
	// before, when set, runs (once) at the start of the next
	// SetSharedState: another site's change racing this one.
	before func()
	// interfere, when set, runs at the start of every SetSharedState.
	interfere func()
}

// sharedVolume is one site's volume: the data (shared, as mirroring would
// make it) and the site's view of the record.
type sharedVolume struct {
	*memVolume
	rec *fakeShared
}

var _ SharedState = (*sharedVolume)(nil)

func (v *sharedVolume) SharedState() (uint64, []byte) {
	v.rec.mu.Lock()
	defer v.rec.mu.Unlock()
	return v.rec.version.Load(), v.rec.data
}

func (v *sharedVolume) SharedVersion() uint64 { return v.rec.version.Load() }

func (v *sharedVolume) SetSharedState(expect uint64, data []byte) (bool, error) {
	r := v.rec
	r.mu.Lock()
	before, interfere := r.before, r.interfere
	r.before = nil
	r.mu.Unlock()
	if before != nil {
		before()
	}
	if interfere != nil {
		interfere()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failWith != nil {
		return false, r.failWith
	}
	if r.version.Load() != expect {
		r.lost++
		return false, nil
	}
	if len(data) > maxSharedBytes {
		return false, fmt.Errorf("record of %d bytes", len(data))
	}
	r.data = bytes.Clone(data)
	r.version.Store(expect + 1)
	r.sets++
	return true, nil
}

// put replaces the record behind every site's back.
func (r *fakeShared) put(data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.data = data
	r.version.Add(1)
}

func (r *fakeShared) counts() (sets, lost int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sets, r.lost
}

// newSites returns two sites serving one LU, A with target port group
// (and relative port) 1, B with 2, sharing the record.
func newSites(tb testing.TB) (a, b *lunEnv, rec *fakeShared) {
	tb.Helper()
	vol := newMemVolume(1 << 20)
	rec = &fakeShared{}
	site := func(tpgt uint16) *lunEnv {
		tgt := &Target{Name: testTargetName, lus: map[uint64]*LU{}}
		lu, err := newLU(tgt, LUNConfig{Volume: &sharedVolume{vol, rec}}, tpgt)
		if err != nil {
			tb.Fatalf("newLU: %v", err)
		}
		if lu.shared.ss == nil {
			tb.Fatal("the LU did not find SharedState on its volume")
		}
		tgt.lus[0] = lu
		tgt.lunList = []uint64{0}
		return &lunEnv{tb: tb, srv: NewServer(Config{PortalGroup: tpgt}), tgt: tgt, lu: lu, vol: vol}
	}
	return site(1), site(2), rec
}

var tur = []byte{0, 0, 0, 0, 0, 0}

func wantTURs(tb testing.TB, e *lunEnv, ns ...*Nexus) {
	tb.Helper()
	for _, n := range ns {
		wantGood(tb, e.do(n, tur, nil), "tur from "+n.id)
	}
}

func TestSharedReservationAcrossSites(t *testing.T) {
	A, B, rec := newSites(t)
	a, b := A.nexus("iqn.a", 1), B.nexus("iqn.b", 2)
	wantTURs(t, A, a)
	wantTURs(t, B, b)
	rd, wr, blk := cdbRW(0x28, 0, 1), cdbRW(0x2a, 0, 1), make([]byte, 512)

	wantGood(t, A.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a at A")
	wantGood(t, B.do(b, cdbPROut(prsaRegister, 0), prParams(0, 0xb, 0)), "register b at B")
	wantGood(t, A.do(a, cdbPROut(prsaReserve, prWriteExclusive), prParams(0xa, 0, 0)), "a reserves WE at A")
	for _, e := range []*lunEnv{A, B} {
		var n *Nexus = a
		if e == B {
			n = b
		}
		gen, keys := readKeys(t, e, n)
		if gen != 2 || fmt.Sprint(keys) != "[10 11]" {
			t.Fatalf("site %d: generation %d keys %v, want 2 [10 11]", e.lu.relPort, gen, keys)
		}
		if k, typ, ok := readReservation(t, e, n); !ok || k != 0xa || typ != prWriteExclusive {
			t.Fatalf("site %d: READ RESERVATION key %x type %d ok %v", e.lu.relPort, k, typ, ok)
		}
	}
	wantConflict(t, B.do(b, wr, blk), "b writes at B under a's WE")
	wantGood(t, B.do(b, rd, nil), "b reads at B under WE")
	wantGood(t, A.do(a, wr, blk), "a writes at A")
	wantConflict(t, B.do(b, cdbPROut(prsaReserve, prExclusiveAccess), prParams(0xb, 0, 0)), "b reserves over a")

	// The holder is an I_T nexus: the same initiator port through B's
	// target port is a registrant, not the holder (SPC-4 5.13.10).
	a2 := B.nexus("iqn.a", 1)
	wantConflict(t, B.do(a2, wr, blk), "a's port through B writes under WE")

	// READ FULL STATUS at B reports the target port each registration
	// was made through.
	r := B.do(b, cdbPRIn(3), nil)
	wantGood(t, r, "read full status")
	var rels []uint16
	for d := r.data[8:]; len(d) >= 24; {
		rels = append(rels, binary.BigEndian.Uint16(d[18:]))
		d = d[24+int(binary.BigEndian.Uint32(d[20:])):]
	}
	if fmt.Sprint(rels) != "[1 2]" {
		t.Fatalf("relative target ports %v, want [1 2]", rels)
	}
	if sets, lost := rec.counts(); sets != 3 || lost != 0 {
		t.Fatalf("%d sets, %d lost: want 3 and 0", sets, lost)
	}
}

func TestSharedPreemptAcrossSites(t *testing.T) {
	A, B, _ := newSites(t)
	a, c := A.nexus("iqn.a", 1), A.nexus("iqn.c", 3)
	b := B.nexus("iqn.b", 2)
	wantTURs(t, A, a, c)
	wantTURs(t, B, b)
	wr, blk := cdbRW(0x2a, 0, 1), make([]byte, 512)

	wantGood(t, A.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a")
	wantGood(t, A.do(c, cdbPROut(prsaRegister, 0), prParams(0, 0xc, 0)), "register c")
	wantGood(t, B.do(b, cdbPROut(prsaRegister, 0), prParams(0, 0xb, 0)), "register b")
	wantGood(t, A.do(a, cdbPROut(prsaReserve, prWriteExclusive), prParams(0xa, 0, 0)), "a reserves")

	// b preempts a from B: a's registration goes, the reservation moves,
	// and a, at A, hears REGISTRATIONS PREEMPTED (SPC-4 5.13.11.4).
	wantGood(t, B.do(b, cdbPROut(prsaPreempt, prWriteExclusive), prParams(0xb, 0xa, 0)), "b preempts a")
	wantSense(t, A.do(a, tur, nil), senseUnitAttention, ascRegistrationsPreempted, "a's unit attention at A")
	wantGood(t, A.do(a, tur, nil), "reported once")
	wantGood(t, A.do(c, tur, nil), "c was not preempted")
	wantGood(t, B.do(b, tur, nil), "the preempting nexus has none")
	wantConflict(t, A.do(a, wr, blk), "a writes after losing its registration")
	wantGood(t, B.do(b, wr, blk), "b writes as holder")
	if _, keys := readKeys(t, A, a); fmt.Sprint(keys) != "[12 11]" {
		t.Fatalf("keys at A after preempt: %v", keys)
	}

	// A registrants-only reservation released at B: the registrant at A
	// hears RESERVATIONS RELEASED (SPC-4 5.13.11.2.2).
	wantGood(t, B.do(b, cdbPROut(prsaRelease, prWriteExclusive), prParams(0xb, 0, 0)), "b releases")
	wantGood(t, B.do(b, cdbPROut(prsaReserve, prWriteExclusiveRegs), prParams(0xb, 0, 0)), "b reserves WE_RO")
	wantGood(t, B.do(b, cdbPROut(prsaRelease, prWriteExclusiveRegs), prParams(0xb, 0, 0)), "b releases WE_RO")
	wantSense(t, A.do(c, tur, nil), senseUnitAttention, ascReservationsReleased, "c after the release at B")
	wantGood(t, B.do(b, tur, nil), "the releasing nexus has none")

	// CLEAR at A: b, at B, hears RESERVATIONS PREEMPTED (SPC-4 5.13.11.3).
	wantGood(t, A.do(c, cdbPROut(prsaClear, 0), prParams(0xc, 0, 0)), "c clears")
	wantSense(t, B.do(b, tur, nil), senseUnitAttention, ascReservationsPreempted, "b after the clear at A")
	wantGood(t, A.do(c, tur, nil), "the clearing nexus has none")
	if _, keys := readKeys(t, B, b); len(keys) != 0 {
		t.Fatalf("keys at B after clear: %v", keys)
	}
}

func TestSharedReserve6AcrossSites(t *testing.T) {
	A, B, _ := newSites(t)
	a, b := A.nexus("iqn.a", 1), B.nexus("iqn.b", 2)
	wantTURs(t, A, a)
	wantTURs(t, B, b)
	reserve, release := []byte{0x16, 0, 0, 0, 0, 0}, []byte{0x17, 0, 0, 0, 0, 0}
	wr, blk := cdbRW(0x2a, 0, 1), make([]byte, 512)

	wantGood(t, A.do(a, reserve, nil), "a RESERVE(6) at A")
	wantConflict(t, B.do(b, wr, blk), "b writes at B")
	wantConflict(t, B.do(b, reserve, nil), "b RESERVE(6) at B")
	wantConflict(t, B.do(b, cdbPROut(prsaRegister, 0), prParams(0, 0xb, 0)), "b registers at B")
	wantGood(t, B.do(b, release, nil), "b RELEASE(6) releases nothing")
	wantConflict(t, B.do(b, wr, blk), "b writes after its RELEASE(6)")

	// A site releases only what its own nexuses hold: the same initiator
	// port leaving B's target port is not a's nexus at A.
	B.lu.nexusGone(B.nexus("iqn.a", 1))
	wantConflict(t, B.do(b, wr, blk), "b writes after a's port left B")
	A.lu.nexusGone(a)
	wantGood(t, B.do(b, wr, blk), "b writes after a's nexus at A went")
	wantGood(t, B.do(b, reserve, nil), "b RESERVE(6) at B")
	a = A.nexus("iqn.a", 1)
	wantConflict(t, A.do(a, wr, blk), "a writes at A")
	wantGood(t, B.do(b, release, nil), "b RELEASE(6)")
	wantGood(t, A.do(a, wr, blk), "a writes after the release")
}

func TestSharedResetAcrossSites(t *testing.T) {
	A, B, _ := newSites(t)
	a := A.nexus("iqn.a", 1)
	b1, b2 := B.nexus("iqn.b", 2), B.nexus("iqn.b", 3)
	wantTURs(t, A, a)
	wantTURs(t, B, b1, b2)
	wantGood(t, B.do(b1, []byte{0x16, 0, 0, 0, 0, 0}, nil), "b1 RESERVE(6) at B")

	A.lu.reset(a)
	wantSense(t, A.do(a, tur, nil), senseUnitAttention, ascBusDeviceReset, "a at A")
	for _, n := range []*Nexus{b1, b2} {
		wantSense(t, B.do(n, tur, nil), senseUnitAttention, ascBusDeviceReset, n.id+" at B")
		wantGood(t, B.do(n, tur, nil), n.id+" once")
	}
	// The reset released b1's RESERVE(6) (SAM-5 6.6).
	wantGood(t, A.do(a, cdbRW(0x2a, 0, 1), make([]byte, 512)), "a writes after the reset")

	// And the other way round.
	B.lu.reset(b2)
	wantSense(t, A.do(a, tur, nil), senseUnitAttention, ascBusDeviceReset, "a after the reset at B")
	wantGood(t, A.do(a, tur, nil), "a once")
}

// TestSharedChangeRace: A's REGISTER computes its record, B registers
// before A's compare-and-set lands; A must reload, recompute and retry,
// and both registrations survive.
func TestSharedChangeRace(t *testing.T) {
	A, B, rec := newSites(t)
	a, b := A.nexus("iqn.a", 1), B.nexus("iqn.b", 2)
	wantTURs(t, A, a)
	wantTURs(t, B, b)
	rec.before = func() {
		wantGood(t, B.do(b, cdbPROut(prsaRegister, 0), prParams(0, 0xb, 0)), "b registers in the middle")
	}
	wantGood(t, A.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "a registers")
	if sets, lost := rec.counts(); sets != 2 || lost != 1 {
		t.Fatalf("%d sets, %d lost: want 2 and 1", sets, lost)
	}
	for _, e := range []*lunEnv{A, B} {
		gen, keys := readKeys(t, e, a)
		if gen != 2 || fmt.Sprint(keys) != "[11 10]" {
			t.Fatalf("site %d: generation %d keys %v, want 2 [11 10]", e.lu.relPort, gen, keys)
		}
	}

	// A race that changes the outcome: a reserves while b, at B, takes
	// the reservation first. The retry sees b's and conflicts.
	rec.before = func() {
		wantGood(t, B.do(b, cdbPROut(prsaReserve, prExclusiveAccess), prParams(0xb, 0, 0)), "b reserves first")
	}
	wantConflict(t, A.do(a, cdbPROut(prsaReserve, prExclusiveAccess), prParams(0xa, 0, 0)), "a's reserve after losing the race")
	if k, _, _ := readReservation(t, A, a); k != 0xb {
		t.Fatalf("holder key %x, want b", k)
	}

	// A record that never stops changing: BUSY after bounded retries.
	rec.interfere = func() { rec.put(rec.data) }
	r := A.do(a, cdbPROut(prsaRegister, 0), prParams(0xa, 0xaa, 0))
	if r.status != statusBusy {
		t.Fatalf("endless interference: %v, want BUSY", r)
	}
	rec.interfere = nil
	if _, keys := readKeys(t, A, a); fmt.Sprint(keys) != "[11 10]" {
		t.Fatalf("keys %v after a BUSY REGISTER", keys)
	}
}

// TestSharedConcurrent registers from both sites at once; every
// registration must survive the compare-and-set races.
func TestSharedConcurrent(t *testing.T) {
	A, B, rec := newSites(t)
	const per = 20
	var wg sync.WaitGroup
	errs := make(chan string, 2*per)
	for i, e := range []*lunEnv{A, B} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range per {
				n := e.nexus(fmt.Sprintf("iqn.site%d", i), byte(j))
				r := e.do(n, cdbPROut(prsaRegister, 0), prParams(0, uint64(1+i*per+j), 0))
				if r.status != statusGood {
					errs <- fmt.Sprintf("site %d register %d: %v", i, j, r)
				}
				e.do(n, tur, nil)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	for _, e := range []*lunEnv{A, B} {
		gen, keys := readKeys(t, e, e.nexus("iqn.x", 1))
		if gen != 2*per || len(keys) != 2*per {
			t.Fatalf("site %d: generation %d, %d keys; want %d", e.lu.relPort, gen, len(keys), 2*per)
		}
	}
	sets, lost := rec.counts()
	t.Logf("%d sets, %d lost races", sets, lost)
}

func TestSharedStateFailures(t *testing.T) {
	A, B, rec := newSites(t)
	a, b := A.nexus("iqn.a", 1), B.nexus("iqn.b", 2)
	wantTURs(t, A, a)
	wantGood(t, A.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a")

	// The volume cannot store the record (a site without its lease):
	// the command fails as the volume's errors do, nothing changes.
	rec.failWith = &NotReadyError{ASC: ascNotReadyUnavailable}
	wantSense(t, B.do(b, cdbPROut(prsaRegister, 0), prParams(0, 0xb, 0)), senseNotReady, ascNotReadyUnavailable, "register b while the record cannot be set")
	// A reset that cannot reach the other sites still reaches this one's
	// nexuses.
	B.lu.reset(b)
	rec.failWith = nil
	wantSense(t, B.do(b, tur, nil), senseUnitAttention, ascBusDeviceReset, "b after a reset at B")
	wantGood(t, A.do(a, tur, nil), "the reset never reached A")
	if _, keys := readKeys(t, B, b); fmt.Sprint(keys) != "[10]" {
		t.Fatalf("keys %v after a failed REGISTER", keys)
	}

	// A garbled record: reservations cannot be evaluated, so commands
	// subject to them fail; INQUIRY and REPORT LUNS still answer.
	_, saved := A.lu.shared.ss.SharedState()
	rec.put([]byte("MLLU\x01\x00garbage"))
	wantSense(t, A.do(a, tur, nil), senseHardwareError, ascInternalTargetFailure, "tur with a garbled record")
	wantSense(t, B.do(b, cdbPRIn(0), nil), senseHardwareError, ascInternalTargetFailure, "PR IN with a garbled record")
	wantSense(t, B.do(b, cdbPROut(prsaRegister, 0), prParams(0, 0xb, 0)), senseHardwareError, ascInternalTargetFailure, "PR OUT with a garbled record")
	wantGood(t, A.do(a, cdbInquiry(false, 0, 36), nil), "inquiry with a garbled record")
	rec.put(saved)
	wantGood(t, A.do(a, tur, nil), "tur once the record is good again")
	if _, keys := readKeys(t, B, b); fmt.Sprint(keys) != "[10]" {
		t.Fatalf("keys %v after the record came back", keys)
	}
}

// TestSharedRecordBound: registrations stop at the record's size with
// INSUFFICIENT REGISTRATION RESOURCES (SPC-4 5.13.7), clustered or not.
func TestSharedRecordBound(t *testing.T) {
	A, _, _ := newSites(t)
	single := newLUEnv(t, LUNConfig{})
	for _, e := range []*lunEnv{A, single} {
		long := "iqn.2024-01.org.example:" + strings.Repeat("x", 8000)
		var i int
		for i = 0; i < 100; i++ {
			r := e.do(e.nexus(long, byte(i)), cdbPROut(prsaRegister, 0), prParams(0, uint64(i+1), 0))
			if r.status != statusGood {
				wantSense(t, r, senseIllegalRequest, ascInsufficientRegResources, "registration beyond the record")
				break
			}
		}
		if i < 5 || i == 100 {
			t.Fatalf("%d registrations of 8 KiB names fit", i)
		}
		if _, keys := readKeys(t, e, e.nexus("iqn.x", 1)); len(keys) != i {
			t.Fatalf("%d keys after %d registrations", len(keys), i)
		}
	}
}

// TestSharedMissedEvents: B sleeps through more changes than the record
// remembers; it still tells its nexus that its registration was
// preempted, from the difference.
func TestSharedMissedEvents(t *testing.T) {
	A, B, _ := newSites(t)
	a, a2 := A.nexus("iqn.a", 1), A.nexus("iqn.a2", 2)
	b := B.nexus("iqn.b", 3)
	wantTURs(t, A, a, a2)
	wantTURs(t, B, b)
	wantGood(t, B.do(b, cdbPROut(prsaRegister, 0), prParams(0, 0xb, 0)), "register b")
	wantGood(t, A.do(a, cdbPROut(prsaRegister, 0), prParams(0, 0xa, 0)), "register a")
	wantGood(t, A.do(a, cdbPROut(prsaPreempt, prWriteExclusive), prParams(0xa, 0xb, 0)), "a preempts b")
	for i := range maxSharedEvents + 2 {
		wantGood(t, A.do(a2, cdbPROut(prsaRegister, 0), prParams(0, 0xc, 0)), fmt.Sprint("register a2 ", i))
		wantGood(t, A.do(a, cdbPROut(prsaPreempt, prWriteExclusive), prParams(0xa, 0xc, 0)), fmt.Sprint("a preempts a2 ", i))
		wantSense(t, A.do(a2, tur, nil), senseUnitAttention, ascRegistrationsPreempted, fmt.Sprint("a2 after preemption ", i))
	}
	A.lu.mu.Lock()
	since := A.lu.pr.since
	A.lu.mu.Unlock()
	if since == 0 {
		t.Fatal("the record kept every event; the test needs it to drop some")
	}
	wantSense(t, B.do(b, tur, nil), senseUnitAttention, ascRegistrationsPreempted, "b after missing the events")
	wantGood(t, B.do(b, tur, nil), "once")
}

// TestSharedNewNexusNoStaleUA: a nexus that first appears at a site
// after a change there is no news to it.
func TestSharedNewNexusNoStaleUA(t *testing.T) {
	A, B, _ := newSites(t)
	a := A.nexus("iqn.a", 1)
	wantTURs(t, A, a)
	A.lu.reset(a)
	wantGood(t, B.do(B.nexus("iqn.b", 2), tur, nil), "a nexus new at B")
}

type wrappedVolume struct{ Volume }

func (w wrappedVolume) Unwrap() Volume { return w.Volume }

func TestSharedStateOf(t *testing.T) {
	sv := &sharedVolume{newMemVolume(1 << 20), &fakeShared{}}
	if sharedStateOf(wrappedVolume{sv}) != SharedState(sv) {
		t.Fatal("SharedState not found through Unwrap")
	}
	if sharedStateOf(newMemVolume(1<<20)) != nil || sharedStateOf(wrappedVolume{newMemVolume(1 << 20)}) != nil {
		t.Fatal("SharedState found on a plain volume")
	}
}

func sampleState() *prState {
	return &prState{
		generation: 7,
		regs: []registration{
			{port: "iqn.a,i,0x800000000001", rel: 1, key: 0xa},
			{port: "iqn.b,i,0x800000000002", rel: 2, key: 0xb},
		},
		holder: itNexus{"iqn.a,i,0x800000000001", 1},
		rtype:  prWriteExclusiveRegs,
		res6:   itNexus{},
		resets: 3,
		since:  4,
		events: []prEvent{
			{version: 5, by: itNexus{"iqn.c,i,0x800000000003", 2}, asc: ascRegistrationsPreempted, ports: []string{"iqn.d,i,0x800000000004"}},
			{version: 9, by: itNexus{"iqn.b,i,0x800000000002", 2}, asc: ascReservationsReleased, ports: []string{"iqn.a,i,0x800000000001", "iqn.b,i,0x800000000002"}},
		},
	}
}

// deviceState has APTPL set and a reservation held through a
// registration made for an initiator device (TransportID format 00b).
func deviceState() *prState {
	return &prState{
		generation: 2,
		regs: []registration{
			{port: "iqn.a,i,0x800000000001", rel: 1, key: 0xa},
			{port: "iqn.c", rel: 2, key: 0xc},
		},
		holder: itNexus{"iqn.c", 2},
		rtype:  prExclusiveAccess,
		aptpl:  true,
	}
}

func TestSharedRecordRoundTrip(t *testing.T) {
	for _, p := range []*prState{{}, sampleState(), {res6: itNexus{"iqn.r,i,0x1", 9}, resets: 1}, deviceState()} {
		b, err := p.encode()
		if err != nil {
			t.Fatal(err)
		}
		q, err := decodeShared(b)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprintf("%+v", *p) != fmt.Sprintf("%+v", *q) {
			t.Fatalf("round trip:\n %+v\n %+v", *p, *q)
		}
	}
	if p, err := decodeShared(nil); err != nil || p.active() {
		t.Fatalf("empty record: %+v, %v", p, err)
	}
}

func TestSharedRecordRejects(t *testing.T) {
	good, err := sampleState().encode()
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(p *prState)) []byte {
		p := sampleState()
		f(p)
		// Encoded without the checks, as a hostile or buggy peer might.
		raw, err := p.encodeUnchecked()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"oversize", make([]byte, maxSharedBytes+1), "more than"},
		{"magic", append([]byte("XXXX"), good[4:]...), "not a metrolun"},
		{"format", append(append([]byte(sharedMagic), 3), good[5:]...), "format 3"},
		{"flags", append(append([]byte(sharedMagic), 1, 0x80), good[6:]...), "unknown flags"},
		{"truncated", good[:len(good)-3], "truncated"},
		{"trailing", append(append([]byte(nil), good...), 0), "after the end"},
		{"type", mutate(func(p *prState) { p.rtype = 2 }), "reservation type"},
		{"holder unregistered", mutate(func(p *prState) { p.holder.port = "iqn.z" }), "not registered"},
		{"no holder", mutate(func(p *prState) { p.holder = itNexus{} }), "without a holder"},
		{"stray holder", mutate(func(p *prState) { p.rtype = 0 }), "holder without"},
		{"twice", mutate(func(p *prState) { p.regs[1].port = p.regs[0].port }), "registered twice"},
		{"overlap", mutate(func(p *prState) { p.regs[1].port = "iqn.a" }), "overlap"},
		{"key 0", mutate(func(p *prState) { p.regs[1].key = 0 }), "key 0"},
		{"empty port", mutate(func(p *prState) { p.regs[1].port = "" }), "empty initiator port"},
		{"nul", mutate(func(p *prState) { p.regs[1].port = "a\x00b" }), "NUL"},
		{"event order", mutate(func(p *prState) { p.events[1].version = 5 }), "version 5 after 5"},
		{"event before since", mutate(func(p *prState) { p.since = 5 }), "version 5 after 5"},
		{"event asc", mutate(func(p *prState) { p.events[0].asc = 0x2900 }), "unit attention"},
		{"event ports", mutate(func(p *prState) { p.events[0].ports = nil }), "names no"},
		{"rel without port", mutate(func(p *prState) { p.res6.rel = 3 }), "without an initiator port"},
	}
	for _, c := range cases {
		_, err := decodeShared(c.data)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one with %q", c.name, err, c.want)
		}
	}
}

// FuzzSharedState: whatever a peer or a disk hands over, decoding never
// panics, and a record it accepts encodes back to the same bytes.
func FuzzSharedState(f *testing.F) {
	good, _ := sampleState().encode()
	empty, _ := (&prState{}).encode()
	dev, _ := deviceState().encode()
	f.Add(good)
	f.Add(empty)
	f.Add(dev)
	f.Add([]byte("MLLU"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := decodeShared(data)
		if err != nil {
			if p != nil {
				t.Fatal("a state with an error")
			}
			return
		}
		if len(data) == 0 {
			return
		}
		b, err := p.encode()
		if err != nil {
			t.Fatalf("accepted record does not encode: %v", err)
		}
		if !bytes.Equal(b, data) {
			t.Fatalf("round trip changed the record:\n% x\n% x", data, b)
		}
	})
}

// startSharedServers runs two servers, sites with port groups 1 and 2,
// whose LUN 0 shares one record.
func startSharedServers(t *testing.T) (a, b string, rec *fakeShared) {
	t.Helper()
	vol := newMemVolume(1 << 20)
	rec = &fakeShared{}
	start := func(tpgt uint16) string {
		srv := NewServer(Config{PortalGroup: tpgt})
		tc := TargetConfig{Name: e2eTarget, LUNs: []LUNConfig{{ID: 0, Volume: &sharedVolume{vol, rec}}}}
		if err := srv.AddTarget(tc); err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.Serve(l) }()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Error(err)
			}
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
		return l.Addr().String()
	}
	return start(1), start(2), rec
}

// TestSharedLogoutReleasesReserve6First: the initiator may use another
// site the moment it has the logout answer, so the RESERVE(6) of the
// nexus that logged out must be released everywhere by then (libiscsi's
// Reserve6.Logout does exactly that across two paths).
func TestSharedLogoutReleasesReserve6First(t *testing.T) {
	addrA, addrB, rec := startSharedServers(t)
	a := dial(t, addrA)
	a.login(loginOpts{})
	b := dial(t, addrB)
	b.isid[5] = 2
	b.login(loginOpts{})
	status := func(in *initiator, cdb []byte) byte {
		t.Helper()
		cmd := in.scsiCmd(cdb, 0, false, false, true)
		in.send(cmd)
		return in.expectResponse(cmd.ITT()).BHS[3]
	}
	reserve := []byte{0x16, 0, 0, 0, 0, 0}
	if st := status(a, reserve); st != statusGood {
		t.Fatalf("RESERVE(6) at A: status 0x%02x", st)
	}
	if st := status(b, reserve); st != statusReservationConflict {
		t.Fatalf("RESERVE(6) at B while A holds it: status 0x%02x", st)
	}
	// The release holds at the record until the test has checked that
	// the logout answer is not already on its way.
	releasing, proceed := make(chan struct{}), make(chan struct{})
	rec.mu.Lock()
	rec.before = func() { close(releasing); <-proceed }
	rec.mu.Unlock()
	lo := &PDU{}
	lo.BHS[0] = 0x40 | opLogoutReq
	lo.BHS[1] = 0x80 // close the session
	lo.put32(16, a.nextITT())
	lo.put32(24, a.cmdSN)
	lo.put32(28, a.expStatSN)
	a.send(lo)
	select {
	case <-releasing:
	case <-time.After(e2eTimeout):
		t.Fatal("the logout never released the RESERVE(6)")
	}
	// On loopback an answer already written is already readable; none
	// may be, since the release has not finished.
	a.nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	p, err := a.rd.ReadPDU()
	close(proceed)
	if err == nil {
		t.Fatalf("PDU 0x%02x before the RESERVE(6) was released", p.Opcode())
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("before the RESERVE(6) was released: %v", err)
	}
	a.nc.SetReadDeadline(time.Now().Add(e2eTimeout))
	if r := a.recv(); r.Opcode() != opLogoutRsp || r.BHS[2] != 0 {
		t.Fatalf("logout answer opcode 0x%02x response %d", r.Opcode(), r.BHS[2])
	}
	if sets, _ := rec.counts(); sets != 2 {
		t.Fatalf("%d changes of the record, want 2 (reserve, release)", sets)
	}
	if st := status(b, reserve); st != statusGood {
		t.Fatalf("RESERVE(6) at B after A's logout: status 0x%02x", st)
	}
}
