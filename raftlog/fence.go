package raftlog

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Fencing simulates the loss of a data site through the cluster itself,
// for drills (`metrolun drill --fence-writer`): nothing is killed, yet the
// cluster goes through the same steps as after a real loss.
//
//   - A fenced member cannot become writer (set-writer is refused) nor
//     rejoin the in-sync set, and the in-sync changes of a fenced writer
//     are refused.
//   - A fenced writer stops renewing its lease, lets it run out (writes in
//     flight at its site finish under it) and hands leadership to an
//     in-sync data site without releasing its epoch, so the next writer
//     waits the lease out exactly as after a real loss (lease.go).
//   - Its site (replica.Site, through View.Fenced) acts as lost: it stops
//     acting as writer and serving I/O, refuses replication and closes its
//     stream, so the writer drops it and records what it misses.
//   - Unfenced, the site is resynced and rejoins like any returning one.
//
// A fence always carries a deadline: the leader unfences the site once it
// passes, so a drill that dies does not leave a site fenced for ever.
// Fencing the last in-sync data site that is not fenced is refused: the
// cluster would have no member left that can be writer.

// Fence is one fenced data site.
type Fence struct {
	Name string `msgpack:"n"`
	// Until is when the leader unfences it (Unix milliseconds, the
	// clock of the leader that committed the fence).
	Until int64 `msgpack:"u"`
}

// Command kinds for fencing.
const (
	CmdFence   = "fence"   // fence Name until Until
	CmdUnfence = "unfence" // unfence Name; with Until, only the fence that ends then
)

// MaxFence bounds how long one fence may last.
const MaxFence = 24 * time.Hour

// IsFenced reports whether name is fenced.
func (s State) IsFenced(name string) bool {
	_, ok := s.fence(name)
	return ok
}

// FencedNames lists the fenced members.
func (s State) FencedNames() []string {
	var out []string
	for _, f := range s.Fenced {
		out = append(out, f.Name)
	}
	return out
}

func (s State) fence(name string) (Fence, bool) {
	for _, f := range s.Fenced {
		if f.Name == name {
			return f, true
		}
	}
	return Fence{}, false
}

// applyFence applies fence or unfence to n (a copy of the state).
func (n *State) applyFence(c Command) error {
	f, fenced := n.fence(c.Name)
	if c.Kind == CmdUnfence {
		if !fenced {
			return refuse("unfence: %s is not fenced", c.Name)
		}
		if c.Until != 0 && c.Until != f.Until {
			// An expiry meant for a fence that was renewed since.
			return refuse("unfence: the fence of %s was renewed", c.Name)
		}
		n.Fenced = slices.DeleteFunc(n.Fenced, func(x Fence) bool { return x.Name == c.Name })
		return nil
	}
	m, ok := n.member(c.Name)
	switch {
	case !ok:
		return refuse("fence: no member %s", c.Name)
	case m.Role != RoleData:
		return refuse("fence: %s is a %s; only a data site can be fenced", c.Name, m.Role)
	case c.Until <= 0:
		return refuse("fence: %s without a deadline", c.Name)
	}
	other := false
	for _, x := range n.InSync {
		if mm, ok := n.member(x); ok && mm.Role == RoleData && x != c.Name && !n.IsFenced(x) {
			other = true
		}
	}
	if !other {
		return refuse("fence: %s is the only in-sync data site that is not fenced; no member could take over", c.Name)
	}
	if fenced {
		// Fencing again moves the deadline.
		for i := range n.Fenced {
			if n.Fenced[i].Name == c.Name {
				n.Fenced[i].Until = c.Until
			}
		}
		return nil
	}
	n.Fenced = append(n.Fenced, Fence{Name: c.Name, Until: c.Until})
	return nil
}

// Fence fences the data site name for d (at most MaxFence); the leader
// unfences it when d has passed. Only the leader serves it; others return
// a *NotLeaderError. It returns once the fence is committed, with its end.
func (c *Cluster) Fence(name string, d time.Duration) (time.Time, error) {
	if d <= 0 || d > MaxFence {
		return time.Time{}, refuse("fence: duration %v is not in (0, %v]", d, MaxFence)
	}
	if !c.isLeader() {
		return time.Time{}, c.notLeader()
	}
	until := time.Now().Add(d)
	if _, err := c.propose(Command{Kind: CmdFence, Name: name, Until: until.UnixMilli()}); err != nil {
		return time.Time{}, err
	}
	c.log.Warn("member fenced", "member", name, "until", until.Format(time.RFC3339))
	return until, nil
}

// Unfence lifts the fence of name. It reports whether name was fenced;
// only the leader serves it.
func (c *Cluster) Unfence(name string) (bool, error) {
	if !c.isLeader() {
		return false, c.notLeader()
	}
	if !c.State().IsFenced(name) {
		return false, nil
	}
	_, err := c.propose(Command{Kind: CmdUnfence, Name: name})
	if err != nil {
		if errors.Is(err, ErrRefused) && !c.State().IsFenced(name) {
			return false, nil // lifted meanwhile (it expired)
		}
		return false, err
	}
	c.log.Warn("member unfenced", "member", name)
	return true, nil
}

// expireFences, at the leader, unfences every member whose fence has
// passed its deadline. It runs the proposals in the background, one batch
// at a time, so the caller (the run loop) never waits on Raft.
func (c *Cluster) expireFences() {
	now := time.Now().UnixMilli()
	var due []Fence
	for _, f := range c.State().Fenced {
		if f.Until <= now {
			due = append(due, f)
		}
	}
	if len(due) == 0 || !c.expiring.CompareAndSwap(false, true) {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.expiring.Store(false)
		for _, f := range due {
			_, err := c.propose(Command{Kind: CmdUnfence, Name: f.Name, Until: f.Until})
			if err != nil {
				c.log.Debug("automatic unfence failed", "member", f.Name, "error", err)
				continue
			}
			c.log.Warn("member unfenced: its fence expired", "member", f.Name)
		}
	}()
}

// stepDownFenced ends the term of a writer that was fenced: it stops
// renewing and lets its lease run out, so that operations in flight at
// its site finish under it, and then hands leadership over without
// releasing the epoch, as a lost writer would.
func (c *Cluster) stepDownFenced(ld *leadership, epoch uint64) leaseEnd {
	c.renewing(ld, epoch, false)
	c.mu.Lock()
	until := c.lease.until
	c.mu.Unlock()
	c.log.Warn("this member is fenced: not renewing the writer lease", "epoch", epoch,
		"lease_left", time.Until(until).Round(time.Millisecond))
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case <-ld.stop:
		return leaseLost
	case <-t.C:
	}
	c.endLease()
	c.slowBeats(false)
	if c.handOff(ld, c.State()) {
		return handedOver
	}
	return leaseLost
}

func (f Fence) String() string {
	return fmt.Sprintf("%s until %s", f.Name, time.UnixMilli(f.Until).Format(time.RFC3339))
}
