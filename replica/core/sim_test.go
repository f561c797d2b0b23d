package core

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// sim is a whole cluster around one Core, with nothing real in it: the
// writer's thin loop as replica/writer.go runs it (Begin, local apply,
// Admit, sends, Ready, Advance), replicas that apply frames in order and
// answer, links that fail, drops that commit or not, read leases, a copy
// cursor, and a manual clock. Every step is one event; check tests the
// invariants after each.
//
// The volume has nreg regions of one byte each; a write stores its
// sequence number in every region it covers, so an image says which
// write each region holds.
type sim struct {
	c     *Core
	clock *Manual
	nreg  int
	lease time.Duration
	epoch uint64

	writerLease time.Time // the cluster's lease for this writer
	leaseEpoch  uint64    // 0 once it is lost to another epoch

	image []uint64 // the writer's
	peers []*simPeer
	gone  []*simPeer // removed from the cluster
	added int

	ops map[uint64]*simOp // admitted, by seq
	// settledSet: every admitted seq that was settled.
	settledSet map[uint64]bool
	log        []string
	quiet      bool // no log (the explorer)
	violations []string

	markFail bool // the next mark fails to persist
	// markFailed: seqs whose range could not be recorded for a replica
	// that misses them (a Must mark failed).
	markFailed map[uint64]bool
}

type simPeer struct {
	id    PeerID
	name  string
	image []uint64
	dirty map[int]bool // the persistent bitmap the writer keeps for it
	marks int          // marks recorded (Bitmap.Marks)

	up      bool
	toPeer  []simFrame // in flight, writer -> peer
	pending []simFrame // sent and not answered (the Link's pending list)
	acks    []simAck   // in flight, peer -> writer
	applied []uint64   // seqs it applied, in order
	commit  uint64     // the commit point it holds
	// leaseEnd: the read lease it holds (it serves reads until then).
	leaseEnd time.Time

	drops      int  // drops that resolved
	dropping   bool // a drop is under way (harness side: Raft and the lease wait)
	dropUntil  time.Time
	dropCommit bool

	syncing    bool
	syncMarks  int // marks when the resync pass ended
	syncedSeq  uint64
	syncedDone bool
}

type simFrame struct {
	seq    uint64
	kind   Kind
	off, n int
	copy   bool     // a resync copy: data carries the regions' values
	data   []uint64 // copy only
	commit uint64   // piggybacked, or a commit frame's point
	cmt    bool     // a commit frame (no seq)
	synced bool     // the flush that ends a resync
	wait   bool
}

type simAck struct {
	seq uint64
	err error
}

type simOp struct {
	seq      uint64
	op       Op
	inSync   []PeerID // replicas in sync (or dropping) when it was admitted
	dropsAt  map[PeerID]int
	answered bool
	ok       bool
	failed   bool
}

// newSim starts a writer with in-sync replicas names. handover: it took
// over in a planned move, and the previous writer granted every replica
// a read lease up to a lease from now.
func newSim(nreg int, handover bool, names ...string) *sim {
	s := &sim{nreg: nreg, lease: 100 * time.Millisecond, epoch: 3, clock: NewManual(time.Unix(1000, 0)),
		ops: map[uint64]*simOp{}, settledSet: map[uint64]bool{}, markFailed: map[uint64]bool{}}
	s.leaseEpoch = s.epoch
	s.writerLease = s.clock.Now().Add(s.lease)
	s.c = New(Config{Epoch: s.epoch, Lease: s.lease, Clock: s.clock, CommitIdle: 2 * time.Millisecond,
		Started: s.clock.Now(), Handover: handover,
		WriterLease: func() (uint64, time.Time) { return s.leaseEpoch, s.writerLease }})
	s.image = make([]uint64, nreg)
	for _, n := range names {
		p := &simPeer{name: n, image: make([]uint64, nreg), dirty: map[int]bool{}, up: true}
		if handover {
			p.leaseEnd = s.clock.Now().Add(s.lease)
		}
		p.id = s.c.AddPeer(n, InSync)
		s.c.Connected(p.id, true)
		s.peers = append(s.peers, p)
	}
	return s
}

func (s *sim) logf(format string, args ...any) {
	if !s.quiet {
		s.log = append(s.log, fmt.Sprintf(format, args...))
	}
}

func (s *sim) violate(format string, args ...any) {
	s.violations = append(s.violations, fmt.Sprintf(format, args...))
}

