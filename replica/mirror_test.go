package replica

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// pair sets up a writer and one replica on loopback TCP, each over its own
// file, and returns the mirror, the replica's receiver and the paths.
func pair(t *testing.T, size int64, writerEpoch, replicaEpoch uint64) (*Mirror, *Receiver, string, string, chan error) {
	t.Helper()
	dir := t.TempDir()
	pa, pb := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	a, err := OpenLocal(pa, size)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenLocal(pb, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	recv := NewReceiver(b, replicaEpoch)
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		served <- recv.Serve(c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	m := NewMirror(a, writerEpoch, NewLink(c))
	t.Cleanup(func() { m.Close() })
	return m, recv, pa, pb, served
}

func sameFiles(t *testing.T, pa, pb string) {
	t.Helper()
	a, err := os.ReadFile(pa)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pb)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("replicas differ first at byte %d", i)
			}
		}
	}
}

// TestMirrorOverlappingWrites checks I4 on the data path: concurrent,
// overlapping writes, unmaps and compare-and-writes leave writer and
// replica byte-identical, and the replica applied every sequence number.
func TestMirrorOverlappingWrites(t *testing.T) {
	const size = 4 << 20
	m, recv, pa, pb, _ := pair(t, size, 1, 1)
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(g)))
			for i := 0; i < 200; i++ {
				// Few distinct offsets, so writes overlap a lot.
				off := int64(rng.Intn(64)) * 4096
				n := (1 + rng.Intn(8)) * 512
				switch rng.Intn(10) {
				case 0:
					if err := m.Unmap(off, int64(n)); err != nil {
						t.Error(err)
						return
					}
				case 1:
					cur := make([]byte, 512)
					m.ReadAt(cur, off)
					if _, err := m.CompareAndWrite(off, cur, bytes.Repeat([]byte{byte(g)}, 512)); err != nil {
						t.Error(err)
						return
					}
				default:
					buf := bytes.Repeat([]byte{byte(g*31 + i)}, n)
					if err := m.WriteAt(buf, off, rng.Intn(20) == 0); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	_, seq := recv.Applied()
	if seq != m.seq {
		t.Fatalf("replica applied up to %d, writer assigned %d", seq, m.seq)
	}
	sameFiles(t, pa, pb)
}

// TestReplicaRefusesOlderEpoch checks I2 at the replica: a writer of an
// older epoch gets its write refused, and the write is not acknowledged.
func TestReplicaRefusesOlderEpoch(t *testing.T) {
	m, recv, _, pb, served := pair(t, 1<<20, 4, 5)
	err := m.WriteAt(bytes.Repeat([]byte{1}, 512), 0, false)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("older epoch")) {
		t.Fatalf("write from epoch 4 to a replica at epoch 5: err=%v, want a refusal", err)
	}
	if e, seq := recv.Applied(); e != 5 || seq != 0 {
		t.Fatalf("replica state changed: epoch %d seq %d", e, seq)
	}
	if err := <-served; err == nil {
		t.Fatal("receiver kept serving a stale writer")
	}
	b, _ := os.ReadFile(pb)
	if !bytes.Equal(b[:512], make([]byte, 512)) {
		t.Fatal("stale write reached the replica's store")
	}
	// Later writes on the dead link fail too: nothing is acknowledged
	// without the replica.
	if err := m.WriteAt(bytes.Repeat([]byte{2}, 512), 512, false); !errors.Is(err, ErrLinkDown) {
		t.Fatalf("write after refusal: %v, want ErrLinkDown", err)
	}
}

// TestLinkDownFailsWrites: when the replica disappears the writer gets an
// error instead of an acknowledgement (I1 needs that).
func TestLinkDownFailsWrites(t *testing.T) {
	dir := t.TempDir()
	a, err := OpenLocal(filepath.Join(dir, "a.img"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	m := NewMirror(a, 1, NewLink(c1))
	defer m.Close()
	go func() {
		io.CopyN(io.Discard, c2, 16) // read part of the first frame, then die
		c2.Close()
	}()
	if err := m.WriteAt(bytes.Repeat([]byte{7}, 4096), 0, false); !errors.Is(err, ErrLinkDown) {
		t.Fatalf("write with the replica gone: %v, want ErrLinkDown", err)
	}
}
