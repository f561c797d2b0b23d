package target

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// An end-to-end test of the wire protocol: a real Server on loopback and a
// tiny initiator written here with the package's PDU type. Every wait is
// bounded by a deadline on the connection.

const (
	e2eTarget    = "iqn.2024-01.org.metrolun:e2e"
	e2eInitiator = "iqn.2024-01.org.example:host"
	e2eTimeout   = 15 * time.Second
)

type e2eServer struct {
	srv  *Server
	addr string
	vol  *memVolume
	done chan error
}

// startServer runs a Server with one target (LUN 0 over a 1 MiB memVolume).
func startServer(t *testing.T, lim Limits, tc TargetConfig, cfg Config) *e2eServer {
	t.Helper()
	vol := newMemVolume(1 << 20)
	cfg.Limits = lim
	srv := NewServer(cfg)
	if tc.Name == "" {
		tc.Name = e2eTarget
	}
	tc.LUNs = []LUNConfig{{ID: 0, Volume: vol}}
	if err := srv.AddTarget(tc); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &e2eServer{srv: srv, addr: l.Addr().String(), vol: vol, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		res := make(chan error, 1)
		go func() { res <- srv.Shutdown(ctx) }()
		select {
		case <-res:
		case <-time.After(10 * time.Second):
			t.Error("Server.Shutdown did not return within 10s")
		}
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Shutdown")
		}
	})
	return s
}

type initiator struct {
	t      *testing.T
	nc     net.Conn
	rd     *pduReader
	hd, dd bool

	isid      [6]byte
	tsih      uint16
	cmdSN     uint32
	itt       uint32
	expStatSN uint32
	statKnown bool
	expCmdSN  uint32
	maxCmdSN  uint32
	haveWin   bool

	myMRDSL     int // our MaxRecvDataSegmentLength
	targetMRDSL int
	keys        map[string]string // the target's login answers
	statusPDUs  int
}

func dial(t *testing.T, addr string) *initiator {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(e2eTimeout))
	t.Cleanup(func() { nc.Close() })
	return &initiator{
		t: t, nc: nc,
		rd:      &pduReader{r: nc, maxData: 1 << 24},
		isid:    [6]byte{0x80, 0x12, 0x34, 0x56, 0, 1},
		cmdSN:   0x100,
		itt:     0x1000,
		myMRDSL: 8192,
		keys:    map[string]string{},
	}
}

func (in *initiator) send(p *PDU) {
	in.t.Helper()
	iov, _ := p.appendWire(nil, in.hd, in.dd, nil)
	bufs := net.Buffers(iov)
	if _, err := bufs.WriteTo(in.nc); err != nil {
		in.t.Fatalf("send opcode 0x%02x: %v", p.Opcode(), err)
	}
}

// statusBearing: the PDUs that carry StatSN and advance it (RFC 7143
// 4.2.2.2 and the PDU sections).
func statusBearing(p *PDU) bool {
	switch p.Opcode() {
	case opSCSIResp, opTaskMgmtRsp, opLoginRsp, opTextRsp, opLogoutRsp, opReject:
		return true
	case opNOPIn:
		return p.ITT() != 0xffffffff
	case opDataIn:
		return p.Flags()&0x01 != 0
	}
	return false
}

// recv reads one PDU and checks the sequence numbers it carries.
func (in *initiator) recv() *PDU {
	in.t.Helper()
	p, err := in.rd.ReadPDU()
	if err != nil {
		in.t.Fatalf("recv: %v", err)
	}
	in.checkSN(p)
	return p
}

func (in *initiator) checkSN(p *PDU) {
	in.t.Helper()
	statSN := p.u32(24)
	if statusBearing(p) {
		if in.statKnown && statSN != in.expStatSN {
			in.t.Fatalf("opcode 0x%02x StatSN %d, want %d (one more than the last)", p.Opcode(), statSN, in.expStatSN)
		}
		in.expStatSN, in.statKnown = statSN+1, true
		in.statusPDUs++
	} else if p.Opcode() == opR2T && in.statKnown && statSN != in.expStatSN {
		// R2T carries the next StatSN without taking it (RFC 7143 11.8).
		in.t.Fatalf("R2T StatSN %d, want the next StatSN %d", statSN, in.expStatSN)
	}
	if p.Opcode() == opDataIn && p.Flags()&0x01 == 0 {
		return // ExpCmdSN/MaxCmdSN are only meaningful with status here too, but are filled
	}
	exp, max := p.u32(28), p.u32(32)
	if in.haveWin {
		if !serialGE(exp, in.expCmdSN) {
			in.t.Fatalf("ExpCmdSN went back from %d to %d", in.expCmdSN, exp)
		}
		if !serialGE(max, in.maxCmdSN) {
			in.t.Fatalf("MaxCmdSN went back from %d to %d", in.maxCmdSN, max)
		}
	}
	if !serialGE(max+1, exp) {
		in.t.Fatalf("MaxCmdSN %d < ExpCmdSN-1 (%d)", max, exp)
	}
	in.expCmdSN, in.maxCmdSN, in.haveWin = exp, max, true
}

type loginOpts struct {
	sessionType string // "" Normal
	chapUser    string
	chapSecret  string
	mutual      *CHAPConfig // the target's mutual credentials we expect
	headerCRC   bool
	dataCRC     bool
	op          []KV // extra operational keys
	startOp     bool // skip the security stage
}

func (in *initiator) loginPDU(csg, nsg int, transit, cont bool, kvs []KV) *PDU {
	p := &PDU{}
	p.BHS[0] = 0x40 | opLoginReq
	f := byte(csg)<<2 | byte(nsg)
	if transit {
		f |= 0x80
	}
	if cont {
		f |= 0x40
	}
	p.BHS[1] = f
	copy(p.BHS[8:14], in.isid[:])
	p.put16(14, in.tsih)
	p.put32(16, in.itt)
	p.put16(20, 1) // CID
	p.put32(24, in.cmdSN)
	p.put32(28, in.expStatSN)
	p.Data = EncodeText(kvs)
	return p
}

// loginStep sends one login request and returns the response and its keys.
func (in *initiator) loginStep(csg, nsg int, transit bool, kvs []KV) (*PDU, map[string]string) {
	in.t.Helper()
	in.send(in.loginPDU(csg, nsg, transit, false, kvs))
	r := in.recv()
	if r.Opcode() != opLoginRsp {
		in.t.Fatalf("got opcode 0x%02x during login", r.Opcode())
	}
	if r.ITT() != in.itt {
		in.t.Fatalf("login response ITT %x", r.ITT())
	}
	got, err := ParseText(r.Data)
	if err != nil {
		in.t.Fatalf("login response text: %v", err)
	}
	m := map[string]string{}
	for _, kv := range got {
		m[kv.Key] = kv.Value
		in.keys[kv.Key] = kv.Value
	}
	return r, m
}

func loginStatusOf(r *PDU) uint16 { return uint16(r.BHS[36])<<8 | uint16(r.BHS[37]) }

// login runs the whole login phase; it fails the test unless the target
// grants full feature phase.
func (in *initiator) login(o loginOpts) {
	in.t.Helper()
	if st := in.tryLogin(o); st != 0 {
		in.t.Fatalf("login failed with status 0x%04x", st)
	}
}

// tryLogin returns the status of the login response that ended it (0 on
// success).
func (in *initiator) tryLogin(o loginOpts) uint16 {
	in.t.Helper()
	first := []KV{{"InitiatorName", e2eInitiator}}
	if o.sessionType == "Discovery" {
		first = append(first, KV{"SessionType", "Discovery"})
	} else {
		first = append(first, KV{"SessionType", "Normal"}, KV{"TargetName", e2eTarget})
	}
	if !o.startOp {
		auth := "None"
		if o.chapUser != "" {
			auth = "CHAP"
		}
		r, m := in.loginStep(stageSecurity, stageOperational, auth == "None", append(first, KV{"AuthMethod", auth}))
		if st := loginStatusOf(r); st != 0 {
			return st
		}
		if m["AuthMethod"] != auth {
			in.t.Fatalf("AuthMethod answered %q, want %s", m["AuthMethod"], auth)
		}
		if o.sessionType != "Discovery" {
			if _, ok := m["TargetPortalGroupTag"]; !ok {
				in.t.Fatal("no TargetPortalGroupTag in the first login response")
			}
		}
		if auth == "CHAP" {
			r, m = in.loginStep(stageSecurity, stageOperational, false, []KV{{"CHAP_A", "5"}})
			if st := loginStatusOf(r); st != 0 {
				return st
			}
			id, err := strconv.Atoi(m["CHAP_I"])
			if err != nil || m["CHAP_A"] != "5" {
				in.t.Fatalf("CHAP challenge %v", m)
			}
			chal, err := decodeCHAPBinary(m["CHAP_C"])
			if err != nil {
				in.t.Fatalf("CHAP_C %q: %v", m["CHAP_C"], err)
			}
			kvs := []KV{{"CHAP_N", o.chapUser}, {"CHAP_R", "0x" + hex.EncodeToString(chapMD5Resp(byte(id), o.chapSecret, chal))}}
			myChal := []byte("0123456789abcdef-initiator")
			if o.mutual != nil {
				kvs = append(kvs, KV{"CHAP_I", "42"}, KV{"CHAP_C", "0x" + hex.EncodeToString(myChal)})
			}
			r, m = in.loginStep(stageSecurity, stageOperational, true, kvs)
			if st := loginStatusOf(r); st != 0 {
				return st
			}
			if o.mutual != nil {
				want := chapMD5Resp(42, o.mutual.MutualSecret, myChal)
				got, err := decodeCHAPBinary(m["CHAP_R"])
				if m["CHAP_N"] != o.mutual.MutualUsername || err != nil || !bytes.Equal(got, want) {
					in.t.Fatalf("target failed mutual CHAP: N=%q R=%q", m["CHAP_N"], m["CHAP_R"])
				}
			}
		}
		if r.Flags()&0x80 == 0 || r.Flags()&3 != stageOperational {
			in.t.Fatalf("security stage not left: flags 0x%02x", r.Flags())
		}
		first = nil
	}
	hd, dd := "None", "None"
	if o.headerCRC {
		hd = "CRC32C,None"
	}
	if o.dataCRC {
		dd = "CRC32C,None"
	}
	kvs := append(first, KV{"HeaderDigest", hd}, KV{"DataDigest", dd},
		KV{"MaxRecvDataSegmentLength", strconv.Itoa(in.myMRDSL)}, KV{"ErrorRecoveryLevel", "0"})
	kvs = append(kvs, o.op...)
	r, m := in.loginStep(stageOperational, stageFullFeature, true, kvs)
	if st := loginStatusOf(r); st != 0 {
		return st
	}
	if r.Flags()&0x80 == 0 || r.Flags()&3 != stageFullFeature {
		in.t.Fatalf("final login response flags 0x%02x", r.Flags())
	}
	in.tsih = r.u16(14)
	if in.tsih == 0 {
		in.t.Fatal("final login response has TSIH 0")
	}
	if o.startOp && o.sessionType != "Discovery" {
		if _, ok := m["TargetPortalGroupTag"]; !ok {
			in.t.Fatal("no TargetPortalGroupTag in the login response to the first request naming the target")
		}
	}
	in.hd = in.keys["HeaderDigest"] == "CRC32C"
	in.dd = in.keys["DataDigest"] == "CRC32C"
	if o.headerCRC != in.hd || o.dataCRC != in.dd {
		in.t.Fatalf("digests negotiated %v/%v, asked %v/%v", in.hd, in.dd, o.headerCRC, o.dataCRC)
	}
	in.rd.headerCRC, in.rd.dataCRC = in.hd, in.dd
	in.rd.maxData = in.myMRDSL
	v, err := strconv.Atoi(in.keys["MaxRecvDataSegmentLength"])
	if err != nil {
		in.t.Fatalf("target did not declare MaxRecvDataSegmentLength: %v", in.keys)
	}
	in.targetMRDSL = v
	// RFC 7143: the first command after login carries the login's CmdSN.
	if exp := r.u32(28); exp != in.cmdSN {
		in.t.Fatalf("ExpCmdSN %d after login, want %d", exp, in.cmdSN)
	}
	return 0
}

