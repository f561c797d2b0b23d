// Package initiator is a small iSCSI initiator (RFC 7143) for tests: one
// connection per session, no authentication, no digests, error recovery
// level 0, one command at a time. It speaks just enough SCSI (SBC-3,
// SPC-4) to read and write blocks and to identify a LUN, and it reports
// every failure so that a caller can tell "certainly not executed" from
// "outcome unknown" (see Indeterminate).
//
// A goroutine per session reads the connection all the time, so target
// NOP-In pings are answered even while the session is idle, and an
// asynchronous logout request or drop from the target ends the session at
// once (Done is closed, Err says why).
package initiator

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options are the operational values this initiator offers at login. The
// zero value offers the defaults listed with each field.
type Options struct {
	// MaxRecvDataSegmentLength is what we accept per PDU (default
	// 262144).
	MaxRecvDataSegmentLength int
	// MaxBurstLength offered (default 1048576).
	MaxBurstLength int
	// FirstBurstLength offered (default 262144).
	FirstBurstLength int
	// InitialR2T offers InitialR2T=Yes (default No: unsolicited data may
	// follow a write command).
	InitialR2T bool
	// NoImmediateData offers ImmediateData=No (default Yes).
	NoImmediateData bool
	// ISID is the initiator session ID; zero means random (RFC 7143
	// section 11.12.5, type 10b "random").
	ISID [6]byte
	// LoginTimeout bounds dial and login when ctx has no deadline
	// (default 30s).
	LoginTimeout time.Duration
	// NoUARetry returns a unit attention to the caller instead of
	// sending the command again (the default, as SCSI layers do).
	NoUARetry bool
}

func (o *Options) fill() {
	if o.MaxRecvDataSegmentLength == 0 {
		o.MaxRecvDataSegmentLength = 256 << 10
	}
	if o.MaxBurstLength == 0 {
		o.MaxBurstLength = 1 << 20
	}
	if o.FirstBurstLength == 0 {
		o.FirstBurstLength = 256 << 10
	}
	if o.LoginTimeout == 0 {
		o.LoginTimeout = 30 * time.Second
	}
	if o.ISID == [6]byte{} {
		rand.Read(o.ISID[1:])
		o.ISID[0] = 0x80
	}
}

// Params are the values in force after login.
type Params struct {
	InitialR2T       bool
	ImmediateData    bool
	MaxBurstLength   int
	FirstBurstLength int
	// MaxRecvDataSegmentLength is ours: the target sends at most this
	// per PDU.
	MaxRecvDataSegmentLength int
	// TargetMaxRecvDataSegmentLength is the target's: our Data-Out and
	// immediate data PDUs stay within it.
	TargetMaxRecvDataSegmentLength int
	MaxOutstandingR2T              int
	TSIH                           uint16
	TargetPortalGroupTag           int
	TargetAlias                    string
}

// Session is one logged-in iSCSI session over one TCP connection. Its
// methods may be called from several goroutines; commands are sent one
// at a time. Close may be called at any time and makes the command in
// progress fail.
type Session struct {
	conn      net.Conn
	br        *bufio.Reader
	opts      Options
	params    Params
	target    string
	initiator string
	addr      string

	opMu sync.Mutex // one command (or logout) at a time
	wmu  sync.Mutex // writes to conn

	mu         sync.Mutex
	cmdSN      uint32
	expStatSN  uint32
	expCmdSN   uint32
	maxCmdSN   uint32
	itt        uint32
	blockSizes map[uint64]uint32

	stats Stats

	rx      chan *pdu
	done    chan struct{}
	endOnce sync.Once
	endErr  error
}

