package raftlog

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/metrolun/metrolun/internal/grid"
)

// The Raft leader is the writer (DESIGN.md, "Writer gone"), and a writer
// acts only while it holds a lease for its epoch.
//
// Becoming writer. A leader that is a witness, or a data site out of the
// in-sync set, hands leadership to an in-sync data site and never writes.
// An in-sync data site first waits out the previous writer's lease,
// measured from when it became leader, then commits set-writer for the
// next epoch; it holds the lease from then on.
//
// Why the wait is enough (I2). A writer renews its lease from the
// AppendEntries its followers accept, the heartbeats Raft sends anyway
// (termguard.go records them): if a majority of the voters, itself
// included, accepted an AppendEntries of its term sent at t or later, the
// lease runs to t + Lease (t is taken when the transport hands the
// request to the connection, after any wait for the grid, termGuard.hold).
// A new leader needs the votes of a majority, and that majority holds a member M that accepted such a request, or the
// old writer itself (whose lease ends when it moves to the higher term to
// vote). M answered before it voted (having voted in a higher term, it
// would have refused the old term, and the old writer would not count
// the answer), and after the request was sent, so the new leader was
// elected after t. Hence
//
//	old lease end = t + Lease
//	             <  new leader elected + Lease,
//
// and the new leader, which counts from when it saw itself elected (later
// still), waits Lease + 10% of Lease; the 10% covers clocks that run at
// different rates on the two machines. This does not rely on followers
// ignoring candidates while they hear from a leader, so it holds for a
// member that restarts between answering and voting. The first lease of
// an epoch rests on the set-writer entry instead: t is when it was
// proposed, and the majority that committed it accepted it later.
//
// The new leader waits RPCTimeout on top, for the other way a lease is
// renewed. When no majority has confirmed the writer for Lease/2 (answers
// slower than the heartbeats, over a long link or on a loaded machine),
// it runs a VerifyLeader round, which has Raft heartbeat every follower
// at once, and the lease then runs to the time the call started plus
// Lease. Raft counts any answer that arrives after the call started, but
// its request may have been sent before: the transport gives every RPC
// an I/O deadline of RPCTimeout from when it was sent, and does not
// pipeline, so M answered at most RPCTimeout before the round started,
// and the old lease ends before the new leader was elected + RPCTimeout +
// Lease. (Writers renewed only this way, every Lease/4, before: a round of
// RPCs on top of the heartbeats, most of an idle cluster's Raft traffic.)
//
// Leases are bound to the Raft term they were granted in: WriterLease is
// zero as soon as this member is no longer leader of that term, and a
// failed renewal ends the lease at once.
//
// A planned move (Promote) skips the wait: the writer stops acting first,
// then commits release for its epoch, then hands leadership over. A leader
// that finds Released == Epoch knows nobody holds a lease for it. A fenced
// writer (fence.go) releases nothing: it lets its lease run out and hands
// leadership over, and the next writer waits as after a loss.

// lease is this member's writer lease.
type lease struct {
	epoch uint64
	term  uint64    // the Raft term it was granted and renewed in
	since time.Time // when this member became writer of epoch
	until time.Time
	// renew: answers to this leader's AppendEntries extend it (contacted);
	// off until the writer holds it (holdLease), and once it is fenced.
	renew bool
}

// takeoverWait is how long a new leader waits before it becomes writer,
// unless the previous writer released its epoch.
func (c *Cluster) takeoverWait() time.Duration {
	return c.cfg.Lease + c.cfg.Lease/10 + c.cfg.RPCTimeout
}

// confirmed is the latest time t such that a majority of the voters of
// Raft's latest configuration, this member included, accepted an
// AppendEntries of term sent at t or later (termGuard.confirmed).
func (c *Cluster) confirmed(term uint64, now time.Time) (time.Time, bool) {
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return time.Time{}, false
	}
	var voters []raft.ServerID
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters = append(voters, s.ID)
		}
	}
	return c.trans.confirmed(raft.ServerID(c.cfg.Name), voters, term, now)
}

