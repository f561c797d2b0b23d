package target

import (
	"fmt"
	"strings"
	"testing"
)

func (in *initiator) textReq(itt, ttt uint32, data []byte) {
	p := &PDU{Data: data}
	p.BHS[0] = opTextReq
	p.BHS[1] = 0x80
	p.put32(16, itt)
	p.put32(20, ttt)
	p.put32(24, in.cmdSN)
	in.cmdSN++
	p.put32(28, in.expStatSN)
	in.send(p)
}

// TestE2ESendTargetsContinued: a SendTargets answer longer than the
// initiator's MaxRecvDataSegmentLength (512, the least it may declare)
// arrives in Text Responses with C=1 and a Target Transfer Tag, each
// fetched with an empty Text Request carrying the tag, the last with F=1
// and TTT 0xffffffff (RFC 7143 sections 11.10, 11.11).
func TestE2ESendTargetsContinued(t *testing.T) {
	var portals []string
	for i := range 12 {
		portals = append(portals, fmt.Sprintf("127.0.0.%d:3260", i+1))
	}
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{Portals: portals})
	want := []string{e2eTarget}
	for i := range 30 {
		name := fmt.Sprintf("iqn.2024-01.org.metrolun:many-targets-with-long-names-%03d", i)
		if err := s.srv.AddTarget(TargetConfig{Name: name, LUNs: []LUNConfig{{Volume: newMemVolume(1 << 16)}}}); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	in := dial(t, s.addr)
	in.myMRDSL = 512
	in.login(loginOpts{sessionType: "Discovery"})

	fetch := func(itt uint32) (answer []byte, parts int) {
		t.Helper()
		in.textReq(itt, 0xffffffff, EncodeText([]KV{{"SendTargets", "All"}}))
		for parts = 1; parts <= 1000; parts++ {
			r := in.recv()
			if r.Opcode() != opTextRsp || r.ITT() != itt {
				t.Fatalf("part %d: opcode 0x%02x ITT %x", parts, r.Opcode(), r.ITT())
			}
			if len(r.Data) > 512 || len(r.Data) == 0 {
				t.Fatalf("part %d: %d bytes, want 1..512", parts, len(r.Data))
			}
			answer = append(answer, r.Data...)
			f, cont := r.Flags()&0x80 != 0, r.Flags()&0x40 != 0
			switch {
			case f && !cont:
				if r.TTT() != 0xffffffff {
					t.Fatalf("final part: TTT %x, want 0xffffffff", r.TTT())
				}
				return answer, parts
			case cont && !f:
				if r.TTT() == 0xffffffff {
					t.Fatalf("part %d: C=1 with TTT 0xffffffff", parts)
				}
				in.textReq(itt, r.TTT(), nil)
			default:
				t.Fatalf("part %d: flags 0x%02x", parts, r.Flags())
			}
		}
		t.Fatal("answer never ended")
		return
	}
	answer, parts := fetch(in.nextITT())
	if parts < 10 {
		t.Fatalf("answer of %d bytes came in %d parts", len(answer), parts)
	}
	if answer[len(answer)-1] != 0 {
		t.Fatal("answer does not end with NUL")
	}
	var names []string
	addrs := 0
	// More pairs than ParseText takes in a request: split them here.
	for _, pair := range strings.Split(string(answer[:len(answer)-1]), "\x00") {
		key, val, _ := strings.Cut(pair, "=")
		kv := KV{key, val}
		switch kv.Key {
		case "TargetName":
			names = append(names, kv.Value)
		case "TargetAddress":
			addrs++
		default:
			t.Fatalf("unexpected key %q", kv.Key)
		}
	}
	if strings.Join(names, " ") != strings.Join(want, " ") || addrs != len(want)*len(portals) {
		t.Fatalf("targets %v with %d addresses; want %v with %d", names, addrs, want, len(want)*len(portals))
	}

	// A new request mid-answer starts afresh; the old tag is then invalid.
	itt := in.nextITT()
	in.textReq(itt, 0xffffffff, EncodeText([]KV{{"SendTargets", "All"}}))
	r := in.recv()
	if r.Flags()&0x40 == 0 {
		t.Fatalf("flags 0x%02x, want C=1", r.Flags())
	}
	stale := r.TTT()
	again, _ := fetch(in.nextITT())
	if string(again) != string(answer) {
		t.Fatal("the restarted answer differs")
	}
	in.textReq(itt, stale, nil)
	if r := in.recv(); r.Opcode() != opReject {
		t.Fatalf("continuation with a stale tag: opcode 0x%02x, want Reject", r.Opcode())
	}
	in.logout()
}

func TestTextCut(t *testing.T) {
	data := EncodeText([]KV{{"TargetName", "iqn.x"}, {"TargetAddress", "1.2.3.4:3260,1"}})
	for _, c := range []struct{ max, want int }{
		{len(data), len(data)},
		{1000, len(data)},
		{20, 17}, // "TargetName=iqn.x\x00"
		{5, 5},   // no whole pair fits: a pair spans PDUs
	} {
		if got := textCut(data, c.max); got != c.want {
			t.Errorf("textCut(%d) = %d, want %d", c.max, got, c.want)
		}
	}
}
