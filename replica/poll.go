package replica

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/metrolun/metrolun/internal/pollslot"
)

// Busy polling of a replication link (issue 13). A mirrored write
// waits for its frame to reach the replica and for the replica's ack to
// come back; the reader that waits for the answer would otherwise sleep
// in the netpoller and pay a thread wake-up (tens of microseconds on a
// virtual CPU, as long as the work) when it comes. So a link's reader
// polls its socket for up to pollWindow when an answer to a request of
// this site is due:
//
//   - at the writer, while frames are outstanding (Link.readAcks); a
//     frame sent on an idle link wakes the reader out of the netpoller
//     (kick), so the wake-up happens while the frame travels and the
//     replica works, not when the ack comes;
//   - at a forwarding site, on its stream from the writer, which brings
//     the reference and result of an operation it forwarded (the
//     forwarder kicks the stream's reader).
//
// The replica does not poll for the writer's next frame after its ack:
// at queue depth 1 that frame follows only after the initiator's next
// command, and a replica spinning for it kept the CPU from the
// initiator (docs/bench.md, issue 13, link polling).
//
// A reader polls only while that pays (the answer came within twice the
// window the last time, learned on every answer, polled or not, as
// target/busypoll.go does), with a slot of internal/pollslot
// (GOMAXPROCS-1 pollers per process, the iSCSI readers' included), and
// while the CPUs are not wanted elsewhere (crowded).
//
// A link under TLS is polled on the TCP socket beneath it (through
// NetConn): the poll peeks at the socket and the read goes through the
// TLS layer, which is first asked for what it holds already (a record
// read together with an earlier one) by a read that must not wait.

// pollWindow is how long a read polls for an answer. A variable for
// tests only.
var pollWindow = 100 * time.Microsecond

// yieldedLong: a yield in the poll loop that took longer gave the CPU
// to something that wanted it, and polling would take it from them. A
// variable for tests only.
var yieldedLong = 20 * time.Microsecond

// yield lets other goroutines of this process, and other threads of
// this CPU (the peer that must answer, maybe), run first. A variable for
// tests only.
var yield = func() {
	runtime.Gosched()
	syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
}

// crowdedBackoff: after a poll found the CPUs wanted, no link of the
// process polls or kicks for this long.
const crowdedBackoff = 10 * time.Millisecond

// crowdedUntil (UnixNano): no polling until then.
var crowdedUntil atomic.Int64

func crowded(now time.Time) bool { return now.UnixNano() < crowdedUntil.Load() }

// aLongTimeAgo is a read deadline that has passed: the read does not wait.
var aLongTimeAgo = time.Unix(1, 0)

// pollConn is a link's connection as its reader goroutine sees it. Only
// that goroutine calls Read, atFrame and expect; kick may come from any.
type pollConn struct {
	conn net.Conn
	rc   syscall.RawConn // the socket beneath conn; nil: never polls
	// layered: conn reads through a layer that buffers (TLS).
	layered bool

	// expected is when the answer the next read brings was due from
	// (UnixNano); zero when none is.
	expected atomic.Int64
	// pays: the answer came within twice pollWindow of when it was
	// due, the last time.
	pays atomic.Bool
	// frame: the next Read starts a frame, so no read deadline of
	// anyone else's is set on conn while it waits (bodyGuard sets its
	// own only within a frame), and a kick may set one (reader only).
	frame bool
	// kmu orders a kick against the reader's wait: a kick sets its
	// deadline only while the reader waits at a frame's start, and the
	// reader clears it under kmu before it reads on.
	kmu     sync.Mutex
	waiting bool // under kmu
	kicked  bool // under kmu

	// Counts, for tests: reads that polled, and of them those that
	// found the bytes while polling.
	polls, hits, crowded int
}

func newPollConn(c net.Conn) *pollConn {
	pc := &pollConn{conn: c}
	pc.pays.Store(true)
	layered := false
	for range 4 {
		if sc, ok := c.(syscall.Conn); ok {
			if rc, err := sc.SyscallConn(); err == nil {
				// A wrapper that is a syscall.Conn may buffer too.
				_, tcp := c.(*net.TCPConn)
				pc.rc, pc.layered = rc, layered || !tcp
			}
			return pc
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return pc
		}
		c, layered = u.NetConn(), true
	}
	return pc
}

