package checker

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"
)

// Kind is a read or a write of one block.
type Kind uint8

const (
	Read Kind = iota + 1
	Write
)

func (k Kind) String() string {
	switch k {
	case Read:
		return "read"
	case Write:
		return "write"
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Outcome is what the client learned about an operation.
type Outcome uint8

const (
	// OK: the target acknowledged the operation.
	OK Outcome = iota + 1
	// Failed: the operation certainly did not take effect (not sent,
	// refused with NOT READY, ILLEGAL REQUEST, BUSY, ...).
	Failed
	// Indeterminate: it may or may not have taken effect (connection lost
	// or timeout after sending, ABORTED COMMAND, ...). An indeterminate
	// write may take effect at any time after its call; an indeterminate
	// read tells nothing and is not checked.
	Indeterminate
)

func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case Failed:
		return "failed"
	case Indeterminate:
		return "indeterminate"
	}
	return fmt.Sprintf("outcome(%d)", o)
}

// Op is one read or write of one block by one client.
type Op struct {
	// Client is the client's id, unique in the history and small
	// (porcupine's visualization draws one row per client).
	Client int    `json:"client"`
	Site   string `json:"site"`
	Block  uint64 `json:"block"`
	Kind   Kind   `json:"kind"`
	// Value is the stamp written, or what the read returned (the zero
	// Value for an all-zero block).
	Value Value `json:"value"`
	// Corrupt marks a read whose block was neither zeros nor a valid
	// stamp for this block (torn, corrupted, or another block's data).
	Corrupt bool `json:"corrupt,omitempty"`
	// Call and Return are times since the history began. For an
	// indeterminate op, Return is when the client gave up.
	Call    time.Duration `json:"call"`
	Return  time.Duration `json:"return"`
	Outcome Outcome       `json:"outcome"`
	// Err is the error text for a failed or indeterminate op.
	Err string `json:"err,omitempty"`
}

func (o Op) String() string {
	what := o.Value.String()
	if o.Corrupt {
		what = "corrupt block"
		if !o.Value.IsZero() {
			what = "foreign block " + o.Value.String()
		}
	}
	s := fmt.Sprintf("client %d (%s) %s block %d %s [%v, %v] %s", o.Client, o.Site, o.Kind, o.Block, what,
		o.Call.Round(time.Microsecond), o.Return.Round(time.Microsecond), o.Outcome)
	if o.Err != "" {
		s += ": " + o.Err
	}
	return s
}

// FaultEvent is a fault step as it was executed.
type FaultEvent struct {
	// At is when the step ran, since the history began.
	At   time.Duration `json:"at"`
	Step Step          `json:"step"`
	Err  string        `json:"err,omitempty"`
}

// Label is a short text for plots and reports, e.g. "kill9 site-a".
func (e FaultEvent) Label() string { return e.Step.Label() }

// History records operations and faults from many goroutines. Times are
// monotonic durations since NewHistory.
type History struct {
	start  time.Time
	mu     sync.Mutex
	ops    []Op
	faults []FaultEvent
}

// NewHistory starts an empty history now.
func NewHistory() *History { return &History{start: time.Now()} }

// HistoryOf builds a history from recorded (or made up) operations and
// faults, e.g. to check a modified copy of a recorded one.
func HistoryOf(ops []Op, faults []FaultEvent) *History {
	return &History{
		start:  time.Now(),
		ops:    append([]Op(nil), ops...),
		faults: append([]FaultEvent(nil), faults...),
	}
}

// Start is the wall-clock time the history began.
func (h *History) Start() time.Time { return h.start }

// Now is the time since the history began (monotonic).
func (h *History) Now() time.Duration { return time.Since(h.start) }

// Add records an operation.
func (h *History) Add(op Op) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// AddFault records an executed fault.
func (h *History) AddFault(ev FaultEvent) {
	h.mu.Lock()
	h.faults = append(h.faults, ev)
	h.mu.Unlock()
}

// Ops returns a copy of the operations in the order they were added.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// Faults returns a copy of the executed faults, by time.
func (h *History) Faults() []FaultEvent {
	h.mu.Lock()
	f := append([]FaultEvent(nil), h.faults...)
	h.mu.Unlock()
	sort.SliceStable(f, func(i, j int) bool { return f[i].At < f[j].At })
	return f
}

// Len is the number of operations recorded.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

type historyFile struct {
	Start  time.Time    `json:"start"`
	Ops    []Op         `json:"ops"`
	Faults []FaultEvent `json:"faults"`
}

// SaveJSON writes the history to path (for reports and for checking it
// again later with LoadJSON).
func (h *History) SaveJSON(path string) error {
	b, err := json.Marshal(historyFile{Start: h.start, Ops: h.Ops(), Faults: h.Faults()})
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// LoadJSON reads a history SaveJSON wrote.
func LoadJSON(path string) (*History, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f historyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	h := HistoryOf(f.Ops, f.Faults)
	h.start = f.Start
	return h, nil
}
