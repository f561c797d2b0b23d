package target

import (
	"testing"
	"time"
)

// TestE2EMemoryBudget: logins that would take the connections' reserved
// memory over Config.MemoryBudget are refused with 0x0302 (out of
// resources); a logout gives the memory back.
func TestE2EMemoryBudget(t *testing.T) {
	// What one connection reserves, as this initiator negotiates it.
	probe := startServer(t, DefaultLimits(), TargetConfig{}, Config{MemoryBudget: 1 << 40})
	in := dial(t, probe.addr)
	in.login(loginOpts{})
	per := probe.srv.MemoryHeld()
	if per < connBudget {
		t.Fatalf("a connection reserved %d bytes, less than its own budget %d", per, connBudget)
	}

	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{MemoryBudget: 2*per + per/2})
	var ins []*initiator
	for i := range 2 {
		in := dial(t, s.addr)
		in.isid[5] = byte(i + 1)
		in.login(loginOpts{})
		ins = append(ins, in)
	}
	if held := s.srv.MemoryHeld(); held != 2*per {
		t.Fatalf("two connections hold %d, want %d", held, 2*per)
	}
	third := dial(t, s.addr)
	third.isid[5] = 3
	if st := third.tryLogin(loginOpts{}); st != 0x0302 {
		t.Fatalf("login over the budget: status 0x%04x, want 0x0302", st)
	}
	// Discovery reserves little and still fits.
	disc := dial(t, s.addr)
	disc.login(loginOpts{sessionType: "Discovery"})
	disc.logout()

	ins[0].logout()
	deadline := time.Now().Add(5 * time.Second)
	for s.srv.MemoryHeld() != per {
		if time.Now().After(deadline) {
			t.Fatalf("after a logout %d bytes held, want %d", s.srv.MemoryHeld(), per)
		}
		time.Sleep(time.Millisecond)
	}
	again := dial(t, s.addr)
	again.isid[5] = 4
	again.login(loginOpts{})
}

func TestConnMemory(t *testing.T) {
	p := Params{SessionType: "Normal", FirstBurstLength: 65536, ImmediateData: true, InitialR2T: true}
	if got, want := connMemory(p, 32), int64(connBudget+32*65536); got != want {
		t.Fatalf("immediate data: %d, want %d", got, want)
	}
	p.ImmediateData = false
	if got := connMemory(p, 32); got != connBudget {
		t.Fatalf("no unsolicited data: %d, want %d", got, connBudget)
	}
	p.SessionType = "Discovery"
	if got := connMemory(p, 32); got != maxTextAnswer {
		t.Fatalf("discovery: %d, want %d", got, maxTextAnswer)
	}
}
