package target

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/metrolun/metrolun/internal/stamp"
)

// task is one SCSI command on a connection, from its Command PDU to its
// response: it collects Data-Out (immediate, unsolicited and solicited by
// R2T), executes on its logical unit and sends Data-In and status.
type task struct {
	c      *conn
	itt    uint32
	lunRaw [8]byte
	lu     *LU
	cmd    *scsiCmd
	edtl   int // expected data transfer length from the PDU
	need   int // Data-Out bytes the CDB asks for
	cmdSN  uint32

	// Write data collection, guarded by c.mu.
	buf        []byte
	xfer       int // bytes of Data-Out we take (min of need and EDTL)
	received   int
	nextOffset int               // next byte to solicit with R2T
	r2tSN      uint32            // next R2TSN
	r2tOut     int               // R2Ts not yet satisfied
	curTTT     map[uint32]uint32 // outstanding R2Ts: TTT -> next DataSN
	unsolSN    uint32            // next DataSN of unsolicited Data-Out
	// dataErr: a Data-Out came out of DataSN order; the task ends with a
	// protocol service CRC error instead of executing (dataOut).
	dataErr   bool
	allocated bool  // buf holds the whole transfer
	granted   int64 // budget held for buf
	started   bool

	aborted atomic.Bool
	tas     atomic.Bool // aborted by another nexus: answer TASK ABORTED
	done    chan struct{}
}

const noLUN = ^uint64(0)

// scsiCommand handles a SCSI Command PDU (RFC 7143 section 11.3).
func (c *conn) scsiCommand(p *PDU) {
	if c.draining.Load() {
		// Shutting down: answer BUSY so the initiator retries elsewhere.
		if c.sess.admit(p.CmdSN(), p.Immediate()) {
			c.sendStatus(p.ITT(), statusBusy, nil, 0, 0)
			c.sess.done()
		}
		return
	}
	if !c.sess.admit(p.CmdSN(), p.Immediate()) {
		// Out of window: dropped silently (section 4.2.2.1).
		c.log.Debug("command outside CmdSN window dropped", "cmdsn", p.CmdSN(), "itt", p.ITT())
		return
	}
	t := &task{
		c: c, itt: p.ITT(), edtl: int(p.expectedLen()), cmdSN: p.CmdSN(),
		done: make(chan struct{}),
	}
	copy(t.lunRaw[:], p.BHS[8:16])
	lun := decodeLUN(t.lunRaw)
	t.lu = c.sess.target.lus[lun]
	if lun == noLUN {
		t.lu = nil
	}

	c.mu.Lock()
	if _, dup := c.tasks[t.itt]; dup {
		c.mu.Unlock()
		// An ITT in use: a protocol error on the initiator's side.
		c.reject(p, rejectTaskInProg)
		c.sess.done()
		return
	}
	c.tasks[t.itt] = t
	c.wg.Add(1)
	c.mu.Unlock()

	cdb := p.cdb()
	if p.BHS[4] > 0 {
		// An extended CDB AHS (type 1) carries bytes beyond 16.
		if ext, ok := extendedCDB(p); ok {
			cdb = ext
		}
	}
	cmd, res := prepare(c.sess.target, t.lu, c.sess.nexus, cdb, p.taskAttr(), t.edtl)
	if res != nil {
		putBuf(p.Data)
		c.finish(t, res)
		return
	}
	t.cmd = cmd
	cmd.aborted = t.aborted.Load
	need := cmd.dataOut
	t.need = need
	if need == 0 {
		putBuf(p.Data)
		c.start(t)
		return
	}
	// A write with a short expected transfer length transfers what the
	// initiator declared; the residual says the rest (RFC 7143 section
	// 11.4.5.2). The command then sees only whole blocks of it.
	t.xfer = min(need, t.edtl)
	if !p.writeBit() {
		t.xfer = 0
	}
	imm := min(len(p.Data), t.xfer)
	// Unsolicited data that follows the command: everything up to
	// FirstBurstLength unless InitialR2T=Yes or the F bit says none follows.
	unsol := len(p.Data)
	if !c.params.InitialR2T && !p.Final() {
		unsol = min(c.params.FirstBurstLength, t.edtl)
	}
	unsolEnd := min(unsol, t.xfer)
	c.mu.Lock()
	t.nextOffset = unsolEnd
	t.received = imm
	if imm > 0 && imm == t.xfer && unsolEnd >= t.xfer {
		// All of it came as immediate data: the task takes the PDU's
		// buffer rather than a copy.
		t.buf, t.allocated = p.Data[:imm], true
	} else {
		if unsolEnd >= t.xfer {
			// Everything arrives unsolicited: bounded by
			// FirstBurstLength, so no budget is needed.
			t.buf = getBuf(t.xfer)
			t.allocated = true
		} else if unsolEnd > 0 {
			t.buf = getBuf(unsolEnd)
		}
		copy(t.buf, p.Data[:imm])
		putBuf(p.Data)
	}
	if t.allocated && t.received >= t.xfer {
		t.started = true
		c.mu.Unlock()
		c.start(t)
		return
	}
	c.mu.Unlock()
	if !t.allocated {
		// Solicited data is admitted against the connection's memory
		// budget; waiting for it never blocks the reader.
		go c.grant(t)
	}
}