func (s *sim) peer(name string) *simPeer {
	for _, p := range s.peers {
		if p.name == name {
			return p
		}
	}
	panic("no peer " + name)
}

func (s *sim) byID(id PeerID) *simPeer {
	for _, p := range append(s.peers, s.gone...) {
		if p.id == id {
			return p
		}
	}
	return nil
}

// removePeer: an out-of-sync replica leaves the cluster (writer.retire:
// no write waits for it, its bitmap is forgotten).
func (s *sim) removePeer(p *simPeer) {
	if len(s.peers) < 2 || s.c.State(p.id) != Out || p.syncing || p.dropping {
		return
	}
	s.linkDown(p, "removed")
	s.c.RemovePeer(p.id)
	s.peers = slices.DeleteFunc(s.peers, func(x *simPeer) bool { return x == p })
	s.gone = append(s.gone, p)
	s.logf("%s removed", p.name)
}

// addPeer: a data site joins (writer.syncPeers): out of sync, with a full
// bitmap, resynced like any other.
func (s *sim) addPeer() {
	s.added++
	p := &simPeer{name: fmt.Sprintf("n%d", s.added), image: make([]uint64, s.nreg), dirty: map[int]bool{}}
	for r := range s.nreg {
		p.dirty[r] = true
	}
	p.id = s.c.AddPeer(p.name, Out)
	s.peers = append(s.peers, p)
	s.logf("%s joins", p.name)
}

// write orders a write (or unmap, flush) of n regions at off; origin is
// the forwarding replica's name or "". localFail makes the local apply
// fail.
func (s *sim) write(kind Kind, off, n int, origin string, localFail bool) {
	seq, err := s.c.Begin()
	if err != nil {
		s.logf("write %d+%d: %v", off, n, err)
		return
	}
	if localFail {
		s.c.Abort(seq)
		s.logf("write %d+%d: local apply failed, seq %d given back", off, n, seq)
		return
	}
	op := Op{Kind: kind, Off: int64(off), N: int64(n)}
	if kind == Flush {
		op.Off, op.N, off, n = 0, 0, 0, 0
	}
	if origin != "" {
		op.Origin = s.peer(origin).id
	}
	if kind == Write || kind == Unmap {
		for r := off; r < off+n; r++ {
			s.image[r] = seq
		}
	}
	o := &simOp{seq: seq, op: op, dropsAt: map[PeerID]int{}}
	for _, p := range s.peers {
		if st := s.c.State(p.id); st == InSync || st == Dropping {
			o.inSync = append(o.inSync, p.id)
			o.dropsAt[p.id] = p.drops
		}
	}
	s.ops[seq] = o
	sends := s.c.Admit(seq, op)
	var to []string
	for _, sd := range sends {
		p := s.byID(sd.Peer)
		f := simFrame{seq: seq, kind: kind, off: off, n: n, commit: sd.Commit, wait: sd.Wait}
		to = append(to, p.name)
		if sd.Commit > 0 {
			s.checkCommitSent(p, sd.Commit)
		}
		if !s.send(p, f) && !sd.Wait {
			// A resyncing replica's link had failed already.
			s.c.SendFailed(seq, p.id)
		}
	}
	s.logf("write %d+%d seq %d -> [%s]", off, n, seq, strings.Join(to, " "))
	s.drain()
}

// send puts f on p's link, or answers it with the link's error as a
// failed Link does. It reports whether the link took it.
func (s *sim) send(p *simPeer, f simFrame) bool {
	if !p.up {
		if !f.cmt && f.wait {
			s.c.Ack(f.seq, p.id, errors.New("link down"))
		}
		return false
	}
	p.toPeer = append(p.toPeer, f)
	if !f.cmt {
		p.pending = append(p.pending, f)
	}
	return true
}

func (s *sim) checkCommitSent(p *simPeer, cp uint64) {
	for seq, o := range s.ops {
		if seq <= cp && !s.settledSet[seq] {
			s.violate("commit point %d sent to %s passes unsettled seq %d (answered %v)", cp, p.name, seq, o.answered)
		}
	}
}

