package checker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// FaultKind names a fault step.
type FaultKind string

const (
	// FaultKill9 kills a site with SIGKILL; a FaultRestart step brings it
	// back after the step's Duration.
	FaultKill9 FaultKind = "kill9"
	// FaultRestart (re)starts a site. On its own in Kinds it restarts a
	// running site (the Faults implementation stops it cleanly first);
	// the generator also uses it to end a FaultKill9.
	FaultRestart FaultKind = "restart"
	// FaultStop freezes a site (SIGSTOP); FaultCont ends it.
	FaultStop FaultKind = "stop"
	FaultCont FaultKind = "cont"
	// FaultPartition cuts the links between Target and Peer; FaultHeal
	// restores every link.
	FaultPartition FaultKind = "partition"
	FaultHeal      FaultKind = "heal"
	// FaultPromote moves the writer to Target (a planned switchover).
	FaultPromote FaultKind = "promote"
	// FaultLatency adds Latency to inter-site links for Duration; a
	// closing FaultLatency step with Latency 0 ends the spike.
	FaultLatency FaultKind = "latency"
	// FaultPartitionOneWay drops what Target sends to Peer (Peer's
	// traffic to Target still passes); FaultHeal ends it. Needs a
	// LinkFaults.
	FaultPartitionOneWay FaultKind = "partition-oneway"
	// FaultReset resets every connection between Target and the other
	// members, as a peer reset would (one step). Needs a LinkFaults.
	FaultReset FaultKind = "reset"
	// FaultReplaceImage kills Target with SIGKILL and replaces its LUN
	// image with an empty file (its identity goes with it), as a disk
	// swapped or a mount missing at boot; a FaultRestart step brings it
	// back after Duration, to be copied in full. The ImageFaults must
	// not destroy the only up-to-date image: it replaces Target's only
	// once another data site took over as writer (or serves as one), and
	// otherwise fails the step and leaves it a plain kill -9.
	FaultReplaceImage FaultKind = "replace-image"

	// Storage faults (DESIGN.md Failures, "Storage fails") make Target's
	// LUN store fail for Duration; a closing FaultStorageClear step ends
	// each. Only one is in effect at a time. They need a StorageFaults.
	//
	// FaultStorageEIO: every write fails with EIO and stores nothing.
	FaultStorageEIO FaultKind = "storage-eio"
	// FaultStorageFull: the file system is full, every write fails with
	// ENOSPC.
	FaultStorageFull FaultKind = "storage-full"
	// FaultFlushEIO: the next write-back (fdatasync) fails with EIO and
	// drops what was written since the last one, as Linux does; one
	// failure per step.
	FaultFlushEIO FaultKind = "flush-eio"
	// FaultStorageSlow adds Latency to every system call of the store.
	FaultStorageSlow FaultKind = "storage-slow"
	// FaultShortWrite: every write stores half of what it is given and
	// reports that count without an error.
	FaultShortWrite FaultKind = "short-write"
	// FaultStorageReadEIO: every read fails with EIO (a medium error
	// for the initiator, which is no read for the checker).
	FaultStorageReadEIO FaultKind = "storage-read-eio"
	// FaultStorageClear ends Target's storage fault (closing step).
	FaultStorageClear FaultKind = "storage-clear"
)

// StorageKinds are the storage fault kinds (opening steps).
var StorageKinds = []FaultKind{FaultStorageEIO, FaultStorageFull, FaultFlushEIO, FaultStorageSlow, FaultShortWrite, FaultStorageReadEIO}

// OverlapStorageKinds are the storage faults that ScheduleConfig.Overlap
// may pair with a network fault or kill -9 at another site: those that
// lose nothing (a slow disk, failed reads). The others (failed or short
// writes, a failed write-back) make the faulted site's image differ from
// the in-sync copies, so it hands the writer role over or is resynced;
// with the other site cut off at the same time it is the only copy left,
// and a write-back failure there loses writes for good (acknowledged
// without FUA before the failed SYNCHRONIZE CACHE): that is the disk's
// loss, not metrolun's, and no run could tell it from a bug.
var OverlapStorageKinds = []FaultKind{FaultStorageSlow, FaultStorageReadEIO}

