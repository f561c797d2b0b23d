package initiator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// Target is one target a SendTargets answer names, with its addresses
// ("host:port,tag", RFC 7143 section 13.3) in the order given.
type Target struct {
	Name      string
	Addresses []string
}

// Discover opens a discovery session at addr (host:port) as initiatorIQN
// with no authentication, asks SendTargets=All (RFC 7143 appendix C),
// logs out and returns the targets in the order of the answer. ctx bounds
// the whole exchange (30s when it has no deadline).
func Discover(ctx context.Context, addr, initiatorIQN string) ([]Target, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &ConnError{Op: "dial " + addr, Err: err}
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	br := bufio.NewReader(conn)
	const maxData = 1 << 20
	var statSN uint32
	// exchange sends req (immediate, CmdSN 1: nothing here advances the
	// command window) and reads the answer of opcode want.
	exchange := func(req *pdu, want byte) (*pdu, error) {
		req.hdr.setImmediate(true)
		req.hdr.put32(24, 1)
		req.hdr.put32(28, statSN)
		b, err := req.marshal()
		if err != nil {
			return nil, err
		}
		if _, err := conn.Write(b); err != nil {
			return nil, err
		}
		rsp, err := readPDU(br, maxData)
		if err != nil {
			return nil, unexpectedEOF(err)
		}
		if rsp.hdr.opcode() != want || rsp.hdr.itt() != req.hdr.itt() {
			return nil, fmt.Errorf("expected opcode 0x%02x for ITT 0x%x, got %v", want, req.hdr.itt(), rsp)
		}
		statSN = rsp.hdr.statSN() + 1
		return rsp, nil
	}

	// Login: the security stage straight to full feature phase, which
	// RFC 7143 section 6.3 allows; the operational keys keep their
	// defaults.
	login := &pdu{}
	login.hdr.setOpcode(opLoginReq, true)
	login.hdr[1] = 0x80 | 0<<2 | 3 // T, CSG security, NSG full feature
	login.hdr[8] = 0x80            // ISID type 10b, random qualifier 0
	login.hdr.put32(16, 1)
	login.data = encodeText([]kv{{"InitiatorName", initiatorIQN}, {"SessionType", "Discovery"}, {"AuthMethod", "None"}})
	rsp, err := exchange(login, opLoginRsp)
	for round := 0; err == nil && rsp.hdr.flags()&0x80 == 0; round++ {
		if class, detail := rsp.hdr[36], rsp.hdr[37]; class != 0 {
			return nil, &LoginError{Class: class, Detail: detail}
		}
		if round == 8 {
			return nil, errors.New("discovery login did not reach full feature phase in 8 exchanges")
		}
		login.data = nil
		rsp, err = exchange(login, opLoginRsp)
	}
	if err != nil {
		return nil, &ConnError{Op: "discovery login at " + addr, Err: err}
	}
	if class, detail := rsp.hdr[36], rsp.hdr[37]; class != 0 {
		return nil, &LoginError{Class: class, Detail: detail}
	}
	if rsp.hdr.flags()&3 != 3 {
		return nil, fmt.Errorf("discovery login: target moved to stage %d, not full feature", rsp.hdr.flags()&3)
	}

	// SendTargets; a long answer comes in several Text Responses (C bit),
	// each continued by an empty request with the target's TTT.
	var text []byte
	ttt := uint32(noTag)
	for round := 0; ; round++ {
		if round == 64 {
			return nil, errors.New("SendTargets answer did not end within 64 PDUs")
		}
		req := &pdu{}
		req.hdr.setOpcode(opTextReq, true)
		req.hdr[1] = 0x80
		req.hdr.put32(16, uint32(2+round))
		req.hdr.put32(20, ttt)
		if round == 0 {
			req.data = encodeText([]kv{{"SendTargets", "All"}})
		}
		rsp, err := exchange(req, opTextRsp)
		if err != nil {
			return nil, &ConnError{Op: "SendTargets at " + addr, Err: err}
		}
		text = append(text, rsp.data...)
		if rsp.hdr.flags()&0x40 == 0 {
			break
		}
		ttt = rsp.hdr.ttt()
	}
	kvs, err := parseText(text)
	if err != nil {
		return nil, err
	}
	var out []Target
	for _, x := range kvs {
		switch x.k {
		case "TargetName":
			out = append(out, Target{Name: x.v})
		case "TargetAddress":
			if len(out) == 0 {
				return nil, fmt.Errorf("SendTargets: TargetAddress=%s before any TargetName", x.v)
			}
			out[len(out)-1].Addresses = append(out[len(out)-1].Addresses, x.v)
		}
	}

	logout := &pdu{}
	logout.hdr.setOpcode(opLogoutReq, true)
	logout.hdr[1] = 0x80 // reason 0: close the session
	logout.hdr.put32(16, 0x1000)
	exchange(logout, opLogoutRsp) // the answer is known; a failed logout changes nothing
	return out, nil
}
