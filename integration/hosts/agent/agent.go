// Package agent is the control channel between the host-test harness and
// its Linux guest: one TCP connection that the guest dials out to (QEMU's
// user network maps the guest's 10.0.2.2 to the host's 127.0.0.1), one
// JSON message per line each way.
//
// The harness sends Requests; the guest answers each with a Message of
// the same ID. "run" runs a command to its end (bounded by its timeout)
// and answers with its exit status and output. "start" starts a command
// in the background and answers at once; every line it prints then
// arrives as a Message naming the process, and its end as one with
// Exited set. "signal" signals a started process. "exec" answers and
// then replaces the agent's process with Argv (same pid, so the guest's
// init keeps waiting on it); the connection closes, and the new program
// is expected to dial the harness again. The live-migration test uses it
// to move the agent off the 9p share, which blocks migration while
// mounted, and onto a channel that migrates with the guest.
package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Request is one command from the harness.
type Request struct {
	ID uint64 `json:"id"`
	// Op is "run", "start", "signal" or "exec".
	Op   string   `json:"op"`
	Argv []string `json:"argv,omitempty"`
	// Name names a started process ("start", "signal").
	Name string `json:"name,omitempty"`
	// TimeoutMS bounds a "run"; the command's process group is killed
	// when it passes. 0 means one minute.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	Signal    int   `json:"signal,omitempty"`
}

// Message is an answer to a request (ID set), or news of a started
// process (Proc set: a Line it printed, or Exited).
type Message struct {
	ID     uint64 `json:"id,omitempty"`
	Exit   int    `json:"exit"`
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
	// Err is set when the request could not be carried out at all (no
	// such program, a timeout, an unknown op).
	Err string `json:"err,omitempty"`

	Proc   string `json:"proc,omitempty"`
	Line   string `json:"line,omitempty"`
	Exited bool   `json:"exited,omitempty"`
}

// Serve answers requests read from rw until it is closed, then kills
// every process it started.
func Serve(rw io.ReadWriter) error {
	s := &server{enc: json.NewEncoder(rw), procs: map[string]*exec.Cmd{}}
	defer s.killAll()
	sc := bufio.NewScanner(rw)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var req Request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			return fmt.Errorf("bad request %q: %w", sc.Bytes(), err)
		}
		switch req.Op {
		case "run":
			go s.run(req)
		case "start":
			s.start(req)
		case "signal":
			s.signal(req)
		case "exec":
			if err := s.exec(req); err != nil {
				return err
			}
		default:
			s.send(Message{ID: req.ID, Exit: -1, Err: fmt.Sprintf("unknown op %q", req.Op)})
		}
	}
	return sc.Err()
}

type server struct {
	wmu sync.Mutex
	enc *json.Encoder

	mu    sync.Mutex
	procs map[string]*exec.Cmd
}

func (s *server) send(m Message) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.enc.Encode(m)
}

func (s *server) run(req Request) {
	if len(req.Argv) == 0 {
		s.send(Message{ID: req.ID, Exit: -1, Err: "empty argv"})
		return
	}
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, req.Argv[0], req.Argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	m := Message{ID: req.ID, Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		m.Exit, m.Err = -1, fmt.Sprintf("timed out after %v", timeout)
	case errors.As(err, &ee):
		m.Exit = ee.ExitCode()
	case err != nil:
		m.Exit, m.Err = -1, err.Error()
	}
	s.send(m)
}

func (s *server) start(req Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Name == "" || len(req.Argv) == 0 {
		s.send(Message{ID: req.ID, Exit: -1, Err: "start needs a name and argv"})
		return
	}
	if _, ok := s.procs[req.Name]; ok {
		s.send(Message{ID: req.ID, Exit: -1, Err: fmt.Sprintf("%s is already running", req.Name)})
		return
	}
	cmd := exec.Command(req.Argv[0], req.Argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		s.send(Message{ID: req.ID, Exit: -1, Err: err.Error()})
		return
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		s.send(Message{ID: req.ID, Exit: -1, Err: err.Error()})
		return
	}
	s.procs[req.Name] = cmd
	s.send(Message{ID: req.ID})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.send(Message{Proc: req.Name, Line: sc.Text()})
		}
		err := cmd.Wait()
		s.mu.Lock()
		delete(s.procs, req.Name)
		s.mu.Unlock()
		m := Message{Proc: req.Name, Exited: true}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			m.Exit = ee.ExitCode()
		} else if err != nil {
			m.Exit, m.Err = -1, err.Error()
		}
		s.send(m)
	}()
}

func (s *server) signal(req Request) {
	s.mu.Lock()
	cmd := s.procs[req.Name]
	s.mu.Unlock()
	if cmd == nil {
		s.send(Message{ID: req.ID, Exit: -1, Err: fmt.Sprintf("no process %q", req.Name)})
		return
	}
	if err := cmd.Process.Signal(syscall.Signal(req.Signal)); err != nil {
		s.send(Message{ID: req.ID, Exit: -1, Err: err.Error()})
		return
	}
	s.send(Message{ID: req.ID})
}

// exec replaces the process; it returns only if it could not. Processes
// still running from "start" would lose their reader, so it refuses
// while there are any.
func (s *server) exec(req Request) error {
	if len(req.Argv) == 0 {
		s.send(Message{ID: req.ID, Exit: -1, Err: "empty argv"})
		return nil
	}
	path, err := exec.LookPath(req.Argv[0])
	if err != nil {
		s.send(Message{ID: req.ID, Exit: -1, Err: err.Error()})
		return nil
	}
	s.mu.Lock()
	n := len(s.procs)
	s.mu.Unlock()
	if n > 0 {
		s.send(Message{ID: req.ID, Exit: -1, Err: fmt.Sprintf("exec: %d started processes still running", n)})
		return nil
	}
	s.send(Message{ID: req.ID})
	err = syscall.Exec(path, req.Argv, os.Environ())
	return fmt.Errorf("exec %s: %w", path, err)
}

func (s *server) killAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cmd := range s.procs {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