// overlapNetworkKinds are the faults a storage fault may overlap (at
// another site), when they are in ScheduleConfig.Kinds.
var overlapNetworkKinds = []FaultKind{FaultKill9, FaultStop, FaultPartition, FaultPartitionOneWay}

// IsStorage reports whether k is a storage fault step (closing one
// included).
func (k FaultKind) IsStorage() bool {
	return k == FaultStorageClear || slices.Contains(StorageKinds, k)
}

// Faults executes fault steps on whatever runs the cluster (processes on
// loopback, a proxy, ...). Methods should return once the fault is in
// effect.
type Faults interface {
	Kill(site string) error
	Restart(site string) error
	Stop(site string) error
	Cont(site string) error
	Partition(a, b string) error
	Heal() error
	Promote(site string) error
	Latency(d time.Duration) error
}

// LinkFaults is implemented by a Faults that can also cut one direction
// of a link and reset connections (FaultPartitionOneWay, FaultReset).
type LinkFaults interface {
	PartitionOneWay(from, to string) error
	ResetLinks(site string) error
}

// ImageFaults is implemented by a Faults that can replace a site's image
// (FaultReplaceImage): kill it with SIGKILL and, unless its image may be
// the only up-to-date one, replace the image with an empty file. It
// returns an error when it did not replace it (the site stays killed).
type ImageFaults interface {
	ReplaceImage(site string) error
}

// StorageFaults is implemented by a Faults that can make a site's store
// fail (the storage fault kinds). StorageFault puts kind in effect at
// site, replacing what was; delay is the added time per system call of
// FaultStorageSlow; FaultStorageClear ends every storage fault there.
type StorageFaults interface {
	StorageFault(site string, kind FaultKind, delay time.Duration) error
}

// Step is one timed fault action.
type Step struct {
	// At is the time since the schedule started.
	At   time.Duration `json:"at"`
	Kind FaultKind     `json:"kind"`
	// Target is the site acted on (empty for heal and latency).
	Target string `json:"target,omitempty"`
	// Peer is the other side of a partition.
	Peer string `json:"peer,omitempty"`
	// Duration is how long the fault lasts until its closing step (zero
	// for closing steps and promote).
	Duration time.Duration `json:"duration,omitempty"`
	// Latency is the added delay of a latency step (0 ends a spike),
	// and of each system call in a FaultStorageSlow step.
	Latency time.Duration `json:"latency,omitempty"`
}

// Label is a short description, e.g. "kill9 site-a" or "partition
// site-a|site-b".
func (s Step) Label() string {
	switch s.Kind {
	case FaultPartition:
		return fmt.Sprintf("partition %s|%s", s.Target, s.Peer)
	case FaultPartitionOneWay:
		return fmt.Sprintf("partition %s->%s", s.Target, s.Peer)
	case FaultHeal:
		return "heal"
	case FaultLatency:
		if s.Latency == 0 {
			return "latency off"
		}
		return fmt.Sprintf("latency +%v", s.Latency)
	case FaultStorageSlow:
		return fmt.Sprintf("%s %s +%v", s.Kind, s.Target, s.Latency)
	}
	return string(s.Kind) + " " + s.Target
}

func (s Step) String() string {
	str := fmt.Sprintf("%v %s", s.At, s.Label())
	if s.Duration > 0 {
		str += fmt.Sprintf(" (for %v)", s.Duration)
	}
	return str
}