func (in *initiator) nextITT() uint32 { in.itt++; return in.itt }

// scsiCmd builds a SCSI Command PDU (RFC 7143 11.3); it takes a CmdSN.
func (in *initiator) scsiCmd(cdb []byte, edtl int, read, write, final bool) *PDU {
	p := &PDU{}
	p.BHS[0] = opSCSICmd
	f := byte(0x01) // SIMPLE
	if final {
		f |= 0x80
	}
	if read {
		f |= 0x40
	}
	if write {
		f |= 0x20
	}
	p.BHS[1] = f
	p.put32(16, in.nextITT())
	p.put32(20, uint32(edtl))
	p.put32(24, in.cmdSN)
	in.cmdSN++
	p.put32(28, in.expStatSN)
	copy(p.BHS[32:], cdb)
	return p
}

func (in *initiator) dataOut(itt, ttt, dataSN uint32, off int, data []byte, final bool) *PDU {
	p := &PDU{Data: data}
	p.BHS[0] = opDataOut
	if final {
		p.BHS[1] = 0x80
	}
	p.put32(16, itt)
	p.put32(20, ttt)
	p.put32(28, in.expStatSN)
	p.put32(36, dataSN)
	p.put32(40, uint32(off))
	return p
}

// sendData sends data[off:off+n] as Data-Out PDUs of at most chunk bytes.
func (in *initiator) sendData(itt, ttt uint32, data []byte, off, n, chunk int) {
	var sn uint32
	for o := off; o < off+n; o += chunk {
		m := min(chunk, off+n-o)
		in.send(in.dataOut(itt, ttt, sn, o, data[o:o+m], o+m == off+n))
		sn++
	}
}

// expectStatus reads until the SCSI Response for itt and returns it.
func (in *initiator) expectResponse(itt uint32) *PDU {
	in.t.Helper()
	r := in.recv()
	if r.Opcode() != opSCSIResp || r.ITT() != itt {
		in.t.Fatalf("got opcode 0x%02x ITT %x, want SCSI Response for %x", r.Opcode(), r.ITT(), itt)
	}
	return r
}

// write sends a WRITE(10) with unsolicited data up to FirstBurstLength
// (when InitialR2T=No) and the rest on R2T; it returns the R2Ts seen.
func (in *initiator) write(lba uint32, data []byte, firstBurst, maxBurst int, initialR2T bool) []*PDU {
	in.t.Helper()
	cmd := in.scsiCmd(cdbRW(0x2a, uint64(lba), uint32(len(data)/512)), len(data), false, true, initialR2T)
	itt := cmd.ITT()
	in.send(cmd)
	chunk := min(in.targetMRDSL, 4096)
	unsol := 0
	if !initialR2T {
		unsol = min(firstBurst, len(data))
		in.sendData(itt, 0xffffffff, data, 0, unsol, chunk)
	}
	var r2ts []*PDU
	next := unsol
	for {
		p := in.recv()
		switch p.Opcode() {
		case opR2T:
			if p.ITT() != itt {
				in.t.Fatalf("R2T for ITT %x", p.ITT())
			}
			off, n := int(p.u32(40)), int(p.u32(44))
			if sn := p.u32(36); int(sn) != len(r2ts) {
				in.t.Fatalf("R2TSN %d, want %d", sn, len(r2ts))
			}
			if off != next {
				in.t.Fatalf("R2T offset %d, want %d (in order, after the unsolicited data)", off, next)
			}
			if n == 0 || n > maxBurst || off+n > len(data) {
				in.t.Fatalf("R2T desired length %d at %d (MaxBurstLength %d, EDTL %d)", n, off, maxBurst, len(data))
			}
			if p.TTT() == 0xffffffff {
				in.t.Fatal("R2T with reserved TTT")
			}
			r2ts = append(r2ts, p)
			next = off + n
			in.sendData(itt, p.TTT(), data, off, n, chunk)
		case opSCSIResp:
			if p.ITT() != itt {
				in.t.Fatalf("response for ITT %x", p.ITT())
			}
			if p.BHS[2] != 0 || p.BHS[3] != statusGood || p.Flags()&0x06 != 0 {
				in.t.Fatalf("WRITE response %x status %x flags %x, data % x", p.BHS[2], p.BHS[3], p.Flags(), p.Data)
			}
			if next != len(data) {
				in.t.Fatalf("status after %d of %d bytes", next, len(data))
			}
			return r2ts
		default:
			in.t.Fatalf("unexpected opcode 0x%02x during WRITE", p.Opcode())
		}
	}
}

