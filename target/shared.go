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
	"sync"

	"github.com/metrolun/metrolun/internal/durable"
)

// The LU state every site must agree on (prState) lives, when the volume
// implements SharedState, in a small record the volume keeps at every
// site. A site caches the decoded record and its version; before it
// evaluates reservations for a command it compares the version with the
// volume's (an atomic load) and reloads on a difference. A change (PR
// OUT, RESERVE(6), RELEASE(6), a reset, a lost nexus) is computed from the
// current record and installed with a compare-and-set, retried when
// another site won the race. Unit attentions stay per site: the record
// says what happened, and each site establishes them for its own nexuses.

// Record format 1, big endian:
//
//	"MLLU" format:u8 flags:u8 (bit 0 APTPL) generation:u32 type:u8
//	holder:nexus res6:nexus resets:u64
//	nregs:u16 { port:str rel:u16 key:u64 }
//	since:u64 nevents:u8 { version:u64 by:nexus asc:u16 nports:u16 { port:str } }
//
// where nexus is port:str rel:u16 (an empty port, with rel 0, for none)
// and str is len:u16 and that many bytes. Nothing may follow. A port is
// an initiator port ("name,i,0xISID") or, for a registration made from a
// format 00b TransportID (SPEC_I_PT, REGISTER AND MOVE; pr.go), an
// initiator device ("name", no ISID); releases before REGISTER AND MOVE
// read such a record and match no nexus to the device. APTPL (flags bit
// 0) is set by REGISTER, REGISTER AND IGNORE EXISTING KEY and REGISTER
// AND MOVE; the record is on disk at every site, so it survives a power
// loss either way.
//
// Record format 2 is format 1 followed by a sanitize marker (sanitize.go):
//
//	state:u8 sa:u8 flags:u8 (bit 0 AUSE) owner:u16 run:u64 beat:u32 progress:u16
//
// It is written only while a marker is present; without one the record is
// written as format 1, which releases that know only format 1 can read.
//
// A single-site LU (no SharedState) whose state must survive a power loss
// (APTPL) keeps it in a file (LUNConfig.PRStateFile) in format 1 with
// only the registrations, the reservation and APTPL; see savePR.
const (
	sharedMagic          = "MLLU"
	sharedFormat         = 1
	sharedFormatSanitize = 2
	maxSharedBytes       = 60 << 10
	maxSharedEvents      = 16
	// maxPortName bounds an initiator port name: an iSCSI name as long as
	// a text value may be, ",i,0x" and the ISID.
	maxPortName = maxValueLen + 32
	// maxChangeTries bounds the compare-and-set retries of one change.
	maxChangeTries = 20
)

// errSharedFull: the change would not fit in the record.
var errSharedFull = fmt.Errorf("LU state would exceed %d bytes", maxSharedBytes)

// sharedLU is how an LU reaches the record.
type sharedLU struct {
	ss SharedState // nil: this site alone serves the LU
	// inline: how a READ of a mirrored LU (ss not nil) runs on a
	// connection's reader (task.go); nil: nothing of it does.
	inline  InlineReader
	version uint64 // the version lu.pr was loaded from (counts changes without ss)
	// bad is why version badVersion of the record did not decode.
	bad        error
	badVersion uint64
	// changeMu lets one change at a time leave this site, so that the
	// site's own commands do not make each other retry.
	changeMu sync.Mutex
	// file is where a single-site LU keeps its state while APTPL is set
	// (empty: nowhere, APTPL is refused); saved is what the file holds
	// (nil: no file). Guarded by the LU's mu.
	file  string
	saved []byte
}

// sharedStateOf finds SharedState on v or on a volume it wraps.
func sharedStateOf(v Volume) SharedState { return implementedBy[SharedState](v) }

// implementedBy finds I on v or on a volume it wraps (Unwrap).
func implementedBy[I any](v Volume) I {
	var zero I
	for range 8 {
		if s, ok := v.(I); ok {
			return s
		}
		u, ok := v.(interface{ Unwrap() Volume })
		if !ok {
			return zero
		}
		v = u.Unwrap()
	}
	return zero
}

// deviceLossOf finds DeviceLoss on v or on a volume it wraps.
func deviceLossOf(v Volume) DeviceLoss {
	for range 8 {
		if l, ok := v.(DeviceLoss); ok {
			return l
		}
		u, ok := v.(interface{ Unwrap() Volume })
		if !ok {
			return nil
		}
		v = u.Unwrap()
	}
	return nil
}

