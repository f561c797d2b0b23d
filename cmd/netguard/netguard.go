// Package netguard bounds what a listening port can cost the process: the
// connections it holds open (per port and per remote IP), and what an
// accept error does. Every port of a member (iSCSI, replication, Raft,
// admin) is wrapped by it, so that no client, hostile or broken, can take
// the descriptors another port needs, and running out of descriptors for
// a moment slows accepting down instead of ending the process.
//
// golang.org/x/net/netutil.LimitListener was the first candidate. It
// caps a port by blocking in Accept once the cap is reached, which leaves
// excess connections queued in the kernel, open from the client's side
// and never answered; it has no per-IP cap, so one client can take every
// slot; and it returns accept errors to the caller. A guard must refuse
// at once instead (the client sees a closed connection and can go
// elsewhere), keep one address from starving others, and ride out
// EMFILE, so it is written here.
package netguard

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Limits is what one port may hold.
type Limits struct {
	// MaxConns caps the connections open on the port at once.
	MaxConns int
	// MaxConnsPerIP caps those from one remote address.
	MaxConnsPerIP int
}

// Caps of the ports only members use (the iSCSI port's are in the
// config). The process's descriptors (RLIMIT_NOFILE, 20000 on a usual
// host after Go raises the soft limit) must cover four ports, the
// volumes, Raft's log and the peers' outgoing connections with room to
// spare; Clamp lowers these on a host with fewer.
var (
	// Members open a handful of connections each (Raft's pool of three
	// per peer plus heartbeats; a stream and a forwarding connection per
	// site), but a demo or test cluster of up to 26 members shares
	// 127.0.0.1.
	Replication = Limits{MaxConns: 512, MaxConnsPerIP: 128}
	Raft        = Limits{MaxConns: 512, MaxConnsPerIP: 128}
	Admin       = Limits{MaxConns: 256, MaxConnsPerIP: 64}
)

// Clamp returns l lowered so that four ports at their caps hold at most
// half of the descriptors the process may open (nofile), and the per-IP
// cap never exceeds the port's.
func (l Limits) Clamp(nofile uint64) Limits {
	if nofile > 0 {
		share := int(min(nofile/8, 1<<30))
		l.MaxConns = max(min(l.MaxConns, share), 1)
	}
	l.MaxConnsPerIP = max(min(l.MaxConnsPerIP, l.MaxConns), 1)
	return l
}

// NoFile is the process's soft RLIMIT_NOFILE, 0 if unknown. Go's runtime
// already raises the soft limit to the hard one at start (syscall's init,
// since Go 1.19), so the process does not do it again.
func NoFile() uint64 {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	return r.Cur
}

// Accept errors are retried after a pause that doubles from minBackoff
// to maxBackoff, as net/http's Server does: running out of descriptors or
// kernel memory passes once connections close, and accepting again at
// once would spin.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
	// Refusals are logged at most this often per port, with a count.
	logEvery = 10 * time.Second
)

// Listener is a guarded listener. Accept returns only connections within
// the limits, closes the others at once, and returns an error only once
// the listener is closed or fails for good.
type Listener struct {
	net.Listener
	name string
	lim  Limits
	log  hclog.Logger
	// wait pauses after an accept error; tests replace it.
	wait func(time.Duration, <-chan struct{}) bool

	mu         sync.Mutex
	open       int
	perIP      map[netip.Addr]int
	refused    int // since the last log line about them
	refusedLog time.Time
	errs       int // accept errors since the last log line about them
	errLog     time.Time

	done      chan struct{}
	closeOnce sync.Once
}

// Wrap guards l; name says which port it is in log lines.
func Wrap(l net.Listener, name string, lim Limits, log hclog.Logger) *Listener {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Listener{
		Listener: l,
		name:     name,
		lim:      lim.Clamp(0),
		log:      log,
		wait:     sleep,
		perIP:    map[netip.Addr]int{},
		done:     make(chan struct{}),
	}
}

func sleep(d time.Duration, done <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// Accept waits for the next connection the limits admit.
func (l *Listener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if l.closed() {
				return nil, net.ErrClosed
			}
			if !retryable(err) {
				return nil, err
			}
			delay = min(max(2*delay, minBackoff), maxBackoff)
			l.noteError(err, delay)
			if !l.wait(delay, l.done) {
				return nil, net.ErrClosed
			}
			continue
		}
		delay = 0
		ip := remoteIP(c)
		if !l.admit(ip) {
			// Closed before a byte is read: the refusal costs one
			// descriptor for a moment and no goroutine.
			c.Close()
			l.noteRefused(ip)
			continue
		}
		return wrapConn(c, func() { l.release(ip) }), nil
	}
}

// Close stops Accept, including one waiting out an accept error.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// Open is the number of admitted connections not yet closed.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

func (l *Listener) closed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *Listener) admit(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.lim.MaxConns || l.perIP[ip] >= l.lim.MaxConnsPerIP {
		return false
	}
	l.open++
	l.perIP[ip]++
	return true
}

func (l *Listener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

func (l *Listener) noteRefused(ip netip.Addr) {
	l.mu.Lock()
	l.refused++
	now := time.Now()
	if now.Sub(l.refusedLog) < logEvery {
		l.mu.Unlock()
		return
	}
	n, open, fromIP := l.refused, l.open, l.perIP[ip]
	l.refused, l.refusedLog = 0, now
	l.mu.Unlock()
	l.log.Warn("connections refused: limit reached", "port", l.name, "refused", n, "last_remote", ip.String(),
		"open", open, "open_from_remote", fromIP, "max_conns", l.lim.MaxConns, "max_conns_per_ip", l.lim.MaxConnsPerIP)
}

func (l *Listener) noteError(err error, delay time.Duration) {
	l.mu.Lock()
	l.errs++
	now := time.Now()
	if now.Sub(l.errLog) < logEvery {
		l.mu.Unlock()
		return
	}
	n, open := l.errs, l.open
	l.errs, l.errLog = 0, now
	l.mu.Unlock()
	l.log.Error("accept failed; retrying", "port", l.name, "error", err, "errors", n, "retry_in", delay, "open", open)
}

// retryable reports whether an accept error can pass by itself: the
// process or the system is out of descriptors or memory, or the
// connection died in the queue.
func retryable(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EPROTO, syscall.EPERM, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func remoteIP(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return Source(ta.AddrPort().Addr())
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	return Source(ap.Addr())
}

// Source is the key a remote address is counted under: an IPv4 address
// as it is, an IPv6 address by its /64. A single IPv6 host usually holds
// a whole /64 and may pick a new address in it for every connection, so a
// per-address cap would bound nothing.
func Source(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is6() && !ip.IsLoopback() {
		if p, err := ip.WithZone("").Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return ip
}

// wrapConn gives the slot back when c is closed. A TCP connection stays a
// *net.TCPConn underneath, embedded, so that the methods callers look for
// by interface (SyscallConn for busy polling, SetNoDelay, and the
// writev path net.Buffers takes) still reach it.
func wrapConn(c net.Conn, release func()) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok {
		return &tcpConn{TCPConn: tc, release: release}
	}
	return &conn{Conn: c, release: release}
}

type tcpConn struct {
	*net.TCPConn
	once    sync.Once
	release func()
}

func (c *tcpConn) Close() error {
	c.once.Do(c.release)
	return c.TCPConn.Close()
}

// NetConn returns the connection underneath, as crypto/tls.Conn does.
func (c *tcpConn) NetConn() net.Conn { return c.TCPConn }

type conn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *conn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

func (c *conn) NetConn() net.Conn { return c.Conn }