// read sends a READ(10) and collects Data-In; it checks DataSN, offsets,
// PDU sizes and the F bit at burst boundaries.
func (in *initiator) read(lba uint32, blocks int, maxBurst int) ([]byte, int) {
	in.t.Helper()
	edtl := blocks * 512
	cmd := in.scsiCmd(cdbRW(0x28, uint64(lba), uint32(blocks)), edtl, true, false, true)
	itt := cmd.ITT()
	in.send(cmd)
	var data []byte
	pdus := 0
	inBurst := 0
	for {
		p := in.recv()
		switch p.Opcode() {
		case opDataIn:
			if p.ITT() != itt {
				in.t.Fatalf("Data-In for ITT %x", p.ITT())
			}
			if int(p.u32(36)) != pdus {
				in.t.Fatalf("DataSN %d, want %d", p.u32(36), pdus)
			}
			if int(p.u32(40)) != len(data) {
				in.t.Fatalf("buffer offset %d, want %d", p.u32(40), len(data))
			}
			if len(p.Data) > in.myMRDSL {
				in.t.Fatalf("Data-In of %d bytes > our MaxRecvDataSegmentLength %d", len(p.Data), in.myMRDSL)
			}
			data = append(data, p.Data...)
			pdus++
			inBurst += len(p.Data)
			if inBurst > maxBurst {
				in.t.Fatalf("Data-In sequence of %d bytes > MaxBurstLength %d", inBurst, maxBurst)
			}
			final := p.Flags()&0x80 != 0
			if final != (inBurst == maxBurst || len(data) == edtl) {
				in.t.Fatalf("F bit %v after %d bytes in the sequence", final, inBurst)
			}
			if final {
				inBurst = 0
			}
			if p.Flags()&0x01 != 0 {
				if !final || p.BHS[3] != statusGood || p.Flags()&0x06 != 0 {
					in.t.Fatalf("Data-In with status: flags %x status %x", p.Flags(), p.BHS[3])
				}
				return data, pdus
			}
		case opSCSIResp:
			if p.ITT() != itt || p.BHS[3] != statusGood {
				in.t.Fatalf("READ response ITT %x status %x", p.ITT(), p.BHS[3])
			}
			return data, pdus
		default:
			in.t.Fatalf("unexpected opcode 0x%02x during READ", p.Opcode())
		}
	}
}

func (in *initiator) nopPing(payload []byte) {
	in.t.Helper()
	p := &PDU{Data: payload}
	p.BHS[0] = 0x40 | opNOPOut
	p.BHS[1] = 0x80
	itt := in.nextITT()
	p.put32(16, itt)
	p.put32(20, 0xffffffff)
	p.put32(24, in.cmdSN) // immediate: not advanced
	p.put32(28, in.expStatSN)
	in.send(p)
	r := in.recv()
	if r.Opcode() != opNOPIn || r.ITT() != itt || r.TTT() != 0xffffffff || !bytes.Equal(r.Data, payload) {
		in.t.Fatalf("NOP-In: opcode 0x%02x ITT %x TTT %x data %q", r.Opcode(), r.ITT(), r.TTT(), r.Data)
	}
}

func (in *initiator) tmf(fn byte, rtt, refCmdSN uint32) byte {
	in.t.Helper()
	p := &PDU{}
	p.BHS[0] = 0x40 | opTaskMgmt
	p.BHS[1] = 0x80 | fn
	itt := in.nextITT()
	p.put32(16, itt)
	p.put32(20, rtt)
	p.put32(24, in.cmdSN)
	p.put32(28, in.expStatSN)
	p.put32(32, refCmdSN)
	in.send(p)
	r := in.recv()
	if r.Opcode() != opTaskMgmtRsp || r.ITT() != itt {
		in.t.Fatalf("TMF answer opcode 0x%02x ITT %x", r.Opcode(), r.ITT())
	}
	return r.BHS[2]
}

func (in *initiator) logout() {
	in.t.Helper()
	p := &PDU{}
	p.BHS[0] = 0x40 | opLogoutReq
	p.BHS[1] = 0x80 // close the session
	itt := in.nextITT()
	p.put32(16, itt)
	p.put16(20, 1)
	p.put32(24, in.cmdSN)
	p.put32(28, in.expStatSN)
	in.send(p)
	r := in.recv()
	if r.Opcode() != opLogoutRsp || r.ITT() != itt || r.BHS[2] != 0 {
		in.t.Fatalf("logout answer opcode 0x%02x ITT %x response %d", r.Opcode(), r.ITT(), r.BHS[2])
	}
	// The target closes the connection.
	if p, err := in.rd.ReadPDU(); err == nil {
		in.t.Fatalf("PDU 0x%02x after logout", p.Opcode())
	} else if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "reset") {
		in.t.Fatalf("after logout: %v", err)
	}
}

