package initiator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

func TestBHSFields(t *testing.T) {
	var h bhs
	h.setOpcode(opSCSICmd, true)
	h[1] = 0xa1
	h.put64(8, 0x0001000000000000)
	h.put32(16, 0xdeadbeef)
	h.put32(20, 0x01020304)
	h.put32(24, 7)
	h.put32(28, 8)
	h.put32(32, 9)
	h.put32(36, 10)
	h.put32(40, 11)
	h.put32(44, 12)
	h.setDataSegmentLength(0x123456)
	if h.opcode() != opSCSICmd || !h.immediate() || h.flags() != 0xa1 || !h.final() {
		t.Fatalf("opcode/flags: %x %v %x", h.opcode(), h.immediate(), h.flags())
	}
	if h[0] != 0x41 {
		t.Fatalf("byte 0 = 0x%02x, want 0x41", h[0])
	}
	if h.dataSegmentLength() != 0x123456 || h[5] != 0x12 || h[6] != 0x34 || h[7] != 0x56 {
		t.Fatalf("DataSegmentLength %x, bytes % x", h.dataSegmentLength(), h[5:8])
	}
	if h.itt() != 0xdeadbeef || h.ttt() != 0x01020304 || h.statSN() != 7 || h.expCmdSN() != 8 ||
		h.maxCmdSN() != 9 || h.dataSN() != 10 || h.bufferOffset() != 11 || h.residual() != 12 {
		t.Fatalf("fields wrong: % x", h[:])
	}
	h.setImmediate(false)
	if h.immediate() || h.opcode() != opSCSICmd {
		t.Fatal("clearing I changed the opcode")
	}
}

func TestPDUMarshalRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 4, 5, 511, 8192} {
		p := &pdu{ahs: make([]byte, 8), data: bytes.Repeat([]byte{0xa5}, n)}
		p.hdr.setOpcode(opDataIn, false)
		p.hdr.put32(16, uint32(n))
		b, err := p.marshal()
		if err != nil {
			t.Fatal(err)
		}
		if len(b)%4 != 0 || len(b) != bhsLen+8+n+padLen(n) {
			t.Fatalf("n=%d: wire length %d", n, len(b))
		}
		q, err := readPDU(bytes.NewReader(b), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if q.hdr != p.hdr || !bytes.Equal(q.data, p.data) || len(q.ahs) != 8 {
			t.Fatalf("n=%d: round trip differs", n)
		}
	}
	if _, err := (&pdu{ahs: make([]byte, 3)}).marshal(); !errors.Is(err, errBadAHS) {
		t.Fatalf("odd AHS: %v", err)
	}
}

func TestReadPDUErrors(t *testing.T) {
	var h bhs
	h.setDataSegmentLength(1000)
	// Too long for the limit: refused before reading the data.
	if _, err := readPDU(bytes.NewReader(h[:]), 999); !errors.Is(err, errDataTooLong) {
		t.Fatalf("long segment: %v", err)
	}
	// Truncated data: unexpected EOF, not EOF.
	if _, err := readPDU(bytes.NewReader(append(h[:], 1, 2, 3)), 1<<20); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v", err)
	}
	// Nothing at all: EOF.
	if _, err := readPDU(bytes.NewReader(nil), 1<<20); err != io.EOF {
		t.Fatalf("empty: %v", err)
	}
	// Short header.
	if _, err := readPDU(bytes.NewReader(h[:20]), 1<<20); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short header: %v", err)
	}
}

// FuzzReadPDU: no input panics or allocates beyond the limit, and what
// parses re-marshals to the same header and data.
func FuzzReadPDU(f *testing.F) {
	var h bhs
	h.setOpcode(opSCSIResp, false)
	h.setDataSegmentLength(5)
	f.Add(append(h[:], 0, 3, 0x70, 0, 5, 0, 0, 0))
	f.Add(make([]byte, 48))
	f.Add([]byte{0x25, 0x81, 0, 0, 1, 0, 0, 4})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := readPDU(bytes.NewReader(b), 4096)
		if err != nil {
			return
		}
		if len(p.data) > 4096 {
			t.Fatalf("data of %d bytes past the limit", len(p.data))
		}
		w, err := p.marshal()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(w[:bhsLen], b[:bhsLen]) {
			t.Fatalf("header changed in round trip")
		}
		n := bhsLen + len(p.ahs)
		if !bytes.Equal(w[n:n+len(p.data)], b[n:n+len(p.data)]) {
			t.Fatalf("data changed in round trip")
		}
	})
}

