package target

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/metrolun/metrolun/internal/stamp"
)

// Busy polling at queue depth 1. Once the reader has answered a command
// itself (inline, task.go), the initiator's next command typically
// follows within tens of microseconds. Sleeping in the netpoller until it
// comes costs a thread wake-up, which on an idle virtual CPU takes about
// as long as the whole command; so the reader polls the socket for up to
// pollWindow first, and again for the rest of a command that arrived in
// pieces. It polls only while that pays (the initiator's last command
// came within twice pollWindow of the answer before it), and never more
// than maxPollers readers at once, which leaves at least one CPU to
// everything else. Of a mirrored LU only reads get here: its other
// commands do not run inline.
//
// pollWindow is a variable for tests only.
var pollWindow = 50 * time.Microsecond

// pollers counts the readers polling now, process-wide.
var pollers atomic.Int32

// maxPollers: GOMAXPROCS-1 (none on one CPU, where polling would only
// take the CPU from the initiator or from other work).
func maxPollers() int32 { return int32(runtime.GOMAXPROCS(0) - 1) }

// pollReader is the connection's byte stream under the PDU reader. Only
// the reader goroutine uses it.
type pollReader struct {
	nc net.Conn
	rc syscall.RawConn // nil: not a socket it can poll; plain reads
	// until: reads poll until then before they wait in the netpoller.
	until time.Time
	// answered is when the reader last answered a command itself; zero
	// once the read after it has returned.
	answered time.Time
	// poll: the initiator's commands follow their predecessors' answers
	// soon enough that polling for them pays.
	poll bool
}

func newPollReader(nc net.Conn) *pollReader {
	r := &pollReader{nc: nc, poll: true}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			r.rc = rc
		}
	}
	return r
}

// answeredAt records that the reader has just answered a command itself.
func (r *pollReader) answeredAt(t time.Time) {
	r.answered = t
	if r.poll {
		r.until = t.Add(pollWindow)
	}
}

func (r *pollReader) Read(p []byte) (int, error) {
	if r.rc == nil || r.until.IsZero() || !time.Now().Before(r.until) || !takePoller() {
		if !r.until.IsZero() {
			stamp.Count("poll.skipped")
		}
		r.until = time.Time{}
		n, err := r.nc.Read(p)
		r.learn(n)
		return n, err
	}
	first := !r.answered.IsZero()
	polling := true
	var n int
	var rerr error
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Read(int(fd), p)
			switch {
			case rerr == syscall.EINTR:
				continue
			case rerr != syscall.EAGAIN:
				return true
			case !polling:
				return false // wait in the netpoller
			case !time.Now().Before(r.until):
				stamp.Count("poll.miss")
				polling = false
				pollers.Add(-1)
				return false
			}
			runtime.Gosched()
		}
	})
	if polling {
		stamp.Count("poll.hit")
		pollers.Add(-1)
		if first {
			// The rest of the command (its data) follows at once:
			// poll for it too.
			r.until = time.Now().Add(pollWindow)
		}
	} else {
		r.until = time.Time{}
	}
	if err != nil {
		return 0, err
	}
	if rerr != nil {
		return 0, os.NewSyscallError("read", rerr)
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	r.learn(n)
	return n, nil
}

// learn decides from how soon the command after an answer came whether
// polling pays.
func (r *pollReader) learn(n int) {
	if r.answered.IsZero() || n <= 0 {
		return
	}
	r.poll = time.Since(r.answered) < 2*pollWindow
	r.answered = time.Time{}
}

func takePoller() bool {
	if pollers.Add(1) > maxPollers() {
		pollers.Add(-1)
		return false
	}
	return true
}