// Dial connects to a portal (host:port) and logs in to targetIQN as
// initiatorIQN with no authentication: a security stage with
// AuthMethod=None, then an operational stage, then full feature phase.
// ctx bounds dial and login (Options.LoginTimeout when ctx has no
// deadline). Errors are a *LoginError when the target refused, else a
// *ConnError with Sent false.
func Dial(ctx context.Context, addr, targetIQN, initiatorIQN string, opts Options) (*Session, error) {
	opts.fill()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.LoginTimeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &ConnError{Op: "dial " + addr, Err: err}
	}
	s := &Session{
		conn: conn, br: bufio.NewReaderSize(conn, 64<<10), opts: opts,
		target: targetIQN, initiator: initiatorIQN, addr: addr,
		cmdSN: 1, blockSizes: map[uint64]uint32{},
		rx: make(chan *pdu, 64), done: make(chan struct{}),
	}
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	err = s.login()
	stop()
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctxErr(ctx), err)
		}
		var le *LoginError
		if errors.As(err, &le) {
			return nil, err
		}
		return nil, &ConnError{Op: "login to " + targetIQN + " at " + addr, Err: err}
	}
	conn.SetDeadline(time.Time{})
	go s.readLoop()
	return s, nil
}

// Stats counts PDUs of the full feature phase, for tests that want to
// see a code path taken (R2T, NOP-In answers).
type Stats struct {
	Commands    atomic.Uint64 // SCSI Command PDUs sent
	R2Ts        atomic.Uint64 // R2Ts received
	DataOut     atomic.Uint64 // Data-Out PDUs sent (solicited or not)
	DataIn      atomic.Uint64 // Data-In PDUs received
	PingsAnswer atomic.Uint64 // target NOP-In pings answered
	// UnitAttentions: commands sent again after a unit attention.
	UnitAttentions atomic.Uint64
}

// Stats returns the session's counters.
func (s *Session) Stats() *Stats { return &s.stats }

// Params returns the negotiated values.
func (s *Session) Params() Params { return s.params }

// Addr is the portal this session is connected to.
func (s *Session) Addr() string { return s.addr }

// Done is closed when the session has ended: Close, Logout, a broken
// connection, or the target's request to log out.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the session ended, nil while it is alive.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.endErr
	default:
		return nil
	}
}

// end closes the session with a reason; the first reason sticks.
func (s *Session) end(err error) {
	s.endOnce.Do(func() {
		s.endErr = err
		close(s.done)
		s.conn.Close()
	})
}

// Close ends the session without logging out. A command in progress
// fails with a *ConnError. Close is idempotent.
func (s *Session) Close() error {
	s.end(ErrClosed)
	return nil
}

func (s *Session) closedErr(op string) error {
	err := s.Err()
	if errors.Is(err, ErrClosed) {
		return &ConnError{Op: op, Err: err}
	}
	return &ConnError{Op: op, Err: fmt.Errorf("%w: %w", ErrClosed, err)}
}

