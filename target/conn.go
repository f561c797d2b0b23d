package target

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/semaphore"
)

// connBudget is the memory a connection may hold for solicited write data
// and large reads at once. Unsolicited data adds at most the CmdSN window
// times FirstBurstLength.
const connBudget = 64 << 20

// txKind says how an outgoing PDU treats StatSN (RFC 7143 section 4.2.2.2).
type txKind int

const (
	txStatus txKind = iota // carries status: takes the next StatSN
	txPeek                 // shows the next StatSN without taking it
)

type txItem struct {
	pdu     *PDU
	kind    txKind
	release func()     // called once the PDU is on the wire (or dropped)
	done    chan error // optional: told when written
}

// conn is one TCP connection: login, then the full feature phase. One
// goroutine reads and dispatches PDUs, one writes; each SCSI command
// executes on its own goroutine.
type conn struct {
	srv *Server
	nc  net.Conn
	log hclog.Logger
	rd  pduReader
	cid uint16

	sess   *session
	params Params

	// statSN is owned by the writer goroutine after login.
	statSN uint32

	out       chan txItem
	closing   chan struct{}
	closeOnce sync.Once
	draining  atomic.Bool

	mu      sync.Mutex
	tasks   map[uint32]*task // by ITT
	idle    *sync.Cond       // on mu: signalled when tasks empties or the conn closes
	nextTTT uint32
	wg      sync.WaitGroup // tasks in flight

	// budget bounds the memory of solicited write data and large reads
	// (see task.go); ctx ends with the connection.
	budget *semaphore.Weighted
	ctx    context.Context
	cancel context.CancelFunc

	lastRecv atomic.Int64  // unix nanos of the last PDU received
	nopOut   atomic.Uint32 // TTT of an unanswered NOP-In ping, 0 if none

	text   *textAnswer    // a Text Response still being sent (text.go); reader only
	textIn *textRequestIn // a Text Request still being received (text.go); reader only
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv:     s,
		nc:      nc,
		log:     s.log.With("remote", nc.RemoteAddr().String()),
		out:     make(chan txItem, 256),
		closing: make(chan struct{}),
		tasks:   map[uint32]*task{},
		nextTTT: 1,
	}
	c.idle = sync.NewCond(&c.mu)
	c.budget = semaphore.NewWeighted(connBudget)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.rd = pduReader{r: bufio.NewReaderSize(nc, 64*1024), maxData: s.cfg.Limits.MaxRecvDataSegmentLength}
	// During login the initiator may send up to 8192 bytes per PDU whatever
	// it later negotiates (RFC 7143 section 12.12).
	if c.rd.maxData < 8192 {
		c.rd.maxData = 8192
	}
	return c
}

func (c *conn) serve() {
	defer c.nc.Close()
	c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := c.login(); err != nil {
		if !errors.Is(err, io.EOF) {
			c.log.Debug("login ended", "error", err)
		}
		return
	}
	c.nc.SetReadDeadline(time.Time{})
	c.log.Info("logged in", "session", c.params.SessionType, "target", c.params.TargetName,
		"header_digest", c.params.HeaderDigest, "data_digest", c.params.DataDigest,
		"max_burst", c.params.MaxBurstLength, "immediate_data", c.params.ImmediateData, "initial_r2t", c.params.InitialR2T)
	c.rd.headerCRC, c.rd.dataCRC = c.params.HeaderDigest, c.params.DataDigest
	c.rd.maxData = c.params.TargetRecvDSL

	writerDone := make(chan struct{})
	go func() { c.writer(); close(writerDone) }()
	if c.srv.cfg.NOPInterval > 0 {
		go c.keepalive()
	}
	err := c.readLoop()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		c.log.Warn("connection dropped", "error", err)
	}
	c.abortAll()
	c.wg.Wait()
	c.close("")
	<-writerDone
	c.sess.removeConn(c)
	c.log.Info("connection closed")
}

// setLogContext names the session in c's log lines. It is called under
// the server's mutex before c joins a session, where other goroutines
// (reinstatement closing it) may start using c.log.
func (c *conn) setLogContext(initiator string, tsih uint16) {
	c.log = c.log.With("initiator", initiator, "tsih", tsih, "cid", c.cid)
}

// close makes the writer and reader stop.
func (c *conn) close(reason string) {
	c.closeOnce.Do(func() {
		if reason != "" {
			c.log.Info("closing connection", "reason", reason)
		}
		close(c.closing)
		c.cancel()
		c.mu.Lock()
		c.idle.Broadcast()
		c.mu.Unlock()
		c.nc.SetReadDeadline(time.Now())
	})
}

func (c *conn) isClosing() bool {
	select {
	case <-c.closing:
		return true
	default:
		return false
	}
}

