package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// TestStalledBodyReleasesFrameMemory: connections from a data member that
// announce maximal bodies and stop sending (a peer stopped mid-frame, its
// kernel keeping TCP alive) hold at most that member's share of
// FrameMemory, and only for ReplicaTimeout: the writer keeps mirroring
// large writes, and each stalled connection is dropped. Without the
// deadline and the per-peer share, four of them took all of FrameMemory
// and the replica's stream waited for it until the writer dropped it.
func TestStalledBodyReleasesFrameMemory(t *testing.T) {
	tc := newTestCluster(t, 8<<20, "a", "b")
	tc.c.view.InSync = []string{"a", "b"}
	a, _ := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	mirrorsStill(t, tc, a, 1)

	var stalled []net.Conn
	for range 4 {
		c, _, ack := impostor(t, "127.0.0.1", tc.addrs["a"], "b", tc.c.view.Epoch, FlagForward)
		if ack.Err != "" {
			t.Fatalf("forward hello as b refused: %+v", ack)
		}
		// Four stalled bodies, one after another, each dropped after
		// ReplicaTimeout (2 s).
		c.SetDeadline(time.Now().Add(30 * time.Second))
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], MaxDataFrameLen)
		if _, err := c.Write(append(hdr[:], 0x8a)); err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, c)
	}
	for i := range 4 {
		if err := a.WriteAt(block(uint64(10+i), 4<<20), int64(i%2)<<22, true); err != nil {
			t.Fatalf("large write %d while bodies stall: %v", i, err)
		}
	}
	mirrorsStill(t, tc, a, 2)
	for i, c := range stalled {
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("stalled connection %d still open after 30 s", i)
		}
	}
	mirrorsStill(t, tc, a, 3)
}

// TestForwardFloodBounded: a peer that forwards writes faster than the
// writer orders them is held back once its operations hold fwdMemory:
// the writer stops reading its connection instead of decoding every
// frame into a goroutine of its own.
func TestForwardFloodBounded(t *testing.T) {
	var mu sync.Mutex
	var cur, peak int64
	fwdHeldHook = func(d int64) {
		mu.Lock()
		cur += d
		peak = max(peak, cur)
		mu.Unlock()
	}
	waiting := make(chan struct{}, 1)
	fwdWaitHook = func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	}
	t.Cleanup(func() { fwdHeldHook, fwdWaitHook = nil, nil })

	// c is a data site that is not in sync: the writer refuses its
	// operations once it gets to them, after they waited for w.mu.
	tc := newTestCluster(t, 8<<20, "a", "b", "c")
	tc.c.view.InSync = []string{"a", "b"}
	a, _ := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	conn, br, ack := impostor(t, "127.0.0.1", tc.addrs["a"], "c", tc.c.view.Epoch, FlagForward)
	if ack.Err != "" {
		t.Fatalf("forward hello as c refused: %+v", ack)
	}
	conn.SetDeadline(time.Now().Add(60 * time.Second))

	w := a.activeWriter()
	w.mu.Lock()
	locked := true
	defer func() {
		if locked {
			w.mu.Unlock()
		}
	}()
	// Bodies whose class is under budgetFree are read without asking
	// whether c is taken, so each waits for w.mu in its own goroutine.
	const n, size = 4000, 32 << 10
	data := bytes.Repeat([]byte{0x5a}, size)
	sent := make(chan error, 1)
	go func() {
		for i := range n {
			f := &Frame{Kind: FrameFwdWrite, Epoch: tc.c.view.Epoch, Seq: uint64(i + 1), Length: size, Data: data, CRC: Checksum(data)}
			if err := WriteFrame(conn, f); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	// Wait until either every frame is in (the writer read them all
	// although none could be ordered) or the writer stops reading
	// because the operations hold fwdMemory.
	timeout := time.After(30 * time.Second)
wait:
	for {
		select {
		case err := <-sent:
			if err != nil {
				t.Fatal(err)
			}
			break wait
		case <-waiting:
			break wait
		case <-timeout:
			t.Fatal("forwarded frames neither all read nor held back")
		}
	}
	w.mu.Unlock()
	locked = false
	for range n {
		f, err := ReadFrame(br, MaxControlLen)
		if err != nil || f.Kind != FrameFwdResult || f.Err == "" {
			t.Fatalf("answer to a forwarded write from a site not in sync: %+v, %v", f, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if peak > fwdMemory {
		t.Fatalf("forwarded operations held %d bytes at once, bound %d", peak, fwdMemory)
	}
	if peak <= fwdMemory-maxFrameLen {
		t.Fatalf("forwarded operations held only %d bytes at once: the test did not flood", peak)
	}
}

// TestForwardRefusedBeforeBody: a large forwarded write from a site the
// writer would refuse (not in sync) is answered "not the writer" without
// its body being held, and the connection goes on.
func TestForwardRefusedBeforeBody(t *testing.T) {
	tc := newTestCluster(t, 8<<20, "a", "b", "c")
	tc.c.view.InSync = []string{"a", "b"}
	a, _ := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	conn, br, ack := impostor(t, "127.0.0.1", tc.addrs["a"], "c", tc.c.view.Epoch, FlagForward)
	if ack.Err != "" {
		t.Fatalf("forward hello as c refused: %+v", ack)
	}
	data := bytes.Repeat([]byte{0x5a}, 16<<20)
	for seq := uint64(1); seq <= 2; seq++ {
		if err := WriteFrame(conn, &Frame{Kind: FrameFwdWrite, Epoch: tc.c.view.Epoch, Seq: seq, Length: uint32(len(data)), Data: data, CRC: Checksum(data)}); err != nil {
			t.Fatal(err)
		}
		f, err := ReadFrame(br, MaxControlLen)
		if err != nil || f.Kind != FrameFwdResult || f.Seq != seq || f.Err != errNotWriter.Error() {
			t.Fatalf("answer to a large forwarded write from c: %+v, %v", f, err)
		}
	}
	mirrorsStill(t, tc, a, 1)
}
