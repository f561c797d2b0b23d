package target

import (
	"bytes"
	"context"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Inline execution (task.go): at queue depth 1 the connection's reader
// executes a small READ or WRITE itself; anything else, and everything on
// a mirrored volume but a READ it can serve without waiting
// (InlineReader), runs on its own goroutine so that the reader keeps
// reading.

// probeVolume reports, for every read and write, whether it runs on a
// connection's reader goroutine, and can hold writes until released.
type probeVolume struct {
	*memVolume
	onReader chan bool
	hold     chan struct{} // nil: writes do not wait
	stop     chan struct{} // closed when the test ends
}

func newProbeVolume(t *testing.T, size int64, hold bool) *probeVolume {
	v := &probeVolume{memVolume: newMemVolume(size), onReader: make(chan bool, 16), stop: make(chan struct{})}
	if hold {
		v.hold = make(chan struct{})
	}
	return v
}

func (v *probeVolume) probe() {
	buf := make([]byte, 64<<10)
	st := string(buf[:runtime.Stack(buf, false)])
	select {
	case v.onReader <- strings.Contains(st, "(*conn).readLoop("):
	case <-v.stop:
	}
}

func (v *probeVolume) ReadAt(p []byte, off int64) error {
	v.probe()
	return v.memVolume.ReadAt(p, off)
}

func (v *probeVolume) WriteAt(p []byte, off int64, fua bool) error {
	v.probe()
	if v.hold != nil {
		select {
		case <-v.hold:
		case <-v.stop:
		}
	}
	return v.memVolume.WriteAt(p, off, fua)
}

// ranOnReader returns what the next volume call reported.
func (v *probeVolume) ranOnReader(t *testing.T) bool {
	t.Helper()
	select {
	case r := <-v.onReader:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no volume call within 10s")
		return false
	}
}

// mirroredProbe is a probeVolume that is also one site of a mirrored LU.
type mirroredProbe struct {
	*probeVolume
	sv *sharedVolume
}

func (v *mirroredProbe) SharedState() (uint64, []byte) { return v.sv.SharedState() }
func (v *mirroredProbe) SharedVersion() uint64         { return v.sv.SharedVersion() }
func (v *mirroredProbe) SetSharedState(expect uint64, data []byte) (bool, error) {
	return v.sv.SetSharedState(expect, data)
}

// startServerOn runs a Server with one target whose LUN 0 is vol. When
// the test ends, stop (if not nil) lets held volume calls go before the
// server shuts down.
func startServerOn(t *testing.T, vol Volume, stop chan struct{}) string {
	t.Helper()
	srv := NewServer(Config{})
	if err := srv.AddTarget(TargetConfig{Name: e2eTarget, LUNs: []LUNConfig{{ID: 0, Volume: vol}}}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		if stop != nil {
			close(stop)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after Shutdown")
		}
	})
	return l.Addr().String()
}

var inlineLogin = loginOpts{op: []KV{
	{"ImmediateData", "Yes"}, {"InitialR2T", "No"},
	{"FirstBurstLength", "65536"}, {"MaxBurstLength", "262144"},
}}

// writeImmediate sends a WRITE(10) whose data all travels in the command
// PDU and returns its ITT; it does not wait for the answer.
func (in *initiator) writeImmediate(lba uint32, data []byte) uint32 {
	cmd := in.scsiCmd(cdbRW(0x2a, uint64(lba), uint32(len(data)/512)), len(data), false, true, true)
	cmd.Data = data
	in.send(cmd)
	return cmd.ITT()
}

func (in *initiator) expectGood(itt uint32) {
	in.t.Helper()
	if r := in.expectResponse(itt); r.BHS[2] != 0 || r.BHS[3] != statusGood {
		in.t.Fatalf("ITT %x: response %x status %x", itt, r.BHS[2], r.BHS[3])
	}
}

func TestInlineAtQueueDepthOne(t *testing.T) {
	vol := newProbeVolume(t, 4<<20, false)
	in := dial(t, startServerOn(t, vol, vol.stop))
	in.login(inlineLogin)
	for i := range 3 {
		data := pattern(4096, byte(i))
		itt := in.writeImmediate(uint32(8*i), data)
		if !vol.ranOnReader(t) {
			t.Fatalf("write %d: a lone 4 KiB WRITE did not run on the reader", i)
		}
		in.expectGood(itt)
		got, _ := in.read(uint32(8*i), 8, 262144)
		if !vol.ranOnReader(t) {
			t.Fatalf("read %d: a lone 4 KiB READ did not run on the reader", i)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read %d returned other data", i)
		}
	}
	in.nopPing([]byte("still there"))

	// Larger than inlineMaxBytes: its own goroutine, though alone.
	big := pattern(inlineMaxBytes+64<<10, 7)
	done := make(chan bool, 1)
	go func() { done <- vol.ranOnReader(t) }()
	in.write(64, big, 65536, 262144, false)
	if <-done {
		t.Fatal("a WRITE larger than inlineMaxBytes ran on the reader")
	}
	in.logout()
}

