package core

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var (
	exploreRuns  = flag.Int("explore.runs", 2000, "schedules the explorer runs")
	exploreSteps = flag.Int("explore.steps", 200, "events per schedule")
	exploreSeed  = flag.Uint64("explore.seed", 0, "run only this seed (replay a failure)")
	exploreLog   = flag.Bool("explore.log", false, "print the event log of a failing schedule")
)

// explore runs one seeded schedule: random events from the whole
// cluster, the invariants checked after every one, and the images
// compared whenever everything calms down. It returns the violations and
// the number of events.
func explore(seed uint64, steps int) (violations []string, events int, s *sim) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	names := []string{"b", "c", "d"}[:1+rng.IntN(3)]
	s = newSim(8, rng.IntN(3) == 0, names...)
	s.quiet = !*exploreLog
	pick := func() *simPeer { return s.peers[rng.IntN(len(s.peers))] }
	write := func() {
		kind := Write
		switch rng.IntN(10) {
		case 0:
			kind = Unmap
		case 1:
			kind = Flush
		}
		off := rng.IntN(s.nreg)
		n := 1 + rng.IntN(min(3, s.nreg-off))
		origin := ""
		if rng.IntN(4) == 0 {
			p := pick()
			if s.c.State(p.id) == InSync && p.up {
				origin = p.name
			}
		}
		s.write(kind, off, n, origin, rng.IntN(40) == 0)
	}
	step := func() {
		events++
		switch x := rng.IntN(100); {
		case x < 25:
			write()
		case x < 45:
			s.deliver(pick())
		case x < 62:
			s.ack(pick())
		case x < 64:
			s.linkDown(pick(), "fault")
		case x < 68:
			p := pick()
			if rng.IntN(8) == 0 {
				s.dropFails(p)
			} else {
				s.dropCommits(p)
			}
		case x < 72:
			s.advance(time.Duration(1+rng.IntN(30)) * time.Millisecond)
		case x < 76:
			s.grant(pick())
		case x < 80:
			if rng.IntN(4) > 0 {
				s.writerLease = s.clock.Now().Add(s.lease)
			}
		case x < 83:
			s.reconnect(pick())
		case x < 86:
			s.resyncStart(pick())
		case x < 95:
			s.resyncStep(pick())
		case x < 98:
			s.commitTick()
		case x < 99:
			s.markFail = true
		default:
			switch rng.IntN(20) {
			case 0:
				s.leaseEpoch = s.epoch + 1 // another writer's epoch
			case 1, 2:
				s.removePeer(pick())
			case 3, 4:
				if len(s.peers) < 4 {
					s.addPeer()
				}
			}
		}
		s.check()
	}
	for events < steps && len(s.violations) == 0 {
		for range 20 + rng.IntN(40) {
			step()
		}
		s.calm(rng)
		s.check()
		if s.quiescent() {
			s.checkQuiet()
		}
	}
	return s.violations, events, s
}

// calm lets everything in flight finish: frames delivered and answered,
// drops committed and their leases waited out, resyncs run to the end,
// the writer lease renewed.
func (s *sim) calm(rng *rand.Rand) {
	for range 1000 {
		busy := false
		if s.leaseEpoch == s.epoch {
			s.writerLease = s.clock.Now().Add(s.lease)
		}
		for _, p := range s.peers {
			for len(p.toPeer)+len(p.acks) > 0 {
				busy = true
				s.deliver(p)
				s.ack(p)
			}
			if p.dropping {
				busy = true
				s.dropCommits(p)
			}
			if p.syncing {
				busy = true
				s.resyncStep(p)
			}
		}
		s.commitTick()
		s.advance(time.Duration(1+rng.IntN(20)) * time.Millisecond)
		if !busy {
			return
		}
	}
}

func TestExplore(t *testing.T) {
	runs, first := *exploreRuns, uint64(1)
	if *exploreSeed != 0 {
		runs, first = 1, *exploreSeed
	}
	if testing.Short() {
		runs = min(runs, 300)
	}
	start := time.Now()
	total := 0
	for i := range runs {
		seed := first + uint64(i)
		v, n, s := explore(seed, *exploreSteps)
		total += n
		if len(v) > 0 {
			t.Fatalf("seed %d (replay: go test ./replica/core -run TestExplore -explore.seed %d): %d violations, first:\n%s\n%s",
				seed, seed, len(v), strings.Join(v[:min(5, len(v))], "\n"), s.state()+"\n"+strings.Join(s.log, "\n"))
		}
	}
	el := time.Since(start)
	t.Logf("%d schedules, %d events in %v: %.0f events/s", runs, total, el.Truncate(time.Millisecond), float64(total)/el.Seconds())
}

// TestExploreCatchesPlantedBugs plants each known bug in the core and
// requires the explorer to find it: a test that cannot fail proves
// nothing.
func TestExploreCatchesPlantedBugs(t *testing.T) {
	for _, b := range plantedBugs() {
		if b.perf {
			continue // not a safety bug: the invariants hold
		}
		t.Run(b.name, func(t *testing.T) {
			*b.on = true
			defer func() { *b.on = false }()
			for seed := uint64(1); seed <= 3000; seed++ {
				if v, _, _ := explore(seed, *exploreSteps); len(v) > 0 {
					t.Logf("caught at seed %d: %s", seed, v[0])
					return
				}
			}
			t.Fatalf("planted bug %s not caught in 3000 schedules", b.name)
		})
	}
}

type plantedBug struct {
	name string
	on   *bool
	perf bool
}

func plantedBugs() []plantedBug {
	return []plantedBug{
		{"ackEarly", &plant.ackEarly, false},
		{"noMarkAhead", &plant.noMarkAhead, false},
		{"noWaitDropping", &plant.noWaitDropping, false},
		{"answerBeforeMark", &plant.answerBeforeMark, false},
		{"commitPastUnsettled", &plant.commitPastUnsettled, false},
		{"dropIgnoresLease", &plant.dropIgnoresLease, false},
		{"settleBeforeOrigin", &plant.settleBeforeOrigin, false},
		{"noHandover", &plant.noHandover, false},
		{"noLeaseCheck", &plant.noLeaseCheck, false},
		{"noPiggyback", &plant.noPiggyback, true},
	}
}

func ExampleCore() {
	s := newSim(4, false, "b")
	s.write(Write, 0, 2, "", false)
	s.deliver(s.peer("b"))
	s.ack(s.peer("b"))
	fmt.Println(strings.Join(s.log, "\n"))
	// Output:
	// write 0+2 seq 1 -> [b]
	// b applied seq 1
	// answer seq 1: ok
	// settled seq 1
}
