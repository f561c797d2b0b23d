// Package raftlog is the cluster state machine on hashicorp/raft: members,
// roles, the writer and its epoch, and the in-sync set (DESIGN.md). Replica
// leases, LUN definitions and reservations join it as mirroring grows.
//
// Cluster (cluster.go) is one member's participant: a bolt log store,
// snapshots, a TCP or mutual-TLS transport (transport.go), and the election
// of the writer with its lease (lease.go).
//
// The state machine (State and Apply) is pure: a command and a state in, a
// new state or a refusal out. hashicorp/raft orders the commands; every
// member applies the same ones in the same order and so holds the same
// state.
package raftlog

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"
)

// Roles (DESIGN.md): a data site holds data and may be the writer; a
// witness only votes.
const (
	RoleData    = "data"
	RoleWitness = "witness"
)

// Member is one site of the cluster.
type Member struct {
	Name string `msgpack:"n"`
	Role string `msgpack:"r"`
	// Addrs is where the others reach it, as the member that added it was
	// told; empty for members bootstrapped before addresses were kept. A
	// member's own config, when it lists the peer, wins (it may name a
	// proxy).
	Addrs Addrs `msgpack:"a"`
}

// Addrs are a member's addresses, host:port each.
type Addrs struct {
	Raft        string   `msgpack:"ra,omitempty"`
	Replication string   `msgpack:"rp,omitempty"` // data sites
	Admin       string   `msgpack:"ad,omitempty"`
	ISCSI       []string `msgpack:"is,omitempty"` // data sites: portals initiators use
	PortalGroup int      `msgpack:"pg,omitempty"` // data sites: target portal group tag
}

// State is the replicated cluster state.
type State struct {
	Members []Member `msgpack:"m"`
	// Writer is the data site that orders and acknowledges writes in
	// Epoch; "" before the first election of a writer.
	Writer string `msgpack:"w"`
	Epoch  uint64 `msgpack:"e"`
	// InSync are the data sites that have every acknowledged write. The
	// writer is always one of them.
	InSync []string `msgpack:"i"`
	// Released is the last epoch whose writer gave up its lease before
	// handing leadership on (a planned move, Cluster.Promote). When it
	// equals Epoch, no member can be acting as writer, so the next leader
	// need not wait out the lease.
	Released uint64 `msgpack:"rl,omitempty"`
	// Fenced are the data sites an operator fenced off (fence.go).
	Fenced []Fence `msgpack:"f,omitempty"`
	// Leaving are the members being removed (members.go): none can
	// become writer or rejoin the in-sync set, and the writer drops and
	// forgets a leaving data site.
	Leaving []string `msgpack:"lv,omitempty"`
	// LUN is the clustered LU, recorded by the first writer (lun.go).
	LUN *LUN `msgpack:"lu,omitempty"`
	// First is the data site an operator chose to start a new cluster as
	// writer (first-writer); "" means the first data member of the
	// configuration.
	First string `msgpack:"fw,omitempty"`
	// Images are the data members' recorded image identities (image.go).
	Images []Image `msgpack:"im,omitempty"`
}

// clone returns a deep copy; every slice or map field added to State must
// be copied here, since Apply must not share memory with its input.
func (s State) clone() State {
	n := s
	n.Members, n.InSync = slices.Clone(s.Members), slices.Clone(s.InSync)
	for i := range n.Members {
		n.Members[i].Addrs.ISCSI = slices.Clone(n.Members[i].Addrs.ISCSI)
	}
	n.Fenced, n.Leaving = slices.Clone(s.Fenced), slices.Clone(s.Leaving)
	n.Images = slices.Clone(s.Images)
	if s.LUN != nil {
		l := *s.LUN
		n.LUN = &l
	}
	return n
}

// Member returns the member called name.
func (s State) Member(name string) (Member, bool) { return s.member(name) }

// IsInSync reports whether name is in the in-sync set.
func (s State) IsInSync(name string) bool { return slices.Contains(s.InSync, name) }