// drain is a graceful stop for shutdown: new commands are refused, those in
// flight finish and are answered, then the connection closes.
func (c *conn) drain() {
	c.draining.Store(true)
	go func() {
		// Wait for the task table to empty. (c.wg cannot be waited on
		// here: the reader may still Add to it concurrently.)
		c.mu.Lock()
		for len(c.tasks) > 0 && !c.isClosing() {
			c.idle.Wait()
		}
		c.mu.Unlock()
		c.sendAsyncLogout()
		// The initiator gets DefaultTime2Wait to log out; after that the
		// connection goes anyway.
		select {
		case <-c.closing:
		case <-time.After(2 * time.Second):
		}
		c.close("shutdown")
	}()
}

// writeDirect writes one PDU synchronously; used during login only.
func (c *conn) writeDirect(p *PDU) error {
	iov, _ := p.appendWire(nil, false, false, nil)
	bufs := net.Buffers(iov)
	_, err := bufs.WriteTo(c.nc)
	return err
}

// send queues a PDU for the writer.
func (c *conn) send(p *PDU, kind txKind, release func()) {
	select {
	case c.out <- txItem{pdu: p, kind: kind, release: release}:
	case <-c.closing:
		if release != nil {
			release()
		}
	}
}

// writer owns StatSN and the socket's write side. It batches whatever is
// queued into one vectored write.
func (c *conn) writer() {
	const maxBatch = 64
	iov := make([][]byte, 0, 8*maxBatch)
	scratch := make([]byte, 0, 8*maxBatch)
	var releases []func()
	hd, dd := c.params.HeaderDigest, c.params.DataDigest
	for {
		var it txItem
		select {
		case it = <-c.out:
		case <-c.closing:
			c.flushQueued()
			return
		}
		iov, scratch, releases = iov[:0], scratch[:0], releases[:0]
		for n := 0; ; n++ {
			c.stamp(&it)
			iov, scratch = it.pdu.appendWire(iov, hd, dd, scratch)
			if it.release != nil {
				releases = append(releases, it.release)
			}
			if n == maxBatch {
				break
			}
			select {
			case it = <-c.out:
				continue
			default:
			}
			break
		}
		c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.NOPTimeout))
		bufs := net.Buffers(iov)
		_, err := bufs.WriteTo(c.nc)
		for _, r := range releases {
			r()
		}
		if err != nil {
			c.log.Debug("write failed", "error", err)
			c.close("")
			c.nc.Close()
			c.flushQueued()
			return
		}
	}
}

// flushQueued releases what is still queued after the writer stopped.
func (c *conn) flushQueued() {
	for {
		select {
		case it := <-c.out:
			if it.release != nil {
				it.release()
			}
		default:
			return
		}
	}
}

// stamp fills StatSN, ExpCmdSN and MaxCmdSN at the moment of sending so
// they are always current and StatSN is strictly ordered.
func (c *conn) stamp(it *txItem) {
	p := it.pdu
	p.put32(24, c.statSN)
	if it.kind == txStatus {
		c.statSN++
	}
	exp, max := c.sess.window()
	p.put32(28, exp)
	p.put32(32, max)
}

func (c *conn) readLoop() error {
	for {
		p, err := c.rd.ReadPDU()
		if err != nil {
			select {
			case <-c.closing:
				return nil
			default:
			}
			if errors.Is(err, errHeaderDigest) {
				// The header cannot be trusted, so neither can the length
				// that follows: the connection is lost (section 7.8).
				return err
			}
			if errors.Is(err, errDataDigest) && p != nil {
				c.reject(p, rejectDataDigest)
				continue
			}
			if errors.Is(err, errTooLong) && p != nil {
				c.reject(p, rejectProtocol)
			}
			return err
		}
		c.lastRecv.Store(time.Now().UnixNano())
		if err := c.dispatch(p); err != nil {
			return err
		}
	}
}

// Reject reasons, RFC 7143 section 11.17.1.
const (
	rejectDataDigest   = 0x02
	rejectSNACK        = 0x03
	rejectProtocol     = 0x04
	rejectNotSupported = 0x05
	rejectImmediate    = 0x06
	rejectTaskInProg   = 0x07
	rejectInvalidData  = 0x08
	rejectInvalidField = 0x09
	rejectWaitLogout   = 0x0b
)

func (c *conn) reject(p *PDU, reason byte) {
	r := &PDU{}
	r.BHS[0] = opReject
	r.BHS[1] = 0x80
	r.BHS[2] = reason
	r.put32(16, 0xffffffff)
	hdr := p.BHS
	r.Data = hdr[:]
	c.send(r, txStatus, nil)
}

func (c *conn) dispatch(p *PDU) error {
	switch op := p.Opcode(); op {
	case opSCSICmd:
		if c.sess.target == nil {
			c.reject(p, rejectProtocol)
			return nil
		}
		c.scsiCommand(p)
	case opDataOut:
		return c.dataOut(p)
	case opNOPOut:
		c.nopOutPDU(p)
	case opTaskMgmt:
		c.taskMgmt(p)
	case opTextReq:
		c.textRequest(p)
	case opLogoutReq:
		return c.logout(p)
	case opSNACK:
		// ErrorRecoveryLevel is 0: SNACK is not supported (section 11.16).
		c.reject(p, rejectNotSupported)
	case opLoginReq:
		c.reject(p, rejectProtocol)
	default:
		c.reject(p, rejectNotSupported)
	}
	return nil
}