// drain acts on every Ready, as the writer's thin loop does.
func (s *sim) drain() {
	for s.c.HasReady() {
		rd := s.c.Ready()
		for _, m := range rd.Marks {
			p := s.byID(m.Peer)
			// Bitmap.Mark sets the bits in memory before it writes
			// them out: a failed write leaves the resync of this
			// writer right, and the writer tainted (a full compare
			// after a crash).
			for r := m.Off; r < m.Off+m.N; r++ {
				p.dirty[int(r)] = true
			}
			if s.markFail {
				s.markFail = false
				s.c.MarkFailed(m.Seq, m.Peer, errors.New("disk full"))
				if m.Must {
					s.markFailed[m.Seq] = true
				}
				s.logf("mark %s %d+%d failed", p.name, m.Off, m.N)
				continue
			}
			p.marks++
			s.logf("mark %s %d+%d (seq %d)", p.name, m.Off, m.N, m.Seq)
		}
		for _, id := range rd.Drops {
			p := s.byID(id)
			s.startDrop(p)
		}
		for _, a := range rd.Answers {
			s.answered(a)
		}
		for _, seq := range rd.Settled {
			s.settledOne(seq)
		}
		for _, seq := range rd.Released {
			s.logf("released seq %d", seq)
		}
		s.c.Advance(rd)
	}
}

func (s *sim) startDrop(p *simPeer) {
	p.dropping, p.dropCommit = true, false
	s.logf("dropping %s", p.name)
	s.linkDown(p, "dropped")
}

// answered checks an answer against the cluster (I1, I2, I3).
func (s *sim) answered(a Answer) {
	if a.Poll {
		s.logf("seq %d waits for the writer lease", a.Seq)
		return
	}
	o := s.ops[a.Seq]
	if o == nil {
		s.violate("answer for unknown seq %d", a.Seq)
		return
	}
	if o.answered {
		s.violate("seq %d answered twice", a.Seq)
	}
	o.answered = true
	if a.Err != nil {
		o.failed = true
		s.logf("answer seq %d: %v", a.Seq, a.Err)
		return
	}
	o.ok = true
	s.logf("answer seq %d: ok", a.Seq)
	if s.markFailed[a.Seq] {
		s.violate("seq %d acknowledged though a replica that misses it has no record of it", a.Seq)
	}
	now := s.clock.Now()
	if s.leaseEpoch != s.epoch || !now.Before(s.writerLease) {
		s.violate("seq %d acknowledged without the writer lease (I2)", a.Seq)
	}
	for _, id := range o.inSync {
		if id == o.op.Origin {
			continue
		}
		p := s.byID(id)
		if slices.Contains(p.applied, a.Seq) || s.holds(p, o) {
			continue
		}
		if p.drops > o.dropsAt[id] {
			// Dropped since (marked, its lease out: dropExpires
			// checks); it may be back in sync by a resync already.
			continue
		}
		// Not there: it must be out of the in-sync set with the range
		// recorded, and its read lease over.
		if st := s.c.State(id); st == InSync || st == Dropping {
			s.violate("seq %d acknowledged while %s (%v) does not have it (I1)", a.Seq, p.name, st)
			continue
		}
		for r := o.op.Off; r < o.op.Off+o.op.N; r++ {
			if !p.dirty[int(r)] {
				s.violate("seq %d acknowledged without %s and region %d not marked for it (I4)", a.Seq, p.name, r)
			}
		}
		if now.Before(p.leaseEnd) {
			s.violate("seq %d acknowledged while %s, which misses it, still holds a read lease (I3)", a.Seq, p.name)
		}
	}
}

// holds reports whether p holds o's write or a newer one in every region
// of it (a resync copied them after p was dropped and came back).
func (s *sim) holds(p *simPeer, o *simOp) bool {
	if o.op.N == 0 {
		return false
	}
	for r := o.op.Off; r < o.op.Off+o.op.N; r++ {
		if p.image[r] < o.seq {
			return false
		}
	}
	return true
}

func (s *sim) settledOne(seq uint64) {
	o := s.ops[seq]
	s.logf("settled seq %d", seq)
	if o == nil || !o.ok {
		s.violate("seq %d settled without a good answer", seq)
		return
	}
	s.settledSet[seq] = true
	if o.op.Origin != 0 {
		p := s.byID(o.op.Origin)
		if !slices.Contains(p.applied, seq) && !s.holds(p, o) && p.drops == o.dropsAt[p.id] {
			if st := s.c.State(p.id); st == InSync || st == Dropping {
				s.violate("forwarded seq %d settled before its origin %s applied it", seq, p.name)
			}
		}
	}
}

