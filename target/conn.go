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

	"github.com/metrolun/metrolun/internal/stamp"
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
	release func() // called once the PDU is on the wire (or dropped)
}

// maxQueued bounds the PDUs waiting to be written; a sender waits beyond.
const maxQueued = 256

// conn is one TCP connection: login, then the full feature phase. One
// goroutine reads and dispatches PDUs. A SCSI command executes on its own
// goroutine, or on the reader when nothing else is in flight (inline,
// task.go). Outgoing PDUs queue in send order; one flusher at a time (the
// writer goroutine, or a sender that found the write side idle) writes
// them, stamping StatSN.
type conn struct {
	srv *Server
	nc  net.Conn
	log hclog.Logger
	rd  pduReader
	br  *bufio.Reader // rd's buffer
	pr  *pollReader   // br's source (busypoll.go)
	cid uint16

	sess   *session
	params Params

	// work hands a task to one of the connection's idle executors
	// (spawn): unbuffered, so a send succeeds only when one waits.
	work chan *task

	// statSN: login uses it directly; afterwards wmu guards it.
	statSN uint32

	wmu     sync.Mutex
	wq      []txItem   // queued, in send order
	wflush  bool       // someone owns the write side: writes wq until empty
	wclosed bool       // the write side is gone: new PDUs are dropped
	wspace  *sync.Cond // on wmu: wq shrank, or wclosed
	kick    chan struct{}
	// Flusher only: the batch being written and its wire form.
	wbatch   []txItem
	iov      [][]byte
	scratch  []byte
	deadline time.Time // the write deadline last set

	// inlineOff: inline execution is off until then (reader only).
	inlineOff time.Time

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
	rtt      pingClock     // round trips measured by NOP-In pings (sessions.go)
	since    time.Time     // when the login completed

	// Login only: the names the initiator gave, and the status of a
	// login reject sent, for the log line of a failed login.
	loginName, loginTarget string
	rejected               *loginStatus

	text   *textAnswer    // a Text Response still being sent (text.go); reader only
	textIn *textRequestIn // a Text Request still being received (text.go); reader only
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv:     s,
		nc:      nc,
		log:     s.log.With("remote", nc.RemoteAddr().String()),
		kick:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		tasks:   map[uint32]*task{},
		nextTTT: 1,
	}
	c.idle = sync.NewCond(&c.mu)
	c.wspace = sync.NewCond(&c.wmu)
	c.budget = semaphore.NewWeighted(connBudget)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.work = make(chan *task)
	c.pr = newPollReader(nc)
	c.br = bufio.NewReaderSize(c.pr, 64*1024)
	c.rd = pduReader{r: c.br, maxData: s.cfg.Limits.MaxRecvDataSegmentLength}
	// During login the initiator may send up to 8192 bytes per PDU whatever
	// it later negotiates (RFC 7143 section 12.12).
	if c.rd.maxData < 8192 {
		c.rd.maxData = 8192
	}
	return c
}

