package target

import (
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestRedirectAddress(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"127.0.0.2:3261", "127.0.0.2:3261"},
		{"127.0.0.2:3261,2", "127.0.0.2:3261"}, // the tag is dropped (RFC 7143 section 13.8)
		{"127.0.0.2", "127.0.0.2"},
		{"site-b.example.com:3260", "site-b.example.com:3260"},
		{"site-b", "site-b"},
		{"[::1]:3261", "[::1]:3261"},
		{"[fe80::1]", "[fe80::1]"},
		{"[::1]:3261,7", "[::1]:3261"},
	} {
		got, err := redirectAddress(c.in)
		if err != nil || got != c.want {
			t.Errorf("redirectAddress(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{
		"", ",1", ":3260", "host:", "host:0", "host:65536", "host:x", "host:3260,", "host:3260,tag",
		"::1", "::1:3260", "[::1", "[::1]x", "[127.0.0.1]:3260", "[nonsense]",
		"-host", "host-", "a..b", "ho st", "host\x00", "host=x", "300.1.1.1", "1.2.3",
		strings.Repeat("a", 256),
	} {
		if got, err := redirectAddress(bad); err == nil {
			t.Errorf("redirectAddress(%q) = %q, want an error", bad, got)
		}
	}
}

// redirectHook records its calls and answers what the test set.
type redirectHook struct {
	mu        sync.Mutex
	calls     []string // "initiator target"
	addr      string
	permanent bool
	on        atomic.Bool
	panics    bool
}

func (h *redirectHook) fn(initiator, target, _ string) (string, bool, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, initiator+" "+target)
	if h.panics {
		panic("hook bug")
	}
	return h.addr, h.permanent, h.on.Load()
}

func (h *redirectHook) set(addr string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.addr = addr
}

func (h *redirectHook) called() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.calls)
}

// expectClosed fails unless the target has closed the connection.
func (in *initiator) expectClosed() {
	in.t.Helper()
	p, err := in.rd.ReadPDU()
	if err == nil {
		in.t.Fatalf("connection still open: got opcode 0x%02x", p.Opcode())
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "reset") {
		in.t.Fatalf("read after the redirect: %v, want EOF", err)
	}
}

// TestE2ELoginRedirect: with the hook on, the first login request of a
// normal session is answered with status class 1 (detail 1 temporary, 2
// permanent) and TargetAddress, before any authentication, and the
// target closes the connection (RFC 7143 section 11.13.5).
func TestE2ELoginRedirect(t *testing.T) {
	for _, c := range []struct {
		name      string
		permanent bool
		chap      bool
		startOp   bool
		status    uint16
	}{
		{"temporary", false, false, false, 0x0101},
		{"permanent", true, false, false, 0x0102},
		{"before CHAP", false, true, false, 0x0101},
		{"operational stage first", true, false, true, 0x0102},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := &redirectHook{addr: "127.0.0.2:3261,2", permanent: c.permanent}
			h.on.Store(true)
			tc := TargetConfig{}
			auth := "None"
			if c.chap {
				tc.CHAP = &CHAPConfig{Username: "u", Secret: "secret-secret"}
				auth = "CHAP"
			}
			s := startServer(t, DefaultLimits(), tc, Config{Redirect: h.fn})
			in := dial(t, s.addr)
			kvs := []KV{{"InitiatorName", e2eInitiator}, {"SessionType", "Normal"}, {"TargetName", e2eTarget}}
			csg, nsg := stageSecurity, stageOperational
			if c.startOp {
				csg, nsg = stageOperational, stageFullFeature
				kvs = append(kvs, KV{"HeaderDigest", "None"})
			} else {
				kvs = append(kvs, KV{"AuthMethod", auth})
			}
			r, m := in.loginStep(csg, nsg, !c.chap, kvs)
			if st := loginStatusOf(r); st != c.status {
				t.Fatalf("status 0x%04x, want 0x%04x", st, c.status)
			}
			if r.BHS[36] != 1 {
				t.Fatalf("status class %d, want 1 (redirection)", r.BHS[36])
			}
			if len(m) != 1 || m["TargetAddress"] != "127.0.0.2:3261" {
				t.Fatalf("keys %v, want only TargetAddress=127.0.0.2:3261", m)
			}
			if r.Flags()&0x80 != 0 || r.u16(14) != 0 {
				t.Fatalf("flags 0x%02x TSIH %d: a redirect grants nothing", r.Flags(), r.u16(14))
			}
			in.expectClosed()
			if h.called() != 1 || h.calls[0] != e2eInitiator+" "+e2eTarget {
				t.Fatalf("hook calls %q", h.calls)
			}
		})
	}
}

