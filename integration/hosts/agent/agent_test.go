package agent

import (
	"bufio"
	"encoding/json"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// harness is the host's end of a connection to Serve.
type harness struct {
	t   *testing.T
	enc *json.Encoder
	sc  *bufio.Scanner
}

func newHarness(t *testing.T) *harness {
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(b) }()
	t.Cleanup(func() {
		a.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after the connection closed")
		}
	})
	a.SetDeadline(time.Now().Add(30 * time.Second))
	return &harness{t: t, enc: json.NewEncoder(a), sc: bufio.NewScanner(a)}
}

func (h *harness) send(r Request) {
	if err := h.enc.Encode(r); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) recv() Message {
	if !h.sc.Scan() {
		h.t.Fatalf("no message: %v", h.sc.Err())
	}
	var m Message
	if err := json.Unmarshal(h.sc.Bytes(), &m); err != nil {
		h.t.Fatal(err)
	}
	return m
}

func TestRun(t *testing.T) {
	h := newHarness(t)
	h.send(Request{ID: 1, Op: "run", Argv: []string{"/bin/sh", "-c", "echo out; echo err >&2; exit 3"}})
	m := h.recv()
	if m.ID != 1 || m.Exit != 3 || m.Stdout != "out\n" || m.Stderr != "err\n" || m.Err != "" {
		t.Fatalf("run: %+v", m)
	}
	h.send(Request{ID: 2, Op: "run", Argv: []string{"/bin/sh", "-c", "sleep 30"}, TimeoutMS: 200})
	start := time.Now()
	m = h.recv()
	if m.ID != 2 || m.Exit != -1 || !strings.Contains(m.Err, "timed out") || time.Since(start) > 10*time.Second {
		t.Fatalf("run past its timeout: %+v after %v", m, time.Since(start))
	}
	h.send(Request{ID: 3, Op: "run", Argv: []string{"/nonexistent/program"}})
	if m = h.recv(); m.ID != 3 || m.Err == "" {
		t.Fatalf("missing program: %+v", m)
	}
	h.send(Request{ID: 4, Op: "frobnicate"})
	if m = h.recv(); m.ID != 4 || !strings.Contains(m.Err, "unknown op") {
		t.Fatalf("unknown op: %+v", m)
	}
}

func TestStartSignal(t *testing.T) {
	h := newHarness(t)
	h.send(Request{ID: 1, Op: "start", Name: "p", Argv: []string{"/bin/sh", "-c", `trap 'echo bye; exit 7' TERM; echo hello; while :; do sleep 0.05; done`}})
	if m := h.recv(); m.ID != 1 || m.Err != "" {
		t.Fatalf("start: %+v", m)
	}
	if m := h.recv(); m.Proc != "p" || m.Line != "hello" {
		t.Fatalf("want the line hello, got %+v", m)
	}
	h.send(Request{ID: 2, Op: "start", Name: "p", Argv: []string{"/bin/true"}})
	if m := h.recv(); m.ID != 2 || !strings.Contains(m.Err, "already running") {
		t.Fatalf("second start of p: %+v", m)
	}
	h.send(Request{ID: 3, Op: "signal", Name: "p", Signal: int(syscall.SIGTERM)})
	var got []Message
	for len(got) < 3 {
		got = append(got, h.recv())
	}
	var acked, bye, exited bool
	for _, m := range got {
		switch {
		case m.ID == 3 && m.Err == "":
			acked = true
		case m.Proc == "p" && m.Line == "bye":
			bye = true
		case m.Proc == "p" && m.Exited && m.Exit == 7:
			exited = true
		}
	}
	if !acked || !bye || !exited {
		t.Fatalf("after SIGTERM: %+v", got)
	}
	h.send(Request{ID: 4, Op: "signal", Name: "p", Signal: int(syscall.SIGTERM)})
	if m := h.recv(); m.ID != 4 || !strings.Contains(m.Err, "no process") {
		t.Fatalf("signal to an exited process: %+v", m)
	}
}

// TestExecRefusals covers the exec requests that must not replace the
// agent (a successful exec would replace the test binary; the host test
// TestLiveMigrationAcrossSites runs that path in the guest).
func TestExecRefusals(t *testing.T) {
	h := newHarness(t)
	h.send(Request{ID: 1, Op: "exec"})
	if m := h.recv(); m.ID != 1 || !strings.Contains(m.Err, "empty argv") {
		t.Fatalf("exec without argv: %+v", m)
	}
	h.send(Request{ID: 2, Op: "exec", Argv: []string{"/nonexistent/program"}})
	if m := h.recv(); m.ID != 2 || m.Err == "" {
		t.Fatalf("exec of a missing program: %+v", m)
	}
	h.send(Request{ID: 3, Op: "start", Name: "p", Argv: []string{"/bin/sh", "-c", "sleep 30"}})
	if m := h.recv(); m.ID != 3 || m.Err != "" {
		t.Fatalf("start: %+v", m)
	}
	h.send(Request{ID: 4, Op: "exec", Argv: []string{"/bin/true"}})
	if m := h.recv(); m.ID != 4 || !strings.Contains(m.Err, "still running") {
		t.Fatalf("exec while a started process runs: %+v", m)
	}
}
