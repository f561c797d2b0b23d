package target

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// Tests of SANITIZE (SBC-4 section 5.30) and its sanitize model (section
// 4.11). They drive prepare()+exec() as the other SCSI tests do; a gated
// volume holds each write of a sanitize until the test lets it through,
// so that a test can look at the LU between two steps without sleeping.

func cdbSanitize(sa byte, immed, ause bool, paramLen int) []byte {
	c := make([]byte, 10)
	c[0] = opSanitize
	c[1] = sa
	if immed {
		c[1] |= 0x80
	}
	if ause {
		c[1] |= 0x20
	}
	binary.BigEndian.PutUint16(c[7:], uint16(paramLen))
	return c
}

// owParams is an OVERWRITE parameter list (SBC-4 table 91).
func owParams(invert bool, count byte, pat []byte) []byte {
	b := []byte{count, 0, 0, 0}
	if invert {
		b[0] |= 0x80
	}
	binary.BigEndian.PutUint16(b[2:], uint16(len(pat)))
	return append(b, pat...)
}

func sanitizeOverwrite(immed, ause bool, invert bool, count byte, pat []byte) ([]byte, []byte) {
	p := owParams(invert, count, pat)
	return cdbSanitize(sanOverwrite, immed, ause, len(p)), p
}

// gatedVolume holds every write and unmap until the test releases it.
// When the test ends, held and later operations fail instead, so that a
// failed test does not leave a sanitize (and a server) waiting for ever.
type gatedVolume struct {
	*memVolume
	entered chan int64 // the offset of each operation as it starts to wait
	release chan struct{}
	stop    chan struct{}
	halt    func() // closes stop, once
}

func newGatedVolume(tb testing.TB, size int64) *gatedVolume {
	g := &gatedVolume{memVolume: newMemVolume(size), entered: make(chan int64), release: make(chan struct{}), stop: make(chan struct{})}
	g.halt = sync.OnceFunc(func() { close(g.stop) })
	tb.Cleanup(g.halt)
	return g
}

var errGateStopped = errors.New("gatedVolume: the test ended")

func (g *gatedVolume) hold(off int64) error {
	select {
	case g.entered <- off:
	case <-g.stop:
		return errGateStopped
	}
	select {
	case <-g.release:
		return nil
	case <-g.stop:
		return errGateStopped
	}
}

func (g *gatedVolume) WriteAt(p []byte, off int64, fua bool) error {
	if err := g.hold(off); err != nil {
		return err
	}
	return g.memVolume.WriteAt(p, off, fua)
}

func (g *gatedVolume) Unmap(off, n int64) error {
	if err := g.hold(off); err != nil {
		return err
	}
	return g.memVolume.Unmap(off, n)
}

// waitEntered waits until the next operation is held and returns its offset.
func (g *gatedVolume) waitEntered(tb testing.TB) int64 {
	tb.Helper()
	select {
	case off := <-g.entered:
		return off
	case <-time.After(10 * time.Second):
		tb.Fatal("the sanitize did not reach its next write within 10s")
		return 0
	}
}

// step lets n held operations through, one at a time.
func (g *gatedVolume) step(tb testing.TB, n int) {
	tb.Helper()
	for range n {
		g.waitEntered(tb)
		g.release <- struct{}{}
	}
}

// recordingVolume notes the length and first byte of every write.
type recordingVolume struct {
	*memVolume
	mu     sync.Mutex
	writes [][2]int // length, first byte
	wrote  chan struct{}
}

func (v *recordingVolume) WriteAt(p []byte, off int64, fua bool) error {
	v.mu.Lock()
	v.writes = append(v.writes, [2]int{len(p), int(p[0])})
	v.mu.Unlock()
	if v.wrote != nil {
		select {
		case v.wrote <- struct{}{}:
		default:
		}
	}
	return v.memVolume.WriteAt(p, off, fua)
}

func (v *recordingVolume) log() [][2]int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([][2]int(nil), v.writes...)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// sanEnv is an LU whose sanitize runs unthrottled.
func sanEnv(tb testing.TB, cfg LUNConfig) *lunEnv {
	e := newLUEnv(tb, cfg)
	e.lu.san.rate = -1
	return e
}

func jobOf(lu *LU) *sanJob {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	return lu.san.job
}

func waitJob(tb testing.TB, j *sanJob) *scsiResult {
	tb.Helper()
	select {
	case <-j.finished:
		return j.result
	case <-time.After(10 * time.Second):
		tb.Fatal("sanitize job did not finish within 10s")
		return nil
	}
}

// wantProgress checks NOT READY, SANITIZE IN PROGRESS with the progress
// indication in the sense-key specific bytes (SPC-4 4.5.2.4.4).
func wantProgress(tb testing.TB, r cmdResult, progress uint16, what string) {
	tb.Helper()
	wantSense(tb, r, senseNotReady, ascSanitizeInProgress, what)
	if r.sense[15] != 0x80 || binary.BigEndian.Uint16(r.sense[16:]) != progress {
		tb.Fatalf("%s: sense-key specific % x, want 80 and progress %d", what, r.sense[15:18], progress)
	}
}