// TestE2ELoginRedirectRaw pins the exact bytes of a redirect response.
func TestE2ELoginRedirectRaw(t *testing.T) {
	h := &redirectHook{addr: "[::1]:3262"}
	h.on.Store(true)
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{Redirect: h.fn})
	in := dial(t, s.addr)
	in.send(in.loginPDU(stageSecurity, stageOperational, true, false,
		[]KV{{"InitiatorName", e2eInitiator}, {"TargetName", e2eTarget}, {"AuthMethod", "None"}}))
	r := in.recv()
	want := "TargetAddress=[::1]:3262\x00"
	switch {
	case r.BHS[0] != opLoginRsp:
		t.Fatalf("opcode 0x%02x", r.BHS[0])
	case r.BHS[1] != stageSecurity<<2:
		t.Fatalf("flags 0x%02x, want T=0 CSG=0", r.BHS[1])
	case r.BHS[36] != 0x01 || r.BHS[37] != 0x01:
		t.Fatalf("status %02x%02x, want 0101", r.BHS[36], r.BHS[37])
	case string(r.BHS[8:14]) != string(in.isid[:]) || r.ITT() != in.itt:
		t.Fatalf("ISID %x ITT %x not echoed", r.BHS[8:14], r.ITT())
	case r.dataSegmentLength() != len(want) || string(r.Data) != want:
		t.Fatalf("data %q (length %d), want %q", r.Data, r.dataSegmentLength(), want)
	}
	in.expectClosed()
}

// TestE2ELoginNotRedirected: discovery sessions, a hook that says no, a
// bad address, the portal the initiator is on and a panicking hook all
// leave the login here.
func TestE2ELoginNotRedirected(t *testing.T) {
	t.Run("discovery", func(t *testing.T) {
		h := &redirectHook{addr: "127.0.0.2:3261"}
		h.on.Store(true)
		s := startServer(t, DefaultLimits(), TargetConfig{}, Config{Redirect: h.fn})
		in := dial(t, s.addr)
		in.login(loginOpts{sessionType: "Discovery"})
		in.logout()
		if h.called() != 0 {
			t.Fatalf("hook called %d times for a discovery session", h.called())
		}
	})
	t.Run("hook says no", func(t *testing.T) {
		h := &redirectHook{addr: "127.0.0.2:3261"}
		s := startServer(t, DefaultLimits(), TargetConfig{}, Config{Redirect: h.fn})
		in := dial(t, s.addr)
		in.login(loginOpts{})
		in.logout()
		if h.called() != 1 {
			t.Fatalf("hook called %d times, want 1", h.called())
		}
	})
	for _, addr := range []string{"", "not an address", "127.0.0.2:99999", "::1"} {
		t.Run("bad address "+addr, func(t *testing.T) {
			h := &redirectHook{addr: addr}
			h.on.Store(true)
			s := startServer(t, DefaultLimits(), TargetConfig{}, Config{Redirect: h.fn})
			in := dial(t, s.addr)
			in.login(loginOpts{})
			in.logout()
		})
	}
	t.Run("own portal", func(t *testing.T) {
		h := &redirectHook{}
		h.on.Store(true)
		s := startServer(t, DefaultLimits(), TargetConfig{}, Config{Redirect: h.fn, Portals: []string{"192.0.2.7:3260"}})
		h.set(s.addr)
		in := dial(t, s.addr)
		in.login(loginOpts{})
		in.logout()
		h.set("192.0.2.7") // a configured portal, default port
		in = dial(t, s.addr)
		in.login(loginOpts{})
		in.logout()
	})
	t.Run("panicking hook", func(t *testing.T) {
		h := &redirectHook{panics: true}
		s := startServer(t, DefaultLimits(), TargetConfig{}, Config{Redirect: h.fn})
		in := dial(t, s.addr)
		in.login(loginOpts{})
		in.logout()
	})
	t.Run("initiator not allowed", func(t *testing.T) {
		h := &redirectHook{addr: "127.0.0.2:3261"}
		h.on.Store(true)
		s := startServer(t, DefaultLimits(), TargetConfig{AllowInitiators: []string{"iqn.2024-01.org.example:other"}}, Config{Redirect: h.fn})
		in := dial(t, s.addr)
		if st := in.tryLogin(loginOpts{}); st != 0x0202 {
			t.Fatalf("status 0x%04x, want 0x0202", st)
		}
		if h.called() != 0 {
			t.Fatal("hook asked about an initiator the target does not admit")
		}
	})
	t.Run("connection joining a session", func(t *testing.T) {
		h := &redirectHook{addr: "127.0.0.2:3261"}
		s := startServer(t, DefaultLimits(), TargetConfig{}, Config{Redirect: h.fn})
		in := dial(t, s.addr)
		in.login(loginOpts{})
		h.on.Store(true)
		// The same ISID, TSIH and CID: connection reinstatement (RFC 7143
		// section 6.3.4) into the session that lives here.
		in2 := dial(t, s.addr)
		in2.tsih = in.tsih
		in2.login(loginOpts{})
		in2.logout()
		if h.called() != 1 {
			t.Fatalf("hook called %d times, want 1 (the leading login only)", h.called())
		}
	})
}