// deliver applies the first frame in flight to p.
func (s *sim) deliver(p *simPeer) {
	if len(p.toPeer) == 0 {
		return
	}
	f := p.toPeer[0]
	p.toPeer = p.toPeer[1:]
	if f.commit > p.commit {
		p.commit = f.commit
	}
	if f.cmt {
		s.logf("%s commit %d", p.name, f.commit)
		return
	}
	if n := len(p.applied); n > 0 && p.applied[n-1] >= f.seq {
		s.violate("%s got seq %d after %d (order)", p.name, f.seq, p.applied[n-1])
	}
	p.applied = append(p.applied, f.seq)
	switch {
	case f.copy:
		copy(p.image[f.off:f.off+f.n], f.data)
	case f.kind == Write || f.kind == Unmap:
		for r := f.off; r < f.off+f.n; r++ {
			p.image[r] = f.seq
		}
	}
	p.acks = append(p.acks, simAck{seq: f.seq})
	if f.commit > 0 {
		s.logf("%s applied seq %d, commit %d", p.name, f.seq, f.commit)
	} else {
		s.logf("%s applied seq %d", p.name, f.seq)
	}
}

// ack hands p's first answer to the writer.
func (s *sim) ack(p *simPeer) {
	if len(p.acks) == 0 {
		return
	}
	a := p.acks[0]
	p.acks = p.acks[1:]
	// Cumulative, as Link.readAcks: everything up to a.seq is answered.
	for len(p.pending) > 0 && p.pending[0].seq <= a.seq {
		f := p.pending[0]
		p.pending = p.pending[1:]
		if f.synced {
			s.syncedAcked(p)
		}
		if !f.copy && f.wait {
			s.c.Ack(f.seq, p.id, nil)
		}
	}
	s.drain()
}

// linkDown fails p's link: what is in flight is lost; every frame not
// answered is marked for it (Link.onDown) and answered with an error.
func (s *sim) linkDown(p *simPeer, why string) {
	if !p.up {
		return
	}
	p.up = false
	s.c.Connected(p.id, false)
	p.toPeer, p.acks = nil, nil
	lost := p.pending
	p.pending = nil
	for _, f := range lost {
		if f.kind == Write || f.kind == Unmap || f.copy {
			for r := f.off; r < f.off+f.n; r++ {
				p.dirty[r] = true
			}
			p.marks++
		}
	}
	s.logf("%s link down (%s), %d frames lost", p.name, why, len(lost))
	if p.syncing {
		p.syncing = false
		s.c.SyncFailed(p.id)
	}
	for _, f := range lost {
		if !f.copy && f.wait {
			s.c.Ack(f.seq, p.id, errors.New("link down"))
		}
	}
	// The watchdog drops an in-sync replica whose link failed.
	if s.c.Fail(p.id) {
		s.startDrop(p)
	}
	s.drain()
}

// dropCommits: the cluster took p out of the in-sync set.
func (s *sim) dropCommits(p *simPeer) {
	if !p.dropping || p.dropCommit {
		return
	}
	p.dropCommit = true
	p.dropUntil = s.c.DropCommitted(p.id)
	if p.dropUntil.IsZero() {
		s.logf("drop %s committed, no lease to wait for", p.name)
	} else {
		s.logf("drop %s committed, lease wait until +%v", p.name, p.dropUntil.Sub(time.Unix(1000, 0)))
	}
	s.dropExpires(p)
}

func (s *sim) dropExpires(p *simPeer) {
	if !p.dropping || !p.dropCommit {
		return
	}
	if s.c.DropExpired(p.id) {
		if s.clock.Now().Before(p.leaseEnd) {
			s.violate("%s dropped while it holds a read lease (I3)", p.name)
		}
		p.drops++
		p.dropping = false
		s.logf("%s dropped", p.name)
		s.drain()
	}
}

func (s *sim) dropFails(p *simPeer) {
	if !p.dropping || p.dropCommit {
		return
	}
	p.dropping = false
	s.c.DropFailed(p.id)
	s.logf("drop %s failed", p.name)
	s.drain()
}

// grant: p asks for a read lease.
func (s *sim) grant(p *simPeer) {
	if !p.up {
		return
	}
	if d, ok := s.c.Grant(p.id); ok {
		if end := s.clock.Now().Add(d); end.After(p.leaseEnd) {
			p.leaseEnd = end
		}
		s.logf("%s lease %v", p.name, d)
	}
}

func (s *sim) reconnect(p *simPeer) {
	if p.up || p.dropping || s.c.State(p.id) != Out {
		return
	}
	p.up = true
	s.c.Connected(p.id, true)
	s.logf("%s connected", p.name)
}