// ScheduleConfig says what faults to generate.
type ScheduleConfig struct {
	Seed     uint64
	Duration time.Duration
	// Sites are the targets of kill9, stop, restart and promote.
	Sites []string
	// PartitionPeers are the possible far ends of a partition in
	// addition to Sites (e.g. the witness).
	PartitionPeers []string
	// Kinds to inject, each chosen with equal probability: FaultKill9,
	// FaultStop, FaultPartition, FaultRestart, FaultPromote,
	// FaultLatency, FaultPartitionOneWay, FaultReset and the
	// StorageKinds. Closing steps (restart after kill9, cont, heal,
	// latency off, storage-clear) are added by the generator.
	Kinds []FaultKind
	// Require lists kinds that must each be in the schedule at least
	// once: they come first, in an order drawn from the seed, and
	// NewSchedule fails if Duration cannot hold them. They need not be
	// in Kinds.
	Require []FaultKind
	// Quiet time between one fault's end and the next fault's start
	// (default Duration/20, at least 1ms, to Duration/8).
	MinGap, MaxGap time.Duration
	// How long a fault lasts (default Duration/20 to Duration/6).
	MinFault, MaxFault time.Duration
	// MaxLatency bounds latency spikes (default 200ms; at least 1ms).
	MaxLatency time.Duration
	// MaxStorageDelay bounds the delay per system call of
	// FaultStorageSlow (default 50ms; at least 1ms).
	MaxStorageDelay time.Duration
	// Overlap: with two sites or more, half the OverlapStorageKinds
	// faults drawn (not the required ones) have a fault of the
	// overlapNetworkKinds that Kinds hold (kill9, stop, partition,
	// partition-oneway) nested in them, at a site other than the
	// storage fault's: a slow or unreadable disk at one site while
	// another is dead, frozen or cut off. The cluster can still make
	// progress, as with one fault: the faulted disk loses nothing, and
	// the second fault is one a single fault may be. Without Overlap
	// (or with no such kind) faults never overlap.
	Overlap bool
}

// Schedule is a deterministic list of fault steps: the same config (seed
// included) always gives the same steps. Faults do not overlap (but for
// ScheduleConfig.Overlap's pairs): each one ends before the next begins,
// and every fault ends before Duration.
type Schedule struct {
	Seed     uint64
	Duration time.Duration
	Steps    []Step
}