func TestE2EWriteR2TReadBack(t *testing.T) {
	for _, hd := range []bool{false, true} {
		t.Run(fmt.Sprintf("headerdigest=%v", hd), func(t *testing.T) {
			s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
			in := dial(t, s.addr)
			in.myMRDSL = 4096
			const firstBurst, maxBurst = 8192, 16384
			in.login(loginOpts{headerCRC: hd, op: []KV{
				{"ImmediateData", "No"}, {"InitialR2T", "No"},
				{"FirstBurstLength", strconv.Itoa(firstBurst)}, {"MaxBurstLength", strconv.Itoa(maxBurst)},
			}})
			if in.keys["ImmediateData"] != "No" || in.keys["InitialR2T"] != "No" ||
				in.keys["FirstBurstLength"] != strconv.Itoa(firstBurst) || in.keys["MaxBurstLength"] != strconv.Itoa(maxBurst) {
				t.Fatalf("negotiated %v", in.keys)
			}
			exp0, max0 := in.expCmdSN, in.maxCmdSN
			statusBefore := in.statusPDUs

			data := pattern(64*1024, 0x3c)
			r2ts := in.write(16, data, firstBurst, maxBurst, false)
			// 8 KiB unsolicited, 56 KiB in bursts of at most 16 KiB.
			if len(r2ts) != 4 {
				t.Fatalf("%d R2Ts, want 4", len(r2ts))
			}
			if !bytes.Equal(s.vol.bytes(16*512, int64(len(data))), data) {
				t.Fatal("volume content differs from the WRITE")
			}
			if in.expCmdSN != exp0+1 {
				t.Fatalf("ExpCmdSN %d after one command, want %d", in.expCmdSN, exp0+1)
			}

			got, pdus := in.read(16, 128, maxBurst)
			if !bytes.Equal(got, data) {
				t.Fatal("READ returned different data")
			}
			if pdus != len(data)/in.myMRDSL {
				t.Fatalf("%d Data-In PDUs, want %d", pdus, len(data)/in.myMRDSL)
			}
			if in.expCmdSN != exp0+2 {
				t.Fatalf("ExpCmdSN %d after two commands, want %d", in.expCmdSN, exp0+2)
			}

			in.nopPing([]byte("ping"))
			in.nopPing(nil)
			// ABORT TASK for a task that does not exist, referring to a
			// CmdSN already done: "Task does not exist" (RFC 7143 11.5.1).
			if resp := in.tmf(tmfAbortTask, 0xdeadbeef, in.cmdSN-1); resp != tmfNoTask {
				t.Fatalf("ABORT TASK of an unknown task: response %d, want %d", resp, tmfNoTask)
			}
			// A new command still works after all that, with the window
			// moving on.
			in.write(300, pattern(512, 1), firstBurst, maxBurst, false)
			if in.expCmdSN != exp0+3 {
				t.Fatalf("ExpCmdSN %d, want %d", in.expCmdSN, exp0+3)
			}
			// Finished commands open the window: MaxCmdSN moved on.
			if !serialGE(in.maxCmdSN, max0+1) {
				t.Fatalf("MaxCmdSN %d after three commands, started at %d", in.maxCmdSN, max0)
			}
			// Status PDUs: WRITE, READ, 2 NOP-In, TMF, WRITE, each one StatSN.
			if n := in.statusPDUs - statusBefore; n != 6 {
				t.Fatalf("%d status PDUs, want 6", n)
			}
			in.logout()
		})
	}
}

func TestE2EInitialR2TAndImmediateData(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{headerCRC: true, dataCRC: true, op: []KV{{"InitialR2T", "Yes"}, {"MaxBurstLength", "8192"}}})
	data := pattern(20000-20000%512, 5)
	r2ts := in.write(1, data, 0, 8192, true)
	if len(r2ts) != (len(data)+8191)/8192 {
		t.Fatalf("%d R2Ts for %d bytes with InitialR2T=Yes", len(r2ts), len(data))
	}
	got, _ := in.read(1, len(data)/512, 8192)
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	// Immediate data covering the whole transfer needs no R2T.
	small := pattern(1024, 6)
	cmd := in.scsiCmd(cdbRW(0x2a, 100, 2), len(small), false, true, true)
	cmd.Data = small
	in.send(cmd)
	if r := in.expectResponse(cmd.ITT()); r.BHS[3] != statusGood {
		t.Fatalf("immediate-data WRITE status %x", r.BHS[3])
	}
	if !bytes.Equal(s.vol.bytes(100*512, 1024), small) {
		t.Fatal("immediate data not written")
	}
	in.logout()
}

func TestE2ECheckConditionAndResidual(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{})
	// READ beyond the end: CHECK CONDITION with sense data in the response
	// data segment (RFC 7143 11.4.7: SenseLength then the sense).
	cmd := in.scsiCmd(cdbRW(0x28, 1<<30, 1), 512, true, false, true)
	in.send(cmd)
	r := in.expectResponse(cmd.ITT())
	if r.BHS[3] != statusCheckCondition || len(r.Data) < 2 {
		t.Fatalf("status %x data % x", r.BHS[3], r.Data)
	}
	sl := int(binary.BigEndian.Uint16(r.Data))
	sense := r.Data[2:]
	if sl != len(sense) {
		t.Fatalf("SenseLength %d with %d bytes", sl, len(sense))
	}
	checkFixedSense(t, sense, "sense over iSCSI")
	if sense[2]&0xf != senseIllegalRequest || sense[12] != 0x21 {
		t.Fatalf("sense % x", sense)
	}
	// INQUIRY with an EDTL shorter than the data: residual overflow.
	cmd = in.scsiCmd(cdbInquiry(false, 0, 96), 36, true, false, true)
	in.send(cmd)
	var got []byte
	for {
		p := in.recv()
		got = append(got, p.Data...)
		if p.Opcode() == opDataIn && p.Flags()&1 != 0 || p.Opcode() == opSCSIResp {
			if p.Flags()&0x04 == 0 || p.u32(44) != 96-36 {
				t.Fatalf("flags %x residual %d; want overflow of 60", p.Flags(), p.u32(44))
			}
			break
		}
	}
	if len(got) != 36 {
		t.Fatalf("%d bytes of INQUIRY data for EDTL 36", len(got))
	}
	in.logout()
}