// contacted renews the lease from what a majority has confirmed, after a
// peer accepted an AppendEntries of term (termGuard calls it, on Raft's
// replication goroutine, right after the answer): the renewal sends
// nothing and wakes nobody.
func (c *Cluster) contacted(term uint64) {
	c.mu.Lock()
	l, ld := c.lease, c.lead
	c.mu.Unlock()
	if !l.renew || l.term != term || ld == nil || ld.term != term {
		return
	}
	// Raft's replication goroutine may still send a request of term
	// after this member stepped down or voted in a later term, until it
	// is stopped; such an answer (and this member's own count as now)
	// must not move the lease on. WriterLease checks the same before it
	// answers; checked here too, the lease's end (and lastUntil) never
	// passes the moment this member left the term.
	if c.raft.State() != raft.Leader || c.raft.CurrentTerm() != term {
		return
	}
	if t, ok := c.confirmed(term, time.Now()); ok {
		c.extendLease(ld, l.epoch, t.Add(c.cfg.Lease))
	}
}

// renewing turns the renewal of the lease for epoch on or off.
func (c *Cluster) renewing(ld *leadership, epoch uint64, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lead == ld && c.lease.epoch == epoch {
		c.lease.renew = on
	}
}

// WriterLease says whether this member may act as writer now: for epoch,
// until the returned time (on the clock of time.Now). Zero values when it
// is not the writer. Check it before acknowledging each write.
func (c *Cluster) WriterLease() (epoch uint64, until time.Time) {
	l, ok := c.currentLease(time.Now())
	if !ok {
		return 0, time.Time{}
	}
	return l.epoch, l.until
}

func (c *Cluster) currentLease(now time.Time) (lease, bool) {
	c.mu.Lock()
	l := c.lease
	c.mu.Unlock()
	if l.epoch == 0 || !now.Before(l.until) {
		return lease{}, false
	}
	// Leadership lost: the lease ends now, before run notices.
	if c.raft.State() != raft.Leader || c.raft.CurrentTerm() != l.term {
		return lease{}, false
	}
	return l, true
}

// grantLease starts the lease l on behalf of the leadership ld, unless ld
// has been stopped.
func (c *Cluster) grantLease(ld *leadership, l lease) bool {
	c.mu.Lock()
	if c.lead != ld {
		c.mu.Unlock()
		return false
	}
	c.lease = l
	c.armLease()
	c.mu.Unlock()
	c.notify()
	return true
}

// extendLease moves the end of the lease for epoch to until.
func (c *Cluster) extendLease(ld *leadership, epoch uint64, until time.Time) {
	c.mu.Lock()
	if c.lead != ld || c.lease.epoch != epoch || !c.lease.renew || !until.After(c.lease.until) {
		c.mu.Unlock()
		return
	}
	lapsed := !time.Now().Before(c.lease.until)
	c.lease.until = until
	c.armLease()
	c.mu.Unlock()
	if lapsed {
		c.notify()
	}
}

// armLease (with mu held) records the lease end and has Changed fire when
// the lease runs out unrenewed.
func (c *Cluster) armLease() {
	if c.lease.until.After(c.lastUntil) {
		c.lastUntil = c.lease.until
	}
	if c.leaseTimer == nil {
		c.leaseTimer = time.AfterFunc(time.Until(c.lease.until), c.notify)
	} else {
		c.leaseTimer.Reset(time.Until(c.lease.until))
	}
	staleIn := time.Until(c.lease.until) - c.cfg.Lease/2
	if c.staleTimer == nil {
		c.staleTimer = time.AfterFunc(staleIn, c.pokeStale)
	} else {
		c.staleTimer.Reset(staleIn)
	}
}

func (c *Cluster) pokeStale() {
	select {
	case c.stale <- struct{}{}:
	default:
	}
}

// endLease stops this member acting as writer.
func (c *Cluster) endLease() {
	c.mu.Lock()
	had := c.lease.epoch != 0
	c.lease = lease{}
	if c.leaseTimer != nil {
		c.leaseTimer.Stop()
		c.leaseTimer = nil
	}
	if c.staleTimer != nil {
		c.staleTimer.Stop()
	}
	c.mu.Unlock()
	if had {
		c.notify()
	}
}