// login runs the login phase synchronously on s.conn (deadlines set by
// the caller).
func (s *Session) login() error {
	const (
		stageSecurity    = 0
		stageOperational = 1
		stageFullFeature = 3
	)
	itt := s.nextITT()
	o := s.opts
	// RFC 7143 section 13 defaults, replaced by what the target answers.
	p := Params{
		InitialR2T: true, ImmediateData: true, MaxBurstLength: 262144, FirstBurstLength: 65536,
		MaxRecvDataSegmentLength: o.MaxRecvDataSegmentLength, TargetMaxRecvDataSegmentLength: 8192,
		MaxOutstandingR2T: 1,
	}
	security := []kv{
		{"InitiatorName", s.initiator},
		{"TargetName", s.target},
		{"SessionType", "Normal"},
		{"AuthMethod", "None"},
	}
	operational := []kv{
		{"HeaderDigest", "None"},
		{"DataDigest", "None"},
		{"MaxConnections", "1"},
		{"InitialR2T", yesNo(o.InitialR2T)},
		{"ImmediateData", yesNo(!o.NoImmediateData)},
		{"MaxRecvDataSegmentLength", strconv.Itoa(o.MaxRecvDataSegmentLength)},
		{"MaxBurstLength", strconv.Itoa(o.MaxBurstLength)},
		{"FirstBurstLength", strconv.Itoa(o.FirstBurstLength)},
		{"DefaultTime2Wait", "0"},
		{"DefaultTime2Retain", "0"},
		{"MaxOutstandingR2T", "1"},
		{"DataPDUInOrder", "Yes"},
		{"DataSequenceInOrder", "Yes"},
		{"ErrorRecoveryLevel", "0"},
	}
	answered := map[string]string{}
	csg, nsg := stageSecurity, stageOperational
	keys := security
	var text []byte // a response text that spans PDUs (C bit)
	maxData := max(o.MaxRecvDataSegmentLength, 8192)
	for round := 0; ; round++ {
		if round > 32 {
			return errors.New("login did not finish within 32 exchanges")
		}
		req := &pdu{}
		req.hdr.setOpcode(opLoginReq, true)
		req.hdr[1] = 0x80 | byte(csg)<<2 | byte(nsg) // T: we always ask to move on
		copy(req.hdr[8:14], o.ISID[:])
		req.hdr.put16(14, 0) // TSIH 0: a new session
		req.hdr.put32(16, itt)
		req.hdr.put16(20, 0) // CID
		s.mu.Lock()
		req.hdr.put32(24, s.cmdSN)
		req.hdr.put32(28, s.expStatSN)
		s.mu.Unlock()
		req.data = encodeText(keys)
		keys = nil
		if err := s.writePDU(req); err != nil {
			return err
		}
		rsp, err := readPDU(s.br, maxData)
		if err != nil {
			return unexpectedEOF(err)
		}
		if rsp.hdr.opcode() != opLoginRsp {
			return fmt.Errorf("expected a login response, got %v", rsp)
		}
		if rsp.hdr.itt() != itt {
			return fmt.Errorf("login response for ITT 0x%x, sent 0x%x", rsp.hdr.itt(), itt)
		}
		s.track(rsp)
		if class, detail := rsp.hdr[36], rsp.hdr[37]; class != 0 {
			le := &LoginError{Class: class, Detail: detail}
			if kvs, err := parseText(rsp.data); class == 1 && err == nil {
				for _, x := range kvs {
					if x.k == "TargetAddress" {
						le.TargetAddress = x.v
					}
				}
			}
			return le
		}
		text = append(text, rsp.data...)
		flags := rsp.hdr.flags()
		if flags&0x40 != 0 { // C: more text follows; ask for it
			if flags&0x80 != 0 {
				return errors.New("login response with both T and C")
			}
			continue
		}
		kvs, err := parseText(text)
		text = text[:0]
		if err != nil {
			return err
		}
		for _, x := range kvs {
			answered[x.k] = x.v
		}
		transit := flags&0x80 != 0
		rspNSG := int(flags & 3)
		if !transit {
			// The target stays in this stage (it may want another round);
			// ask again to move on, with nothing new to say.
			continue
		}
		switch {
		case csg == stageSecurity && rspNSG == stageOperational:
			csg, nsg = stageOperational, stageFullFeature
			keys = operational
		case rspNSG == stageFullFeature:
			s.params = p
			if err := s.applyLogin(answered); err != nil {
				return err
			}
			s.params.TSIH = rsp.hdr.u16(14)
			return nil
		default:
			return fmt.Errorf("target moved from stage %d to stage %d", csg, rspNSG)
		}
	}
}