func TestParseSense(t *testing.T) {
	fixed := func(key, asc, ascq byte) []byte {
		b := make([]byte, 18)
		b[0], b[2], b[7], b[12], b[13] = 0x70, key, 10, asc, ascq
		return b
	}
	cases := []struct {
		name           string
		b              []byte
		key, asc, ascq byte
		ok             bool
	}{
		{"fixed LBA out of range", fixed(0x5, 0x21, 0x00), 0x5, 0x21, 0x00, true},
		{"fixed with VALID bit, deferred", func() []byte { b := fixed(0x6, 0x29, 0x07); b[0] = 0xf1; return b }(), 0x6, 0x29, 0x07, true},
		{"fixed key has flag bits", func() []byte { b := fixed(0x2, 0x04, 0x0a); b[2] |= 0xe0; return b }(), 0x2, 0x04, 0x0a, true},
		{"fixed truncated after key", []byte{0x70, 0, 0x0b}, 0xb, 0, 0, true},
		{"fixed additional length cuts ASC", func() []byte { b := fixed(0x3, 0x11, 0x01); b[7] = 4; return b }(), 0x3, 0, 0, true},
		{"descriptor", []byte{0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0}, 0x5, 0x24, 0x00, true},
		{"descriptor deferred", []byte{0x73, 0x0b, 0x47, 0x03}, 0xb, 0x47, 0x03, true},
		{"descriptor short", []byte{0x72, 0x05, 0x24}, 0, 0, 0, false},
		{"empty", nil, 0, 0, 0, false},
		{"unknown response code", []byte{0x7f, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0}, 0, 0, 0, false},
	}
	for _, c := range cases {
		key, asc, ascq, ok := ParseSense(c.b)
		if ok != c.ok || key != c.key || asc != c.asc || ascq != c.ascq {
			t.Errorf("%s: got key 0x%x asc 0x%02x ascq 0x%02x ok %v, want 0x%x 0x%02x 0x%02x %v",
				c.name, key, asc, ascq, ok, c.key, c.asc, c.ascq, c.ok)
		}
	}
}

func FuzzParseSense(f *testing.F) {
	f.Add([]byte{0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0})
	f.Add([]byte{0x72, 5, 0x21, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		key, _, _, ok := ParseSense(b)
		if key > 0xf {
			t.Fatalf("sense key 0x%x", key)
		}
		if ok && len(b) > 0 && b[0]&0x7f != 0x70 && b[0]&0x7f != 0x71 && b[0]&0x7f != 0x72 && b[0]&0x7f != 0x73 {
			t.Fatalf("accepted response code 0x%02x", b[0])
		}
	})
}

func TestTextCodec(t *testing.T) {
	in := []kv{{"InitiatorName", "iqn.x"}, {"MaxBurstLength", "512"}, {"Empty", ""}, {"Eq", "a=b"}}
	out, err := parseText(encodeText(in))
	if err != nil || fmt.Sprint(out) != fmt.Sprint(in) {
		t.Fatalf("round trip: %v %v", out, err)
	}
	if _, err := parseText([]byte("a=b")); err == nil {
		t.Fatal("text without NUL accepted")
	}
	if _, err := parseText([]byte("novalue\x00")); err == nil {
		t.Fatal("pair without = accepted")
	}
	if out, err := parseText([]byte("a=b\x00\x00\x00")); err != nil || len(out) != 1 {
		t.Fatalf("padding NULs: %v %v", out, err)
	}
}

func TestLUNEncoding(t *testing.T) {
	for _, c := range []struct {
		lun  uint64
		wire uint64
	}{{0, 0}, {1, 0x0001 << 48}, {255, 0x00ff << 48}, {256, 0x4100 << 48}, {16383, 0x7fff << 48}} {
		w, err := encodeLUN(c.lun)
		if err != nil || w != c.wire {
			t.Errorf("encodeLUN(%d) = %x %v, want %x", c.lun, w, err, c.wire)
		}
		if l, ok := decodeLUN(w); !ok || l != c.lun {
			t.Errorf("decodeLUN(%x) = %d %v", w, l, ok)
		}
	}
	if _, err := encodeLUN(16384); err == nil {
		t.Error("LUN 16384 encoded")
	}
	if _, ok := decodeLUN(0x0001_0000_0000_0001); ok {
		t.Error("multi-level LUN decoded")
	}
}