func TestInlineOnlyWhenAlone(t *testing.T) {
	vol := newProbeVolume(t, 4<<20, false)
	in := dial(t, startServerOn(t, vol, vol.stop))
	in.login(inlineLogin)

	// A: 1 KiB, only the first 512 bytes immediate, F set: the rest
	// waits for an R2T, so A stays in flight.
	a := pattern(1024, 1)
	cmdA := in.scsiCmd(cdbRW(0x2a, 0, 2), len(a), false, true, true)
	cmdA.Data = a[:512]
	in.send(cmdA)
	r2t := in.recv()
	if r2t.Opcode() != opR2T || r2t.ITT() != cmdA.ITT() {
		t.Fatalf("got opcode 0x%02x ITT %x, want R2T for A", r2t.Opcode(), r2t.ITT())
	}
	// B arrives while A is in flight: not alone, its own goroutine.
	itt := in.writeImmediate(8, pattern(512, 2))
	if vol.ranOnReader(t) {
		t.Fatal("a WRITE with another task in flight ran on the reader")
	}
	in.expectGood(itt)
	// A's data completes it when it is alone again: inline.
	in.send(in.dataOut(cmdA.ITT(), r2t.TTT(), 0, 512, a[512:], true))
	if !vol.ranOnReader(t) {
		t.Fatal("A, alone once B was answered, did not run on the reader")
	}
	in.expectGood(cmdA.ITT())
	if !bytes.Equal(vol.bytes(0, 1024), a) {
		t.Fatal("A's data differs on the volume")
	}
	in.logout()
}

// TestInlineNotOnMirroredVolume: a mirrored volume's write may wait for
// another site, so it runs on its own goroutine and the connection keeps
// answering meanwhile.
func TestInlineNotOnMirroredVolume(t *testing.T) {
	pv := newProbeVolume(t, 1<<20, true)
	vol := &mirroredProbe{pv, &sharedVolume{pv.memVolume, &fakeShared{}}}
	in := dial(t, startServerOn(t, vol, pv.stop))
	in.login(inlineLogin)
	itt := in.writeImmediate(0, pattern(4096, 3))
	if pv.ranOnReader(t) {
		t.Fatal("a write to a mirrored volume ran on the reader")
	}
	// The write is held in the volume; the connection still answers.
	in.nc.SetDeadline(time.Now().Add(5 * time.Second))
	in.nopPing([]byte("while the write waits"))
	close(pv.hold)
	in.expectGood(itt)
	in.logout()
}

// inlineMirror is a mirroredProbe that can tell when a read would not
// wait for another site (InlineReader), unless wouldWait is set.
type inlineMirror struct {
	*mirroredProbe
	wouldWait atomic.Bool
}

func (v *inlineMirror) TryReadAt(p []byte, off int64) (bool, error) {
	if v.wouldWait.Load() {
		return false, nil
	}
	v.probe()
	return true, v.memVolume.ReadAt(p, off)
}

// TestInlineReadOnMirroredVolume: a lone small READ of a mirrored volume
// that says it would not wait runs on the reader, found through a
// wrapping volume as SharedState is; when it would wait, the READ runs on
// its own goroutine (ReadAt) and is answered all the same; a WRITE never
// runs on the reader.
func TestInlineReadOnMirroredVolume(t *testing.T) {
	pv := newProbeVolume(t, 1<<20, false)
	mv := &inlineMirror{mirroredProbe: &mirroredProbe{pv, &sharedVolume{pv.memVolume, &fakeShared{}}}}
	in := dial(t, startServerOn(t, wrappedVolume{mv}, pv.stop))
	in.login(inlineLogin)
	for i := range 3 {
		data := pattern(4096, byte(10+i))
		itt := in.writeImmediate(uint32(8*i), data)
		if pv.ranOnReader(t) {
			t.Fatalf("write %d to a mirrored volume ran on the reader", i)
		}
		in.expectGood(itt)
		got, _ := in.read(uint32(8*i), 8, 262144)
		if !pv.ranOnReader(t) {
			t.Fatalf("read %d: a lone 4 KiB READ of a mirrored volume that would not wait did not run on the reader", i)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read %d returned other data", i)
		}
	}
	mv.wouldWait.Store(true)
	for i := range 3 {
		got, _ := in.read(uint32(8*i), 8, 262144)
		if pv.ranOnReader(t) {
			t.Fatalf("read %d: the volume said it would wait, and ReadAt ran on the reader", i)
		}
		if !bytes.Equal(got, pattern(4096, byte(10+i))) {
			t.Fatalf("read %d (after would wait) returned other data", i)
		}
	}
	in.nopPing([]byte("still there"))
	in.logout()
}

// TestExecutorsAreReused: commands that do not run on the reader (writes
// to a mirrored volume) reuse the connection's executor goroutines, whose
// stacks have grown, instead of starting a goroutine each (a new one
// regrows its stack on every command).
func TestExecutorsAreReused(t *testing.T) {
	pv := newProbeVolume(t, 1<<20, false)
	mv := &inlineMirror{mirroredProbe: &mirroredProbe{pv, &sharedVolume{pv.memVolume, &fakeShared{}}}}
	in := dial(t, startServerOn(t, wrappedVolume{mv}, pv.stop))
	in.login(inlineLogin)
	before := executorsStarted.Load()
	const writes = 50
	for i := range writes {
		itt := in.writeImmediate(uint32(8*(i%16)), pattern(4096, byte(i)))
		if pv.ranOnReader(t) {
			t.Fatalf("write %d to a mirrored volume ran on the reader", i)
		}
		in.expectGood(itt)
	}
	if n := executorsStarted.Load() - before; n > 5 {
		t.Fatalf("%d sequential writes started %d executors, want a few reused", writes, n)
	}
	in.logout()
}