func TestE2ECHAP(t *testing.T) {
	chap := &CHAPConfig{Username: "alice", Secret: "alice-secret-12", MutualUsername: "tgt", MutualSecret: "target-secret-34"}
	oneWay := &CHAPConfig{Username: "alice", Secret: "alice-secret-12"}
	t.Run("one-way", func(t *testing.T) {
		s := startServer(t, DefaultLimits(), TargetConfig{CHAP: oneWay}, Config{})
		in := dial(t, s.addr)
		in.login(loginOpts{chapUser: "alice", chapSecret: oneWay.Secret, headerCRC: true})
		in.nopPing([]byte("x"))
		in.logout()
	})
	t.Run("mutual", func(t *testing.T) {
		s := startServer(t, DefaultLimits(), TargetConfig{CHAP: chap}, Config{})
		in := dial(t, s.addr)
		in.login(loginOpts{chapUser: "alice", chapSecret: chap.Secret, mutual: chap})
		got, _ := in.read(0, 1, 262144)
		if len(got) != 512 {
			t.Fatal("read after mutual CHAP")
		}
		in.logout()
	})
	t.Run("wrong secret", func(t *testing.T) {
		s := startServer(t, DefaultLimits(), TargetConfig{CHAP: oneWay}, Config{})
		in := dial(t, s.addr)
		if st := in.tryLogin(loginOpts{chapUser: "alice", chapSecret: "not-the-secret"}); st != 0x0201 {
			t.Fatalf("login status 0x%04x, want 0x0201 (authentication failure)", st)
		}
	})
	t.Run("skipping authentication", func(t *testing.T) {
		s := startServer(t, DefaultLimits(), TargetConfig{CHAP: oneWay}, Config{})
		in := dial(t, s.addr)
		if st := in.tryLogin(loginOpts{}); st>>8 != 0x02 {
			t.Fatalf("AuthMethod=None accepted by a CHAP target: status 0x%04x", st)
		}
		in2 := dial(t, s.addr)
		if st := in2.tryLogin(loginOpts{startOp: true}); st>>8 != 0x02 {
			t.Fatalf("starting in the operational stage skipped CHAP: status 0x%04x", st)
		}
	})
	t.Run("unknown target", func(t *testing.T) {
		s := startServer(t, DefaultLimits(), TargetConfig{Name: "iqn.2024-01.org.metrolun:other"}, Config{})
		in := dial(t, s.addr)
		if st := in.tryLogin(loginOpts{}); st != 0x0203 {
			t.Fatalf("status 0x%04x, want 0x0203 (not found)", st)
		}
	})
	t.Run("initiator not allowed", func(t *testing.T) {
		s := startServer(t, DefaultLimits(), TargetConfig{AllowInitiators: []string{"iqn.other"}}, Config{})
		in := dial(t, s.addr)
		if st := in.tryLogin(loginOpts{}); st != 0x0202 {
			t.Fatalf("status 0x%04x, want 0x0202 (authorization failure)", st)
		}
	})
}

func TestE2EDiscovery(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{sessionType: "Discovery"})
	p := &PDU{Data: EncodeText([]KV{{"SendTargets", "All"}})}
	p.BHS[0] = 0x40 | opTextReq
	p.BHS[1] = 0x80
	itt := in.nextITT()
	p.put32(16, itt)
	p.put32(20, 0xffffffff)
	p.put32(24, in.cmdSN)
	p.put32(28, in.expStatSN)
	in.send(p)
	r := in.recv()
	if r.Opcode() != opTextRsp || r.ITT() != itt {
		t.Fatalf("opcode 0x%02x", r.Opcode())
	}
	kvs, err := ParseText(r.Data)
	if err != nil || len(kvs) != 2 || kvs[0] != (KV{"TargetName", e2eTarget}) || kvs[1].Key != "TargetAddress" ||
		!strings.HasSuffix(kvs[1].Value, ",1") || !strings.HasPrefix(kvs[1].Value, s.addr) {
		t.Fatalf("SendTargets answer %v, %v", kvs, err)
	}
	// SCSI commands have no place in a discovery session.
	cmd := in.scsiCmd(cdbInquiry(false, 0, 36), 36, true, false, true)
	in.send(cmd)
	if r := in.recv(); r.Opcode() != opReject {
		t.Fatalf("SCSI command in a discovery session: opcode 0x%02x, want Reject", r.Opcode())
	}
	in.logout()
}

func TestE2EDiscoveryTaskManagement(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{sessionType: "Discovery"})
	p := &PDU{}
	p.BHS[0] = 0x40 | opTaskMgmt
	p.BHS[1] = 0x80 | tmfLUNReset
	p.put32(16, in.nextITT())
	p.put32(20, 0xffffffff)
	p.put32(24, in.cmdSN)
	p.put32(28, in.expStatSN)
	in.send(p)
	// Any answer (Reject or a TMF response) will do; the server must live.
	r := in.recv()
	if r.Opcode() != opReject && r.Opcode() != opTaskMgmtRsp {
		t.Fatalf("opcode 0x%02x", r.Opcode())
	}
	in2 := dial(t, s.addr)
	in2.login(loginOpts{})
	in2.logout()
}

func TestE2ELoginFirstPDUContinued(t *testing.T) {
	// RFC 7143 6.2 allows a login text to span PDUs (C bit). The keys of
	// the first request are the same whether or not they were split; a
	// target that requires CHAP must not grant full feature phase without
	// it.
	s := startServer(t, DefaultLimits(), TargetConfig{CHAP: &CHAPConfig{Username: "u", Secret: "secret-secret"}}, Config{})
	in := dial(t, s.addr)
	text := EncodeText([]KV{{"InitiatorName", e2eInitiator}, {"SessionType", "Normal"}, {"TargetName", e2eTarget}, {"AuthMethod", "None"}})
	half := len(text) / 2
	p := in.loginPDU(stageSecurity, stageOperational, false, true, nil)
	p.Data = text[:half]
	in.send(p)
	r := in.recv()
	if r.Opcode() != opLoginRsp || loginStatusOf(r) != 0 {
		t.Fatalf("answer to a continued login PDU: opcode 0x%02x status 0x%04x", r.Opcode(), loginStatusOf(r))
	}
	p = in.loginPDU(stageSecurity, stageFullFeature, true, false, nil)
	p.Data = text[half:]
	in.send(p)
	r = in.recv()
	if loginStatusOf(r) == 0 && r.Flags()&0x80 != 0 {
		t.Fatalf("login reached stage %d without CHAP on a target that requires it", r.Flags()&3)
	}
}

func TestE2ELoginStartingInOperationalStage(t *testing.T) {
	// RFC 7143 6.3: an initiator that proposes no security may start in
	// the operational stage; 13.9: TargetPortalGroupTag is returned in the
	// response to the first request (C=0) that names the target.
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{startOp: true})
	in.logout()
}

func TestE2ELoginStartingInOperationalStageWorks(t *testing.T) {
	// The part of the above that works today: the login itself.
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	text := []KV{{"InitiatorName", e2eInitiator}, {"SessionType", "Normal"}, {"TargetName", e2eTarget},
		{"HeaderDigest", "None"}, {"DataDigest", "None"}, {"MaxRecvDataSegmentLength", "8192"}}
	r, _ := in.loginStep(stageOperational, stageFullFeature, true, text)
	if loginStatusOf(r) != 0 || r.Flags()&0x83 != 0x83 || r.u16(14) == 0 {
		t.Fatalf("status 0x%04x flags 0x%02x tsih %d", loginStatusOf(r), r.Flags(), r.u16(14))
	}
}

func TestE2ELogoutWithWriteAwaitingData(t *testing.T) {
	// DESIGN.md I6: a misbehaving initiator must not wedge the target.
	// Here it logs out while a WRITE still waits for its R2T data.
	lim := DefaultLimits()
	s := startServer(t, lim, TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{op: []KV{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}}})
	cmd := in.scsiCmd(cdbRW(0x2a, 0, 8), 4096, false, true, true)
	in.send(cmd)
	if r := in.recv(); r.Opcode() != opR2T {
		t.Fatalf("opcode 0x%02x, want R2T", r.Opcode())
	}
	p := &PDU{}
	p.BHS[0] = 0x40 | opLogoutReq
	p.BHS[1] = 0x80
	p.put32(16, in.nextITT())
	p.put16(20, 1)
	p.put32(24, in.cmdSN)
	p.put32(28, in.expStatSN)
	in.send(p)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.srv.Shutdown(ctx) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Server.Shutdown (1s deadline) still blocked after 5s")
	}
}

func TestE2EMalformedPDUs(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	t.Run("oversized data segment during login", func(t *testing.T) {
		in := dial(t, s.addr)
		p := in.loginPDU(stageSecurity, stageOperational, true, false, nil)
		p.Data = make([]byte, 300*1024)
		in.send(p)
		if r, err := in.rd.ReadPDU(); err == nil && r.Opcode() == opLoginRsp && loginStatusOf(r) == 0 {
			t.Fatal("a 300 KiB login PDU was accepted")
		}
	})
	t.Run("non-login PDU first", func(t *testing.T) {
		in := dial(t, s.addr)
		in.send(in.scsiCmd(cdbInquiry(false, 0, 36), 36, true, false, true))
		r, err := in.rd.ReadPDU()
		if err == nil && (r.Opcode() != opLoginRsp || loginStatusOf(r)>>8 != 2) {
			t.Fatalf("opcode 0x%02x status 0x%04x", r.Opcode(), loginStatusOf(r))
		}
	})
	t.Run("bad header digest drops the connection", func(t *testing.T) {
		in := dial(t, s.addr)
		in.login(loginOpts{headerCRC: true})
		p := &PDU{}
		p.BHS[0] = 0x40 | opNOPOut
		p.BHS[1] = 0x80
		p.put32(16, 7)
		iov, _ := p.appendWire(nil, true, false, nil)
		var b []byte
		for _, v := range iov {
			b = append(b, v...)
		}
		b[len(b)-1] ^= 0xff
		in.nc.Write(b)
		if _, err := in.rd.ReadPDU(); err == nil {
			t.Fatal("the target answered a PDU with a bad header digest")
		}
	})
	// The server still serves.
	in := dial(t, s.addr)
	in.login(loginOpts{})
	in.logout()
}

