package raftlog

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// testCluster starts n Raft nodes over the in-memory transport.
func testCluster(t *testing.T, n int) ([]*Node, []*raft.InmemTransport) {
	t.Helper()
	var nodes []*Node
	var trans []*raft.InmemTransport
	var servers []raft.Server
	for i := 0; i < n; i++ {
		addr, tr := raft.NewInmemTransport(raft.ServerAddress(fmt.Sprintf("n%d", i)))
		trans = append(trans, tr)
		servers = append(servers, raft.Server{ID: raft.ServerID(addr), Address: addr})
	}
	for i := range trans {
		for j := range trans {
			if i != j {
				trans[i].Connect(trans[j].LocalAddr(), trans[j])
			}
		}
	}
	for i := 0; i < n; i++ {
		cfg := raft.DefaultConfig()
		cfg.LocalID = servers[i].ID
		cfg.HeartbeatTimeout = 100 * time.Millisecond
		cfg.ElectionTimeout = 100 * time.Millisecond
		cfg.LeaderLeaseTimeout = 50 * time.Millisecond
		cfg.CommitTimeout = 5 * time.Millisecond
		cfg.Logger = hclog.NewNullLogger()
		logs := raft.NewInmemStore()
		if err := raft.BootstrapCluster(cfg, logs, logs, raft.NewInmemSnapshotStore(), trans[i], raft.Configuration{Servers: servers}); err != nil {
			t.Fatal(err)
		}
		node, err := NewNode(cfg, logs, logs, raft.NewInmemSnapshotStore(), trans[i])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { node.Raft.Shutdown().Error() })
		nodes = append(nodes, node)
	}
	return nodes, trans
}

// leader waits (bounded) for one node among alive to lead.
func leader(t *testing.T, nodes []*Node, alive func(int) bool) *Node {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for i, n := range nodes {
			if alive(i) && n.Raft.State() == raft.Leader {
				return n
			}
		}
		select {
		case <-nodes[0].Raft.LeaderCh():
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatal("no leader within 10s")
	return nil
}

// TestReplicatedState: three members agree on the writer and epoch, a
// refused command is refused through Raft too, and after the leader is cut
// off the others elect a new leader that keeps the state.
func TestReplicatedState(t *testing.T) {
	nodes, trans := testCluster(t, 3)
	all := func(int) bool { return true }
	l := leader(t, nodes, all)
	for _, c := range []Command{
		{Kind: CmdAddMember, Name: "a", Role: RoleData},
		{Kind: CmdAddMember, Name: "b", Role: RoleData},
		{Kind: CmdAddMember, Name: "w", Role: RoleWitness},
		// Both data sites joined before any data existed: both in sync.
		{Kind: CmdSetWriter, Name: "a", Epoch: 1},
	} {
		if err := l.Propose(c, 5*time.Second); err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
	}
	if err := l.Propose(Command{Kind: CmdSetWriter, Name: "w", Epoch: 2}, 5*time.Second); err == nil {
		t.Fatal("a witness became writer through Raft")
	}
	// Every member applies the same log: wait for the last index, then compare.
	idx := l.Raft.LastIndex()
	for i, n := range nodes {
		if err := waitApplied(n, idx); err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		if s := n.FSM.State(); s.Writer != "a" || s.Epoch != 1 || len(s.InSync) != 2 {
			t.Fatalf("node %d state %+v", i, s)
		}
	}

	// Cut the leader off; the other two elect a leader with the state.
	var li int
	for i, n := range nodes {
		if n == l {
			li = i
		}
	}
	trans[li].DisconnectAll()
	for i := range trans {
		if i != li {
			trans[i].Disconnect(trans[li].LocalAddr())
		}
	}
	l2 := leader(t, nodes, func(i int) bool { return i != li })
	if err := l2.Propose(Command{Kind: CmdSetWriter, Name: "b", Epoch: 2}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if s := l2.FSM.State(); s.Writer != "b" || s.Epoch != 2 {
		t.Fatalf("new leader state %+v", s)
	}
	// The cut-off old leader cannot commit anything.
	if err := l.Propose(Command{Kind: CmdSetWriter, Name: "a", Epoch: 3}, 500*time.Millisecond); err == nil {
		t.Fatal("a partitioned leader committed a command")
	}
}

func waitApplied(n *Node, idx uint64) error {
	deadline := time.Now().Add(10 * time.Second)
	for n.Raft.AppliedIndex() < idx {
		if time.Now().After(deadline) {
			return fmt.Errorf("applied %d of %d", n.Raft.AppliedIndex(), idx)
		}
		// Barrier-free polling with a short bounded wait; Raft has no
		// "applied" notification for followers.
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}