// remoteHost is the initiator's address without the port.
func (c *conn) remoteHost() string {
	if ta, ok := c.nc.RemoteAddr().(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(c.nc.RemoteAddr().String())
	if err != nil {
		return c.nc.RemoteAddr().String()
	}
	return h
}

func (c *conn) serve() {
	defer c.nc.Close()
	c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := c.login(); err != nil {
		if st := c.rejected; st != nil {
			// Who tried, from where (c.log names the remote) and why,
			// for an operator tracing a failed or hostile login.
			c.log.Warn("login rejected", "initiator", c.loginName, "target", c.loginTarget,
				"status", fmt.Sprintf("0x%02x%02x", st.class, st.detail), "reason", st.msg, "error", err)
		} else if !errors.Is(err, io.EOF) {
			c.log.Debug("login ended", "initiator", c.loginName, "target", c.loginTarget, "error", err)
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
		c.wmu.Lock()
		c.wspace.Broadcast()
		c.wmu.Unlock()
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

// send queues a PDU and gets it written by the writer goroutine.
func (c *conn) send(p *PDU, kind txKind, release func()) {
	c.queue(p, kind, release)
	c.push(0)
}

// queue adds a PDU to the send order without getting it written: the
// caller calls push when it is done queueing. It waits while the queue is
// full.
func (c *conn) queue(p *PDU, kind txKind, release func()) {
	c.wmu.Lock()
	for len(c.wq) >= maxQueued && !c.wclosed && !c.isClosing() {
		if !c.wflush {
			// Nobody is writing (the caller pushes only later): the
			// writer goroutine makes room.
			c.wflush = true
			c.wake()
		}
		c.wspace.Wait()
	}
	if c.wclosed || c.isClosing() {
		c.wmu.Unlock()
		if release != nil {
			release()
		}
		return
	}
	c.wq = append(c.wq, txItem{pdu: p, kind: kind, release: release})
	c.wmu.Unlock()
}

// push gets what is queued written. When nobody is writing, the caller
// writes up to direct batches itself (saving a hand-off to the writer
// goroutine); with direct 0, or when more is left, the writer goroutine
// takes over.
func (c *conn) push(direct int) {
	c.wmu.Lock()
	if c.wflush || len(c.wq) == 0 || c.wclosed {
		c.wmu.Unlock()
		return
	}
	c.wflush = true
	c.wmu.Unlock()
	if direct == 0 {
		c.wake()
		return
	}
	c.flush(direct)
}

// wake hands the write side to the writer goroutine. The caller has set
// c.wflush on its behalf, so at most one wake-up is pending.
func (c *conn) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// writer writes whatever it is handed until the connection closes.
func (c *conn) writer() {
	for {
		select {
		case <-c.kick:
			c.flush(0)
		case <-c.closing:
			// What was handed over before the close still goes out (a
			// cold reset's TMF response, say); nothing queues after it.
			select {
			case <-c.kick:
				c.flush(0)
			default:
			}
			c.dropQueued()
			return
		}
	}
}

// flush writes the queue in batches of up to maxBatch PDUs, each in one
// vectored write, until it is empty. The caller owns the write side
// (c.wflush). limit > 0 stops after that many batches and hands the rest
// to the writer goroutine.
func (c *conn) flush(limit int) {
	const maxBatch = 64
	hd, dd := c.params.HeaderDigest, c.params.DataDigest
	for n := 0; ; n++ {
		exp, max := c.sess.window()
		c.wmu.Lock()
		if len(c.wq) == 0 || c.wclosed {
			c.wflush = false
			c.wmu.Unlock()
			return
		}
		if limit > 0 && n == limit {
			c.wmu.Unlock()
			c.wake()
			return
		}
		// StatSN is stamped here, in queue order, which is wire order.
		k := min(len(c.wq), maxBatch)
		c.wbatch = append(c.wbatch[:0], c.wq[:k]...)
		rest := copy(c.wq, c.wq[k:])
		clear(c.wq[rest:])
		c.wq = c.wq[:rest]
		for i := range c.wbatch {
			c.stamp(&c.wbatch[i], exp, max)
		}
		c.wspace.Broadcast()
		c.wmu.Unlock()

		c.iov, c.scratch = c.iov[:0], c.scratch[:0]
		for i := range c.wbatch {
			c.iov, c.scratch = c.wbatch[i].pdu.appendWire(c.iov, hd, dd, c.scratch)
		}
		// A write that cannot progress for about NOPTimeout means a dead
		// initiator. Moving the deadline costs a timer update, so it is
		// moved only once half of it is used up.
		now := time.Now()
		if timeout := c.srv.cfg.NOPTimeout; c.deadline.Sub(now) < timeout/2 {
			c.deadline = now.Add(timeout)
			c.nc.SetWriteDeadline(c.deadline)
		}
		bufs := net.Buffers(c.iov)
		answer := stamp.On && c.stampAnswer()
		if answer {
			stamp.Mark(stamp.Cmd, "resp.write")
		}
		_, err := bufs.WriteTo(c.nc)
		if answer {
			stamp.End(stamp.Cmd)
		}
		clear(c.iov)
		for i := range c.wbatch {
			if r := c.wbatch[i].release; r != nil {
				r()
			}
		}
		clear(c.wbatch)
		if err != nil {
			c.log.Debug("write failed", "error", err)
			c.close("")
			c.nc.Close()
			c.dropQueued()
			return
		}
	}
}

// stampAnswer reports whether the batch answers a command (internal/stamp:
// a command's record ends when its answer is written).
func (c *conn) stampAnswer() bool {
	for i := range c.wbatch {
		if op := c.wbatch[i].pdu.Opcode(); op == opSCSIResp || op == opDataIn {
			return true
		}
	}
	return false
}

// dropQueued closes the write side and releases what is still queued.
func (c *conn) dropQueued() {
	c.wmu.Lock()
	c.wclosed = true
	q := c.wq
	c.wq = nil
	c.wspace.Broadcast()
	c.wmu.Unlock()
	for _, it := range q {
		if it.release != nil {
			it.release()
		}
	}
}

// stamp fills StatSN, ExpCmdSN and MaxCmdSN at the moment of sending so
// they are always current and StatSN is strictly ordered. Caller holds
// c.wmu.
func (c *conn) stamp(it *txItem, exp, max uint32) {
	p := it.pdu
	p.put32(24, c.statSN)
	if it.kind == txStatus {
		c.statSN++
	}
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
		stamp.Begin(stamp.Cmd)
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
		if ttt := p.TTT(); ttt != 0xffffffff {
			c.nopOut.CompareAndSwap(ttt, 0)
			c.rtt.answered(ttt, time.Now())
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

// keepalive pings the initiator with a NOP-In every NOPInterval (RFC
// 7143 section 11.19: a NOP-In whose TTT is not 0xffffffff must be
// answered with a NOP-Out echoing it). The answer measures the round
// trip (pingClock). An initiator that ignores the ping loses nothing
// while it sends anything else: only a connection on which nothing at
// all arrives for NOPTimeout after a ping is dropped. One ping is
// outstanding at a time, so the rate is at most one per interval.
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
			if ttt := c.nopOut.Load(); ttt != 0 && !last.After(sentAt) {
				if now.Sub(sentAt) > c.srv.cfg.NOPTimeout {
					c.log.Warn("initiator stopped answering NOP-In; dropping connection")
					c.close("keepalive timeout")
					c.nc.Close()
					return
				}
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
			c.rtt.sent(ttt, time.Now())
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
	if c.isClosing() {
		return io.EOF
	}
	done := make(chan struct{})
	c.send(r, txStatus, func() { close(done) })
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
