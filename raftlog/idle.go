package raftlog

import (
	"net"
	"time"
)

// Raft's NetworkTransport reads an accepted connection with no deadline,
// so a connection that is opened and left silent holds a descriptor and a
// goroutine forever. An accepted connection must show its first byte (of
// a TLS handshake or an RPC) within firstByteTimeout: a member sends its
// first RPC as soon as it has dialled. After that it may be idle for
// idleTimeout: a leader's heartbeats keep its connections busy, and the
// pool connections a member keeps for elections stay usable this long
// (one older than that fails its next RPC once, as after a restart).
const (
	firstByteTimeout = 5 * time.Second
	idleTimeout      = 5 * time.Minute
)

// idleConn closes an accepted connection that stays silent too long.
// Only Raft's reader goroutine reads it.
type idleConn struct {
	net.Conn
	first, idle time.Duration
	started     bool
}

func (c *idleConn) Read(b []byte) (int, error) {
	d := c.idle
	if !c.started {
		d = c.first
	}
	c.Conn.SetReadDeadline(time.Now().Add(d))
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.started = true
	}
	return n, err
}
