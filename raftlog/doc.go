// Package raftlog will hold the cluster state machine on hashicorp/raft:
// members, roles, the writer and its epoch, the in-sync set, leases, LUN
// definitions and reservations (see DESIGN.md). Nothing uses it yet; the
// single-site target needs no cluster state.
package raftlog