// requestSense returns REQUEST SENSE's sense data as a cmdResult with
// CHECK CONDITION, so that wantSense and wantProgress apply.
func requestSense(tb testing.TB, e *lunEnv, n *Nexus) cmdResult {
	tb.Helper()
	r := e.do(n, []byte{0x03, 0, 0, 0, 18, 0}, nil)
	wantGood(tb, r, "REQUEST SENSE")
	return cmdResult{status: statusCheckCondition, sense: r.data}
}

func TestSanitizeCDBChecks(t *testing.T) {
	e := sanEnv(t, LUNConfig{})
	n := e.nexus("iqn.a", 1)
	bad := func(cdb, out []byte, field int, what string) {
		t.Helper()
		r := e.do(n, cdb, out)
		wantSense(t, r, senseIllegalRequest, ascInvalidFieldInCDB, what)
		if r.sense[15]&0xc0 != 0xc0 || int(binary.BigEndian.Uint16(r.sense[16:])) != field {
			t.Fatalf("%s: field pointer % x, want CDB byte %d", what, r.sense[15:18], field)
		}
	}
	c := cdbSanitize(sanBlockErase, false, false, 0)
	c[1] |= 0x40
	bad(c, nil, 1, "reserved bit in byte 1")
	for i := 2; i <= 6; i++ {
		c := cdbSanitize(sanBlockErase, false, false, 0)
		c[i] = byte(i)
		bad(c, nil, i, "reserved byte")
	}
	// Reserved service actions, and CRYPTOGRAPHIC ERASE, which metrolun
	// cannot honestly perform (its data is not encrypted).
	for sa := byte(0); sa < 0x1f; sa++ {
		if sa == sanOverwrite || sa == sanBlockErase {
			continue
		}
		bad(cdbSanitize(sa, false, false, 0), nil, 1, "service action")
	}
	// PARAMETER LIST LENGTH (SBC-4 table 89).
	for _, l := range []int{0, 1, 4, 512 + 5, 1024} {
		bad(cdbSanitize(sanOverwrite, false, false, l), make([]byte, l), 7, "overwrite parameter list length")
	}
	bad(cdbSanitize(sanBlockErase, false, false, 8), make([]byte, 8), 7, "block erase with parameters")
	bad(cdbSanitize(sanExitFailure, false, false, 8), make([]byte, 8), 7, "exit failure mode with parameters")
	if e.vol.writes+e.vol.unmaps != 0 {
		t.Fatal("a refused SANITIZE reached the volume")
	}

	// The parameter list (SBC-4 table 91).
	badParam := func(p []byte, asc uint16, what string) {
		t.Helper()
		wantSense(t, e.do(n, cdbSanitize(sanOverwrite, false, false, len(p)), p), senseIllegalRequest, asc, what)
	}
	p := owParams(false, 1, []byte{1, 2, 3, 4})
	p[0] |= 0x20
	badParam(p, ascInvalidFieldInParam, "TEST field")
	badParam(owParams(false, 0, []byte{1}), ascInvalidFieldInParam, "OVERWRITE COUNT 0")
	zero := owParams(false, 1, []byte{1, 2, 3, 4})
	binary.BigEndian.PutUint16(zero[2:], 0)
	badParam(zero, ascInvalidFieldInParam, "pattern length 0")
	big := owParams(false, 1, make([]byte, 512))
	binary.BigEndian.PutUint16(big[2:], 513)
	badParam(big, ascInvalidFieldInParam, "pattern longer than a block")
	short := owParams(false, 1, make([]byte, 16))
	binary.BigEndian.PutUint16(short[2:], 17)
	badParam(short, ascParamListLength, "pattern longer than the list")
	if e.vol.writes != 0 {
		t.Fatal("a refused OVERWRITE wrote")
	}
}

func TestSanitizeReportedSupport(t *testing.T) {
	e := sanEnv(t, LUNConfig{Thin: true})
	n := e.nexus("iqn.a", 1)
	for sa, want := range map[uint16]byte{sanOverwrite: 3, sanBlockErase: 3, sanExitFailure: 3, sanCryptoErase: 1, 0: 1} {
		cdb := []byte{0xa3, 0x0c, 0x03, opSanitize, byte(sa >> 8), byte(sa), 0, 0, 1, 0, 0, 0}
		r := e.do(n, cdb, nil)
		wantGood(t, r, "RSOC")
		if r.data[1]&0x07 != want {
			t.Errorf("RSOC SANITIZE service action 0x%02x: SUPPORT %d, want %d", sa, r.data[1]&7, want)
		}
	}
	// Block Device Characteristics: WABEREQ 01b (reads after a block
	// erase succeed), WACEREQ 00b (no cryptographic erase).
	r := e.do(n, cdbInquiry(true, 0xb1, 64), nil)
	wantGood(t, r, "VPD B1")
	if r.data[7]&0xf0 != 0x40 {
		t.Fatalf("VPD B1 byte 7 0x%02x, want WABEREQ 01b and WACEREQ 00b", r.data[7])
	}
}