// resyncStart begins a resync pass of an out-of-sync connected replica.
func (s *sim) resyncStart(p *simPeer) {
	if !p.up || p.syncing || !s.c.StartSync(p.id) {
		return
	}
	p.syncing, p.syncedDone = true, false
	s.logf("%s resync starts", p.name)
}

// resyncStep handles the region at p's cursor, as writer.resync does
// under w.mu: copied if dirty, skipped if clean, and the cursor moves
// past it in the same step. At the end the replica is in sync and a
// synced flush goes out.
func (s *sim) resyncStep(p *simPeer) {
	if !p.syncing || !p.up {
		return
	}
	r := int(s.c.Cursor(p.id))
	if r >= s.nreg {
		if !s.c.SyncDone(p.id) {
			return
		}
		p.syncing = false
		p.syncMarks = p.marks
		seq := s.c.NextSeq()
		p.syncedSeq = seq
		s.send(p, simFrame{seq: seq, kind: Flush, synced: true})
		s.logf("%s in sync, synced flush seq %d", p.name, seq)
		return
	}
	if p.dirty[r] {
		seq := s.c.NextSeq()
		s.send(p, simFrame{seq: seq, off: r, n: 1, copy: true, data: []uint64{s.image[r]}})
		s.logf("%s copy region %d seq %d", p.name, r, seq)
	}
	s.c.SetCursor(p.id, int64(r+1))
}

// syncedAcked: the synced flush was answered; the bitmap is cleared if
// nothing was marked since the pass ended (Bitmap.ClearIf).
func (s *sim) syncedAcked(p *simPeer) {
	if p.marks == p.syncMarks {
		p.dirty = map[int]bool{}
		s.logf("%s bitmap cleared", p.name)
	}
}

func (s *sim) commitTick() {
	fs, _ := s.c.CommitsDue()
	for _, f := range fs {
		p := s.byID(f.Peer)
		s.checkCommitSent(p, f.Seq)
		s.send(p, simFrame{cmt: true, commit: f.Seq})
	}
	if len(fs) > 0 {
		s.logf("commit %d to %d replicas", fs[0].Seq, len(fs))
	}
}

func (s *sim) advance(d time.Duration) {
	s.clock.Advance(d)
	s.c.Tick()
	for _, p := range s.peers {
		s.dropExpires(p)
	}
	s.drain()
}

// check tests the invariants that hold after every step.
func (s *sim) check() {
	cp := s.c.Commit()
	for seq := range s.ops {
		if seq <= cp && !s.settledSet[seq] {
			s.violate("commit point %d passes unsettled seq %d", cp, seq)
		}
	}
	for _, p := range s.peers {
		if p.commit > cp {
			s.violate("%s holds commit point %d beyond the writer's %d", p.name, p.commit, cp)
		}
	}
}

// quiescent reports whether nothing is in flight.
func (s *sim) quiescent() bool {
	for _, p := range s.peers {
		if len(p.toPeer)+len(p.acks)+len(p.pending) > 0 || p.dropping || p.syncing {
			return false
		}
	}
	return s.c.Unsettled() == 0 || s.allDecided()
}

func (s *sim) allDecided() bool {
	for _, o := range s.ops {
		if !o.answered {
			return false
		}
	}
	return true
}

// checkQuiet tests the images when nothing is in flight: every in-sync
// replica equals the writer (I4), and every other one differs only where
// its bitmap says.
func (s *sim) checkQuiet() {
	for _, p := range s.peers {
		st := s.c.State(p.id)
		for r := range s.nreg {
			if p.image[r] == s.image[r] {
				continue
			}
			if st == InSync {
				s.violate("in-sync %s region %d holds seq %d, writer %d (I4)", p.name, r, p.image[r], s.image[r])
			} else if !p.dirty[r] {
				s.violate("%s (%v) region %d holds seq %d, writer %d, and is not marked (I4)", p.name, st, r, p.image[r], s.image[r])
			}
		}
	}
}

func (s *sim) state() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seq %d commit %d unsettled %d\n", s.c.Seq(), s.c.Commit(), s.c.Unsettled())
	for _, p := range s.peers {
		var d []int
		for r := range p.dirty {
			d = append(d, r)
		}
		sort.Ints(d)
		fmt.Fprintf(&b, "%s %v cursor %d dirty %v commit %d image %v\n", p.name, s.c.State(p.id), s.c.Cursor(p.id), d, p.commit, p.image)
	}
	fmt.Fprintf(&b, "writer image %v", s.image)
	return b.String()
}
