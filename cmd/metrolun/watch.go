package main

import (
	"context"
	"slices"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/internal/grid"
	"github.com/metrolun/metrolun/raftlog"
)

// watch stops this member (through stopc, which serve waits on) when the
// cluster says it cannot go on:
//
//   - its LU is not the one the cluster recorded (raftlog/lun.go): a site
//     presenting another size, block size or identity under the same name
//     would mislead initiators with paths to several sites, so it stops
//     with the differences instead of serving;
//   - it was removed (`metrolun member remove`). The leader takes a
//     removed member out of Raft before it commits the removal, so the
//     member may never see the end of it; while it sees itself leaving,
//     it asks the other members' admin endpoints, and stops when one that
//     has applied more of the log no longer lists it.
func (m *member) watch() {
	poll := grid.NewTicker(time.Second)
	defer poll.Stop()
	var lastAsk time.Time
	for {
		ch := m.cluster.Changed()
		if d := m.cluster.LUNMismatch(); d != "" {
			m.stopWith(&raftlog.LUNMismatchError{Diff: d})
			return
		}
		s := m.cluster.State()
		if s.IsLeaving(m.cfg.Name) && time.Since(lastAsk) >= 2*time.Second {
			lastAsk = time.Now()
			if by := m.removedBy(m.cluster.Status().AppliedIndex); by != "" {
				m.log.Info("this member was removed from the cluster; stopping", "seen_at", by)
				m.stopWith(nil)
				return
			}
		}
		select {
		case <-m.done:
			return
		case <-ch:
		case <-poll.C:
		}
	}
}

// stopWith hands serve the reason to stop; only the first one counts.
func (m *member) stopWith(err error) {
	select {
	case m.stopc <- err:
	default:
	}
}

// removedBy asks the other members for their state and returns the name
// of one that has applied beyond applied and does not list this member,
// or "".
func (m *member) removedBy(applied uint64) string {
	s := m.cluster.State()
	client := m.adminClient()
	for _, o := range s.Members {
		if o.Name == m.cfg.Name {
			continue
		}
		addr := o.Addrs.Admin
		if cm, ok := m.cfg.Member(o.Name); ok && cm.Admin != "" {
			addr = cm.Admin
		}
		if addr == "" {
			continue
		}
		st, err := client.Status(context.Background(), admin.Endpoint{Name: o.Name, Role: o.Role, Admin: addr})
		if err != nil {
			m.log.Debug("asking another member whether this one was removed", "member", o.Name, "error", err)
			continue
		}
		if st.Raft.AppliedIndex <= applied || len(st.Raft.MemberInfo) == 0 {
			continue
		}
		if !slices.ContainsFunc(st.Raft.MemberInfo, func(mi admin.MemberInfo) bool { return mi.Name == m.cfg.Name }) {
			return o.Name
		}
	}
	return ""
}