func TestSanitizeOverwrite(t *testing.T) {
	const size = 3<<20 + 4096 // more than one chunk, not a multiple of it
	vol := &recordingVolume{memVolume: newMemVolume(size)}
	e := sanEnv(t, LUNConfig{Volume: vol})
	n := e.nexus("iqn.a", 1)
	wantGood(t, e.do(n, cdbRW(0x2a, 0, 8), pattern(4096, 3)), "write")

	pat := pattern(512, 9)
	wantGood(t, e.do(n, cdbSanitize(sanOverwrite, false, false, 516), owParams(false, 1, pat)), "overwrite, one block")
	for off := int64(0); off < size; off += 512 {
		if !bytes.Equal(vol.bytes(off, 512), pat) {
			t.Fatalf("block at %d is not the pattern", off)
		}
	}
	for _, w := range vol.log()[1:] {
		if w[0] > sanChunk {
			t.Fatalf("a sanitize write of %d bytes, more than %d", w[0], sanChunk)
		}
	}

	// A 3-byte pattern repeats within each block and starts afresh at
	// each block (SBC-4 5.30.2.2).
	wantGood(t, e.do(n, cdbSanitize(sanOverwrite, false, false, 7), owParams(false, 1, []byte{1, 2, 3})), "3-byte pattern")
	want := make([]byte, 512)
	for i := range want {
		want[i] = byte(i%3 + 1)
	}
	for _, off := range []int64{0, 512, size - 512} {
		if !bytes.Equal(vol.bytes(off, 512), want) {
			t.Fatalf("block at %d: % x..., want the pattern from its start", off, vol.bytes(off, 8))
		}
	}
	if len(vol.violationList()) != 0 {
		t.Fatal(vol.violationList())
	}
}

func TestSanitizeOverwriteInvert(t *testing.T) {
	// With INVERT the pattern is inverted between passes and the last
	// pass writes the pattern itself: an even count starts inverted.
	for _, c := range []struct {
		count byte
		first []int
	}{{1, []int{0x5a}}, {2, []int{0xa5, 0x5a}}, {3, []int{0x5a, 0xa5, 0x5a}}} {
		vol := &recordingVolume{memVolume: newMemVolume(64 << 10)}
		e := sanEnv(t, LUNConfig{Volume: vol})
		cdb, p := sanitizeOverwrite(false, false, true, c.count, []byte{0x5a})
		wantGood(t, e.do(e.nexus("iqn.a", 1), cdb, p), "overwrite with INVERT")
		var got []int
		for _, w := range vol.log() {
			got = append(got, w[1])
		}
		if len(got) != len(c.first) {
			t.Fatalf("count %d: %d writes, want %d", c.count, len(got), len(c.first))
		}
		for i := range got {
			if got[i] != c.first[i] {
				t.Fatalf("count %d: passes wrote % x, want % x", c.count, got, c.first)
			}
		}
		if b := vol.bytes(0, 64<<10); !bytes.Equal(b, bytes.Repeat([]byte{0x5a}, 64<<10)) {
			t.Fatalf("count %d: the LU does not end with the pattern", c.count)
		}
	}
}

func TestSanitizeBlockErase(t *testing.T) {
	t.Run("thin", func(t *testing.T) {
		vol := newMemVolume(2 << 20)
		e := sanEnv(t, LUNConfig{Volume: vol, Thin: true})
		n := e.nexus("iqn.a", 1)
		wantGood(t, e.do(n, cdbRW(0x2a, 100, 4), pattern(2048, 1)), "write")
		wantGood(t, e.do(n, cdbSanitize(sanBlockErase, false, false, 0), nil), "block erase")
		if m, run, err := vol.Mapped(0); err != nil || m || run != vol.size {
			t.Fatalf("after a block erase: mapped %v, run %d of %d, %v", m, run, vol.size, err)
		}
		r := e.do(n, cdbRW(0x28, 100, 4), nil)
		wantGood(t, r, "read after block erase (WABEREQ 01b)")
		if !bytes.Equal(r.data, make([]byte, 2048)) {
			t.Fatal("erased blocks do not read as zeros")
		}
		if vol.writes != 1 {
			t.Fatalf("%d writes: a thin LU's block erase should only deallocate", vol.writes)
		}
	})
	t.Run("fully provisioned", func(t *testing.T) {
		vol := newMemVolume(1 << 20)
		e := sanEnv(t, LUNConfig{Volume: vol})
		n := e.nexus("iqn.a", 1)
		wantGood(t, e.do(n, cdbRW(0x2a, 100, 4), pattern(2048, 1)), "write")
		wantGood(t, e.do(n, cdbSanitize(sanBlockErase, false, false, 0), nil), "block erase")
		if !bytes.Equal(vol.bytes(0, vol.size), make([]byte, vol.size)) {
			t.Fatal("the LU is not zero after a block erase")
		}
		if m, _, _ := vol.Mapped(0); !m || vol.unmaps != 0 {
			t.Fatal("a fully provisioned LU was deallocated")
		}
	})
}

