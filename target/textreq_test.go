package target

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// textPart sends one Text Request PDU; cont sets C=1 (and F=0).
func (in *initiator) textPart(itt, ttt uint32, cont bool, data []byte) {
	p := &PDU{Data: data}
	p.BHS[0] = opTextReq
	p.BHS[1] = 0x80
	if cont {
		p.BHS[1] = 0x40
	}
	p.put32(16, itt)
	p.put32(20, ttt)
	p.put32(24, in.cmdSN)
	in.cmdSN++
	p.put32(28, in.expStatSN)
	in.send(p)
}

// expectTextAck reads the empty Text Response that answers a request
// part with C=1 (RFC 7143 sections 6.2, 11.11.1: F=0, a Target Transfer
// Tag, no data) and returns its tag.
func (in *initiator) expectTextAck(itt uint32) uint32 {
	in.t.Helper()
	r := in.recv()
	if r.Opcode() != opTextRsp || r.ITT() != itt {
		in.t.Fatalf("opcode 0x%02x ITT %x, want a Text Response to %x", r.Opcode(), r.ITT(), itt)
	}
	if r.Flags() != 0 || len(r.Data) != 0 || r.TTT() == 0xffffffff {
		in.t.Fatalf("answer to a continued request: flags 0x%02x, %d bytes, TTT %x; want F=0 C=0, empty, a tag",
			r.Flags(), len(r.Data), r.TTT())
	}
	return r.TTT()
}

// expectReject reads a Reject with the given reason for the request with ITT itt.
func (in *initiator) expectReject(itt uint32, reason byte) {
	in.t.Helper()
	r := in.recv()
	if r.Opcode() != opReject || r.BHS[2] != reason {
		in.t.Fatalf("opcode 0x%02x reason 0x%02x, want Reject 0x%02x", r.Opcode(), r.BHS[2], reason)
	}
	if len(r.Data) < bhsLen || binary.BigEndian.Uint32(r.Data[16:20]) != itt {
		in.t.Fatalf("the Reject does not carry the rejected header (ITT %x)", itt)
	}
}

// sendTargetsRaw asks SendTargets=All in one PDU and returns the answer.
func (in *initiator) sendTargetsRaw() []byte {
	in.t.Helper()
	itt := in.nextITT()
	in.textPart(itt, 0xffffffff, false, EncodeText([]KV{{"SendTargets", "All"}}))
	r := in.recv()
	if r.Opcode() != opTextRsp || r.ITT() != itt || r.Flags() != 0x80 {
		in.t.Fatalf("opcode 0x%02x ITT %x flags 0x%02x", r.Opcode(), r.ITT(), r.Flags())
	}
	return r.Data
}

// TestE2ETextRequestContinued: a SendTargets=All request split across
// two and three PDUs (the splits fall inside the key and the value) gets
// the same answer as the request in one PDU (RFC 7143 section 11.10.2).
func TestE2ETextRequestContinued(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{sessionType: "Discovery"})
	whole := in.sendTargetsRaw()
	if !bytes.Contains(whole, []byte("TargetName="+e2eTarget)) {
		t.Fatalf("SendTargets answer %q", whole)
	}
	req := EncodeText([]KV{{"SendTargets", "All"}})
	for _, cuts := range [][]int{{5}, {4, 13}, {len(req) - 1}, {0, 3}} {
		itt := in.nextITT()
		ttt := uint32(0xffffffff)
		prev := 0
		for _, cut := range cuts {
			in.textPart(itt, ttt, true, req[prev:cut])
			next := in.expectTextAck(itt)
			if next == ttt {
				t.Fatalf("cuts %v: the same tag %x twice", cuts, next)
			}
			ttt, prev = next, cut
		}
		in.textPart(itt, ttt, false, req[prev:])
		r := in.recv()
		if r.Opcode() != opTextRsp || r.ITT() != itt || r.Flags() != 0x80 || r.TTT() != 0xffffffff {
			t.Fatalf("cuts %v: opcode 0x%02x ITT %x flags 0x%02x TTT %x", cuts, r.Opcode(), r.ITT(), r.Flags(), r.TTT())
		}
		if !bytes.Equal(r.Data, whole) {
			t.Fatalf("cuts %v: answer %q, want %q", cuts, r.Data, whole)
		}
	}
	in.logout()
}

