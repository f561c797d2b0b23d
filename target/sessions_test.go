package target

import (
	"testing"
	"time"
)

func TestPingClock(t *testing.T) {
	var p pingClock
	t0 := time.Unix(1000, 0)
	p.sent(7, t0)
	p.answered(8, t0.Add(time.Millisecond)) // a stray TTT is no sample
	if s, _, pings, answers := p.read(); s != 0 || pings != 1 || answers != 0 {
		t.Fatalf("after a stray echo: rtt %v, %d pings, %d answers", s, pings, answers)
	}
	p.answered(7, t0.Add(80*time.Millisecond))
	p.answered(7, t0.Add(900*time.Millisecond)) // answered twice: the first counts
	if s, last, _, answers := p.read(); s != 80*time.Millisecond || last != s || answers != 1 {
		t.Fatalf("first sample: smoothed %v last %v answers %d", s, last, answers)
	}
	p.sent(9, t0.Add(time.Second))
	p.answered(9, t0.Add(time.Second+160*time.Millisecond))
	// RFC 6298 smoothing: 80 + (160-80)/8 = 90 ms.
	if s, last, pings, answers := p.read(); s != 90*time.Millisecond || last != 160*time.Millisecond || pings != 2 || answers != 2 {
		t.Fatalf("second sample: smoothed %v last %v, %d pings %d answers", s, last, pings, answers)
	}
	// A ping replaced before its answer: the late echo is no sample.
	p.sent(10, t0.Add(2*time.Second))
	p.sent(11, t0.Add(3*time.Second))
	p.answered(10, t0.Add(3*time.Second+time.Millisecond))
	if _, _, _, answers := p.read(); answers != 2 {
		t.Fatalf("a late echo of a replaced ping counted: %d answers", answers)
	}
}

// TestSessionsNOPInRTT: Sessions lists a logged-in initiator with the
// round trip its NOP-Out answers show (RFC 7143 section 11.19), and an
// initiator that ignores the pings but keeps sending other PDUs keeps
// its connection.
func TestSessionsNOPInRTT(t *testing.T) {
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{NOPInterval: 40 * time.Millisecond, NOPTimeout: 200 * time.Millisecond})
	in := dial(t, s.addr)
	in.login(loginOpts{})
	list := s.srv.Sessions()
	if len(list) != 1 || list[0].Initiator != e2eInitiator || list[0].ISID != "801234560001" || list[0].Target != e2eTarget ||
		list[0].State != PathActiveOptimized || list[0].TSIH == 0 || list[0].Since.IsZero() {
		t.Fatalf("Sessions: %+v", list)
	}
	// Answer the first ping 30 ms late.
	ping := in.recv()
	if ping.Opcode() != opNOPIn || ping.TTT() == 0xffffffff || ping.ITT() != 0xffffffff {
		t.Fatalf("want a NOP-In ping, got opcode 0x%02x ITT %x TTT %x", ping.Opcode(), ping.ITT(), ping.TTT())
	}
	time.Sleep(30 * time.Millisecond) // the round trip to measure, not synchronisation
	in.send(nopOutEcho(in, ping))
	deadline := time.Now().Add(5 * time.Second)
	for {
		l := s.srv.Sessions()
		if len(l) == 1 && l[0].Answers >= 1 {
			if l[0].RTTLast < 30*time.Millisecond || l[0].RTTLast > 5*time.Second || l[0].RTT == 0 {
				t.Fatalf("RTT %v (last %v) for an answer 30 ms late", l[0].RTT, l[0].RTTLast)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answered ping in Sessions: %+v", l)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Ignore every ping for 10 NOP timeouts while pinging the target
	// ourselves: the connection must stay (other PDUs prove we live).
	ignored := 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		p := &PDU{}
		p.BHS[0] = 0x40 | opNOPOut
		p.BHS[1] = 0x80
		itt := in.nextITT()
		p.put32(16, itt)
		p.put32(20, 0xffffffff)
		p.put32(24, in.cmdSN)
		p.put32(28, in.expStatSN)
		in.send(p)
		for {
			r := in.recv()
			if r.Opcode() == opNOPIn && r.ITT() == 0xffffffff {
				ignored++
				continue
			}
			if r.Opcode() != opNOPIn || r.ITT() != itt {
				t.Fatalf("want the answer to our NOP-Out, got opcode 0x%02x ITT %x", r.Opcode(), r.ITT())
			}
			break
		}
		time.Sleep(20 * time.Millisecond) // pacing, well inside NOPTimeout
	}
	if ignored < 5 {
		t.Fatalf("only %d pings in 2 s at a 40 ms interval", ignored)
	}
	l := s.srv.Sessions()
	if len(l) != 1 || l[0].Answers != 1 || l[0].Pings < 5 {
		t.Fatalf("after ignoring pings: %+v", l)
	}
	// Silence after a ping ends the connection within NOPTimeout.
	in.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := in.rd.ReadPDU(); err != nil {
			break
		}
	}
	deadline = time.Now().Add(5 * time.Second)
	for len(s.srv.Sessions()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a silent initiator's session outlived NOPTimeout")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nopOutEcho answers a NOP-In ping (section 11.18: ITT 0xffffffff, the
// ping's TTT, immediate).
func nopOutEcho(in *initiator, ping *PDU) *PDU {
	p := &PDU{}
	p.BHS[0] = 0x40 | opNOPOut
	p.BHS[1] = 0x80
	p.put32(16, 0xffffffff)
	p.put32(20, ping.TTT())
	p.put32(24, in.cmdSN)
	p.put32(28, in.expStatSN)
	return p
}