func TestSerialLess(t *testing.T) {
	if !serialLess(1, 2) || serialLess(2, 1) || serialLess(5, 5) || !serialLess(0xffffffff, 0) || serialLess(0, 0xffffffff) {
		t.Fatal("serial arithmetic wrong")
	}
}

func TestIndeterminate(t *testing.T) {
	cc := func(key byte) error { return &SCSIError{Op: 0x8a, Status: StatusCheckCondition, SenseKey: key} }
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"NOT READY", cc(SenseNotReady), false},
		{"ILLEGAL REQUEST", cc(SenseIllegalRequest), false},
		{"DATA PROTECT", cc(SenseDataProtect), false},
		{"DATA PROTECT, WRITE PROTECTED", &SCSIError{Status: StatusCheckCondition, SenseKey: SenseDataProtect, ASC: 0x27}, false},
		{"SPACE ALLOCATION FAILED", &SCSIError{Status: StatusCheckCondition, SenseKey: SenseDataProtect, ASC: 0x27, ASCQ: 0x07}, true},
		{"MISCOMPARE", cc(SenseMiscompare), false},
		{"ABORTED COMMAND", cc(SenseAbortedCommand), true},
		{"UNIT ATTENTION", cc(SenseUnitAttention), true},
		{"MEDIUM ERROR", cc(SenseMediumError), true},
		{"HARDWARE ERROR", cc(SenseHardwareError), true},
		{"NO SENSE", cc(SenseNoSense), true},
		{"BUSY", &SCSIError{Status: StatusBusy}, false},
		{"RESERVATION CONFLICT", &SCSIError{Status: StatusReservationConflict}, false},
		{"TASK SET FULL", &SCSIError{Status: StatusTaskSetFull}, false},
		{"ACA ACTIVE", &SCSIError{Status: StatusACAActive}, false},
		{"TASK ABORTED", &SCSIError{Status: StatusTaskAborted}, true},
		{"conn lost after send", &ConnError{Op: "x", Sent: true, Err: io.EOF}, true},
		{"timeout after send", &ConnError{Op: "x", Sent: true, Err: context.DeadlineExceeded}, true},
		{"closed during command", &ConnError{Op: "x", Sent: true, Err: ErrClosed}, true},
		{"dial failed", &ConnError{Op: "dial", Err: errors.New("refused")}, false},
		{"session already closed", &ConnError{Op: "x", Err: ErrClosed}, false},
		{"wrapped closed", fmt.Errorf("op: %w", ErrClosed), false},
		{"not sent, prep failed with sent read", fmt.Errorf("%w: %w", ErrNotSent, &ConnError{Sent: true, Err: io.EOF}), false},
		{"login rejected", &LoginError{Class: 2, Detail: 3}, false},
		{"target failure", &ResponseError{Op: 0x8a, Response: 1}, true},
		{"residual", &ResidualError{Op: 0x8a, Underflow: true, Residual: 512}, true},
		{"unknown", errors.New("something"), true},
		{"wrapped scsi", fmt.Errorf("write: %w", cc(SenseIllegalRequest)), false},
	}
	for _, c := range cases {
		if got := Indeterminate(c.err); got != c.want {
			t.Errorf("%s: Indeterminate(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
		if c.err != nil && NotExecuted(c.err) == c.want {
			t.Errorf("%s: NotExecuted disagrees", c.name)
		}
	}
}

// fakeTarget accepts one connection and runs handle on it (tests of the
// initiator's behaviour that a real target does not provoke).
func fakeTarget(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		handle(c)
	}()
	return l.Addr().String()
}

// fakeLogin answers login requests until full feature phase, with the
// given status on the first response (0 = success).
func fakeLogin(c net.Conn, class, detail byte) bool {
	statSN := uint32(100)
	for {
		req, err := readPDU(c, 1<<20)
		if err != nil || req.hdr.opcode() != opLoginReq {
			return false
		}
		rsp := &pdu{}
		rsp.hdr.setOpcode(opLoginRsp, false)
		csg := int(req.hdr[1]>>2) & 3
		nsg := int(req.hdr[1]) & 3
		copy(rsp.hdr[8:14], req.hdr[8:14])
		rsp.hdr.put32(16, req.hdr.itt())
		rsp.hdr.put32(24, statSN)
		statSN++
		rsp.hdr.put32(28, req.hdr.u32(24))
		rsp.hdr.put32(32, req.hdr.u32(24)+16)
		if class != 0 {
			rsp.hdr[36], rsp.hdr[37] = class, detail
			b, _ := rsp.marshal()
			c.Write(b)
			return false
		}
		rsp.hdr[1] = 0x80 | byte(csg)<<2 | byte(nsg)
		var kvs []kv
		if csg == 0 {
			kvs = []kv{{"AuthMethod", "None"}, {"TargetPortalGroupTag", "1"}}
		} else {
			rsp.hdr.put16(14, 7) // TSIH
			kvs = []kv{{"HeaderDigest", "None"}, {"DataDigest", "None"}, {"InitialR2T", "No"}, {"ImmediateData", "Yes"},
				{"MaxBurstLength", "65536"}, {"FirstBurstLength", "4096"}, {"MaxRecvDataSegmentLength", "2048"}}
		}
		rsp.data = encodeText(kvs)
		b, _ := rsp.marshal()
		if _, err := c.Write(b); err != nil {
			return false
		}
		if nsg == 3 {
			return true
		}
	}
}

