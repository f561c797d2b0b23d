package hosts

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/metrolun/metrolun/integration/hosts/agent"
	"github.com/metrolun/metrolun/integration/hosts/stamp"
)

// Load is the stamped write workload running in the guest (`guest
// write`), seen from the host: its progress, the completion gaps it
// reported (with the host time each report arrived) and its write errors.
type Load struct {
	vm      *VM
	Journal string // host path of the journal (in the share)

	mu       sync.Mutex
	writes   uint64
	progress time.Time // when the last progress line arrived
	gaps     []Gap
	errors   []string
	exited   bool
	exit     int
	tail     []string
	changed  chan struct{}
	finished chan struct{}
}

// Gap is a stretch with no write completed in the guest.
type Gap struct {
	Length time.Duration
	// Arrived is when the host heard of it: just after the gap ended.
	Arrived time.Time
}

// StartLoad runs `guest write` on dev in the guest over blocks 4 KiB
// blocks from offset, with workers writes in flight, its journal going to
// the share.
func StartLoad(ctx context.Context, vm *VM, share, dev string, offset int64, blocks, workers int) (*Load, error) {
	l := &Load{vm: vm, Journal: filepath.Join(share, "journal.json"), changed: make(chan struct{}), finished: make(chan struct{})}
	ch, err := vm.Start(ctx, "load", "/mnt/share/agent", "write", "-dev", dev,
		"-journal", "/mnt/share/journal.json", "-offset", strconv.FormatInt(offset, 10),
		"-blocks", strconv.Itoa(blocks), "-workers", strconv.Itoa(workers), "-gap", "50ms")
	if err != nil {
		return nil, err
	}
	go l.follow(ch)
	return l, nil
}

func (l *Load) follow(ch <-chan agent.Message) {
	defer close(l.finished)
	for {
		var m agent.Message
		select {
		case m = <-ch:
		case <-l.vm.done:
			l.mu.Lock()
			l.exited, l.exit = true, -1
			l.tail = append(l.tail, "control connection lost: "+fmt.Sprint(l.vm.err))
			l.mu.Unlock()
			return
		}
		now := time.Now()
		l.mu.Lock()
		if m.Exited {
			l.exited, l.exit = true, m.Exit
		} else {
			l.tail = append(l.tail, m.Line)
			if len(l.tail) > 20 {
				l.tail = l.tail[1:]
			}
			f := strings.Fields(m.Line)
			switch {
			case len(f) >= 2 && f[0] == "progress":
				if n, err := strconv.ParseUint(strings.TrimPrefix(f[1], "writes="), 10, 64); err == nil {
					l.writes = n
					l.progress = now
				}
			case len(f) >= 2 && f[0] == "gap":
				if ms, err := strconv.Atoi(f[1]); err == nil {
					l.gaps = append(l.gaps, Gap{Length: time.Duration(ms) * time.Millisecond, Arrived: now})
				}
			case len(f) >= 1 && f[0] == "error":
				l.errors = append(l.errors, m.Line)
			}
		}
		close(l.changed)
		l.changed = make(chan struct{})
		exited := l.exited
		l.mu.Unlock()
		if exited {
			return
		}
	}
}

// Writes is the count of acknowledged writes at the last progress line.
func (l *Load) Writes() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writes
}

// Errors are the write errors the workload reported.
func (l *Load) Errors() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.errors...)
}

// WaitWrites waits until at least n writes are acknowledged, up to d.
func (l *Load) WaitWrites(n uint64, d time.Duration) error {
	deadline := time.After(d)
	for {
		l.mu.Lock()
		w, exited, ch := l.writes, l.exited, l.changed
		l.mu.Unlock()
		if exited {
			return fmt.Errorf("workload exited (%d): %s", l.exit, strings.Join(l.tail, " | "))
		}
		if w >= n {
			return nil
		}
		select {
		case <-ch:
		case <-deadline:
			return fmt.Errorf("workload: %d writes acknowledged, waited %v for %d; last output: %s", w, d, n, strings.Join(l.tail, " | "))
		}
	}
}

// PauseAfter waits until the workload runs again after a fault injected
// at t0 (writes acknowledged for settle without a gap longer than
// settle/2), up to d, and returns the longest gap reported after t0: how
// long the host saw no write complete. The gap spanning the fault is
// reported when its first write completes, so after t0.
func (l *Load) PauseAfter(t0 time.Time, settle, d time.Duration) (time.Duration, error) {
	deadline := time.After(d)
	for {
		l.mu.Lock()
		var longest time.Duration
		var lastGap time.Time
		for _, g := range l.gaps {
			if g.Arrived.After(t0) {
				longest = max(longest, g.Length)
				lastGap = g.Arrived
			}
		}
		// Running again: a progress line counting writes that completed
		// after the fault, and no gap reported for settle since.
		since := lastGap
		if since.IsZero() {
			since = t0
		}
		ok := !lastGap.IsZero() && l.progress.Sub(since) >= settle
		exited, ch := l.exited, l.changed
		l.mu.Unlock()
		if exited {
			return longest, fmt.Errorf("workload exited (%d): %s", l.exit, strings.Join(l.tail, " | "))
		}
		if ok {
			return longest, nil
		}
		select {
		case <-ch:
		case <-deadline:
			return longest, fmt.Errorf("workload not running steadily within %v of the fault (longest gap so far %v); last output: %s", d, longest, strings.Join(l.tail, " | "))
		}
	}
}

// Stop sends SIGTERM, waits (bounded) for the workload to save its
// journal and exit, and loads the journal.
func (l *Load) Stop(ctx context.Context) (*stamp.Journal, error) {
	if err := l.vm.Signal(ctx, "load", syscall.SIGTERM); err != nil {
		return nil, err
	}
	select {
	case <-l.finished:
	case <-time.After(2 * time.Minute):
		return nil, fmt.Errorf("workload did not exit within 2m of SIGTERM; last output: %s", strings.Join(l.tail, " | "))
	}
	if l.exit != 0 {
		return nil, fmt.Errorf("workload exited %d: %s", l.exit, strings.Join(l.tail, " | "))
	}
	return stamp.Load(l.Journal)
}