// grant waits for budget for a write's whole transfer, then allocates its
// buffer and solicits the data with R2T.
func (c *conn) grant(t *task) {
	if err := c.budget.Acquire(c.ctx, int64(t.xfer)); err != nil {
		return // connection closing; abortAll ends the task
	}
	buf := getBuf(t.xfer)
	c.mu.Lock()
	if t.started {
		// Aborted while waiting.
		c.mu.Unlock()
		putBuf(buf)
		c.budget.Release(int64(t.xfer))
		return
	}
	copy(buf, t.buf)
	if t.buf != nil {
		putBuf(t.buf)
	}
	t.buf, t.allocated, t.granted = buf, true, int64(t.xfer)
	r2ts := c.solicit(t)
	ready := t.readyLocked()
	c.mu.Unlock()
	c.sendR2Ts(r2ts)
	if ready {
		c.execute(t, goroutineFlush)
	}
}

// readyLocked reports (and records) that all data is in. Caller holds c.mu.
func (t *task) readyLocked() bool {
	if t.started || !t.allocated || t.received < t.xfer || t.r2tOut > 0 || t.nextOffset < t.xfer {
		return false
	}
	t.started = true
	return true
}

// extendedCDB joins the 16-byte CDB with an Extended CDB AHS (section 11.3.2).
func extendedCDB(p *PDU) ([]byte, bool) {
	a := p.AHS
	for len(a) >= 4 {
		l := int(a[0])<<8 | int(a[1])
		typ := a[2]
		total := (3 + l + 3) &^ 3
		if total > len(a) || l < 1 {
			return nil, false
		}
		if typ == 1 {
			cdb := append(append([]byte(nil), p.cdb()...), a[4:3+l]...)
			return cdb, true
		}
		a = a[total:]
	}
	return nil, false
}

// solicit builds R2Ts while fewer than MaxOutstandingR2T are outstanding.
// Caller holds c.mu and sends the returned PDUs, in order, after
// unlocking (the writer's queue may block).
func (c *conn) solicit(t *task) []*PDU {
	var out []*PDU
	for t.r2tOut < c.params.MaxOutstandingR2T && t.nextOffset < t.xfer {
		n := min(t.xfer-t.nextOffset, c.params.MaxBurstLength)
		ttt := c.nextTTT
		c.nextTTT++
		if c.nextTTT == 0xffffffff {
			c.nextTTT = 1
		}
		if t.curTTT == nil {
			t.curTTT = map[uint32]uint32{}
		}
		t.curTTT[ttt] = 0
		r := &PDU{}
		r.BHS[0] = opR2T
		r.BHS[1] = 0x80
		copy(r.BHS[8:16], t.lunRaw[:])
		r.put32(16, t.itt)
		r.put32(20, ttt)
		r.put32(36, t.r2tSN)
		r.put32(40, uint32(t.nextOffset))
		r.put32(44, uint32(n))
		t.r2tSN++
		t.r2tOut++
		t.nextOffset += n
		out = append(out, r)
	}
	return out
}

func (c *conn) sendR2Ts(r2ts []*PDU) {
	for _, r := range r2ts {
		c.send(r, txPeek, nil)
	}
}