func TestLoginNegotiationWithFake(t *testing.T) {
	got := make(chan *pdu, 1)
	addr := fakeTarget(t, func(c net.Conn) {
		if !fakeLogin(c, 0, 0) {
			return
		}
		// Take the write command and its unsolicited data, then hang up.
		p, err := readPDU(c, 1<<20)
		if err == nil {
			got <- p
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Dial(ctx, addr, "iqn.t", "iqn.i", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := s.Params()
	if p.InitialR2T || !p.ImmediateData || p.MaxBurstLength != 65536 || p.FirstBurstLength != 4096 ||
		p.TargetMaxRecvDataSegmentLength != 2048 || p.TSIH != 7 || p.TargetPortalGroupTag != 1 {
		t.Fatalf("params %+v", p)
	}
	s.SetBlockSize(0, 512)
	err = s.WriteBlocks(ctx, 0, 0, make([]byte, 8192), false)
	if err == nil || !Indeterminate(err) {
		t.Fatalf("write with the connection dropped after the command: %v (indeterminate %v), want an indeterminate error", err, Indeterminate(err))
	}
	cmd := <-got
	// Immediate data is bounded by the target's MaxRecvDataSegmentLength,
	// and unsolicited Data-Out follows (F clear) up to FirstBurstLength.
	if cmd.hdr.opcode() != opSCSICmd || len(cmd.data) != 2048 || cmd.hdr.final() || cmd.hdr[1]&0x20 == 0 || cmd.hdr.u32(20) != 8192 {
		t.Fatalf("command PDU: %v flags 0x%02x edtl %d", cmd, cmd.hdr[1], cmd.hdr.u32(20))
	}
	// The session is dead now: the next command is not sent.
	if _, err := s.ReadBlocks(ctx, 0, 0, 1); err == nil || Indeterminate(err) {
		t.Fatalf("read on a dead session: %v, want a not-sent error", err)
	}
}

func TestLoginRejectedWithFake(t *testing.T) {
	addr := fakeTarget(t, func(c net.Conn) { fakeLogin(c, 2, 3) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Dial(ctx, addr, "iqn.t", "iqn.i", Options{})
	var le *LoginError
	if !errors.As(err, &le) || le.Class != 2 || le.Detail != 3 || Indeterminate(err) {
		t.Fatalf("got %v, want a LoginError 0x0203", err)
	}
}

func TestTimeoutAfterSendIsIndeterminate(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	addr := fakeTarget(t, func(c net.Conn) {
		if fakeLogin(c, 0, 0) {
			<-hold // swallow everything, answer nothing
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Dial(ctx, addr, "iqn.t", "iqn.i", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetBlockSize(0, 512)
	opCtx, opCancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer opCancel()
	err = s.WriteBlocks(opCtx, 0, 8, make([]byte, 512), true)
	var ce *ConnError
	if !errors.As(err, &ce) || !ce.Sent || !Indeterminate(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want an indeterminate ConnError with DeadlineExceeded", err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("session still alive after a command timed out")
	}
	// A ctx that has ended before the command: not sent.
	s2, err := Dial(ctx, fakeTarget(t, func(c net.Conn) {
		if fakeLogin(c, 0, 0) {
			<-hold
		}
	}), "iqn.t", "iqn.i", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	s2.SetBlockSize(0, 512)
	done, cancelDone := context.WithCancel(ctx)
	cancelDone()
	if err := s2.WriteBlocks(done, 0, 0, make([]byte, 512), false); err == nil || Indeterminate(err) {
		t.Fatalf("write with a cancelled ctx: %v, want not sent", err)
	}
}