// attachShared loads the record when the LU is created. Whatever happened
// before is no news to nexuses that do not exist yet: no unit attentions.
func (lu *LU) attachShared(v Volume) {
	ss := sharedStateOf(v)
	if ss == nil {
		return
	}
	lu.shared.ss = ss
	lu.shared.inline = implementedBy[InlineReader](v)
	ver, data := ss.SharedState()
	s, err := decodeShared(data)
	if err != nil {
		lu.shared.bad, lu.shared.badVersion = fmt.Errorf("version %d: %w", ver, err), ver
		return
	}
	lu.pr, lu.shared.version = *s, ver
}

// syncShared brings lu.pr up to date with the volume's record. Caller
// holds lu.mu. An error means the record cannot be read: reservations
// cannot be evaluated.
func (lu *LU) syncShared() error {
	sh := &lu.shared
	if sh.ss == nil {
		return nil
	}
	v := sh.ss.SharedVersion()
	if v == sh.version {
		return nil
	}
	if sh.bad != nil && v == sh.badVersion {
		return sh.bad
	}
	v, data := sh.ss.SharedState()
	if v == sh.version {
		return nil
	}
	s, err := decodeShared(data)
	if err != nil {
		sh.bad, sh.badVersion = fmt.Errorf("version %d: %w", v, err), v
		return sh.bad
	}
	sh.bad = nil
	lu.adopt(s, v)
	return nil
}

// sharedStateFailure answers a command whose reservation state could not
// be read.
func sharedStateFailure() *scsiResult {
	return checkCondition(senseHardwareError, ascInternalTargetFailure)
}

// adopt makes s, at version v, the LU's state and establishes the unit
// attentions that the changes since the state it replaces call for, for
// this site's nexuses. Caller holds lu.mu.
func (lu *LU) adopt(s *prState, v uint64) {
	old, oldV := lu.pr, lu.shared.version
	lu.pr, lu.shared.version = *s, v
	if s.resets != old.resets {
		// A logical unit reset at any site: every nexus of the LU hears
		// of it (SAM-5 section 6.6).
		lu.queueUA(ascBusDeviceReset, nil)
	}
	if oldV >= s.since && oldV < v {
		for _, e := range s.events {
			if e.version > oldV {
				lu.eventUA(&old, e)
			}
		}
		return
	}
	lu.diffUA(&old, s)
}

// eventUA establishes e's unit attentions for this site's nexuses: those
// that have sent commands here and those of ports registered here (whose
// nexus may log in again). The nexus that made the change gets none.
func (lu *LU) eventUA(old *prState, e prEvent) {
	for _, who := range e.ports {
		for _, port := range lu.uaPorts(old, who) {
			if port == e.by.port && e.by.rel == lu.relPort {
				continue
			}
			lu.addUA(port, e.asc)
		}
	}
}

// uaPorts returns the initiator ports at this site that a unit attention
// for the registration of who reaches: who's nexus here, or who if it
// registered here (its nexus may log in again); for an initiator device,
// the nexuses of its ports here. Caller holds lu.mu.
func (lu *LU) uaPorts(old *prState, who string) []string {
	if !isDevice(who) {
		if lu.nexuses[who] == nil && !old.registeredVia(who, lu.relPort) {
			return nil
		}
		return []string{who}
	}
	var out []string
	for id := range lu.nexuses {
		if covers(who, id) {
			out = append(out, id)
		}
	}
	return out
}

// diffUA is eventUA's fallback when the record no longer lists every
// change since old (this site missed more of them than the record keeps):
// it infers the unit attentions from the difference. A registration that
// is gone was preempted (or, when none is left, cleared); a registrants
// or all-registrants reservation that is gone or changed hands was
// released for the remaining registrants.
func (lu *LU) diffUA(old, s *prState) {
	has := func(p *prState, who string) bool {
		return slices.ContainsFunc(p.regs, func(r registration) bool { return r.port == who })
	}
	for _, r := range old.regs {
		if has(s, r.port) {
			continue
		}
		for _, port := range lu.uaPorts(old, r.port) {
			if len(s.regs) == 0 {
				lu.addUA(port, ascReservationsPreempted)
			} else {
				lu.addUA(port, ascRegistrationsPreempted)
			}
		}
	}
	if (regsOnly(old.rtype) || allRegistrants(old.rtype)) && (s.rtype != old.rtype || s.holder != old.holder) {
		for _, r := range s.regs {
			if !has(old, r.port) {
				continue
			}
			for _, port := range lu.uaPorts(old, r.port) {
				if s.rtype == 0 || !s.isHolder(itNexus{port, lu.relPort}) {
					lu.addUA(port, ascReservationsReleased)
				}
			}
		}
	}
}