func (c *conn) nopOutPDU(p *PDU) {
	if p.ITT() == 0xffffffff {
		// A ping answer to our NOP-In, or a one-way NOP-Out: no response.
		if ttt := p.TTT(); ttt != 0xffffffff && c.nopOut.Load() == ttt {
			c.nopOut.Store(0)
		}
		if !p.Immediate() {
			if c.sess.admit(p.CmdSN(), false) {
				c.sess.done()
			}
		}
		return
	}
	if !c.sess.admit(p.CmdSN(), p.Immediate()) {
		return
	}
	defer c.sess.done()
	r := &PDU{}
	r.BHS[0] = opNOPIn
	r.BHS[1] = 0x80
	copy(r.BHS[8:16], p.BHS[8:16])
	r.put32(16, p.ITT())
	r.put32(20, 0xffffffff)
	if len(p.Data) > 0 {
		r.Data = append([]byte(nil), p.Data...)
	}
	c.send(r, txStatus, nil)
}

// keepalive pings an idle initiator with NOP-In and drops the connection
// when it stops answering (section 11.19).
func (c *conn) keepalive() {
	iv := c.srv.cfg.NOPInterval
	tick := time.NewTicker(iv)
	defer tick.Stop()
	var sentAt time.Time
	for {
		select {
		case <-c.closing:
			return
		case now := <-tick.C:
			last := time.Unix(0, c.lastRecv.Load())
			if ttt := c.nopOut.Load(); ttt != 0 {
				if last.After(sentAt) {
					// Any PDU proves the initiator is alive.
					c.nopOut.Store(0)
				} else if now.Sub(sentAt) > c.srv.cfg.NOPTimeout {
					c.log.Warn("initiator stopped answering NOP-In; dropping connection")
					c.close("keepalive timeout")
					c.nc.Close()
					return
				}
				continue
			}
			if now.Sub(last) < iv {
				continue
			}
			c.mu.Lock()
			ttt := c.nextTTT
			c.nextTTT++
			if c.nextTTT == 0xffffffff {
				c.nextTTT = 1
			}
			c.mu.Unlock()
			c.nopOut.Store(ttt)
			sentAt = now
			r := &PDU{}
			r.BHS[0] = opNOPIn
			r.BHS[1] = 0x80
			r.put32(16, 0xffffffff)
			r.put32(20, ttt)
			c.send(r, txPeek, nil)
		}
	}
}

func (c *conn) logout(p *PDU) error {
	if !c.sess.admit(p.CmdSN(), p.Immediate()) {
		return nil
	}
	reason := p.Flags() & 0x7f
	r := &PDU{}
	r.BHS[0] = opLogoutRsp
	r.BHS[1] = 0x80
	r.put32(16, p.ITT())
	switch reason {
	case 0, 1: // close the session / this connection
		if reason == 1 && p.u16(20) != c.cid {
			r.BHS[2] = 1 // CID not found: we do not close other connections here
		}
	default:
		r.BHS[2] = 2 // connection recovery is not supported at ERL 0
	}
	if r.BHS[2] != 0 {
		c.sess.done()
		c.send(r, txStatus, nil)
		return nil
	}
	// Logout is a synchronisation point (section 11.14): tasks that can
	// still complete do, and are answered, before the response. A write
	// still waiting for Data-Out never will once the initiator logs out,
	// and the reader goroutine (this one) would be the one to deliver it,
	// so such tasks are ended here rather than waited for.
	c.mu.Lock()
	var waiting []*task
	for _, t := range c.tasks {
		if !t.started && t.need > 0 {
			t.started = true
			t.aborted.Store(true)
			waiting = append(waiting, t)
		}
	}
	c.mu.Unlock()
	for _, t := range waiting {
		c.finish(t, nil)
	}
	c.wg.Wait()
	c.sess.loggingOut(c, reason)
	c.sess.done()
	done := make(chan struct{})
	select {
	case c.out <- txItem{pdu: r, kind: txStatus, release: func() { close(done) }}:
	case <-c.closing:
		return io.EOF
	}
	select {
	case <-done:
	case <-c.closing:
	}
	if reason == 0 {
		go c.sess.close("logout")
	}
	return io.EOF
}

// sendAsyncLogout asks the initiator to log out (AsyncEvent 1), used when
// the target shuts down.
func (c *conn) sendAsyncLogout() {
	r := &PDU{}
	r.BHS[0] = opAsyncMsg
	r.BHS[1] = 0x80
	r.put32(16, 0xffffffff)
	r.BHS[36] = 1
	r.put16(38, 0)
	r.put16(40, uint16(c.params.DefaultTime2Wait))
	r.put16(42, uint16(c.params.DefaultTime2Retain))
	c.send(r, txPeek, nil)
}

func (c *conn) String() string {
	return fmt.Sprintf("conn(%s cid=%d)", c.nc.RemoteAddr(), c.cid)
}