// leadership is the leader's duties for one term, run by lead.
type leadership struct {
	term    uint64
	since   time.Time // when this member saw itself elected
	stop    chan struct{}
	done    chan struct{}
	promote chan promoteReq
}

type promoteReq struct {
	name  string
	reply chan error // buffered; answered exactly once
}

func (ld *leadership) stopped() bool {
	select {
	case <-ld.stop:
		return true
	default:
		return false
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// run starts and stops the leader's duties as leadership comes and goes.
// Its tick is on the process's grid (internal/grid).
func (c *Cluster) run() {
	defer c.wg.Done()
	tick := grid.NewTicker(c.cfg.ElectionTimeout / 2)
	defer tick.Stop()
	leaderCh := c.raft.LeaderCh()
	for {
		fromTick := false
		select {
		case <-c.stop:
			c.stopLeading()
			return
		case <-leaderCh:
		case <-c.wake:
		case <-tick.C:
			fromTick = true
		}
		c.reconcile(fromTick)
		if fromTick && c.isLeader() {
			c.expireFences()
		}
	}
}

// reconcile makes the leader's duties run exactly while this member leads,
// once per term. Duties that ended by themselves while this member still
// leads the same term (a failed renewal, a handoff under way) start again
// only on a tick, so a hiccup does not spin.
func (c *Cluster) reconcile(fromTick bool) {
	term := c.raft.CurrentTerm()
	leader := c.isLeader()
	if term != c.raft.CurrentTerm() {
		c.poke() // moving; look again
		return
	}
	c.mu.Lock()
	ld := c.lead
	c.mu.Unlock()
	if ld != nil {
		if leader && ld.term == term && (!closed(ld.done) || !fromTick) {
			return
		}
		c.stopLeading()
	}
	if leader {
		ld := &leadership{
			term:    term,
			since:   time.Now(),
			stop:    make(chan struct{}),
			done:    make(chan struct{}),
			promote: make(chan promoteReq),
		}
		c.mu.Lock()
		c.lead = ld
		c.mu.Unlock()
		go c.leadTerm(ld)
	}
}

// stopLeading ends the lease and the leader's duties, and waits for them.
// A duty blocked on a Raft future waits for Raft to answer it, which Raft
// does when it loses leadership, within its leader lease at most.
func (c *Cluster) stopLeading() {
	c.mu.Lock()
	ld := c.lead
	c.lead = nil
	c.mu.Unlock()
	c.endLease()
	if ld == nil {
		return
	}
	close(ld.stop)
	<-ld.done
}

// leadTerm is the leader's duties for one term.
func (c *Cluster) leadTerm(ld *leadership) {
	defer close(ld.done)
	log := c.log.With("term", ld.term)
	// Apply all that earlier leaders committed before reading the state.
	if err := c.raft.Barrier(0).Error(); err != nil {
		log.Debug("leader barrier failed", "error", err)
		return
	}
	if !c.addMembers(ld) {
		return
	}
	// again: this leader was itself the writer in this term and stopped
	// for a planned move that did not happen. Nobody else can hold a lease
	// in this term, so it takes the next epoch without waiting.
	again := false
	for !ld.stopped() {
		s := c.State()
		mismatch := c.LUNMismatch()
		if mismatch != "" {
			log.Error("cannot be writer: this member's LU is not the cluster's", "differences", mismatch)
		}
		m, _ := s.Member(c.cfg.Name)
		distrust := ""
		if m.Role == RoleData && s.IsInSync(c.cfg.Name) {
			distrust = c.ownImageDistrust(s)
		}
		if m.Role != RoleData || !s.IsInSync(c.cfg.Name) || s.IsFenced(c.cfg.Name) || s.IsLeaving(c.cfg.Name) || mismatch != "" || distrust != "" {
			if c.handOff(ld, s) {
				return
			}
			select {
			case <-ld.stop:
				return
			case <-time.After(c.cfg.ElectionTimeout):
			case p := <-ld.promote:
				if c.transfer(ld, p) {
					return
				}
			}
			continue
		}
		if s.Epoch == 0 && c.bootstrapWriter(s) != c.cfg.Name {
			// A new cluster's first writer is the first data member of
			// the configuration: the others are compared against its
			// image, so an operator who brings existing data puts it
			// there (replica: the first epoch copies differing regions
			// from the writer). If it never comes, the operator names
			// another with `metrolun promote` (first-writer).
			first := c.bootstrapWriter(s)
			err := c.transferTo(first)
			if err == nil {
				return
			}
			log.Warn("waiting for the first data member to start the cluster as writer; if it cannot come, choose another with `metrolun promote SITE`",
				"member", first, "error", err)
			ch := c.Changed()
			select {
			case <-ld.stop:
				return
			case <-ch:
			case <-time.After(c.cfg.ElectionTimeout):
			}
			continue
		}
		if !again && s.Epoch > 0 && s.Released != s.Epoch {
			log.Info("waiting out the previous writer's lease", "epoch", s.Epoch, "writer", s.Writer,
				"wait", time.Until(ld.since.Add(c.takeoverWait())).Round(time.Millisecond))
			if c.waitOut(ld) {
				return
			}
		}
		epoch, err := c.becomeWriter(ld, s.Epoch+1)
		if err != nil {
			if !errors.Is(err, ErrRefused) {
				log.Debug("cannot become writer", "error", err)
				return
			}
			// The state moved under us; read it again.
			log.Warn("set-writer refused", "error", err)
			select {
			case <-ld.stop:
				return
			case <-time.After(c.cfg.ElectionTimeout / 10):
			}
			again = false
			continue
		}
		log.Info("writer", "epoch", epoch)
		switch c.holdLease(ld, epoch) {
		case leaseLost, handedOver:
			return
		case takeBack:
			again = true
		}
	}
}

// bootstrapWriter is the data site an operator chose (first-writer), or
// else the first data member of the configuration.
func (c *Cluster) bootstrapWriter(s State) string {
	if s.First != "" {
		return s.First
	}
	for _, p := range c.cfg.Peers {
		if p.Role == RoleData {
			return p.Name
		}
	}
	return ""
}

// addMembers puts every configured peer missing from the state into it,
// with its addresses, while the cluster is new: this makes the data sites
// in sync before any writer exists. Once a writer has been elected,
// membership changes only through AddMember and RemoveMember, so a member
// removed since (still in the configs of the others) does not come back.
func (c *Cluster) addMembers(ld *leadership) bool {
	s := c.State()
	if s.Epoch != 0 || s.Writer != "" {
		for _, p := range c.cfg.Peers {
			if m, ok := s.Member(p.Name); ok && m.Role != p.Role {
				c.log.Warn("member role differs from the config; the state wins", "member", p.Name, "state", m.Role, "config", p.Role)
			}
		}
		return true
	}
	for _, p := range c.cfg.Peers {
		if m, ok := s.Member(p.Name); ok {
			if m.Role != p.Role {
				c.log.Warn("member role differs from the config; the state wins", "member", p.Name, "state", m.Role, "config", p.Role)
			}
			continue
		}
		if ld.stopped() {
			return false
		}
		a := p.Addrs
		if a.Raft == "" {
			a.Raft = p.Addr
		}
		if a.Raft == "" && p.Name == c.cfg.Name {
			a.Raft = c.ownAddr()
		}
		if _, err := c.propose(Command{Kind: CmdAddMember, Name: p.Name, Role: p.Role, Addrs: &a}); err != nil {
			if errors.Is(err, ErrRefused) {
				c.log.Warn("add-member refused", "member", p.Name, "error", err)
				continue
			}
			c.log.Debug("add-member failed", "member", p.Name, "error", err)
			return false
		}
	}
	return true
}

// handOff gives leadership to an in-sync data site, the last writer
// last. It reports whether one took it.
func (c *Cluster) handOff(ld *leadership, s State) bool {
	// The previous writer goes last: a leader that cannot be writer is
	// most often elected because the writer died, and a transfer to a
	// dead member costs a whole election timeout.
	var to []string
	for _, n := range s.InSync {
		if m, ok := s.Member(n); ok && m.Role == RoleData && n != c.cfg.Name && n != s.Writer && !s.IsFenced(n) && !s.IsLeaving(n) && s.ImageUntrusted(n) == "" {
			to = append(to, n)
		}
	}
	if s.Writer != "" && s.Writer != c.cfg.Name && s.IsInSync(s.Writer) && !s.IsFenced(s.Writer) && !s.IsLeaving(s.Writer) && s.ImageUntrusted(s.Writer) == "" {
		to = append(to, s.Writer)
	}
	for _, n := range to {
		if ld.stopped() {
			return true
		}
		err := c.transferTo(n)
		if err == nil {
			c.handoffs.Add(1)
			c.log.Info("handed leadership to an in-sync data site", "to", n)
			return true
		}
		c.log.Warn("cannot hand leadership over", "to", n, "error", err)
	}
	if len(to) == 0 {
		c.log.Warn("leader cannot be writer and no in-sync data site to hand over to")
	}
	return false
}

// waitOut waits out the previous writer's lease, serving planned moves
// meanwhile. It reports whether the duties are over.
func (c *Cluster) waitOut(ld *leadership) bool {
	t := time.NewTimer(time.Until(ld.since.Add(c.takeoverWait())))
	defer t.Stop()
	for {
		select {
		case <-ld.stop:
			return true
		case <-t.C:
			return false
		case p := <-ld.promote:
			if c.transfer(ld, p) {
				return true
			}
		}
	}
}

// transfer serves a planned move while this leader is not the writer: no
// lease to give up, so leadership simply moves (and the new leader waits
// the lease out). It reports whether leadership moved.
func (c *Cluster) transfer(ld *leadership, p promoteReq) bool {
	if p.name == c.cfg.Name {
		p.reply <- nil // on its way
		return false
	}
	err := c.transferTo(p.name)
	if err != nil {
		p.reply <- fmt.Errorf("raftlog: leadership transfer to %s: %w", p.name, err)
		return false
	}
	p.reply <- nil
	return true
}

// becomeWriter commits set-writer(self, epoch) and takes the lease.
func (c *Cluster) becomeWriter(ld *leadership, epoch uint64) (uint64, error) {
	start := time.Now()
	cmd := Command{Kind: CmdSetWriter, Name: c.cfg.Name, Epoch: epoch, LUN: c.cfg.LUN}
	if c.cfg.Image != nil {
		// The image says it holds epoch's data before the state says so
		// (image.go): a crash between the two leaves the image ahead.
		id, err := c.cfg.Image.RaiseGeneration(epoch)
		if err != nil {
			return 0, fmt.Errorf("raftlog: raising the image generation to %d: %w", epoch, err)
		}
		cmd.Image = &id
	}
	idx, err := c.propose(cmd)
	if err != nil {
		return 0, err
	}
	// The entry must be of this leadership's term: the lease below rests
	// on the majority that accepted it after start.
	var e raft.Log
	if err := c.store.GetLog(idx, &e); err != nil {
		return 0, fmt.Errorf("raftlog: reading entry %d: %w", idx, err)
	}
	if e.Term != ld.term {
		return 0, fmt.Errorf("raftlog: set-writer committed in term %d, leading term %d", e.Term, ld.term)
	}
	if !c.grantLease(ld, lease{epoch: epoch, term: ld.term, since: time.Now(), until: start.Add(c.cfg.Lease)}) {
		return 0, ErrNotLeader
	}
	return epoch, nil
}

type leaseEnd int

const (
	leaseLost  leaseEnd = iota // leadership lost, or a renewal failed
	handedOver                 // a planned move gave leadership away
	takeBack                   // a planned move failed; take the next epoch
)

// holdLease keeps the lease renewed and serves planned moves until this
// member is fenced. Answers to Raft's heartbeats renew it (contacted); when
// none has come from a majority for Lease/2 (a slow link, a loaded
// machine, or this member is the only voter), it asks for them itself.
func (c *Cluster) holdLease(ld *leadership, epoch uint64) leaseEnd {
	c.renewing(ld, epoch, true)
	c.slowBeats(true)
	defer c.slowBeats(false)
	for {
		changed := c.Changed()
		if c.State().IsFenced(c.cfg.Name) {
			return c.stepDownFenced(ld, epoch)
		}
		select {
		case <-ld.stop:
			return leaseLost
		case <-changed:
			if c.raft.CurrentTerm() != ld.term || !c.isLeader() {
				c.log.Warn("writer lease renewal failed; not the writer any more", "epoch", epoch,
					"error", fmt.Sprintf("not the leader of term %d", ld.term))
				c.endLease()
				return leaseLost
			}
		case <-c.stale:
			if !c.verify(ld, epoch) {
				return leaseLost
			}
		case p := <-ld.promote:
			if p.name == c.cfg.Name {
				p.reply <- nil
				continue
			}
			return c.handOver(ld, epoch, p)
		}
	}
}

// slowBeatFactor is how many times ElectionTimeout Raft's
// HeartbeatTimeout is at the writer (slowBeats).
const slowBeatFactor = 10

// slowBeats makes Raft's own heartbeats rare while this member is the
// writer (on), or puts them back. Raft's heartbeat goroutine waits
// HeartbeatTimeout/10 to /5 after each answer, a random wake-up per
// follower every 50-100 ms; the transport cannot put those on the grid,
// only what they send. The leader's grid-paced commit-index requests do
// their work (termGuard.hold), and the heartbeats, every 0.5-1 s now,
// still keep Raft's leader lease (LeaderLeaseTimeout, an election
// timeout) on their own when a follower is too busy to answer the
// others (they bypass its main loop), and answer VerifyLeader at once
// whatever the timeout. HeartbeatTimeout is also how long a follower
// waits for its leader, and the election timeout (at least
// HeartbeatTimeout for Raft) how long a leadership transfer may take:
// both go back before this member transfers leadership or leaves the
// term (holdLease), and a leader that steps down by itself meanwhile
// gets them back as soon as holdLease ends, Raft resetting its follower
// timer then.
func (c *Cluster) slowBeats(on bool) {
	rc := c.raft.ReloadableConfig()
	rc.HeartbeatTimeout, rc.ElectionTimeout = c.cfg.ElectionTimeout, c.cfg.ElectionTimeout
	if on {
		rc.HeartbeatTimeout *= slowBeatFactor
		rc.ElectionTimeout *= slowBeatFactor
	}
	// Raft's longest pause between two heartbeats (termGuard.hold).
	c.trans.beatEvery.Store(int64(rc.HeartbeatTimeout / 5))
	if err := c.raft.ReloadConfig(rc); err != nil {
		c.log.Warn("cannot change Raft's heartbeat timeout", "to", rc.HeartbeatTimeout, "error", err)
	}
}

// verify renews a lease that no majority has confirmed for Lease/2 by a
// VerifyLeader round: Raft sends every follower a heartbeat at once, and
// the lease runs to when the call started plus Lease (the rule the
// takeover wait's RPCTimeout covers, see the top of this file). A failed
// round ends the lease.
func (c *Cluster) verify(ld *leadership, epoch uint64) bool {
	c.mu.Lock()
	held, until := c.lease.epoch == epoch, c.lease.until
	c.mu.Unlock()
	if !held {
		return false // ended meanwhile
	}
	if time.Until(until) > c.cfg.Lease/2 {
		return true // confirmed meanwhile
	}
	start := time.Now()
	if c.raft.CurrentTerm() == ld.term {
		c.trans.hurry(c.cfg.RPCTimeout)
		err := c.raft.VerifyLeader().Error()
		if err == nil && c.raft.CurrentTerm() == ld.term {
			c.extendLease(ld, epoch, start.Add(c.cfg.Lease))
			return true
		}
		c.log.Warn("writer lease renewal failed; not the writer any more", "epoch", epoch, "error", err)
	}
	c.endLease()
	return false
}

// transferTo hands Raft leadership to name. Raft first brings name's log
// up to date through its replicate goroutine, which may be waiting in
// the transport with a commit-index request (termGuard.hold): hurry
// releases it.
func (c *Cluster) transferTo(name string) error {
	c.trans.hurry(c.cfg.ElectionTimeout)
	return c.raft.LeadershipTransferToServer(raft.ServerID(name), raft.ServerAddress(name)).Error()
}

// handOver is a planned move of the writer to p.name.
func (c *Cluster) handOver(ld *leadership, epoch uint64, p promoteReq) leaseEnd {
	// Stop acting as writer before anything says so.
	c.endLease()
	c.slowBeats(false)
	_, err := c.propose(Command{Kind: CmdRelease, Name: c.cfg.Name, ByEpoch: epoch})
	if err != nil {
		p.reply <- fmt.Errorf("raftlog: release of epoch %d: %w", epoch, err)
		if errors.Is(err, ErrNotLeader) || errors.Is(err, ErrClosed) {
			return leaseLost
		}
		return takeBack
	}
	err = c.transferTo(p.name)
	if err != nil {
		c.log.Warn("planned move failed; staying writer", "to", p.name, "error", err)
		p.reply <- fmt.Errorf("raftlog: leadership transfer to %s: %w", p.name, err)
		return takeBack
	}
	c.log.Info("writer moved", "to", p.name, "released", epoch)
	p.reply <- nil
	return handedOver
}

// ErrTimeout: the operation did not complete in time.
var ErrTimeout = errors.New("raftlog: timeout")

// Promote moves the writer to the data site name (a planned move; the
// previous writer gives up its lease, so the new one need not wait it
// out). Only the leader serves it; others return a *NotLeaderError naming
// the leader. It returns once name is the writer of a new epoch, or fails
// after timeout.
func (c *Cluster) Promote(name string, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	c.mu.Lock()
	ld := c.lead
	c.mu.Unlock()
	if ld == nil || !c.isLeader() {
		return c.notLeader()
	}
	s := c.State()
	m, ok := s.Member(name)
	switch {
	case !ok:
		return refuse("promote: no member %s", name)
	case m.Role != RoleData:
		return refuse("promote: %s is a %s and cannot be the writer", name, m.Role)
	case !s.IsInSync(name):
		return refuse("promote: %s is not in sync", name)
	case s.IsFenced(name):
		return refuse("promote: %s is fenced", name)
	case s.IsLeaving(name):
		return refuse("promote: %s is being removed", name)
	case s.ImageUntrusted(name) != "":
		return refuse("promote: %s's image is untrusted: %s", name, s.ImageUntrusted(name))
	}
	if e, _ := c.WriterLease(); name == c.cfg.Name && e != 0 {
		return nil
	}
	e0 := s.Epoch
	if s.Epoch == 0 && s.Writer == "" {
		// A new cluster still waiting for its first writer: record the
		// choice; the leader's duties (leadTerm) hand over to it.
		if s.First != name {
			if _, err := c.propose(Command{Kind: CmdFirstWriter, Name: name}); err != nil {
				return err
			}
			c.log.Info("first writer chosen", "member", name)
		}
		return c.waitWriter(name, e0, timer)
	}
	p := promoteReq{name: name, reply: make(chan error, 1)}
	select {
	case ld.promote <- p:
	case <-ld.done:
		return c.notLeader()
	case <-timer.C:
		return fmt.Errorf("%w: promote %s: the leader is busy", ErrTimeout, name)
	}
	select {
	case err := <-p.reply:
		if err != nil {
			return err
		}
	case <-timer.C:
		return fmt.Errorf("%w: promote %s: no leadership transfer within %v", ErrTimeout, name, timeout)
	}
	return c.waitWriter(name, e0, timer)
}

// waitWriter waits until name is the writer of an epoch above e0.
func (c *Cluster) waitWriter(name string, e0 uint64, timer *time.Timer) error {
	for {
		ch := c.Changed()
		if s := c.State(); s.Writer == name && s.Epoch > e0 {
			return nil
		}
		select {
		case <-ch:
		case <-timer.C:
			return fmt.Errorf("%w: promote %s: not the writer in time", ErrTimeout, name)
		case <-c.stop:
			return ErrClosed
		}
	}
}