// change applies f to a copy of the LU's shared state and makes the
// result the LU's state at every site. f returns the command's result
// and whether it changed the state; it may run more than once (when
// another site changed the state meanwhile) and touches nothing but p.
// It runs with lu.mu held.
func (lu *LU) change(f func(p *prState) (*scsiResult, bool)) *scsiResult {
	sh := &lu.shared
	if sh.ss == nil {
		return lu.changeLocal(f)
	}
	sh.changeMu.Lock()
	defer sh.changeMu.Unlock()
	for range maxChangeTries {
		lu.mu.Lock()
		if err := lu.syncShared(); err != nil {
			lu.mu.Unlock()
			return sharedStateFailure()
		}
		ver := sh.version
		next := lu.pr.clone()
		res, changed := f(next)
		lu.mu.Unlock()
		if !changed {
			return res
		}
		data, err := next.record(ver + 1)
		if err != nil {
			return checkCondition(senseIllegalRequest, ascInsufficientRegResources)
		}
		ok, err := sh.ss.SetSharedState(ver, data)
		if err != nil {
			return volumeError(err, false)
		}
		if !ok {
			continue // another site changed it first: recompute
		}
		// Adopt what is there now (ours, or later still), which
		// establishes this change's unit attentions here too.
		lu.mu.Lock()
		lu.syncShared()
		lu.mu.Unlock()
		return res
	}
	// The record kept changing under us; the initiator may retry.
	return &scsiResult{status: statusBusy}
}

// changeLocal is change for an LU that this site alone serves.
func (lu *LU) changeLocal(f func(p *prState) (*scsiResult, bool)) *scsiResult {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	next := lu.pr.clone()
	res, changed := f(next)
	if !changed {
		return res
	}
	v := lu.shared.version + 1
	next.since, next.events = lu.shared.version, nil
	if _, err := next.encode(); err != nil {
		// The same bound as a shared record: memory stays bounded.
		return checkCondition(senseIllegalRequest, ascInsufficientRegResources)
	}
	if e := next.pending; e != nil {
		e.version = v
		next.events = []prEvent{*e}
	}
	next.pending = nil
	if err := lu.savePR(next); err != nil {
		// Not GOOD before the state is where a power loss leaves it.
		return sharedStateFailure()
	}
	lu.adopt(next, v)
	lu.pr.since, lu.pr.events = v, nil
	return res
}

// record encodes p as version v of the record: the pending event joins
// the list, which loses its oldest entries to stay within
// maxSharedEvents and maxSharedBytes.
func (p *prState) record(v uint64) ([]byte, error) {
	if e := p.pending; e != nil {
		e.version = v
		p.events = append(p.events, *e)
		p.pending = nil
	}
	for {
		if len(p.events) > maxSharedEvents {
			p.since, p.events = p.events[0].version, p.events[1:]
			continue
		}
		b, err := p.encode()
		if !errors.Is(err, errSharedFull) || len(p.events) == 0 {
			return b, err
		}
		p.since, p.events = p.events[0].version, p.events[1:]
	}
}

// encode returns p in record format 1. What goes out must come back:
// the record is checked as strictly when it is written as when it is read.
func (p *prState) encode() ([]byte, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	return p.encodeUnchecked()
}

func (p *prState) encodeUnchecked() ([]byte, error) {
	var flags byte
	if p.aptpl {
		flags |= 1
	}
	b := make([]byte, 0, 256)
	b = append(b, sharedMagic...)
	b = append(b, p.recordFormat(), flags)
	b = binary.BigEndian.AppendUint32(b, p.generation)
	b = append(b, p.rtype)
	b = appendNexus(b, p.holder)
	b = appendNexus(b, p.res6)
	b = binary.BigEndian.AppendUint64(b, p.resets)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.regs)))
	for _, r := range p.regs {
		b = appendStr(b, r.port)
		b = binary.BigEndian.AppendUint16(b, r.rel)
		b = binary.BigEndian.AppendUint64(b, r.key)
	}
	b = binary.BigEndian.AppendUint64(b, p.since)
	b = append(b, byte(len(p.events)))
	for _, e := range p.events {
		b = binary.BigEndian.AppendUint64(b, e.version)
		b = appendNexus(b, e.by)
		b = binary.BigEndian.AppendUint16(b, e.asc)
		b = binary.BigEndian.AppendUint16(b, uint16(len(e.ports)))
		for _, port := range e.ports {
			b = appendStr(b, port)
		}
		if len(b) > maxSharedBytes {
			break
		}
	}
	b = p.san.appendRecord(b)
	if len(b) > maxSharedBytes || len(p.regs) > 0xffff || len(p.events) > maxSharedEvents {
		return nil, errSharedFull
	}
	return b, nil
}

