package hosts

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// QMP is a connection to a QEMU's monitor (the QEMU Machine Protocol,
// docs/interop/qmp-spec in QEMU: one JSON object per line each way).
// Commands run one at a time; events are kept with QEMU's timestamp (the
// host's clock when QEMU emitted them), so two QEMUs' events on one host
// can be subtracted.
type QMP struct {
	conn net.Conn

	cmd     sync.Mutex // one command at a time
	replies chan qmpReply

	mu     sync.Mutex
	events []QMPEvent
	news   chan struct{} // closed and replaced when an event arrives
	err    error         // why the connection ended
	done   chan struct{}
}

// QMPEvent is an asynchronous event (STOP, RESUME, MIGRATION, ...).
type QMPEvent struct {
	Name string
	Time time.Time
	Data json.RawMessage
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// DialQMP connects to the monitor socket at path (retrying until it
// exists, up to d), reads the greeting and leaves capabilities
// negotiation mode.
func DialQMP(ctx context.Context, path string, d time.Duration) (*QMP, error) {
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(d); ; {
		if conn, err = net.DialTimeout("unix", path, 5*time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("qmp %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	q := &QMP{conn: conn, replies: make(chan qmpReply, 1), news: make(chan struct{}), done: make(chan struct{})}
	greeting := make(chan error, 1)
	go q.read(greeting)
	select {
	case err = <-greeting:
	case <-time.After(d):
		err = fmt.Errorf("no QMP greeting within %v", d)
	}
	if err == nil {
		err = q.Execute(ctx, d, "qmp_capabilities", nil, nil)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	return q, nil
}

func (q *QMP) read(greeting chan<- error) {
	sc := bufio.NewScanner(q.conn)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	first := true
	for sc.Scan() {
		var m struct {
			QMP       json.RawMessage `json:"QMP"`
			Event     string          `json:"event"`
			Timestamp struct {
				Seconds      int64 `json:"seconds"`
				Microseconds int64 `json:"microseconds"`
			} `json:"timestamp"`
			Data json.RawMessage `json:"data"`
			qmpReply
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			q.fail(fmt.Errorf("bad QMP message %q: %w", sc.Bytes(), err))
			return
		}
		switch {
		case first:
			first = false
			if m.QMP == nil {
				greeting <- fmt.Errorf("QMP greeting expected, got %q", sc.Bytes())
			} else {
				greeting <- nil
			}
		case m.Event != "":
			q.mu.Lock()
			q.events = append(q.events, QMPEvent{Name: m.Event, Time: time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000), Data: m.Data})
			close(q.news)
			q.news = make(chan struct{})
			q.mu.Unlock()
		default:
			select {
			case q.replies <- m.qmpReply:
			default: // an answer nobody waits for (its command timed out)
			}
		}
	}
	err := sc.Err()
	if err == nil {
		err = errors.New("QEMU closed its monitor")
	}
	q.fail(err)
}

func (q *QMP) fail(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err == nil {
		q.err = err
		close(q.done)
	}
}

// Execute runs a command with args (nil for none) and decodes its return
// value into out (nil to ignore it), waiting up to d.
func (q *QMP) Execute(ctx context.Context, d time.Duration, cmd string, args, out any) error {
	q.cmd.Lock()
	defer q.cmd.Unlock()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	// Drop a late answer to an earlier command that timed out.
	select {
	case <-q.replies:
	default:
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-q.replies:
		if r.Error != nil {
			return fmt.Errorf("qmp %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		}
		if out != nil {
			if err := json.Unmarshal(r.Return, out); err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
		}
		return nil
	case <-q.done:
		return fmt.Errorf("qmp %s: %w", cmd, q.err)
	case <-t.C:
		return fmt.Errorf("qmp %s: no answer within %v", cmd, d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// WaitEvent returns the first event called name that arrived at or after
// since (QEMU's timestamp), waiting up to d for it.
func (q *QMP) WaitEvent(ctx context.Context, name string, since time.Time, d time.Duration) (QMPEvent, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		q.mu.Lock()
		for _, e := range q.events {
			if e.Name == name && !e.Time.Before(since) {
				q.mu.Unlock()
				return e, nil
			}
		}
		news, err := q.news, q.err
		q.mu.Unlock()
		if err != nil {
			return QMPEvent{}, fmt.Errorf("qmp: waiting for %s: %w", name, err)
		}
		select {
		case <-news:
		case <-q.done:
		case <-t.C:
			return QMPEvent{}, fmt.Errorf("qmp: no %s event within %v", name, d)
		case <-ctx.Done():
			return QMPEvent{}, ctx.Err()
		}
	}
}

// eventsSince returns the events that arrived at or after since.
func (q *QMP) eventsSince(since time.Time) []QMPEvent {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []QMPEvent
	for _, e := range q.events {
		if !e.Time.Before(since) {
			out = append(out, e)
		}
	}
	return out
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }
