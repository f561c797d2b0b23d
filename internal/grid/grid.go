// Package grid puts a process's periodic work on shared instants: the
// multiples of Step of Unix time.
//
// An idle Go process pays for each wake-up far more than for the work it
// wakes for: after every wake-up the runtime's sysmon polls every 20 µs
// for a while and idle threads spin looking for work, about 100-140 µs
// of CPU per wake-up on the test VM, whether one goroutine runs or ten
// (docs/bench.md, "Wake-ups on a shared grid"). Ten 100 ms tickers at
// unrelated phases cost about 1% of a core there; the same ten on the
// same instants about 0.15%. So a periodic task ticks on the grid, not
// at a phase of its own, and the process wakes once per grid instant
// for all of them. Because the grid is Unix time, members on one host,
// or on NTP-synchronised hosts, tick at the same instants too, and a
// message one sends on the grid arrives while the other is awake anyway.
//
// The grid only moves ticks later, by less than one period: callers that
// need a deadline kept (a lease, a timeout) measure it themselves.
package grid

import (
	"sync"
	"time"
)

// Step is the grid's spacing: every period is a multiple of it.
const Step = 100 * time.Millisecond

// Period is d rounded to the nearest multiple of Step, at least Step: a
// period that keeps a ticker on the shared grid.
func Period(d time.Duration) time.Duration {
	n := (d + Step/2) / Step
	if n < 1 {
		n = 1
	}
	return n * Step
}

// Next is the first instant after t that is a multiple of period of Unix
// time. It keeps t's monotonic reading, so time.Until and Sub on it
// measure on the monotonic clock; the instant itself is chosen on the
// wall clock, which is what processes share.
func Next(t time.Time, period time.Duration) time.Time {
	if period <= 0 {
		panic("grid: period must be positive")
	}
	ns := t.UnixNano()
	r := ns % int64(period)
	if r < 0 {
		r += int64(period)
	}
	return t.Add(period - time.Duration(r))
}

// Wait is how long from now until the next grid instant of Step, if it
// comes no later than limit; otherwise 0 (do not wait).
func Wait(now, limit time.Time) time.Duration {
	next := Next(now, Step)
	if next.After(limit) {
		return 0
	}
	return next.Sub(now)
}

// Ticker sends the grid instants of its period on C, like time.Ticker
// (a reader that falls behind misses ticks rather than queueing them),
// except that the value sent is the grid instant the tick is for, not
// the moment the timer ran.
type Ticker struct {
	C <-chan time.Time

	c      chan time.Time
	period time.Duration

	mu      sync.Mutex
	t       *time.Timer
	due     time.Time
	stopped bool
}

// NewTicker ticks at every multiple of period (rounded by Period) of Unix
// time, from the next one on.
func NewTicker(period time.Duration) *Ticker {
	c := make(chan time.Time, 1)
	tk := &Ticker{C: c, c: c, period: Period(period)}
	tk.mu.Lock()
	tk.due = Next(time.Now(), tk.period)
	tk.t = time.AfterFunc(time.Until(tk.due), tk.fire)
	tk.mu.Unlock()
	return tk
}

func (tk *Ticker) fire() {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	if tk.stopped {
		return
	}
	now := time.Now()
	select {
	case tk.c <- tk.due:
	default:
	}
	// From the instant it was due, not from now: a timer that fires a
	// few µs early by the wall clock (the two clocks may run at slightly
	// different rates) must not tick twice for one instant.
	tk.due = Next(later(now, tk.due), tk.period)
	tk.t.Reset(time.Until(tk.due))
}

// Stop turns the ticker off; no tick is sent after it returns.
func (tk *Ticker) Stop() {
	tk.mu.Lock()
	tk.stopped = true
	tk.t.Stop()
	tk.mu.Unlock()
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Until is how long from now until the next grid instant of period
// (rounded by Period): for a one-off wait, time.After(grid.Until(d)).
func Until(period time.Duration) time.Duration {
	now := time.Now()
	return Next(now, Period(period)).Sub(now)
}
