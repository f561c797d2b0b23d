package raftlog

import (
	"net"
	"sync"
	"time"
)

// Raft's NetworkTransport reads an accepted connection with no deadline,
// so a connection that is opened and left silent held a descriptor and a
// goroutine forever. An accepted connection must now earn its first
// answer (an RPC decoded and answered, or the server's side of a TLS
// handshake, which its own timeout bounds) within firstAnswerTimeout of
// being accepted: a member sends its first RPC as soon as it has
// dialled, and the cluster state a snapshot carries is small.
//
// After that the connection may stay idle: Raft keeps up to three
// connections per peer in a pool for the next RPC and cannot tell one the
// other side has closed, so cutting an idle pooled connection would fail
// the next RPC on it, a RequestVote at the next failover. The ports' caps
// (cmd/netguard) bound what such connections can hold.
const firstAnswerTimeout = 10 * time.Second

// unprovenConn closes an accepted connection that has not been answered
// in time.
type unprovenConn struct {
	net.Conn
	once sync.Once
}

func newUnprovenConn(c net.Conn, within time.Duration) *unprovenConn {
	c.SetReadDeadline(time.Now().Add(within))
	return &unprovenConn{Conn: c}
}

func (c *unprovenConn) Write(b []byte) (int, error) {
	c.once.Do(func() { c.Conn.SetReadDeadline(time.Time{}) })
	return c.Conn.Write(b)
}
