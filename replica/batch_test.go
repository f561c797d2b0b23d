package replica

import (
	"bufio"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSenderOrderAndOwnership: frames pushed by several goroutines at
// once, small ones (batched, some lazy, some handed to the goroutine)
// and large ones (written from the caller's buffer), arrive whole and,
// per goroutine, in order; a caller may reuse its buffer as soon as
// push returns (the frames' checksums would fail otherwise).
func TestSenderOrderAndOwnership(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	var busy atomic.Bool
	var failed atomic.Value
	s := newSender(a, busy.Load, func(err error) { failed.Store(err) })
	defer s.close()

	const workers, each = 4, 60
	type got struct{ worker, n int }
	results := make(chan got, workers*each)
	done := make(chan error, 1)
	// Frames that interleave leave the reader waiting for bytes that
	// never come: fail, not hang.
	b.SetReadDeadline(time.Now().Add(20 * time.Second))
	go func() {
		br := bufio.NewReader(b)
		for range workers * each {
			f, err := ReadFrame(br, MaxDataFrameLen)
			if err != nil {
				done <- err
				return
			}
			results <- got{int(f.Offset), int(f.Seq)}
		}
		done <- nil
	}()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			buf := make([]byte, 256<<10)
			for n := 1; n <= each; n++ {
				size := 1 + rng.IntN(8<<10)
				if rng.IntN(4) == 0 {
					size = directMin + rng.IntN(len(buf)-directMin)
				}
				for i := range buf[:size] {
					buf[i] = byte(rng.Uint32())
				}
				busy.Store(rng.IntN(2) == 0)
				mode := sendNow
				if rng.IntN(5) == 0 {
					mode = sendLazy
				}
				f := &Frame{Kind: FrameWrite, Epoch: 1, Seq: uint64(n), Offset: int64(w), Length: uint32(size), Data: buf[:size], CRC: Checksum(buf[:size])}
				if err := s.push(f, mode); err != nil {
					t.Error(err)
					return
				}
				// The buffer is the caller's again.
				clear(buf[:size])
			}
		}()
	}
	wg.Wait()
	// Whatever is still queued (a lazy frame, a hand-off) goes out.
	s.flush()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(results)
	last := make([]int, workers)
	for r := range results {
		if r.n != last[r.worker]+1 {
			t.Fatalf("worker %d: frame %d after %d", r.worker, r.n, last[r.worker])
		}
		last[r.worker] = r.n
	}
	if err := failed.Load(); err != nil {
		t.Fatal(err)
	}
}