// dataOut places a Data-Out PDU into its task's buffer (section 11.7).
func (c *conn) dataOut(p *PDU) error {
	defer putBuf(p.Data)
	c.mu.Lock()
	t := c.tasks[p.ITT()]
	if t == nil || t.started || t.cmd == nil || t.cmd.dataOut == 0 {
		c.mu.Unlock()
		// Data for a task that is gone (aborted, or answered early with a
		// CHECK CONDITION) is discarded.
		return nil
	}
	ttt := p.TTT()
	want := t.unsolSN
	if ttt != 0xffffffff {
		sn, ok := t.curTTT[ttt]
		if !ok {
			c.mu.Unlock()
			c.reject(p, rejectInvalidField)
			return nil
		}
		want = sn
	}
	// DataSN counts from 0 in each sequence (unsolicited, or one per R2T).
	// One out of order means an earlier Data-Out was lost, a digest error
	// this side never saw (RFC 7143 section 7.9, sequence errors), which
	// section 7.8 has the target address at ErrorRecoveryLevel 0 by ending
	// the task with CHECK CONDITION, PROTOCOL SERVICE CRC ERROR, once all
	// its data has come: the connection and the other tasks go on, and the
	// command is not executed (execute).
	if p.dataSN() != want && !t.dataErr {
		t.dataErr = true
		c.log.Warn("Data-Out out of order; the command will end with a protocol service CRC error",
			"itt", fmt.Sprintf("0x%x", t.itt), "datasn", p.dataSN(), "expected", want)
	}
	if ttt == 0xffffffff {
		t.unsolSN++
	} else {
		t.curTTT[ttt] = want + 1
	}
	off := int(p.bufferOffset())
	n := len(p.Data)
	// Before the grant only the unsolicited part has a buffer.
	if off < len(t.buf) {
		end := min(off+n, len(t.buf))
		copy(t.buf[off:end], p.Data[:end-off])
		t.received += end - off
	}
	var r2ts []*PDU
	if p.Final() && ttt != 0xffffffff {
		delete(t.curTTT, ttt)
		t.r2tOut--
		r2ts = c.solicit(t)
	}
	if t.dataErr && p.Final() && t.r2tOut == 0 && t.nextOffset >= t.xfer {
		// After a sequence error, the end of every sequence is the end
		// of the data, whatever arrived (RFC 7143 section 7.8).
		t.received = max(t.received, t.xfer)
	}
	ready := t.readyLocked()
	c.mu.Unlock()
	c.sendR2Ts(r2ts)
	if ready {
		c.start(t)
	}
	return nil
}

// Batches a goroutine that completes a task may write itself when the
// write side is idle (conn.push): a few, so that under load the writer
// goroutine takes over rather than one task's goroutine.
const goroutineFlush = 4

// Inline execution: at queue depth 1 the reader executes a plain READ or
// WRITE itself and writes its answer, instead of handing the task to a
// goroutine and the answer to the writer goroutine (two wake-ups, each
// costing tens of microseconds on a small machine). While it executes,
// nothing is read, so inline execution is kept to commands that are alone
// on the connection, have all their data, are small, and go to a volume
// this site alone serves (one without SharedState, shared.go): a mirrored
// volume may wait for another site (a WAN round trip, or a lease), and
// the connection must keep reading then (task management, NOP-Out,
// further commands). A READ from a mirrored volume that can tell when it
// would not wait (InlineReader) runs inline too, through TryReadAt; when
// that says it would wait, the READ goes to its own goroutine as any
// other command. Once it has answered, the reader polls briefly for the
// next command (busypoll.go).
const (
	inlineMaxBytes = 256 << 10
	// An inline command slower than inlineSlow (a stalled disk) turns
	// inline execution off for the connection for inlineBackoff.
	inlineSlow    = 2 * time.Millisecond
	inlineBackoff = 100 * time.Millisecond
)

// start executes a task whose data is all in: inline when it may (see
// above), else on its own goroutine. Called by the reader.
func (c *conn) start(t *task) {
	stamp.Mark(stamp.Cmd, "data.in")
	if !c.inline(t) {
		c.spawn(t)
		return
	}
	begin := time.Now()
	done := c.execute(t, 1)
	end := time.Now()
	if end.Sub(begin) > inlineSlow {
		c.inlineOff = end.Add(inlineBackoff)
	}
	if !done {
		// The volume would wait (TryReadAt): nothing was done.
		t.cmd.try = nil
		c.spawn(t)
		return
	}
	c.pr.answeredAt(end)
}

// executorIdle is how long an executor of a connection waits for its
// next task before it ends.
const executorIdle = time.Second

// spawn executes t on a goroutine of its own: an idle executor of the
// connection if one waits, else a new one. A new goroutine starts with a
// small stack and grows it on every command that goes deep (the volume,
// a mirrored write's wait); an executor that took one task and waits for
// the next keeps what it grew, which bench-mirror's profile put at about
// 5% of a mirrored write's CPU at the writer. Executors are bounded by
// the tasks running at once (the CmdSN window) and end after
// executorIdle without work or when the connection ends.
func (c *conn) spawn(t *task) {
	select {
	case c.work <- t:
	default:
		executorsStarted.Add(1)
		go c.executor(t)
	}
}