// NewSchedule generates a schedule from cfg.
func NewSchedule(cfg ScheduleConfig) (Schedule, error) {
	if cfg.Duration <= 0 {
		return Schedule{}, errors.New("checker: schedule duration must be positive")
	}
	if len(cfg.Kinds) == 0 && len(cfg.Require) == 0 {
		return Schedule{Seed: cfg.Seed, Duration: cfg.Duration}, nil
	}
	peers := append(append([]string(nil), cfg.Sites...), cfg.PartitionPeers...)
	for _, k := range slices.Concat(cfg.Kinds, cfg.Require) {
		switch k {
		case FaultKill9, FaultStop, FaultRestart, FaultPromote, FaultReset, FaultReplaceImage,
			FaultStorageEIO, FaultStorageFull, FaultFlushEIO, FaultStorageSlow, FaultShortWrite, FaultStorageReadEIO:
			if len(cfg.Sites) == 0 {
				return Schedule{}, fmt.Errorf("checker: fault %s needs at least one site", k)
			}
		case FaultPartition, FaultPartitionOneWay:
			if len(cfg.Sites) == 0 || len(peers) < 2 {
				return Schedule{}, fmt.Errorf("checker: fault %s needs two sites (or a site and a peer)", k)
			}
		case FaultLatency:
		case FaultCont, FaultHeal, FaultStorageClear:
			return Schedule{}, fmt.Errorf("checker: %s is a closing step, implied by %s", k, map[FaultKind]string{FaultCont: "stop", FaultHeal: "partition", FaultStorageClear: "each storage fault"}[k])
		default:
			return Schedule{}, fmt.Errorf("checker: unknown fault kind %q", k)
		}
	}
	d := cfg.Duration
	if cfg.MinGap <= 0 {
		cfg.MinGap = max(d/20, time.Millisecond)
	}
	if cfg.MaxGap < cfg.MinGap {
		cfg.MaxGap = max(cfg.MinGap, d/8)
	}
	if cfg.MinFault <= 0 {
		cfg.MinFault = max(d/20, time.Millisecond)
	}
	if cfg.MaxFault < cfg.MinFault {
		cfg.MaxFault = max(cfg.MinFault, d/6)
	}
	if cfg.MaxLatency < time.Millisecond {
		cfg.MaxLatency = 200 * time.Millisecond
	}
	if cfg.MaxStorageDelay < time.Millisecond {
		cfg.MaxStorageDelay = 50 * time.Millisecond
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x6661756c74)) // "fault"
	between := func(lo, hi time.Duration) time.Duration {
		if hi <= lo {
			return lo
		}
		return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
	}
	pick := func(list []string) string { return list[rng.IntN(len(list))] }
	s := Schedule{Seed: cfg.Seed, Duration: d}
	// The required kinds first, in a seeded order (drawn from a source
	// of its own, so that a config without Require gives the schedules
	// it always gave).
	required := slices.Clone(cfg.Require)
	rand.New(rand.NewPCG(cfg.Seed, 0x72657175697265)).Shuffle(len(required), func(i, j int) { // "require"
		required[i], required[j] = required[j], required[i]
	})
	// The network faults a storage fault may overlap, and the source
	// of the overlap draws (its own, as for Require).
	var overlapWith []FaultKind
	if cfg.Overlap && len(cfg.Sites) > 1 {
		for _, k := range overlapNetworkKinds {
			if slices.Contains(cfg.Kinds, k) {
				overlapWith = append(overlapWith, k)
			}
		}
	}
	orng := rand.New(rand.NewPCG(cfg.Seed, 0x6f7665726c6170)) // "overlap"
	var cursor time.Duration
	for {
		at := cursor + between(cfg.MinGap, cfg.MaxGap)
		var kind FaultKind
		isRequired := false
		if len(required) > 0 {
			kind, required, isRequired = required[0], required[1:], true
		} else if len(cfg.Kinds) > 0 {
			kind = cfg.Kinds[rng.IntN(len(cfg.Kinds))]
		} else {
			break
		}
		length := between(cfg.MinFault, cfg.MaxFault)
		if kind == FaultPromote || kind == FaultRestart || kind == FaultReset {
			length = 0
		}
		if at+length >= d {
			if slices.Contains(cfg.Require, kind) && !slices.ContainsFunc(s.Steps, func(st Step) bool { return st.Kind == kind }) {
				return Schedule{}, fmt.Errorf("checker: a schedule of %v cannot hold the required fault %s (and those before it)", d, kind)
			}
			break
		}
		switch kind {
		case FaultKill9, FaultReplaceImage:
			site := pick(cfg.Sites)
			s.Steps = append(s.Steps,
				Step{At: at, Kind: kind, Target: site, Duration: length},
				Step{At: at + length, Kind: FaultRestart, Target: site})
		case FaultStop:
			site := pick(cfg.Sites)
			s.Steps = append(s.Steps,
				Step{At: at, Kind: FaultStop, Target: site, Duration: length},
				Step{At: at + length, Kind: FaultCont, Target: site})
		case FaultPartition, FaultPartitionOneWay:
			a := pick(cfg.Sites)
			var others []string
			for _, p := range peers {
				if p != a && !slices.Contains(others, p) {
					others = append(others, p)
				}
			}
			if len(others) == 0 {
				return Schedule{}, fmt.Errorf("checker: no partition peer for %s", a)
			}
			b := pick(others)
			if kind == FaultPartitionOneWay && rng.IntN(2) == 0 {
				a, b = b, a // either direction, the far end included
			}
			s.Steps = append(s.Steps,
				Step{At: at, Kind: kind, Target: a, Peer: b, Duration: length},
				Step{At: at + length, Kind: FaultHeal})
		case FaultLatency:
			lat := between(time.Millisecond, cfg.MaxLatency).Round(time.Millisecond)
			s.Steps = append(s.Steps,
				Step{At: at, Kind: FaultLatency, Duration: length, Latency: lat},
				Step{At: at + length, Kind: FaultLatency})
		case FaultRestart:
			// A restart of a running site: one step.
			s.Steps = append(s.Steps, Step{At: at, Kind: FaultRestart, Target: pick(cfg.Sites)})
		case FaultPromote:
			s.Steps = append(s.Steps, Step{At: at, Kind: FaultPromote, Target: pick(cfg.Sites)})
		case FaultReset:
			s.Steps = append(s.Steps, Step{At: at, Kind: FaultReset, Target: pick(cfg.Sites)})
		case FaultStorageEIO, FaultStorageFull, FaultFlushEIO, FaultStorageSlow, FaultShortWrite, FaultStorageReadEIO:
			site := pick(cfg.Sites)
			st := Step{At: at, Kind: kind, Target: site, Duration: length}
			if kind == FaultStorageSlow {
				st.Latency = between(time.Millisecond, cfg.MaxStorageDelay).Round(time.Millisecond)
			}
			s.Steps = append(s.Steps, st)
			if !isRequired && len(overlapWith) > 0 && slices.Contains(OverlapStorageKinds, kind) && orng.IntN(2) == 0 {
				s.Steps = append(s.Steps, overlapStep(orng, cfg, peers, st)...)
			}
			s.Steps = append(s.Steps, Step{At: at + length, Kind: FaultStorageClear, Target: site})
		}
		cursor = at + length
	}
	return s, nil
}

