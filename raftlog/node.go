package raftlog

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"
)

// Node is a bare Raft participant and its state machine, over stores and
// a transport given by the caller: tests use it with in-memory twins.
// Cluster is the member a site runs.
type Node struct {
	Raft *raft.Raft
	FSM  *FSM
}

// NewNode starts Raft for one member over the given stores and transport.
func NewNode(cfg *raft.Config, logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore, trans raft.Transport) (*Node, error) {
	if err := raft.ValidateConfig(cfg); err != nil {
		return nil, err
	}
	f := &FSM{}
	r, err := raft.NewRaft(cfg, f, logs, stable, snaps, trans)
	if err != nil {
		return nil, err
	}
	return &Node{Raft: r, FSM: f}, nil
}

// ErrNotLeader: proposals go to the leader.
var ErrNotLeader = errors.New("raftlog: not the leader")

// Propose commits c through Raft and returns the state machine's verdict
// (nil, or an error wrapping ErrRefused).
func (n *Node) Propose(c Command, timeout time.Duration) error {
	if n.Raft.State() != raft.Leader {
		return ErrNotLeader
	}
	b, err := msgpack.Marshal(c)
	if err != nil {
		return err
	}
	f := n.Raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return err
	}
	if r, ok := f.Response().(error); ok {
		return r
	}
	return nil
}
