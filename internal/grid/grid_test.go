package grid

import (
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	base := time.Unix(1_800_000_000, 0) // a multiple of every period below
	for _, c := range []struct {
		at     time.Duration
		period time.Duration
		want   time.Duration
	}{
		{0, Step, Step}, // strictly after
		{1, Step, Step},
		{Step - 1, Step, Step},
		{Step, Step, 2 * Step},
		{250 * time.Millisecond, time.Second, time.Second},
		{1500 * time.Millisecond, 300 * time.Millisecond, 1800 * time.Millisecond},
	} {
		got := Next(base.Add(c.at), c.period)
		if !got.Equal(base.Add(c.want)) {
			t.Errorf("Next(+%v, %v) = +%v, want +%v", c.at, c.period, got.Sub(base), c.want)
		}
	}
	// Two processes' clocks read at different moments pick the same
	// instant: what lines members up with each other.
	now := time.Now()
	a, b := Next(now, Step), Next(now.Add(Step/3), Step)
	if a.UnixNano()%int64(Step) != 0 || (!a.Equal(b) && b.Sub(a) != Step) {
		t.Errorf("Next(now) = %v, Next(now+Step/3) = %v: not on the grid", a, b)
	}
}

func TestPeriod(t *testing.T) {
	for d, want := range map[time.Duration]time.Duration{
		0:                      Step,
		10 * time.Millisecond:  Step,
		75 * time.Millisecond:  Step,
		149 * time.Millisecond: Step,
		150 * time.Millisecond: 2 * Step,
		250 * time.Millisecond: 3 * Step,
		time.Second:            time.Second,
	} {
		if got := Period(d); got != want {
			t.Errorf("Period(%v) = %v, want %v", d, got, want)
		}
	}
}

func TestWait(t *testing.T) {
	at := time.Unix(1_700_000_000, int64(30*time.Millisecond))
	if got := Wait(at, at.Add(Step)); got != Step-30*time.Millisecond {
		t.Errorf("Wait within the limit = %v, want %v", got, Step-30*time.Millisecond)
	}
	if got := Wait(at, at.Add(Step/2)); got != 0 {
		t.Errorf("Wait past the limit = %v, want 0", got)
	}
}

// TestTickerOnGrid: every tick is a multiple of the period of Unix time,
// and one instant is sent once.
func TestTickerOnGrid(t *testing.T) {
	tk := NewTicker(Step)
	defer tk.Stop()
	var last time.Time
	for i := 0; i < 5; i++ {
		select {
		case at := <-tk.C:
			if r := at.UnixNano() % int64(Step); r != 0 {
				t.Fatalf("tick %d at %v: %v past a grid instant", i, at, time.Duration(r))
			}
			if !last.IsZero() && !at.After(last) {
				t.Fatalf("tick %d at %v after one at %v", i, at, last)
			}
			if time.Now().Before(at) {
				t.Fatalf("tick %d for %v came early", i, at)
			}
			last = at
		case <-time.After(10 * time.Second):
			t.Fatal("no tick in 10 s")
		}
	}
	tk.Stop()
	select {
	case <-tk.C: // one may be buffered from before Stop
	default:
	}
	select {
	case at := <-tk.C:
		t.Fatalf("tick for %v after Stop", at)
	case <-time.After(2 * Step):
	}
}