func TestSanitizeImmedProgressAndGate(t *testing.T) {
	vol := newGatedVolume(t, 4<<20) // four writes of a chunk
	e := sanEnv(t, LUNConfig{Volume: vol})
	a, b := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2)
	wantGood(t, e.do(b, tur, nil), "TUR before")
	cdb, p := sanitizeOverwrite(true, false, false, 1, []byte{0xee})
	wantGood(t, e.do(a, cdb, p), "SANITIZE with IMMED answers at once")
	j := jobOf(e.lu)
	if j == nil {
		t.Fatal("no job after SANITIZE")
	}
	vol.step(t, 2)
	vol.waitEntered(t) // the job waits at its third write: two are done
	const half = 32768

	wantProgress(t, requestSense(t, e, a), half, "REQUEST SENSE")
	wantProgress(t, requestSense(t, e, b), half, "REQUEST SENSE from another nexus")
	r := e.do(a, []byte{0x03, 1, 0, 0, 32, 0}, nil) // descriptor format
	wantGood(t, r, "REQUEST SENSE, descriptor format")
	if !bytes.Equal(r.data[:4], []byte{0x72, senseNotReady, 0x04, 0x1b}) || len(r.data) < 16 ||
		r.data[8] != 0x02 || r.data[12] != 0x80 || binary.BigEndian.Uint16(r.data[13:]) != half {
		t.Fatalf("descriptor sense % x, want NOT READY 04/1B with a progress descriptor", r.data)
	}
	for name, cdb := range map[string][]byte{
		"TEST UNIT READY": tur, "READ(10)": cdbRW(0x28, 0, 1), "START STOP UNIT": {0x1b, 0, 0, 0, 1, 0},
		"MODE SENSE(6)": cdbModeSense(false, false, 0, 0x3f, 0), "SANITIZE": cdbSanitize(sanBlockErase, false, false, 0),
		"EXIT FAILURE MODE": cdbSanitize(sanExitFailure, false, true, 0),
	} {
		wantProgress(t, e.do(b, cdb, nil), half, name+" during the sanitize")
	}
	wantGood(t, e.do(b, cdbInquiry(false, 0, 96), nil), "INQUIRY during the sanitize")
	wantGood(t, e.do(b, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil), "REPORT LUNS during the sanitize")

	vol.release <- struct{}{}
	vol.step(t, 1)
	wantGood(t, cmdResult{status: waitJob(t, j).status}, "the job")
	wantGood(t, e.do(b, tur, nil), "TUR after")
	s := requestSense(t, e, a)
	if s.sense[2]&0x0f != senseNoSense || s.sense[12] != 0 {
		t.Fatalf("REQUEST SENSE after the sanitize: % x", s.sense)
	}
	if !bytes.Equal(vol.bytes(0, vol.size), bytes.Repeat([]byte{0xee}, int(vol.size))) {
		t.Fatal("the LU was not overwritten")
	}
}