// overlapStep returns a network fault (or kill -9) and its closing step,
// at a site other than storage's, nested in storage's time: it starts
// in the first third and ends in the last.
func overlapStep(rng *rand.Rand, cfg ScheduleConfig, peers []string, storage Step) []Step {
	var kinds []FaultKind
	for _, k := range overlapNetworkKinds {
		if slices.Contains(cfg.Kinds, k) {
			kinds = append(kinds, k)
		}
	}
	kind := kinds[rng.IntN(len(kinds))]
	var others []string
	for _, p := range cfg.Sites {
		if p != storage.Target {
			others = append(others, p)
		}
	}
	site := others[rng.IntN(len(others))]
	third := storage.Duration / 3
	from := storage.At + 1 + time.Duration(rng.Int64N(int64(third)+1))
	to := storage.At + storage.Duration - 1 - time.Duration(rng.Int64N(int64(third)+1))
	if to <= from {
		to = from + 1
	}
	open := Step{At: from, Kind: kind, Target: site, Duration: to - from}
	switch kind {
	case FaultKill9:
		return []Step{open, {At: to, Kind: FaultRestart, Target: site}}
	case FaultStop:
		return []Step{open, {At: to, Kind: FaultCont, Target: site}}
	}
	// A partition of site from any other member (the faulted one
	// included), either direction for a one-way one.
	var far []string
	for _, p := range peers {
		if p != site && !slices.Contains(far, p) {
			far = append(far, p)
		}
	}
	open.Peer = far[rng.IntN(len(far))]
	if kind == FaultPartitionOneWay && rng.IntN(2) == 0 {
		open.Target, open.Peer = open.Peer, open.Target
	}
	return []Step{open, {At: to, Kind: FaultHeal}}
}

func (s Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "schedule seed %d, %v, %d steps", s.Seed, s.Duration, len(s.Steps))
	for _, st := range s.Steps {
		b.WriteString("\n  " + st.String())
	}
	return b.String()
}