func TestE2EManyOutstandingR2TsInOrder(t *testing.T) {
	// RFC 7143 11.8: R2TSN numbers the R2Ts of a command; with
	// DataSequenceInOrder=Yes the sequences must go in increasing offset
	// order, which the initiator can only do if the R2Ts arrive in order.
	lim := DefaultLimits()
	lim.MaxOutstandingR2T = 8
	s := startServer(t, lim, TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{op: []KV{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}, {"MaxBurstLength", "512"}, {"MaxOutstandingR2T", "8"}}})
	if in.keys["MaxOutstandingR2T"] != "8" {
		t.Fatalf("MaxOutstandingR2T %q", in.keys["MaxOutstandingR2T"])
	}
	for i := 0; i < 50; i++ {
		cmd := in.scsiCmd(cdbRW(0x2a, 0, 64), 64*512, false, true, true)
		in.send(cmd)
		// Read the first window of R2Ts before answering any.
		for sn := uint32(0); sn < 8; sn++ {
			r := in.recv()
			if r.Opcode() != opR2T || r.u32(36) != sn || int(r.u32(40)) != int(sn)*512 {
				t.Fatalf("iteration %d: R2T %d arrived as R2TSN %d offset %d", i, sn, r.u32(36), r.u32(40))
			}
		}
		// Abort the command to move on.
		in.nc.Close()
		in = dial(t, s.addr)
		in.login(loginOpts{op: []KV{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}, {"MaxBurstLength", "512"}, {"MaxOutstandingR2T", "8"}}})
	}
}

// TestE2ELUNResetAbortsOtherSessions: a LUN RESET from one session aborts
// the task set of the whole LU (SAM-5 section 7.7): another session's
// write, stuck waiting for its data, is answered TASK ABORTED (TAS=1), the
// reset is answered only after that, and both sessions then see the
// reset's unit attention.
func TestE2ELUNResetAbortsOtherSessions(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	a := dial(t, s.addr)
	a.login(loginOpts{})
	b := dial(t, s.addr)
	b.isid[5] = 2 // a second I_T nexus, not a reinstatement of the first
	b.login(loginOpts{op: []KV{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}}})

	// Both nexuses have talked to the LU, so both are owed the UA.
	for _, in := range []*initiator{a, b} {
		cmd := in.scsiCmd(make([]byte, 6), 0, false, false, true)
		in.send(cmd)
		in.expectResponse(cmd.ITT())
	}
	cmd := b.scsiCmd(cdbRW(0x2a, 0, 8), 4096, false, true, true)
	b.send(cmd)
	if r := b.recv(); r.Opcode() != opR2T {
		t.Fatalf("opcode 0x%02x, want R2T", r.Opcode())
	}
	if resp := a.tmf(tmfLUNReset, 0xffffffff, 0); resp != tmfComplete {
		t.Fatalf("LUN RESET answered %d", resp)
	}
	r := b.expectResponse(cmd.ITT())
	if r.BHS[3] != statusTaskAborted {
		t.Fatalf("other session's aborted write: status 0x%02x, want TASK ABORTED", r.BHS[3])
	}
	for name, in := range map[string]*initiator{"resetting": a, "other": b} {
		tur := in.scsiCmd(make([]byte, 6), 0, false, false, true)
		in.send(tur)
		r := in.expectResponse(tur.ITT())
		if r.BHS[3] != statusCheckCondition || len(r.Data) < 16 || r.Data[2+2]&0x0f != senseUnitAttention ||
			r.Data[2+12] != 0x29 || r.Data[2+13] != 0x03 {
			t.Fatalf("%s session: TUR after reset gave status 0x%02x sense % x, want UNIT ATTENTION 29/03", name, r.BHS[3], r.Data)
		}
	}
}

// TestE2EDataSNOutOfOrder: a Data-Out out of DataSN order ends its command
// with CHECK CONDITION, ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR (47/05)
// once all its data has come (RFC 7143 sections 7.8 and 7.9 at
// ErrorRecoveryLevel 0); the command writes nothing and the connection
// goes on. Unsolicited and solicited sequences, with DataSN 27 and with
// two PDUs in reverse order.
func TestE2EDataSNOutOfOrder(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{op: []KV{{"ImmediateData", "No"}, {"InitialR2T", "No"}}})
	wantCRCError := func(r *PDU, what string) {
		t.Helper()
		if r.BHS[3] != statusCheckCondition || len(r.Data) < 2 {
			t.Fatalf("%s: status %x", what, r.BHS[3])
		}
		sense := r.Data[2:]
		checkFixedSense(t, sense, what)
		if sense[2]&0xf != senseAbortedCommand || sense[12] != 0x47 || sense[13] != 0x05 {
			t.Fatalf("%s: sense % x, want ABORTED COMMAND 47/05", what, sense)
		}
	}
	data := pattern(1024, 9)
	zero := make([]byte, 1024)

	// Unsolicited, one PDU with DataSN 27.
	cmd := in.scsiCmd(cdbRW(0x2a, 10, 2), len(data), false, true, false)
	in.send(cmd)
	in.send(in.dataOut(cmd.ITT(), 0xffffffff, 27, 0, data, true))
	wantCRCError(in.expectResponse(cmd.ITT()), "DataSN 27")

	// Two PDUs in reverse DataSN order (1 then 0).
	cmd = in.scsiCmd(cdbRW(0x2a, 10, 2), len(data), false, true, false)
	in.send(cmd)
	in.send(in.dataOut(cmd.ITT(), 0xffffffff, 1, 0, data[:512], false))
	in.send(in.dataOut(cmd.ITT(), 0xffffffff, 0, 512, data[512:], true))
	wantCRCError(in.expectResponse(cmd.ITT()), "DataSN 1, 0")
	if !bytes.Equal(s.vol.bytes(10*512, 1024), zero) {
		t.Fatal("a command with a DataSN error wrote data")
	}

	// The connection goes on: a correct write and read back.
	in.write(10, data, 65536, 262144, false)
	if got, _ := in.read(10, 2, 1024); !bytes.Equal(got, data) {
		t.Fatal("read back after the DataSN errors differs")
	}
	in.logout()
}