func TestSanitizeWaitsAndSurvivesAbort(t *testing.T) {
	vol := newGatedVolume(t, 2<<20)
	e := sanEnv(t, LUNConfig{Volume: vol})
	a := e.nexus("iqn.a", 1)
	cdb, p := sanitizeOverwrite(false, false, false, 1, []byte{7})
	cmd, res := prepare(e.tgt, e.lu, a, cdb, 0, len(p))
	if res != nil {
		t.Fatalf("prepare: %v", res)
	}
	var aborted sync.Mutex
	isAborted := false
	cmd.aborted = func() bool { aborted.Lock(); defer aborted.Unlock(); return isAborted }
	out := make(chan *scsiResult, 1)
	go func() { out <- cmd.exec(p) }()
	vol.waitEntered(t)
	select {
	case r := <-out:
		t.Fatalf("SANITIZE without IMMED answered (0x%02x) before the sanitize ended", r.status)
	default:
	}
	// ABORT TASK: the command stops waiting, the sanitize goes on
	// (SBC-4 4.11: task management does not stop a sanitize).
	aborted.Lock()
	isAborted = true
	aborted.Unlock()
	select {
	case r := <-out:
		if r.status != statusTaskAborted {
			t.Fatalf("aborted SANITIZE: status 0x%02x", r.status)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an aborted SANITIZE kept waiting")
	}
	e.lu.reset(a) // a LUN reset does not stop it either
	wantSense(t, e.do(a, tur, nil), senseUnitAttention, ascBusDeviceReset, "UA after the reset")
	wantProgress(t, e.do(a, tur, nil), 0, "TUR after the abort and the reset")
	j := jobOf(e.lu)
	vol.release <- struct{}{}
	vol.step(t, 1)
	if r := waitJob(t, j); r.status != statusGood {
		t.Fatalf("job ended with 0x%02x", r.status)
	}
	wantGood(t, e.do(a, tur, nil), "TUR after")

	// Without abort the command answers when the sanitize is done.
	cmd, _ = prepare(e.tgt, e.lu, a, cdbSanitize(sanBlockErase, false, false, 0), 0, 0)
	go func() { out <- cmd.exec(nil) }()
	vol.step(t, 2)
	select {
	case r := <-out:
		if r.status != statusGood {
			t.Fatalf("SANITIZE: status 0x%02x", r.status)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SANITIZE did not answer after the sanitize ended")
	}
}

func TestSanitizeFailureMode(t *testing.T) {
	fail := func(e *lunEnv, ause bool) {
		t.Helper()
		e.vol.mu.Lock()
		e.vol.failNext = errors.New("disk on fire")
		e.vol.mu.Unlock()
		cdb, p := sanitizeOverwrite(false, ause, false, 1, []byte{1})
		wantSense(t, e.do(e.nexus("iqn.a", 1), cdb, p), senseMediumError, ascSanitizeFailed, "failing SANITIZE")
	}
	e := sanEnv(t, LUNConfig{})
	a := e.nexus("iqn.a", 1)
	fail(e, false)
	for name, cdb := range map[string][]byte{"TEST UNIT READY": tur, "READ(10)": cdbRW(0x28, 0, 1), "WRITE(10)": cdbRW(0x2a, 0, 1)} {
		wantSense(t, e.do(a, cdb, make([]byte, 512)), senseMediumError, ascSanitizeFailed, name+" after a failed sanitize")
	}
	wantSense(t, requestSense(t, e, a), senseMediumError, ascSanitizeFailed, "REQUEST SENSE after a failed sanitize")
	wantGood(t, e.do(a, cdbInquiry(false, 0, 96), nil), "INQUIRY")
	wantGood(t, e.do(a, cdbModeSense(false, false, 0, 0x3f, 0), nil), "MODE SENSE")
	// Restricted completion mode (AUSE was 0): neither EXIT FAILURE MODE
	// nor a sanitize with AUSE set ends it (SBC-4 4.11.3).
	wantSense(t, e.do(a, cdbSanitize(sanExitFailure, false, false, 0), nil), senseIllegalRequest, ascInvalidFieldInCDB, "EXIT FAILURE MODE, restricted")
	wantSense(t, e.do(a, cdbSanitize(sanBlockErase, false, true, 0), nil), senseIllegalRequest, ascInvalidFieldInCDB, "AUSE=1 after a restricted failure")
	wantGood(t, e.do(a, cdbSanitize(sanBlockErase, false, false, 0), nil), "a sanitize that completes")
	wantGood(t, e.do(a, tur, nil), "TUR after a successful sanitize")

	// Unrestricted (AUSE=1): EXIT FAILURE MODE ends it.
	fail(e, true)
	wantGood(t, e.do(a, cdbSanitize(sanExitFailure, false, false, 0), nil), "EXIT FAILURE MODE")
	wantGood(t, e.do(a, tur, nil), "TUR after EXIT FAILURE MODE")
	wantGood(t, e.do(a, cdbSanitize(sanExitFailure, false, false, 0), nil), "EXIT FAILURE MODE outside failure mode")

	// A volume that is briefly not ready (a failover) is waited for.
	e.vol.mu.Lock()
	e.vol.failNext = &NotReadyError{ASC: ascNotReadyTransition}
	e.vol.mu.Unlock()
	cdb, p := sanitizeOverwrite(false, false, false, 1, []byte{3})
	wantGood(t, e.do(a, cdb, p), "SANITIZE through a not-ready volume")
	if !bytes.Equal(e.vol.bytes(0, 4096), bytes.Repeat([]byte{3}, 4096)) {
		t.Fatal("retried overwrite did not write")
	}
}

func TestSanitizeReadOnlyAndReservations(t *testing.T) {
	e := sanEnv(t, LUNConfig{ReadOnly: true, Thin: true})
	a := e.nexus("iqn.a", 1)
	cdb, p := sanitizeOverwrite(false, false, false, 1, []byte{1})
	wantSense(t, e.do(a, cdb, p), senseDataProtect, ascWriteProtected, "OVERWRITE on a read-only LU")
	wantSense(t, e.do(a, cdbSanitize(sanBlockErase, true, false, 0), nil), senseDataProtect, ascWriteProtected, "BLOCK ERASE on a read-only LU")
	if e.vol.writes+e.vol.unmaps != 0 || jobOf(e.lu) != nil {
		t.Fatal("a read-only LU was sanitized")
	}

	e = sanEnv(t, LUNConfig{Thin: true})
	a, b := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2)
	wantGood(t, e.do(b, []byte{0x16, 0, 0, 0, 0, 0}, nil), "RESERVE(6)")
	wantConflict(t, e.do(a, cdbSanitize(sanBlockErase, false, false, 0), nil), "SANITIZE under another's RESERVE(6)")
	if e.vol.unmaps != 0 {
		t.Fatal("a conflicting SANITIZE erased")
	}
}

func TestSanitizeInterruptedByClose(t *testing.T) {
	vol := &recordingVolume{memVolume: newMemVolume(8 << 20), wrote: make(chan struct{}, 1)}
	e := newLUEnv(t, LUNConfig{Volume: vol})
	e.lu.san.rate = 1 << 20 // eight seconds for the LU
	a := e.nexus("iqn.a", 1)
	cdb, p := sanitizeOverwrite(true, true, false, 1, []byte{1})
	wantGood(t, e.do(a, cdb, p), "SANITIZE")
	j := jobOf(e.lu)
	select {
	case <-vol.wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("no write")
	}
	start := time.Now()
	e.lu.close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closing the LU took %v", d)
	}
	select {
	case <-j.finished:
	default:
		t.Fatal("the job outlived the LU")
	}
	if j.result.status != statusCheckCondition || len(vol.log()) >= 8 {
		t.Fatalf("interrupted job: status 0x%02x after %d writes", j.result.status, len(vol.log()))
	}
	e.lu.mu.Lock()
	st := e.lu.pr.san.state
	e.lu.mu.Unlock()
	if st != sanFailed {
		t.Fatalf("marker state %d after an interrupted sanitize, want failed", st)
	}
}