func (s *State) member(name string) (Member, bool) {
	for _, m := range s.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// Command kinds.
const (
	CmdAddMember  = "add-member"  // Name with Role and, if given, Addrs
	CmdSetWriter  = "set-writer"  // a new epoch with Name as writer
	CmdDropInSync = "drop-insync" // Name missed writes: out of the in-sync set
	CmdAddInSync  = "add-insync"  // Name finished resync
	CmdRelease    = "release"     // the writer Name gives up its lease for ByEpoch
	// CmdFirstWriter: a new cluster (no writer yet) starts with Name as
	// writer instead of the first data member of the configuration.
	CmdFirstWriter = "first-writer"
)

// Command is one entry of the Raft log.
type Command struct {
	Kind    string `msgpack:"k"`
	Name    string `msgpack:"n"`
	Role    string `msgpack:"r,omitempty"`
	Epoch   uint64 `msgpack:"e,omitempty"` // for set-writer: the new epoch
	ByEpoch uint64 `msgpack:"b,omitempty"` // for insync changes and release: the epoch that asks
	Until   int64  `msgpack:"u,omitempty"` // for fence and unfence (fence.go)
	Addrs   *Addrs `msgpack:"a,omitempty"` // for add-member
	// LUN is the LU the member serves, for set-writer (the first one
	// records it) and add-member of a data site (lun.go).
	LUN *LUN `msgpack:"l,omitempty"`
	// Image is a data site's image identity: for set-writer the new
	// writer's, raised to Epoch; for add-insync the joining site's after
	// its copy; for image the one to record (image.go).
	Image *ImageID `msgpack:"im,omitempty"`
	// Reason, for image: why the image is untrusted.
	Reason string `msgpack:"why,omitempty"`
}

// ErrRefused wraps every reason a command is not applied.
var ErrRefused = errors.New("raftlog: command refused")

// Refusals that callers act on; each is also ErrRefused.
var (
	// ErrNotInSync: drop-in-sync of a site that is already out.
	ErrNotInSync = errors.New("not in sync")
	// ErrAlreadyInSync: add-in-sync of a site that is already in.
	ErrAlreadyInSync = errors.New("already in sync")
)

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// Apply returns the state after c, or an error and s unchanged. It
// enforces the invariants that do not depend on time:
//   - epochs only grow, and each set-writer raises it (I2);
//   - only an in-sync data site can become writer (no acknowledged write
//     is missing there, I1), and a witness never does;
//   - in-sync changes carry the epoch of the writer that asked, and a
//     stale writer's request is refused (I2: a writer that cannot commit
//     the drop stops acknowledging);
//   - only the writer of the current epoch can release it, once;
//   - a fenced site cannot become writer nor rejoin the in-sync set, and
//     a fenced writer's in-sync changes are refused (fence.go);
//   - a member joins out of sync (unless it is the first data site of a
//     new cluster), and leaves only once out of sync and not the writer
//     (members.go);
//   - a data site whose image is untrusted or does not match its record
//     cannot become writer, and rejoins the in-sync set only with a new
//     identity (image.go).
func (s State) Apply(c Command) (State, error) {
	n := s.clone()
	switch c.Kind {
	case CmdAddMember:
		if _, ok := s.member(c.Name); ok {
			return s, refuse("member %s exists", c.Name)
		}
		if c.Role != RoleData && c.Role != RoleWitness {
			return s, refuse("member %s: role %q", c.Name, c.Role)
		}
		if err := s.checkLUN(c); err != nil {
			return s, err
		}
		m := Member{Name: c.Name, Role: c.Role}
		if c.Addrs != nil {
			m.Addrs = *c.Addrs
			m.Addrs.ISCSI = slices.Clone(c.Addrs.ISCSI)
			if err := s.checkAddrs(m); err != nil {
				return s, err
			}
		}
		n.Members = append(n.Members, m)
		// The very first data site starts in sync: there is no data yet.
		if c.Role == RoleData && s.Epoch == 0 && s.Writer == "" {
			n.InSync = append(n.InSync, c.Name)
		}
	case CmdSetWriter:
		m, ok := s.member(c.Name)
		if !ok {
			return s, refuse("no member %s", c.Name)
		}
		if m.Role != RoleData {
			return s, refuse("%s is a %s and cannot write", c.Name, m.Role)
		}
		if !slices.Contains(s.InSync, c.Name) {
			return s, refuse("%s is not in sync", c.Name)
		}
		if c.Epoch <= s.Epoch {
			return s, refuse("epoch %d is not above %d", c.Epoch, s.Epoch)
		}
		if s.IsFenced(c.Name) {
			return s, refuse("%s is fenced", c.Name)
		}
		if s.IsLeaving(c.Name) {
			return s, refuse("%s is being removed", c.Name)
		}
		if err := s.checkLUN(c); err != nil {
			return s, err
		}
		if err := n.checkWriterImage(s, c); err != nil {
			return s, err
		}
		if s.LUN == nil && c.LUN != nil {
			l := *c.LUN
			n.LUN = &l
		}
		n.Writer, n.Epoch = c.Name, c.Epoch
	case CmdDropInSync, CmdAddInSync:
		if c.ByEpoch != s.Epoch {
			return s, refuse("request from epoch %d, current is %d", c.ByEpoch, s.Epoch)
		}
		m, ok := s.member(c.Name)
		if !ok || m.Role != RoleData {
			return s, refuse("%s is not a data site", c.Name)
		}
		if s.IsFenced(s.Writer) {
			return s, refuse("the writer %s is fenced", s.Writer)
		}
		in := slices.Contains(s.InSync, c.Name)
		if c.Kind == CmdDropInSync {
			if c.Name == s.Writer {
				return s, refuse("the writer cannot drop itself")
			}
			if !in {
				return s, fmt.Errorf("%w: %s: %w", ErrRefused, c.Name, ErrNotInSync)
			}
			n.InSync = slices.DeleteFunc(n.InSync, func(x string) bool { return x == c.Name })
		} else {
			if in {
				return s, fmt.Errorf("%w: %s: %w", ErrRefused, c.Name, ErrAlreadyInSync)
			}
			if s.IsFenced(c.Name) {
				return s, refuse("%s is fenced", c.Name)
			}
			if s.IsLeaving(c.Name) {
				return s, refuse("%s is being removed", c.Name)
			}
			if err := n.checkJoinImage(s, c); err != nil {
				return s, err
			}
			n.InSync = append(n.InSync, c.Name)
		}
	case CmdRelease:
		if s.Epoch == 0 || c.ByEpoch != s.Epoch {
			return s, refuse("release of epoch %d, current is %d", c.ByEpoch, s.Epoch)
		}
		if c.Name != s.Writer {
			return s, refuse("release by %s, the writer of epoch %d is %s", c.Name, s.Epoch, s.Writer)
		}
		if s.Released == s.Epoch {
			return s, refuse("epoch %d is already released", s.Epoch)
		}
		n.Released = s.Epoch
	case CmdFirstWriter:
		m, ok := s.member(c.Name)
		switch {
		case s.Epoch != 0 || s.Writer != "":
			return s, refuse("first-writer %s: the cluster has had a writer (epoch %d)", c.Name, s.Epoch)
		case !ok || m.Role != RoleData:
			return s, refuse("first-writer %s: not a data site", c.Name)
		case !s.IsInSync(c.Name):
			return s, refuse("first-writer %s: not in sync", c.Name)
		}
		n.First = c.Name
	case CmdImage:
		if err := n.applyImage(s, c); err != nil {
			return s, err
		}
	case CmdFence, CmdUnfence:
		if err := n.applyFence(c); err != nil {
			return s, err
		}
	case CmdRetireMember, CmdKeepMember, CmdRemoveMember:
		if err := n.applyMembership(c); err != nil {
			return s, err
		}
	default:
		return s, refuse("unknown command %q", c.Kind)
	}
	return n, nil
}

// FSM adapts State to raft.FSM.
type FSM struct {
	mu    sync.Mutex
	state State
	// onChange, when set before Raft starts, is called after every applied
	// command and restore, outside the lock. It must not block.
	onChange func()
}

var _ raft.FSM = (*FSM)(nil)

// State returns a copy of the current state.
func (f *FSM) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state.clone()
}

// Apply decodes a log entry and applies it; the result is nil or the
// refusal, which Node.Propose returns to the proposer.
func (f *FSM) Apply(l *raft.Log) any {
	var c Command
	if err := msgpack.Unmarshal(l.Data, &c); err != nil {
		return refuse("undecodable entry at index %d: %v", l.Index, err)
	}
	f.mu.Lock()
	n, err := f.state.Apply(c)
	if err == nil {
		f.state = n
	}
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if f.onChange != nil {
		f.onChange()
	}
	return nil
}

func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	b, err := msgpack.Marshal(f.State())
	if err != nil {
		return nil, err
	}
	return snapshot(b), nil
}

func (f *FSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	var s State
	if err := msgpack.NewDecoder(r).Decode(&s); err != nil {
		return err
	}
	f.mu.Lock()
	f.state = s
	f.mu.Unlock()
	if f.onChange != nil {
		f.onChange()
	}
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}