// Run executes the steps at their times (relative to the call) through
// f and records each one, with its error, in h (h may be nil). A failing
// step does not stop the schedule. When ctx ends early, the faults still
// open are closed at once (restart a killed site, cont a stopped one,
// heal, latency off) so that nothing is left broken, and Run returns
// ctx's error joined with the step errors.
func (s Schedule) Run(ctx context.Context, f Faults, h *History) error {
	start := time.Now()
	now := func() time.Duration {
		if h != nil {
			return h.Now()
		}
		return time.Since(start)
	}
	var errs []error
	open := map[string]Step{} // opening steps not yet closed, by closing key
	exec := func(st Step) {
		err := apply(f, st)
		ev := FaultEvent{At: now(), Step: st}
		if err != nil {
			ev.Err = err.Error()
			errs = append(errs, fmt.Errorf("%s: %w", st.Label(), err))
		}
		if h != nil {
			h.AddFault(ev)
		}
		switch {
		case st.Kind == FaultKill9 || st.Kind == FaultStop:
			open[string(st.Kind)+" "+st.Target] = st
		case st.Kind == FaultReplaceImage:
			open["kill9 "+st.Target] = st // a restart closes it
		case st.Kind == FaultPartition || st.Kind == FaultPartitionOneWay:
			open["partition"] = st
		case st.Kind == FaultLatency && st.Latency > 0:
			open["latency"] = st
		case st.Kind == FaultStorageClear:
			delete(open, "storage "+st.Target)
		case st.Kind.IsStorage():
			open["storage "+st.Target] = st
		case st.Kind == FaultRestart:
			delete(open, "kill9 "+st.Target)
		case st.Kind == FaultCont:
			delete(open, "stop "+st.Target)
		case st.Kind == FaultHeal:
			delete(open, "partition")
		case st.Kind == FaultLatency:
			delete(open, "latency")
		}
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for _, st := range s.Steps {
		wait := st.At - time.Since(start)
		if wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				// Close what is open, in a fixed order.
				keys := make([]string, 0, len(open))
				for k := range open {
					keys = append(keys, k)
				}
				slices.Sort(keys)
				for _, k := range keys {
					o := open[k]
					switch o.Kind {
					case FaultKill9, FaultReplaceImage:
						exec(Step{At: time.Since(start), Kind: FaultRestart, Target: o.Target})
					case FaultStop:
						exec(Step{At: time.Since(start), Kind: FaultCont, Target: o.Target})
					case FaultPartition, FaultPartitionOneWay:
						exec(Step{At: time.Since(start), Kind: FaultHeal})
					case FaultLatency:
						exec(Step{At: time.Since(start), Kind: FaultLatency})
					default:
						if o.Kind.IsStorage() {
							exec(Step{At: time.Since(start), Kind: FaultStorageClear, Target: o.Target})
						}
					}
				}
				return errors.Join(append([]error{ctx.Err()}, errs...)...)
			}
		}
		exec(st)
	}
	return errors.Join(errs...)
}

func apply(f Faults, st Step) error {
	switch st.Kind {
	case FaultKill9:
		return f.Kill(st.Target)
	case FaultRestart:
		return f.Restart(st.Target)
	case FaultStop:
		return f.Stop(st.Target)
	case FaultCont:
		return f.Cont(st.Target)
	case FaultPartition:
		return f.Partition(st.Target, st.Peer)
	case FaultHeal:
		return f.Heal()
	case FaultPromote:
		return f.Promote(st.Target)
	case FaultLatency:
		return f.Latency(st.Latency)
	case FaultReplaceImage:
		imf, ok := f.(ImageFaults)
		if !ok {
			return fmt.Errorf("fault %s needs an ImageFaults", st.Kind)
		}
		return imf.ReplaceImage(st.Target)
	case FaultPartitionOneWay, FaultReset:
		lf, ok := f.(LinkFaults)
		if !ok {
			return fmt.Errorf("fault %s needs a LinkFaults", st.Kind)
		}
		if st.Kind == FaultReset {
			return lf.ResetLinks(st.Target)
		}
		return lf.PartitionOneWay(st.Target, st.Peer)
	}
	if st.Kind.IsStorage() {
		sf, ok := f.(StorageFaults)
		if !ok {
			return fmt.Errorf("fault %s needs a StorageFaults", st.Kind)
		}
		return sf.StorageFault(st.Target, st.Kind, st.Latency)
	}
	return fmt.Errorf("unknown fault kind %q", st.Kind)
}
