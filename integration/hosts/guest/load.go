package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/metrolun/metrolun/integration/hosts/agent"
	"github.com/metrolun/metrolun/integration/hosts/stamp"
)

func agentMain(args []string) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	addr := fs.String("connect", "", "harness address to dial (host:port)")
	wait := fs.Duration("wait", 60*time.Second, "give up dialling after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var c net.Conn
	var err error
	for deadline := time.Now().Add(*wait); ; {
		if c, err = net.DialTimeout("tcp", *addr, 5*time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dial %s: %w", *addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	defer c.Close()
	return agent.Serve(c)
}

// alignedBuf returns n bytes aligned for O_DIRECT (page aligned, from
// mmap).
func alignedBuf(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
}

// writeMain runs the stamped workload: workers each own every
// workers-th block of the region and rewrite their blocks in turn, one
// O_DIRECT pwrite at a time. It prints "progress writes=N errors=N"
// every second, "gap MS end=UNIXNANO" whenever no write completed for
// longer than -gap, "error ..." for a failed write, and saves the
// journal when it gets SIGTERM or -duration passes.
func writeMain(args []string) error {
	fs := flag.NewFlagSet("write", flag.ContinueOnError)
	dev := fs.String("dev", "", "block device")
	journal := fs.String("journal", "", "where to save the journal")
	offset := fs.Int64("offset", 0, "first byte of the region (multiple of 4096)")
	blocks := fs.Int("blocks", 4096, "region size in 4 KiB blocks")
	workers := fs.Int("workers", 4, "concurrent writers (queue depth)")
	gapMin := fs.Duration("gap", 100*time.Millisecond, "report completion gaps longer than this")
	duration := fs.Duration("duration", 30*time.Minute, "stop after this long (a bound; SIGTERM stops it earlier)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dev == "" || *journal == "" || *blocks <= 0 || *workers <= 0 || *offset%stamp.BlockSize != 0 {
		return fmt.Errorf("write: need -dev, -journal, -blocks > 0, -workers > 0 and a 4 KiB aligned -offset")
	}
	f, err := os.OpenFile(*dev, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()

	j := &stamp.Journal{Offset: *offset, Blocks: *blocks, Acked: make([]uint64, *blocks), Unknown: map[int][]uint64{}}
	var (
		mu       sync.Mutex // guards j and lastDone
		lastDone = time.Now()
		maxGap   time.Duration
		seq      atomic.Uint64
		writes   atomic.Uint64
		errs     atomic.Uint64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	for w := 0; w < *workers; w++ {
		buf, err := alignedBuf(stamp.BlockSize)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i += *workers {
				if i >= *blocks {
					i = w
				}
				select {
				case <-stop:
					return
				default:
				}
				n := seq.Add(1)
				stamp.Fill(buf, n, j.LBA(i))
				mu.Lock()
				// Unknown until acknowledged: if the process dies in the
				// write, the block may hold it.
				j.Unknown[i] = append(j.Unknown[i], n)
				mu.Unlock()
				_, werr := f.WriteAt(buf, *offset+int64(i)*stamp.BlockSize)
				now := time.Now()
				mu.Lock()
				if werr == nil {
					j.Acked[i] = n
					delete(j.Unknown, i)
					if gap := now.Sub(lastDone); gap > *gapMin {
						fmt.Printf("gap %d end=%d\n", gap.Milliseconds(), now.UnixNano())
						maxGap = max(maxGap, gap)
					}
					lastDone = now
				}
				mu.Unlock()
				if werr != nil {
					// The write may or may not have reached the LUN: it
					// stays unknown.
					errs.Add(1)
					fmt.Printf("error block %d seq %d: %v\n", i, n, werr)
					time.Sleep(10 * time.Millisecond)
				} else {
					writes.Add(1)
				}
			}
		}()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	end := time.After(*duration)
loop:
	for {
		select {
		case <-tick.C:
			fmt.Printf("progress writes=%d errors=%d\n", writes.Load(), errs.Load())
		case <-sig:
			break loop
		case <-end:
			break loop
		}
	}
	close(stop)
	wg.Wait()
	j.Writes, j.Errors = writes.Load(), errs.Load()
	if err := j.Save(*journal); err != nil {
		return err
	}
	fmt.Printf("done writes=%d errors=%d maxgap=%d\n", j.Writes, j.Errors, maxGap.Milliseconds())
	return nil
}

// verifyMain reads every block of the journal's region back through
// O_DIRECT and checks it; it fails if any block is bad.
func verifyMain(args []string) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	dev := fs.String("dev", "", "block device")
	journal := fs.String("journal", "", "journal saved by write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	j, err := stamp.Load(*journal)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(*dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf, err := alignedBuf(stamp.BlockSize)
	if err != nil {
		return err
	}
	res := j.Verify(f, buf)
	fmt.Printf("verify %s: %s\n", *dev, res)
	return res.Err()
}