// applyLogin turns the target's answers into Params, applying the RFC
// result functions against what we offered.
func (s *Session) applyLogin(ans map[string]string) error {
	o := s.opts
	p := &s.params
	num := func(k string, def int) (int, error) {
		v, ok := ans[k]
		if !ok || v == "Reject" || v == "NotUnderstood" || v == "Irrelevant" {
			return def, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("login: %s=%q is not a number", k, v)
		}
		return n, nil
	}
	boolean := func(k string, def bool) (bool, error) {
		switch ans[k] {
		case "Yes":
			return true, nil
		case "No":
			return false, nil
		case "", "Reject", "NotUnderstood", "Irrelevant":
			return def, nil
		}
		return false, fmt.Errorf("login: %s=%q is not Yes or No", k, ans[k])
	}
	for _, k := range []string{"HeaderDigest", "DataDigest"} {
		if v, ok := ans[k]; ok && v != "None" {
			return fmt.Errorf("login: target chose %s=%s, only None is supported", k, v)
		}
	}
	if v, ok := ans["ErrorRecoveryLevel"]; ok && v != "0" {
		return fmt.Errorf("login: target chose ErrorRecoveryLevel=%s, only 0 is supported", v)
	}
	var err error
	var b bool
	if b, err = boolean("InitialR2T", p.InitialR2T); err != nil {
		return err
	}
	p.InitialR2T = b || o.InitialR2T // OR function
	if b, err = boolean("ImmediateData", p.ImmediateData); err != nil {
		return err
	}
	p.ImmediateData = b && !o.NoImmediateData // AND function
	var n int
	if n, err = num("MaxBurstLength", p.MaxBurstLength); err != nil {
		return err
	}
	p.MaxBurstLength = min(n, o.MaxBurstLength)
	if n, err = num("FirstBurstLength", p.FirstBurstLength); err != nil {
		return err
	}
	p.FirstBurstLength = min(n, o.FirstBurstLength, p.MaxBurstLength)
	if n, err = num("MaxRecvDataSegmentLength", p.TargetMaxRecvDataSegmentLength); err != nil {
		return err
	}
	if n < 512 {
		return fmt.Errorf("login: target MaxRecvDataSegmentLength %d < 512", n)
	}
	p.TargetMaxRecvDataSegmentLength = min(n, maxDataSegment)
	if n, err = num("MaxOutstandingR2T", 1); err != nil {
		return err
	}
	p.MaxOutstandingR2T = max(n, 1)
	if n, err = num("TargetPortalGroupTag", 0); err != nil {
		return err
	}
	p.TargetPortalGroupTag = n
	p.TargetAlias = ans["TargetAlias"]
	if p.MaxBurstLength < 512 || p.FirstBurstLength < 512 {
		return fmt.Errorf("login: burst lengths %d/%d below 512", p.MaxBurstLength, p.FirstBurstLength)
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

func (s *Session) nextITT() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.itt++
	if s.itt == noTag {
		s.itt = 1
	}
	return s.itt
}

// track updates ExpStatSN, ExpCmdSN and MaxCmdSN from a target PDU.
func (s *Session) track(p *pdu) {
	op := p.hdr.opcode()
	var status bool
	switch op {
	case opSCSIResp, opTaskMgmtRsp, opLogoutRsp, opTextRsp, opReject, opLoginRsp:
		status = true
	case opDataIn:
		status = p.hdr.flags()&0x01 != 0
	case opNOPIn:
		status = p.hdr.itt() != noTag
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if op == opLoginRsp {
		// Login responses set the sequence numbers outright: the
		// target picks its first StatSN.
		s.expStatSN, s.expCmdSN, s.maxCmdSN = p.hdr.statSN()+1, p.hdr.expCmdSN(), p.hdr.maxCmdSN()
		return
	}
	if status {
		if sn := p.hdr.statSN(); !serialLess(sn+1, s.expStatSN) {
			s.expStatSN = sn + 1
		}
	}
	exp, mx := p.hdr.expCmdSN(), p.hdr.maxCmdSN()
	// RFC 7143 section 4.2.2.1: a MaxCmdSN below ExpCmdSN-1 is invalid
	// and ignored; older values never replace newer ones.
	if serialLess(mx, exp-1) {
		return
	}
	if !serialLess(exp, s.expCmdSN) {
		s.expCmdSN = exp
	}
	if !serialLess(mx, s.maxCmdSN) {
		s.maxCmdSN = mx
	}
}

// writePDU writes one PDU under the write lock. Deadlines are the
// caller's (set on the connection).
func (s *Session) writePDU(p *pdu) error {
	b, err := p.marshal()
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err = s.conn.Write(b)
	return err
}

// writeCtx writes PDUs in order with ctx's deadline; a ctx that ends
// while the write blocks interrupts it.
func (s *Session) writeCtx(ctx context.Context, ps ...*pdu) error {
	bufs := make(net.Buffers, 0, len(ps))
	for _, p := range ps {
		b, err := p.marshal()
		if err != nil {
			return err
		}
		bufs = append(bufs, b)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	dl, _ := ctx.Deadline()
	s.conn.SetWriteDeadline(dl)
	stop := context.AfterFunc(ctx, func() { s.conn.SetWriteDeadline(time.Now()) })
	_, err := bufs.WriteTo(s.conn)
	if !stop() && err != nil {
		err = fmt.Errorf("%w (%v)", ctxErr(ctx), err)
	}
	return err
}

// readLoop reads every PDU of the full feature phase. It answers target
// pings itself, ends the session on an asynchronous logout request or
// drop, and hands everything else to the command in progress.
func (s *Session) readLoop() {
	maxData := s.params.MaxRecvDataSegmentLength
	for {
		p, err := readPDU(s.br, maxData)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("connection closed by the target: %w", err)
			}
			s.end(err)
			return
		}
		s.track(p)
		switch p.hdr.opcode() {
		case opNOPIn:
			if p.hdr.ttt() != noTag {
				// A ping from the target: answer with a NOP-Out that
				// echoes the TTT (RFC 7143 section 11.18).
				if err := s.answerPing(p); err != nil {
					s.end(fmt.Errorf("answer NOP-In: %w", err))
					return
				}
				s.stats.PingsAnswer.Add(1)
				continue
			}
			if p.hdr.itt() == noTag {
				continue // an unsolicited NOP-In that wants no answer
			}
		case opAsyncMsg:
			switch ev := p.hdr[36]; ev {
			case 1, 2, 3:
				// 1: the target asks us to log out; 2: it will drop
				// this connection; 3: it will drop the session. For a
				// one-connection test initiator all mean the end.
				s.end(fmt.Errorf("%w (AsyncEvent %d)", ErrTargetLogout, ev))
				return
			default:
				continue // SCSI async events and negotiation requests
			}
		}
		select {
		case s.rx <- p:
		case <-s.done:
			return
		}
	}
}

func (s *Session) answerPing(in *pdu) error {
	out := &pdu{}
	out.hdr.setOpcode(opNOPOut, true)
	out.hdr[1] = 0x80
	copy(out.hdr[8:16], in.hdr[8:16])
	out.hdr.put32(16, noTag)
	out.hdr.put32(20, in.hdr.ttt())
	s.mu.Lock()
	out.hdr.put32(24, s.cmdSN) // immediate: CmdSN is not advanced
	out.hdr.put32(28, s.expStatSN)
	s.mu.Unlock()
	if len(in.data) > 0 && len(in.data) <= s.params.TargetMaxRecvDataSegmentLength {
		out.data = in.data
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.writeCtx(ctx, out)
}

// next returns the next PDU for the command in progress.
func (s *Session) next(ctx context.Context) (*pdu, error) {
	select {
	case p := <-s.rx:
		return p, nil
	default:
	}
	select {
	case p := <-s.rx:
		return p, nil
	case <-s.done:
		// What arrived before the end is still to be read.
		select {
		case p := <-s.rx:
			return p, nil
		default:
		}
		return nil, s.Err()
	case <-ctx.Done():
		return nil, ctxErr(ctx)
	}
}

// drainStray drops PDUs left over from earlier exchanges.
func (s *Session) drainStray() {
	for {
		select {
		case <-s.rx:
		default:
			return
		}
	}
}

// begin takes the command lock and checks that the session can send.
func (s *Session) begin(ctx context.Context, op string) (func(), error) {
	s.opMu.Lock()
	if s.Err() != nil {
		s.opMu.Unlock()
		return nil, s.closedErr(op)
	}
	if ctx.Err() != nil {
		s.opMu.Unlock()
		return nil, &ConnError{Op: op, Err: ctxErr(ctx)}
	}
	s.drainStray()
	return s.opMu.Unlock, nil
}

// waitWindow waits until CmdSN is inside the target's window, pinging
// with an immediate NOP-Out to learn of a newer MaxCmdSN. Nothing of the
// command is sent yet, so failures here are "not sent".
func (s *Session) waitWindow(ctx context.Context, op string) error {
	for {
		s.mu.Lock()
		open := !serialLess(s.maxCmdSN, s.cmdSN)
		s.mu.Unlock()
		if open {
			return nil
		}
		if err := s.ping(ctx); err != nil {
			var ce *ConnError
			if errors.As(err, &ce) {
				ce.Op, ce.Sent = op+" (waiting for the CmdSN window)", false
				return ce
			}
			return &ConnError{Op: op, Err: err}
		}
		select {
		case <-ctx.Done():
			return &ConnError{Op: op, Err: ctxErr(ctx)}
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Ping sends an immediate NOP-Out and waits for the target's NOP-In.
func (s *Session) Ping(ctx context.Context) error {
	unlock, err := s.begin(ctx, "ping")
	if err != nil {
		return err
	}
	defer unlock()
	return s.ping(ctx)
}

func (s *Session) ping(ctx context.Context) error {
	itt := s.nextITT()
	p := &pdu{}
	p.hdr.setOpcode(opNOPOut, true)
	p.hdr[1] = 0x80
	p.hdr.put32(16, itt)
	p.hdr.put32(20, noTag)
	s.mu.Lock()
	p.hdr.put32(24, s.cmdSN)
	p.hdr.put32(28, s.expStatSN)
	s.mu.Unlock()
	if err := s.writeCtx(ctx, p); err != nil {
		s.end(err)
		return &ConnError{Op: "ping", Sent: true, Err: err}
	}
	for {
		r, err := s.next(ctx)
		if err != nil {
			s.end(err)
			return &ConnError{Op: "ping", Sent: true, Err: err}
		}
		if r.hdr.opcode() == opNOPIn && r.hdr.itt() == itt {
			return nil
		}
		if r.hdr.opcode() == opReject && rejectedITT(r) == itt {
			s.end(errors.New("ping rejected"))
			return &ConnError{Op: "ping", Sent: true, Err: rejectErr(r)}
		}
	}
}

// Logout closes the session with a Logout Request (reason 0, close the
// session) and waits for the response, then closes the connection.
func (s *Session) Logout(ctx context.Context) error {
	unlock, err := s.begin(ctx, "logout")
	if err != nil {
		return err
	}
	defer unlock()
	itt := s.nextITT()
	p := &pdu{}
	p.hdr.setOpcode(opLogoutReq, true)
	p.hdr[1] = 0x80 // reason 0: close the session
	p.hdr.put32(16, itt)
	p.hdr.put16(20, 0) // CID
	s.mu.Lock()
	p.hdr.put32(24, s.cmdSN)
	p.hdr.put32(28, s.expStatSN)
	s.mu.Unlock()
	if err := s.writeCtx(ctx, p); err != nil {
		s.end(err)
		return &ConnError{Op: "logout", Sent: true, Err: err}
	}
	for {
		r, err := s.next(ctx)
		if err != nil {
			s.end(err)
			return &ConnError{Op: "logout", Sent: true, Err: err}
		}
		if r.hdr.opcode() == opLogoutRsp && r.hdr.itt() == itt {
			s.end(ErrClosed)
			if resp := r.hdr[2]; resp != 0 {
				return fmt.Errorf("iscsi: logout response 0x%02x", resp)
			}
			return nil
		}
		if r.hdr.opcode() == opReject && rejectedITT(r) == itt {
			s.end(ErrClosed)
			return rejectErr(r)
		}
	}
}

// RejectError is a Reject PDU for one of our requests (RFC 7143 section
// 11.17).
type RejectError struct {
	Reason byte
	// Opcode of the rejected PDU.
	Opcode byte
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("iscsi: target rejected a PDU with opcode 0x%02x, reason 0x%02x", e.Opcode, e.Reason)
}

func rejectedITT(r *pdu) uint32 {
	if len(r.data) < bhsLen {
		return noTag
	}
	return binary.BigEndian.Uint32(r.data[16:20])
}

func rejectErr(r *pdu) error {
	e := &RejectError{Reason: r.hdr[2]}
	if len(r.data) > 0 {
		e.Opcode = r.data[0] & 0x3f
	}
	return e
}

// String describes the session for logs.
func (s *Session) String() string {
	return fmt.Sprintf("iscsi session %s -> %s at %s (tsih %d)", strings.TrimSpace(s.initiator), s.target, s.addr, s.params.TSIH)
}