func TestSanitizePace(t *testing.T) {
	const r = 100 << 20
	for _, c := range []struct {
		done, rate int64
		elapsed    time.Duration
		want       time.Duration
	}{
		{0, r, 0, 0},
		{r, r, 0, time.Second},
		{r, r, 400 * time.Millisecond, 600 * time.Millisecond},
		{r, r, 2 * time.Second, 0},
		{r, -1, 0, 0},
	} {
		if got := sanPaceDelay(c.done, c.rate, c.elapsed); got != c.want {
			t.Errorf("sanPaceDelay(%d, %d, %v) = %v, want %v", c.done, c.rate, c.elapsed, got, c.want)
		}
	}
}

func TestSanitizeRecord(t *testing.T) {
	p := sampleState()
	p.san = sanMark{state: sanRunning, sa: sanOverwrite, ause: true, owner: 2, run: 0x1234, beat: 5, progress: 999}
	b, err := p.encode()
	if err != nil {
		t.Fatal(err)
	}
	if b[4] != sharedFormatSanitize || len(b) != len(mustEncode(t, sampleState()))+sanMarkBytes {
		t.Fatalf("record with a marker: format %d, %d bytes", b[4], len(b))
	}
	q, err := decodeShared(b)
	if err != nil || q.san != p.san {
		t.Fatalf("round trip: %+v, %v", q.san, err)
	}
	// Without a marker the record stays format 1, which earlier
	// releases read, and format 1 still decodes.
	if old := mustEncode(t, sampleState()); old[4] != sharedFormat {
		t.Fatalf("record without a marker: format %d", old[4])
	} else if q, err := decodeShared(old); err != nil || q.san != (sanMark{}) {
		t.Fatalf("format 1: %+v, %v", q, err)
	}
	for name, m := range map[string]sanMark{
		"state":          {state: 7, sa: sanOverwrite, run: 1},
		"service action": {state: sanFailed, sa: sanCryptoErase, run: 1},
		"run":            {state: sanRunning, sa: sanBlockErase},
	} {
		p := sampleState()
		p.san = m
		raw, _ := p.encodeUnchecked()
		if _, err := decodeShared(raw); err == nil {
			t.Errorf("%s: a bad marker was accepted", name)
		}
	}
	raw := append(mustEncode(t, sampleState()), make([]byte, sanMarkBytes)...)
	raw[4] = sharedFormatSanitize
	if _, err := decodeShared(raw); err == nil {
		t.Error("format 2 with an empty marker was accepted")
	}
	raw[len(raw)-sanMarkBytes] = sanRunning
	raw[len(raw)-sanMarkBytes+1] = sanOverwrite
	raw[len(raw)-sanMarkBytes+2] = 0x02
	if _, err := decodeShared(raw); err == nil {
		t.Error("unknown sanitize flags were accepted")
	}
}