// executorsStarted counts the executors started (tests).
var executorsStarted atomic.Int64

func (c *conn) executor(t *task) {
	idle := time.NewTimer(executorIdle)
	defer idle.Stop()
	for {
		stamp.Mark(stamp.Cmd, "executor")
		c.execute(t, goroutineFlush)
		idle.Reset(executorIdle)
		select {
		case t = <-c.work:
		case <-idle.C:
			return
		case <-c.ctx.Done():
			return
		}
	}
}

// inline reports whether the reader may execute t itself.
func (c *conn) inline(t *task) bool {
	cmd := t.cmd
	if t.lu == nil {
		return false
	}
	mirrored := t.lu.shared.ss != nil
	switch cmd.cdb[0] {
	case 0x08, 0x28, 0xa8, 0x88: // READ(6/10/12/16)
		if cmd.alloc > inlineMaxBytes || mirrored && t.lu.shared.inline == nil {
			return false
		}
	case 0x0a, 0x2a, 0xaa, 0x8a: // WRITE(6/10/12/16)
		if cmd.dataOut > inlineMaxBytes || mirrored {
			return false
		}
	default:
		return false
	}
	// A PDU already waiting means the initiator has more in flight.
	if c.br.Buffered() > 0 {
		return false
	}
	c.mu.Lock()
	alone := len(c.tasks) == 1
	c.mu.Unlock()
	if !alone {
		return false
	}
	if !c.inlineOff.IsZero() && !time.Now().After(c.inlineOff) {
		return false
	}
	if mirrored {
		cmd.try = t.lu.shared.inline
	}
	return true
}

// execute runs the command on its LU and answers; direct is as for
// complete. It reports false, having done nothing, when the command runs
// with scsiCmd.try and the volume would wait.
func (c *conn) execute(t *task, direct int) bool {
	var res *scsiResult
	if t.aborted.Load() {
		c.finish(t, nil)
		return true
	}
	if t.dataErr {
		c.complete(t, checkCondition(senseAbortedCommand, ascProtocolCRC), direct)
		return true
	}
	var grant int64
	if t.cmd.dataIn && t.cmd.alloc > 1<<20 {
		// Large reads take their buffer from the connection's budget too.
		grant = int64(min(t.cmd.alloc, connBudget))
		if err := c.budget.Acquire(c.ctx, grant); err != nil {
			c.finish(t, nil)
			return true
		}
	}
	res = t.cmd.exec(t.buf[:min(len(t.buf), t.xfer)])
	stamp.Mark(stamp.Cmd, "exec.done")
	if res == resultWouldWait {
		if grant > 0 {
			c.budget.Release(grant)
		}
		return false
	}
	if len(t.cmd.abortPorts) > 0 {
		c.abortPreempted(t, t.cmd.abortPorts)
	}
	if grant > 0 {
		if res.release != nil {
			rel := res.release
			res.release = func() { rel(); c.budget.Release(grant) }
		} else {
			c.budget.Release(grant)
		}
	}
	c.complete(t, res, direct)
	return true
}

// finish completes t with res; the writer goroutine writes the answer.
func (c *conn) finish(t *task, res *scsiResult) { c.complete(t, res, 0) }

// complete sends the answer (unless the task was aborted), releases the
// task's resources and opens the CmdSN window. The answer takes its place
// in the send order before the task leaves the task table, and is written
// after: an initiator that reuses the ITT as soon as it sees the answer
// finds it free, and the answer's MaxCmdSN counts the freed slot. When the
// write side is idle the caller writes up to direct batches itself (0:
// the writer goroutine does).
func (c *conn) complete(t *task, res *scsiResult, direct int) {
	if t.buf != nil {
		putBuf(t.buf)
		t.buf = nil
	}
	if t.granted > 0 {
		c.budget.Release(t.granted)
		t.granted = 0
	}
	switch {
	case t.aborted.Load():
		if res != nil && res.release != nil {
			res.release()
		}
		if t.tas.Load() {
			c.respond(t, &scsiResult{status: statusTaskAborted})
		}
	case res != nil:
		c.respond(t, res)
	}
	c.mu.Lock()
	if c.tasks[t.itt] == t {
		delete(c.tasks, t.itt)
	}
	if len(c.tasks) == 0 {
		c.idle.Broadcast()
	}
	c.mu.Unlock()
	close(t.done)
	c.sess.done()
	c.push(direct)
	c.wg.Done()
}