func appendStr(b []byte, s string) []byte {
	if len(s) > maxPortName {
		s = s[:maxPortName] // refused by validate
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendNexus(b []byte, n itNexus) []byte {
	return binary.BigEndian.AppendUint16(appendStr(b, n.port), n.rel)
}

// recordReader reads a record, remembering the first error.
type recordReader struct {
	b   []byte
	err error
}

func (r *recordReader) next(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = errors.New("truncated")
		return nil
	}
	x := r.b[:n]
	r.b = r.b[n:]
	return x
}

func (r *recordReader) u8() byte {
	if x := r.next(1); x != nil {
		return x[0]
	}
	return 0
}

func (r *recordReader) u16() uint16 {
	if x := r.next(2); x != nil {
		return binary.BigEndian.Uint16(x)
	}
	return 0
}

func (r *recordReader) u32() uint32 {
	if x := r.next(4); x != nil {
		return binary.BigEndian.Uint32(x)
	}
	return 0
}

func (r *recordReader) u64() uint64 {
	if x := r.next(8); x != nil {
		return binary.BigEndian.Uint64(x)
	}
	return 0
}

func (r *recordReader) str() string {
	n := int(r.u16())
	if n > maxPortName && r.err == nil {
		r.err = fmt.Errorf("initiator port name of %d bytes", n)
	}
	return string(r.next(n))
}

func (r *recordReader) nexus() itNexus {
	port := r.str()
	return itNexus{port, r.u16()}
}

// decodeShared decodes and checks a record; empty data is the state of
// an LU nobody has touched.
func decodeShared(data []byte) (*prState, error) {
	p := &prState{}
	if len(data) == 0 {
		return p, nil
	}
	if len(data) > maxSharedBytes {
		return nil, fmt.Errorf("LU state record: %d bytes, more than %d", len(data), maxSharedBytes)
	}
	r := &recordReader{b: data}
	if magic := r.next(len(sharedMagic)); string(magic) != sharedMagic {
		return nil, errors.New("LU state record: not a metrolun LU state record")
	}
	f := r.u8()
	if f != sharedFormat && f != sharedFormatSanitize {
		return nil, fmt.Errorf("LU state record: format %d, want %d or %d", f, sharedFormat, sharedFormatSanitize)
	}
	flags := r.u8()
	if flags&^1 != 0 {
		return nil, fmt.Errorf("LU state record: unknown flags 0x%02x", flags)
	}
	p.aptpl = flags&1 != 0
	p.generation = r.u32()
	p.rtype = r.u8()
	p.holder = r.nexus()
	p.res6 = r.nexus()
	p.resets = r.u64()
	nregs := int(r.u16())
	for i := 0; i < nregs && r.err == nil; i++ {
		port := r.str()
		rel := r.u16()
		p.regs = append(p.regs, registration{port: port, rel: rel, key: r.u64()})
	}
	p.since = r.u64()
	nev := int(r.u8())
	if nev > maxSharedEvents {
		return nil, fmt.Errorf("LU state record: %d events, at most %d", nev, maxSharedEvents)
	}
	for i := 0; i < nev && r.err == nil; i++ {
		e := prEvent{version: r.u64(), by: r.nexus(), asc: r.u16()}
		n := int(r.u16())
		for j := 0; j < n && r.err == nil; j++ {
			e.ports = append(e.ports, r.str())
		}
		p.events = append(p.events, e)
	}
	if f == sharedFormatSanitize {
		p.san = r.sanMark()
	}
	if r.err != nil {
		return nil, fmt.Errorf("LU state record: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("LU state record: %d bytes after the end", len(r.b))
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// validate checks what a record may hold, so that a garbled one is
// refused rather than believed.
func (p *prState) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("LU state record: "+format, a...)
	}
	switch p.rtype {
	case 0, prWriteExclusive, prExclusiveAccess, prWriteExclusiveRegs,
		prExclusiveAccessRegs, prWriteExclusiveAll, prExclusiveAccessAll:
	default:
		return bad("reservation type %d", p.rtype)
	}
	if err := checkNexus(p.holder); err != nil {
		return bad("holder: %v", err)
	}
	if err := checkNexus(p.res6); err != nil {
		return bad("RESERVE(6) holder: %v", err)
	}
	switch {
	case p.rtype == 0 && !p.holder.none():
		return bad("a holder without a reservation")
	case p.rtype != 0 && p.holder.none():
		return bad("a reservation without a holder")
	case p.rtype != 0 && !allRegistrants(p.rtype) && p.reg(p.holder.port) == nil:
		return bad("the reservation holder is not registered")
	}
	for i, r := range p.regs {
		if err := checkPort(r.port); err != nil {
			return bad("registration %d: %v", i, err)
		}
		if r.key == 0 {
			return bad("registration %d has key 0", i)
		}
		if slices.ContainsFunc(p.regs[:i], func(o registration) bool { return o.port == r.port }) {
			return bad("%s is registered twice", r.port)
		}
		if j := slices.IndexFunc(p.regs[:i], func(o registration) bool { return overlaps(o.port, r.port) }); j >= 0 {
			return bad("registrations of %s and %s overlap", p.regs[j].port, r.port)
		}
	}
	if err := p.san.validate(); err != nil {
		return bad("%v", err)
	}
	last := p.since
	for i, e := range p.events {
		if e.version <= last {
			return bad("event %d: version %d after %d", i, e.version, last)
		}
		last = e.version
		if err := checkNexus(e.by); err != nil {
			return bad("event %d: %v", i, err)
		}
		switch e.asc {
		case ascReservationsPreempted, ascReservationsReleased, ascRegistrationsPreempted:
		default:
			return bad("event %d: unit attention %04x", i, e.asc)
		}
		if len(e.ports) == 0 {
			return bad("event %d names no initiator port", i)
		}
		for _, port := range e.ports {
			if err := checkPort(port); err != nil {
				return bad("event %d: %v", i, err)
			}
		}
	}
	return nil
}

func checkPort(port string) error {
	switch {
	case port == "":
		return errors.New("empty initiator port name")
	case len(port) > maxPortName:
		return fmt.Errorf("initiator port name of %d bytes", len(port))
	case strings.IndexByte(port, 0) >= 0:
		return errors.New("NUL in an initiator port name")
	}
	return nil
}

// checkNexus accepts a nexus or none (empty port, relative port 0).
func checkNexus(n itNexus) error {
	if n.none() {
		if n.rel != 0 {
			return fmt.Errorf("relative port %d without an initiator port", n.rel)
		}
		return nil
	}
	return checkPort(n.port)
}

// durable is what of p survives a power loss with APTPL set: the
// registrations and the reservation. RESERVE(6) does not (SPC-2), the
// reset count and events concern nexuses that are gone, and PRgeneration
// is zero after a power on whatever APTPL (SPC-4 section 6.15.2).
func (p *prState) durable() *prState {
	return &prState{regs: slices.Clone(p.regs), holder: p.holder, rtype: p.rtype, aptpl: true}
}

// loadPR reads a single-site LU's state file, if any, when the LU is
// created. A cluster's LU has its record and ignores the file. A file
// that does not decode stops the LU from starting: believing it, or
// forgetting it, could both let an initiator past a reservation.
func (lu *LU) loadPR(path string) error {
	if path == "" || lu.shared.ss != nil {
		return nil
	}
	lu.shared.file = path
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("persistent reservations: %w", err)
	}
	s, err := decodeShared(data)
	if err != nil {
		return fmt.Errorf("persistent reservations in %s: %w", path, err)
	}
	if !s.aptpl {
		return fmt.Errorf("persistent reservations in %s: APTPL is not set", path)
	}
	lu.pr.regs, lu.pr.holder, lu.pr.rtype, lu.pr.aptpl = s.regs, s.holder, s.rtype, true
	lu.shared.saved = data
	return nil
}

// savePR makes the state file of a single-site LU say what next, about to
// be installed, must leave after a power loss: its registrations and
// reservation while APTPL is set, nothing (no file) otherwise. The file is
// replaced whole (written, synced, renamed, directory synced), so a crash
// leaves the old state or the new one. Caller holds lu.mu.
func (lu *LU) savePR(next *prState) error {
	sh := &lu.shared
	if sh.file == "" {
		return nil
	}
	if !next.aptpl {
		if sh.saved == nil {
			return nil
		}
		if err := os.Remove(sh.file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := durable.SyncDir(filepath.Dir(sh.file)); err != nil {
			return err
		}
		sh.saved = nil
		return nil
	}
	data, err := next.durable().encode()
	if err != nil {
		return err
	}
	if bytes.Equal(data, sh.saved) {
		return nil
	}
	if err := writeFileSynced(sh.file, data); err != nil {
		return err
	}
	sh.saved = data
	return nil
}

// writeFileSynced replaces path with data durably (durable.Replace),
// creating its directory if needed.
func writeFileSynced(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return durable.Replace(path, data, 0o644)
}
