package target

import (
	"encoding/binary"
	"testing"
)

// prOut sends a PERSISTENT RESERVE OUT with its parameter list as
// immediate data and returns the status.
func (in *initiator) prOut(sa, rtype byte, key, saKey uint64) byte {
	in.t.Helper()
	cmd := in.scsiCmd(cdbPROut(sa, rtype), 24, false, true, true)
	cmd.Data = prParams(key, saKey, 0)
	in.send(cmd)
	return in.expectResponse(cmd.ITT()).BHS[3]
}

// settle sends TEST UNIT READY until it is GOOD (pending unit
// attentions are reported one per command).
func (in *initiator) settle() {
	in.t.Helper()
	for range 4 {
		tur := in.scsiCmd(make([]byte, 6), 0, false, false, true)
		in.send(tur)
		if in.expectResponse(tur.ITT()).BHS[3] == statusGood {
			return
		}
	}
	in.t.Fatal("TEST UNIT READY never GOOD")
}

// startWrite sends an 8-block WRITE(10) with no unsolicited data and
// returns its ITT and the TTT of the R2T that solicits the data.
func (in *initiator) startWrite() (itt, ttt uint32) {
	in.t.Helper()
	cmd := in.scsiCmd(cdbRW(0x2a, 8, 8), 4096, false, true, true)
	in.send(cmd)
	r := in.recv()
	if r.Opcode() != opR2T || r.ITT() != cmd.ITT() {
		in.t.Fatalf("opcode 0x%02x ITT %x, want R2T for %x", r.Opcode(), r.ITT(), cmd.ITT())
	}
	return cmd.ITT(), r.TTT()
}

// TestE2EPreemptAndAbort: PREEMPT AND ABORT (SPC-4 5.13.11.2.5) aborts the
// preempted nexus's tasks on the LU, which end with TASK ABORTED (TAS=1),
// and leaves other nexuses' tasks alone; PREEMPT aborts nothing. The
// preempted nexus then hears REGISTRATIONS PREEMPTED.
func TestE2EPreemptAndAbort(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sa    byte
		abort bool
	}{{"preempt", prsaPreempt, false}, {"preempt-and-abort", prsaPreemptAbort, true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, DefaultLimits(), TargetConfig{}, Config{})
			op := []KV{{"InitialR2T", "Yes"}, {"ImmediateData", "Yes"}}
			var ins []*initiator
			for i := range 3 {
				in := dial(t, s.addr)
				in.isid[5] = byte(i + 1) // three I_T nexuses
				in.login(loginOpts{op: op})
				in.settle()
				ins = append(ins, in)
			}
			a, b, c := ins[0], ins[1], ins[2]
			for i, in := range ins {
				if st := in.prOut(prsaRegister, 0, 0, uint64(0xa+i)); st != statusGood {
					t.Fatalf("register %d: status 0x%02x", i, st)
				}
			}
			if st := b.prOut(prsaReserve, prWriteExclusiveRegs, 0xb, 0); st != statusGood {
				t.Fatalf("b reserve: status 0x%02x", st)
			}
			bITT, bTTT := b.startWrite()
			cITT, cTTT := c.startWrite()

			if st := a.prOut(tc.sa, prWriteExclusiveRegs, 0xa, 0xb); st != statusGood {
				t.Fatalf("a preempts b: status 0x%02x", st)
			}
			data := make([]byte, 4096)
			if tc.abort {
				// The PR OUT completed only after b's task was gone, so its
				// TASK ABORTED is already on the way.
				if r := b.expectResponse(bITT); r.BHS[3] != statusTaskAborted {
					t.Fatalf("b's write: status 0x%02x, want TASK ABORTED", r.BHS[3])
				}
			} else {
				b.sendData(bITT, bTTT, data, 0, len(data), len(data))
				if r := b.expectResponse(bITT); r.BHS[3] != statusGood {
					t.Fatalf("b's write after PREEMPT: status 0x%02x, want GOOD", r.BHS[3])
				}
			}
			// c was not preempted: its write goes on either way.
			c.sendData(cITT, cTTT, data, 0, len(data), len(data))
			if r := c.expectResponse(cITT); r.BHS[3] != statusGood {
				t.Fatalf("c's write: status 0x%02x, want GOOD", r.BHS[3])
			}

			tur := b.scsiCmd(make([]byte, 6), 0, false, false, true)
			b.send(tur)
			r := b.expectResponse(tur.ITT())
			if r.BHS[3] != statusCheckCondition || len(r.Data) < 16 || r.Data[2+2]&0x0f != senseUnitAttention ||
				binary.BigEndian.Uint16(r.Data[2+12:]) != ascRegistrationsPreempted {
				t.Fatalf("b's TUR: status 0x%02x sense % x, want UNIT ATTENTION 2A/05", r.BHS[3], r.Data)
			}
			a.settle()
			c.settle()
		})
	}
}

// TestRSOCPreemptAndAbort: REPORT SUPPORTED OPERATION CODES lists PERSISTENT
// RESERVE OUT service action 5 among all commands and reports it
// supported when asked for alone (SPC-4 6.35).
func TestRSOCPreemptAndAbort(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	c := make12(0xa3, 0x0c)
	binary.BigEndian.PutUint32(c[6:], 1<<16)
	r := e.do(n, c, nil)
	wantGood(t, r, "rsoc all")
	found := false
	for d := r.data[4:]; len(d) >= 8; d = d[8:] {
		found = found || d[0] == 0x5f && binary.BigEndian.Uint16(d[2:]) == prsaPreemptAbort
	}
	if !found {
		t.Fatal("PERSISTENT RESERVE OUT / PREEMPT AND ABORT missing from the list of all commands")
	}
	c = make12(0xa3, 0x0c)
	c[2], c[3] = 2, 0x5f
	binary.BigEndian.PutUint16(c[4:], prsaPreemptAbort)
	binary.BigEndian.PutUint32(c[6:], 1<<16)
	r = e.do(n, c, nil)
	wantGood(t, r, "rsoc one")
	if r.data[1]&7 != 3 {
		t.Fatalf("SUPPORT %d for 5f/5, want 3 (supported as the standard says)", r.data[1]&7)
	}
}
