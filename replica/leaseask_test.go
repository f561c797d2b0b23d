package replica

import (
	"testing"
	"time"

	"github.com/metrolun/metrolun/internal/grid"
)

// TestLeaseRenewalSchedule: a replica asks for its next read lease a
// quarter lease (or three round trips, if longer) before the one granted
// ends, not every quarter lease whatever it was granted, and never sooner
// than a quarter lease after the request that was answered. Between those
// two it asks at the latest instant of the process's grid (internal/grid)
// if there is one: earlier than planned, never later.
func TestLeaseRenewalSchedule(t *testing.T) {
	const lease = 300 * time.Millisecond
	for _, k := range []struct {
		name  string
		rtt   time.Duration // how long ago the request left
		grant time.Duration
		want  time.Duration // renewAt - sent
	}{
		{"full grant", 10 * time.Millisecond, 280 * time.Millisecond, 205 * time.Millisecond},
		{"short grant", 10 * time.Millisecond, 60 * time.Millisecond, lease / 4},
		{"long round trip", 60 * time.Millisecond, 280 * time.Millisecond, 100 * time.Millisecond},
	} {
		r := &receiver{lease: lease, epoch: 3, regrant: make(chan struct{}, 1)}
		sent := time.Now().Add(-k.rtt)
		r.reqs = map[uint64]time.Time{7: sent}
		r.granted(&Frame{Kind: FrameLease, Epoch: 3, Seq: 7, Length: uint32(k.grant / time.Millisecond)})
		got := r.renewAt.Sub(sent)
		onGrid := r.renewAt.UnixNano()%int64(grid.Step) == 0
		// three round trips are measured when granted runs, a little
		// after k.rtt
		switch {
		case got > k.want || got < lease/4:
			t.Errorf("%s: next request %v after the last, want no later than %v and no sooner than %v", k.name, got, k.want, lease/4)
		case !onGrid && got < k.want-20*time.Millisecond:
			t.Errorf("%s: next request %v after the last, off the grid, want about %v", k.name, got, k.want)
		case onGrid && got < k.want-grid.Step-20*time.Millisecond:
			t.Errorf("%s: next request %v after the last, want the last grid instant before %v", k.name, got, k.want)
		case k.want-lease/4 > grid.Step+20*time.Millisecond && !onGrid:
			// More than a grid step between the soonest and the planned
			// time: an instant lies between.
			t.Errorf("%s: next request at %v, off the grid (%v after the last)", k.name, r.renewAt.Format("15:04:05.000000"), got)
		}
		if ok, end := r.leaseValid(time.Now()); ok != (k.grant > k.rtt) || !end.Equal(sent.Add(k.grant)) {
			t.Errorf("%s: lease %v until %v, want until %v", k.name, ok, end, sent.Add(k.grant))
		}
		select {
		case <-r.regrant:
		default:
			t.Errorf("%s: the asker was not told", k.name)
		}
	}
}