// TestE2ETextRequestTooLong: the parts of a request together may not
// exceed maxTextLen; the part that would is rejected, the partial request
// is forgotten and the connection goes on.
func TestE2ETextRequestTooLong(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{sessionType: "Discovery"})
	const part = 8192
	filler := []byte("X-Filler=" + strings.Repeat("a", part-10) + "\x00")
	itt := in.nextITT()
	ttt := uint32(0xffffffff)
	for sent := 0; sent+part <= maxTextLen; sent += part {
		in.textPart(itt, ttt, true, filler)
		ttt = in.expectTextAck(itt)
	}
	in.textPart(itt, ttt, false, []byte("Y=1\x00"))
	in.expectReject(itt, rejectProtocol)
	// The request is gone: its tag is no longer valid.
	in.textPart(itt, ttt, false, EncodeText([]KV{{"SendTargets", "All"}}))
	in.expectReject(itt, rejectInvalidField)
	// One PDU alone longer than the bound.
	itt = in.nextITT()
	in.textPart(itt, 0xffffffff, true, bytes.Repeat(filler, maxTextLen/part+1))
	in.expectReject(itt, rejectProtocol)
	if !bytes.Contains(in.sendTargetsRaw(), []byte(e2eTarget)) {
		t.Fatal("no SendTargets answer after the refused request")
	}
	in.logout()
}

// TestE2ETextRequestContinuationMismatch: a part that carries the tag but
// another Initiator Task Tag is rejected (section 11.10.3: every request
// of a sequence has the same ITT), as is C=1 with F=1 (section 11.10.2);
// a part with TTT 0xffffffff starts a new request (section 11.10.4).
func TestE2ETextRequestContinuationMismatch(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	in.login(loginOpts{sessionType: "Discovery"})
	whole := in.sendTargetsRaw()

	itt := in.nextITT()
	in.textPart(itt, 0xffffffff, true, []byte("SendTar"))
	ttt := in.expectTextAck(itt)
	other := in.nextITT()
	in.textPart(other, ttt, false, []byte("gets=All\x00"))
	in.expectReject(other, rejectInvalidField)
	// The sequence was abandoned: its own ITT cannot finish it now.
	in.textPart(itt, ttt, false, []byte("gets=All\x00"))
	in.expectReject(itt, rejectInvalidField)

	// C=1 and F=1 together.
	p := &PDU{Data: []byte("SendTar")}
	p.BHS[0] = opTextReq
	p.BHS[1] = 0xc0
	itt = in.nextITT()
	p.put32(16, itt)
	p.put32(20, 0xffffffff)
	p.put32(24, in.cmdSN)
	in.cmdSN++
	p.put32(28, in.expStatSN)
	in.send(p)
	in.expectReject(itt, rejectProtocol)

	// A fresh request (TTT 0xffffffff) drops a partial one.
	itt = in.nextITT()
	in.textPart(itt, 0xffffffff, true, []byte("Bogus"))
	stale := in.expectTextAck(itt)
	itt2 := in.nextITT()
	in.textPart(itt2, 0xffffffff, true, []byte("SendTargets"))
	ttt = in.expectTextAck(itt2)
	in.textPart(itt2, ttt, false, []byte("=All\x00"))
	if r := in.recv(); r.Opcode() != opTextRsp || r.ITT() != itt2 || !bytes.Equal(r.Data, whole) {
		t.Fatalf("opcode 0x%02x ITT %x answer %q", r.Opcode(), r.ITT(), r.Data)
	}
	in.textPart(itt, stale, false, []byte("=1\x00"))
	in.expectReject(itt, rejectInvalidField)
	in.logout()
}

// TestE2ELoginTextTooLong: a login text continued (C=1) past maxTextLen
// fails the login with an initiator error (section 11.13.5).
func TestE2ELoginTextTooLong(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
	in := dial(t, s.addr)
	const part = 8192 // the most a login PDU may carry (section 12.12)
	first := EncodeText([]KV{{"InitiatorName", e2eInitiator}, {"SessionType", "Discovery"}})
	filler := []byte("X-Filler=" + strings.Repeat("b", part-10) + "\x00")
	for sent := 0; ; sent += part {
		p := in.loginPDU(stageSecurity, stageOperational, false, true, nil)
		p.Data = filler
		if sent == 0 {
			p.Data = append(append([]byte(nil), first...), filler[len(first):]...)
		}
		in.send(p)
		r := in.recv()
		if st := loginStatusOf(r); st != 0 {
			if st != 0x0200 || sent+part <= maxTextLen {
				t.Fatalf("status 0x%04x after %d bytes", st, sent+part)
			}
			in.expectClosed()
			return
		}
		if sent > maxTextLen {
			t.Fatalf("%d bytes of login text accepted", sent+part)
		}
	}
}
