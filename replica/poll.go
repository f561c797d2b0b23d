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

// Busy polling of a replication link at low queue depth (issue 13). A
// mirrored write waits for its frame to reach the replica and for the
// replica's ack to come back; each end would otherwise sleep in the
// netpoller and pay a thread wake-up (tens of microseconds on a virtual
// CPU, as long as the work) when the bytes arrive. So a link's reader
// polls its socket for up to linkPollWindow when an answer is due soon:
//
//   - at the writer, while frames are outstanding (Link.readAcks); a
//     frame sent on an idle link wakes the reader out of the netpoller
//     (kick) so that it polls while the replica works;
//   - at the replica, for the writer's next frame after an ack
//     (serveStream).
//
// Each polls only while that pays: the bytes came within twice the
// window of when they were expected the last time (learned on every
// expected read, polled or not, as target/busypoll.go does), and only
// with a slot of internal/pollslot (GOMAXPROCS-1 pollers per process,
// the iSCSI readers' included), which leaves a CPU to the process that
// must answer.
//
// A link under TLS is polled on the TCP socket beneath it (through
// NetConn): the poll peeks at the socket and the read goes through the
// TLS layer, which is first asked for what it holds already (a record
// read together with an earlier one) by a read that must not wait.

// What the expected bytes answer, each with its own window and its own
// learning: a request this site sent (a frame, whose ack is due; an
// operation it forwarded, whose reference is due), or an answer this
// site gave (an ack, after which the writer's next frame may follow).
const (
	afterRequest = iota
	afterAnswer
)

// windows: how long a read polls for bytes of each kind. Variables
// for tests only.
var windows = [2]time.Duration{afterRequest: 100 * time.Microsecond, afterAnswer: 100 * time.Microsecond}

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

	// expected is when the bytes of the next read were expected from
	// (UnixNano, its lowest bit replaced by their kind); zero when
	// nothing is expected.
	expected atomic.Int64
	// pays, by kind: the bytes came within twice the window of when
	// they were expected, the last time.
	pays [2]atomic.Bool
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
	pc.pays[afterRequest].Store(true)
	pc.pays[afterAnswer].Store(true)
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

// expect says the peer's next bytes are due soon after at, answering
// what kind says: the next Read polls if polling paid the last time.
func (pc *pollConn) expect(at time.Time, kind int) {
	pc.expected.CompareAndSwap(0, stamp(at, kind))
}

func stamp(at time.Time, kind int) int64 { return at.UnixNano()&^1 | int64(kind) }

// unstamp is stamp's inverse; zero is nothing expected.
func unstamp(v int64) (time.Time, int) { return time.Unix(0, v&^1), int(v & 1) }

// kick says the peer's next bytes are due from now (this site sent
// what they answer), and wakes the reader if it waits in the netpoller
// at a frame's start and polling pays, so that it polls: the wake-up
// happens while the request travels and the peer works, not when the
// answer comes. Polling or not, the answer's delay is learned.
func (pc *pollConn) kick() {
	now := time.Now()
	pc.expected.Store(stamp(now, afterRequest))
	if !pc.pays[afterRequest].Load() || crowded(now) {
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
	at, kind := unstamp(pc.expected.Load())
	until := at.Add(windows[kind])
	if now := time.Now(); pc.rc == nil || !pc.pays[kind].Load() || !now.Before(until) || crowded(now) || !pollslot.Take() {
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
		for {
			_, _, e := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
				syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			switch {
			case e == syscall.EINTR:
				continue
			case e != syscall.EAGAIN:
				ready = true // bytes, the end, or an error: the read tells
				return true
			case !time.Now().Before(until):
				return true
			}
			// When what runs meanwhile took the CPU for a while, it
			// is wanted: the poll ends, the netpoller waits for the
			// bytes, and no link polls for a while.
			t := time.Now()
			yield()
			if now := time.Now(); now.Sub(t) > yieldedLong {
				pc.crowded++
				crowdedUntil.Store(now.Add(crowdedBackoff).UnixNano())
				return true
			}
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

// learn decides from how soon the expected bytes came whether polling
// pays.
func (pc *pollConn) learn(n int) {
	if n <= 0 {
		return
	}
	v := pc.expected.Swap(0)
	if v == 0 {
		return
	}
	at, kind := unstamp(v)
	pc.pays[kind].Store(time.Since(at) < 2*windows[kind])
}

func isTimeout(err error) bool {
	return err != nil && errors.Is(err, os.ErrDeadlineExceeded)
}