// atFrame says the next Read starts a frame (nothing of it is buffered
// above): while it waits, kick may wake it.
func (pc *pollConn) atFrame() { pc.frame = true }

// expect says an answer is due from at: the next Read polls for it if
// polling paid the last time.
func (pc *pollConn) expect(at time.Time) {
	pc.expected.CompareAndSwap(0, at.UnixNano())
}

// kick says an answer is due from now (this site sent a request), and
// wakes the reader if it waits in the netpoller
// at a frame's start and polling pays, so that it polls: the wake-up
// happens while the request travels and the peer works, not when the
// answer comes. Polling or not, the answer's delay is learned.
func (pc *pollConn) kick() {
	now := time.Now()
	pc.expected.Store(now.UnixNano())
	if !pc.pays.Load() || crowded(now) {
		return
	}
	pc.kmu.Lock()
	if pc.waiting {
		pc.waiting, pc.kicked = false, true
		pc.conn.SetReadDeadline(aLongTimeAgo)
	}
	pc.kmu.Unlock()
}

func (pc *pollConn) Read(p []byte) (int, error) {
	for {
		if pc.expected.Load() != 0 {
			if n, err, ok := pc.poll(p); ok {
				pc.frame = false
				return n, err
			}
		}
		frame := pc.frame
		pc.frame = false
		if frame {
			pc.kmu.Lock()
			pc.waiting = true
			pc.kmu.Unlock()
		}
		n, err := pc.conn.Read(p)
		if frame {
			pc.kmu.Lock()
			kicked := pc.kicked
			pc.waiting, pc.kicked = false, false
			if kicked {
				pc.conn.SetReadDeadline(time.Time{})
			}
			pc.kmu.Unlock()
			if kicked && n == 0 && isTimeout(err) {
				// Woken to poll: the answer is due.
				pc.frame = true
				continue
			}
		}
		pc.learn(n)
		return n, err
	}
}

// poll polls for the expected bytes until the window ends. It reports
// false when nothing came (the caller waits in the netpoller).
func (pc *pollConn) poll(p []byte) (int, error, bool) {
	until := time.Unix(0, pc.expected.Load()).Add(pollWindow)
	if now := time.Now(); pc.rc == nil || !pc.pays.Load() || !now.Before(until) || crowded(now) || !pollslot.Take() {
		return 0, nil, false
	}
	defer pollslot.Release()
	pc.polls++
	if pc.layered {
		pc.conn.SetReadDeadline(aLongTimeAgo)
		n, err := pc.conn.Read(p)
		pc.conn.SetReadDeadline(time.Time{})
		if n > 0 || err != nil && !isTimeout(err) {
			pc.hits++
			pc.learn(n)
			return n, err, true
		}
	}
	ready := false
	var b [1]byte
	err := pc.rc.Read(func(fd uintptr) bool {
		long := false
		for {
			_, _, e := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
				syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			switch {
			case e == syscall.EINTR:
				continue
			case e != syscall.EAGAIN:
				ready = true // bytes, the end, or an error: the read tells
				return true
			case long:
				// What ran meanwhile took the CPU for a while and
				// was not the answer arriving (its interrupt runs
				// on this CPU too): the CPU is wanted. The poll
				// ends, the netpoller waits for the bytes, and no
				// link polls for a while.
				pc.crowded++
				crowdedUntil.Store(time.Now().Add(crowdedBackoff).UnixNano())
				return true
			case !time.Now().Before(until):
				return true
			}
			t := time.Now()
			yield()
			long = time.Since(t) > yieldedLong
		}
	})
	if err != nil || !ready {
		return 0, nil, false
	}
	pc.hits++
	n, err := pc.conn.Read(p)
	pc.learn(n)
	return n, err, true
}

// learn decides from how soon the answer came whether polling pays.
func (pc *pollConn) learn(n int) {
	if n <= 0 {
		return
	}
	v := pc.expected.Swap(0)
	if v == 0 {
		return
	}
	pc.pays.Store(time.Since(time.Unix(0, v)) < 2*pollWindow)
}

func isTimeout(err error) bool {
	return err != nil && errors.Is(err, os.ErrDeadlineExceeded)
}