// respond sends Data-In (with status collapsed into the last PDU when
// possible, section 11.7.3) and, when needed, a SCSI Response.
func (c *conn) respond(t *task, res *scsiResult) {
	data := res.data
	var flags byte
	var residual uint32
	if t.need > 0 {
		need := t.need
		switch {
		case need > t.edtl:
			flags, residual = 0x04, uint32(need-t.edtl) // overflow
		case need < t.edtl:
			flags, residual = 0x02, uint32(t.edtl-need) // underflow
		}
	} else if t.cmd != nil && t.cmd.dataIn {
		switch {
		case len(data) > t.edtl:
			flags, residual = 0x04, uint32(len(data)-t.edtl)
			data = data[:t.edtl]
		case len(data) < t.edtl:
			flags, residual = 0x02, uint32(t.edtl-len(data))
		}
	} else if t.edtl > 0 && t.need == 0 && res.status != statusGood {
		flags, residual = 0x02, uint32(t.edtl)
	}
	if len(data) == 0 || res.status != statusGood || len(res.sense) > 0 {
		if len(data) > 0 {
			c.sendDataIn(t, data, false, 0, 0, 0, nil)
		}
		c.sendStatusRes(t, res, flags, residual)
		return
	}
	c.sendDataIn(t, data, true, res.status, flags, residual, res.release)
}

// sendDataIn splits data into PDUs of at most the initiator's
// MaxRecvDataSegmentLength, sequences of at most MaxBurstLength.
func (c *conn) sendDataIn(t *task, data []byte, withStatus bool, status, resFlags byte, residual uint32, release func()) {
	mrdsl := c.params.InitiatorRecvDSL
	burst := c.params.MaxBurstLength
	var dataSN uint32
	inBurst := 0
	for off := 0; off < len(data); {
		n := min(len(data)-off, mrdsl, burst-inBurst)
		last := off+n == len(data)
		inBurst += n
		r := &PDU{}
		r.BHS[0] = opDataIn
		var f byte
		if last || inBurst == burst {
			f |= 0x80
			inBurst = 0
		}
		kind := txPeek
		var rel func()
		if last {
			rel = release
			if withStatus {
				f |= 0x01 | resFlags
				r.BHS[3] = status
				r.put32(44, residual)
				kind = txStatus
			}
		}
		r.BHS[1] = f
		copy(r.BHS[8:16], t.lunRaw[:])
		r.put32(16, t.itt)
		r.put32(20, 0xffffffff)
		r.put32(36, dataSN)
		r.put32(40, uint32(off))
		r.Data = data[off : off+n]
		dataSN++
		off += n
		c.queue(r, kind, rel)
	}
}

func (c *conn) sendStatusRes(t *task, res *scsiResult, flags byte, residual uint32) {
	r := &PDU{}
	r.BHS[0] = opSCSIResp
	r.BHS[1] = 0x80 | flags
	r.BHS[3] = res.status
	r.put32(16, t.itt)
	r.put32(44, residual)
	if len(res.sense) > 0 {
		d := make([]byte, 2+len(res.sense))
		d[0], d[1] = byte(len(res.sense)>>8), byte(len(res.sense))
		copy(d[2:], res.sense)
		r.Data = d
	}
	c.queue(r, txStatus, res.release)
}

// sendStatus answers a command that never became a task.
func (c *conn) sendStatus(itt uint32, status byte, sense []byte, flags byte, residual uint32) {
	t := &task{itt: itt}
	c.sendStatusRes(t, &scsiResult{status: status, sense: sense}, flags, residual)
	c.push(0)
}

// abortAll marks every task of this connection aborted (connection loss).
func (c *conn) abortAll() {
	c.mu.Lock()
	var waiting []*task
	for _, t := range c.tasks {
		t.aborted.Store(true)
		if !t.started && t.cmd != nil && t.cmd.dataOut > 0 {
			waiting = append(waiting, t)
		}
	}
	c.mu.Unlock()
	c.cancel()
	// Tasks still waiting for Data-Out will never get it.
	for _, t := range waiting {
		c.mu.Lock()
		started := t.started
		t.started = true
		c.mu.Unlock()
		if !started {
			c.finish(t, nil)
		}
	}
}