func mustEncode(tb testing.TB, p *prState) []byte {
	tb.Helper()
	b, err := p.encode()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// gatedSharedVolume is a gated volume that is also one site's view of
// the shared record.
type gatedSharedVolume struct {
	*gatedVolume
	sv *sharedVolume
}

func (v *gatedSharedVolume) SharedState() (uint64, []byte) { return v.sv.SharedState() }
func (v *gatedSharedVolume) SharedVersion() uint64         { return v.sv.SharedVersion() }
func (v *gatedSharedVolume) SetSharedState(expect uint64, data []byte) (bool, error) {
	return v.sv.SetSharedState(expect, data)
}

// TestSanitizeSharedMarker: two sites serve one LU. A runs a sanitize;
// B answers from the marker in the shared record, times it out when A
// stops refreshing it, and can end it; a marker whose site is gone
// cannot keep the LU "in progress".
func TestSanitizeSharedMarker(t *testing.T) {
	gv := newGatedVolume(t, 4<<20)
	rec := &fakeShared{}
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	site := func(v Volume, tpgt uint16) *lunEnv {
		tgt := &Target{Name: testTargetName, lus: map[uint64]*LU{}}
		lu, err := newLU(tgt, LUNConfig{Volume: v}, tpgt)
		if err != nil {
			t.Fatal(err)
		}
		lu.san.rate, lu.san.now = -1, clk.now
		tgt.lus[0], tgt.lunList = lu, []uint64{0}
		return &lunEnv{tb: t, srv: NewServer(Config{PortalGroup: tpgt}), tgt: tgt, lu: lu, vol: gv.memVolume}
	}
	A := site(&gatedSharedVolume{gv, &sharedVolume{gv.memVolume, rec}}, 1)
	B := site(&sharedVolume{gv.memVolume, rec}, 2)
	a, b := A.nexus("iqn.a", 1), B.nexus("iqn.b", 2)
	format := func() byte {
		_, d := (&sharedVolume{rec: rec}).SharedState()
		if len(d) < 5 {
			return 0
		}
		return d[4]
	}

	cdb, p := sanitizeOverwrite(true, true, false, 1, []byte{0x42})
	wantGood(t, A.do(a, cdb, p), "SANITIZE at A")
	j := jobOf(A.lu)
	gv.waitEntered(t)
	if format() != sharedFormatSanitize {
		t.Fatalf("record format %d while a sanitize runs", format())
	}
	wantProgress(t, B.do(b, tur, nil), 0, "TUR at B")
	wantProgress(t, B.do(b, cdbSanitize(sanBlockErase, false, false, 0), nil), 0, "SANITIZE at B during A's")
	wantGood(t, B.do(b, cdbInquiry(false, 0, 96), nil), "INQUIRY at B")

	// A refreshes the marker with its progress every sanRefreshEvery.
	clk.add(sanRefreshEvery + time.Second)
	gv.release <- struct{}{}
	gv.waitEntered(t)
	wantProgress(t, requestSense(t, B, b), 16384, "REQUEST SENSE at B after a refresh")

	// A stops refreshing (stuck, partitioned, dead): B takes the
	// marker as failed; A, whose job lives, still says in progress.
	clk.add(sanStaleAfter + time.Second)
	wantSense(t, B.do(b, tur, nil), senseMediumError, ascSanitizeFailed, "TUR at B, marker stale")
	wantProgress(t, A.do(a, tur, nil), 16384, "TUR at A")
	// A moves again: its refresh revives the marker at B.
	gv.release <- struct{}{}
	gv.waitEntered(t)
	wantProgress(t, B.do(b, tur, nil), 32768, "TUR at B after A refreshed")

	// B ends the failed (stale) sanitize; A's job finds its marker gone
	// and stops.
	clk.add(sanStaleAfter + time.Second)
	wantGood(t, B.do(b, cdbSanitize(sanExitFailure, false, false, 0), nil), "EXIT FAILURE MODE at B")
	wantGood(t, B.do(b, tur, nil), "TUR at B")
	gv.release <- struct{}{}
	if r := waitJob(t, j); r.status != statusCheckCondition {
		t.Fatalf("abandoned job: status 0x%02x, want the failure", r.status)
	}
	wantGood(t, A.do(a, tur, nil), "TUR at A after B ended the sanitize")
	if format() != sharedFormat {
		t.Fatalf("record format %d without a marker", format())
	}

	// A marker left by a site that is gone (port group 3), restricted
	// (AUSE=0): in progress until stale, then failed, then cleared by a
	// sanitize that completes (at B: it writes through B's volume).
	put := func(m sanMark) {
		_, d := (&sharedVolume{rec: rec}).SharedState()
		s, err := decodeShared(d)
		if err != nil {
			t.Fatal(err)
		}
		s.san = m
		rec.put(mustEncode(t, s))
	}
	put(sanMark{state: sanRunning, sa: sanOverwrite, owner: 3, run: 77, beat: 4, progress: 1000})
	wantProgress(t, B.do(b, tur, nil), 1000, "TUR at B, another site's sanitize")
	wantProgress(t, A.do(a, tur, nil), 1000, "TUR at A, another site's sanitize")
	clk.add(sanStaleAfter + time.Second)
	wantSense(t, B.do(b, tur, nil), senseMediumError, ascSanitizeFailed, "TUR at B, dead site's marker")
	wantSense(t, B.do(b, cdbSanitize(sanExitFailure, false, false, 0), nil), senseIllegalRequest, ascInvalidFieldInCDB, "EXIT FAILURE MODE, restricted")
	done := make(chan cmdResult, 1)
	go func() { done <- B.do(b, cdbSanitize(sanBlockErase, false, false, 0), nil) }()
	select {
	case r := <-done:
		wantGood(t, r, "BLOCK ERASE at B clears the failure")
	case <-time.After(10 * time.Second):
		t.Fatal("BLOCK ERASE at B did not finish")
	}
	wantGood(t, A.do(a, tur, nil), "TUR at A")
	wantGood(t, B.do(b, tur, nil), "TUR at B")

	// A's own marker without a job at A (A restarted mid-sanitize):
	// failed at A at once; B waits for it to go stale.
	put(sanMark{state: sanRunning, sa: sanBlockErase, ause: true, owner: 1, run: 99})
	wantSense(t, A.do(a, tur, nil), senseMediumError, ascSanitizeFailed, "TUR at A, own orphaned marker")
	wantProgress(t, B.do(b, tur, nil), 0, "TUR at B, A's orphaned marker")
	wantGood(t, A.do(a, cdbSanitize(sanExitFailure, false, false, 0), nil), "EXIT FAILURE MODE at A")
	wantGood(t, B.do(b, tur, nil), "TUR at B")
}

// TestE2ESanitizeAbortAndReset runs over a real server: a SANITIZE
// without IMMED, aborted with ABORT TASK and followed by a LUN reset and
// the loss of its connection, keeps running, and another session sees
// NOT READY, SANITIZE IN PROGRESS until it ends.
func TestE2ESanitizeAbortAndReset(t *testing.T) {
	vol := newGatedVolume(t, 2<<20)
	srv := NewServer(Config{Limits: DefaultLimits()})
	if err := srv.AddTarget(TargetConfig{Name: e2eTarget, LUNs: []LUNConfig{{ID: 0, Volume: vol}}}); err != nil {
		t.Fatal(err)
	}
	srv.targets[e2eTarget].lus[0].san.rate = -1
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		vol.halt() // a sanitize still held (the test failed) ends
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	})
	a := dial(t, l.Addr().String())
	a.login(loginOpts{})
	b := dial(t, l.Addr().String())
	b.isid[5] = 2
	b.login(loginOpts{})
	turStatus := func(in *initiator) (byte, []byte) {
		cmd := in.scsiCmd(make([]byte, 6), 0, false, false, true)
		in.send(cmd)
		r := in.expectResponse(cmd.ITT())
		if len(r.Data) >= 2 {
			return r.BHS[3], r.Data[2:]
		}
		return r.BHS[3], nil
	}
	turStatus(a)
	turStatus(b)

	san := a.scsiCmd(cdbSanitize(sanBlockErase, false, false, 0), 0, false, false, true)
	a.send(san)
	vol.waitEntered(t)
	if resp := a.tmf(tmfAbortTask, san.ITT(), san.u32(24)); resp != tmfComplete {
		t.Fatalf("ABORT TASK answered %d", resp)
	}
	if resp := a.tmf(tmfLUNReset, 0xffffffff, 0); resp != tmfComplete {
		t.Fatalf("LUN RESET answered %d", resp)
	}
	a.nc.Close()
	if st, s := turStatus(b); st != statusCheckCondition || len(s) < 14 || s[12] != 0x29 {
		t.Fatalf("TUR at b after the reset: 0x%02x % x, want UNIT ATTENTION 29/03", st, s)
	}
	if st, s := turStatus(b); st != statusCheckCondition || len(s) < 18 || s[2]&0xf != senseNotReady || s[12] != 0x04 || s[13] != 0x1b || s[15] != 0x80 {
		t.Fatalf("TUR at b: 0x%02x % x, want NOT READY 04/1B with progress", st, s)
	}
	j := jobOf(srv.targets[e2eTarget].lus[0])
	vol.release <- struct{}{}
	vol.step(t, 1)
	if r := waitJob(t, j); r.status != statusGood {
		t.Fatalf("sanitize ended with 0x%02x", r.status)
	}
	if st, s := turStatus(b); st != statusGood {
		t.Fatalf("TUR at b after the sanitize: 0x%02x % x", st, s)
	}
}
