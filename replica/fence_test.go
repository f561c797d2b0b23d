package replica

import (
	"bufio"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/metrolun/metrolun/target"
)

func (c *fakeCluster) setFenced(names ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.view.Fenced = names
	c.bump()
}

func (c *fakeCluster) dropped(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.drops, name)
}

// wantUnavailable checks that err is NOT READY, target port unavailable.
func wantUnavailable(t *testing.T, what string, err error) {
	t.Helper()
	var nr *target.NotReadyError
	if !errors.As(err, &nr) || nr.ASC != ascUnavailable {
		t.Fatalf("%s at a fenced site: %v, want NOT READY (unavailable)", what, err)
	}
}

// helloTo opens a replication connection to addr as site from and
// returns the answer to its hello.
func helloTo(t *testing.T, addr, from string, epoch uint64) *Frame {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := WriteFrame(c, &Frame{Kind: FrameHello, Epoch: epoch, From: from}); err != nil {
		t.Fatal(err)
	}
	ack, err := ReadFrame(bufio.NewReader(c), MaxHelloAckLen)
	if err != nil {
		t.Fatal(err)
	}
	return ack
}

// TestSiteFencedWriterActsLost: the writer is fenced while its lease is
// still valid. It stops acting as writer, serves no I/O (unavailable),
// refuses replication; the next writer drops it and writes on; once
// unfenced it is resynced and both files match.
func TestSiteFencedWriterActsLost(t *testing.T) {
	tc := newTestCluster(t, 4<<20, "a", "b")
	a, b := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	if err := b.WriteAt(block(1, 65536), 0, false); err != nil {
		t.Fatal(err)
	}

	tc.c.setFenced("a") // a keeps its (fake) lease: only the fence stops it
	until(t, "the fenced writer stops", 5*time.Second, func() bool { return a.activeWriter() == nil })
	if st := a.State(); st != target.PathUnavailable {
		t.Fatalf("fenced site state %v, want unavailable", st)
	}
	wantUnavailable(t, "write", a.WriteAt(block(2, 4096), 0, false))
	wantUnavailable(t, "read", a.ReadAt(make([]byte, 4096), 0))
	if ack := helloTo(t, tc.addrs["a"], "b", 99); !strings.Contains(ack.Err, "fenced") {
		t.Fatalf("hello to a fenced site answered %+v", ack)
	}

	tc.c.setWriter("b")
	waitWriter(t, b)
	want := block(3, 65536)
	if err := b.WriteAt(want, 65536, false); err != nil {
		t.Fatalf("write at the new writer while a is fenced: %v", err)
	}
	if !tc.c.dropped("a") || tc.c.inSync("a") {
		t.Fatal("the fenced site was not dropped from the in-sync set")
	}

	tc.c.setFenced()
	until(t, "a resynced and in sync", 10*time.Second, func() bool { return tc.c.inSync("a") })
	until(t, "a holds a read lease", 5*time.Second, func() bool { ok, _ := a.recv.leaseValid(time.Now()); return ok })
	got := make([]byte, len(want))
	if err := a.ReadAt(got, 65536); err != nil || string(got) != string(want) {
		t.Fatalf("read at a after unfence: %v (equal %v)", err, string(got) == string(want))
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, tc.sites["a"].img, tc.sites["b"].img)
}

// TestSiteFencedReplica: a fenced replica ends the writer's stream and
// loses its read lease at once; the writer drops it and goes on.
func TestSiteFencedReplica(t *testing.T) {
	tc := newTestCluster(t, 2<<20, "a", "b")
	a, b := tc.start("a"), tc.start("b")
	tc.c.setWriter("a")
	waitWriter(t, a)
	until(t, "b holds a read lease", 5*time.Second, func() bool { ok, _ := b.recv.leaseValid(time.Now()); return ok })

	tc.c.setFenced("b")
	until(t, "b fenced", 5*time.Second, func() bool { return b.State() == target.PathUnavailable })
	if ok, _ := b.recv.leaseValid(time.Now()); ok {
		t.Fatal("a fenced replica still holds a read lease")
	}
	wantUnavailable(t, "read", b.ReadAt(make([]byte, 512), 0))
	if err := a.WriteAt(block(4, 4096), 0, false); err != nil {
		t.Fatalf("write at the writer with its replica fenced: %v", err)
	}
	if tc.c.inSync("b") {
		t.Fatal("a write was acknowledged while the fenced replica is still in sync")
	}
	bm, err := a.bitmap("b")
	if err != nil {
		t.Fatal(err)
	}
	if bm.Dirty() == 0 {
		t.Fatal("the writer does not record what the fenced replica misses")
	}
	tc.c.setFenced()
	until(t, "b back in sync", 10*time.Second, func() bool { return tc.c.inSync("b") })
	sameFiles(t, tc.sites["a"].img, tc.sites["b"].img)
}
