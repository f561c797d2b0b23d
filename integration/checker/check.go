// Package checker checks block-level histories against DESIGN.md's
// invariants I1 (zero RPO: no acknowledged write is lost), I2 (one
// writer) and I3 (no stale reads) by testing them for linearizability
// with porcupine: every block is a register whose reads return the last
// value written (or zeros), across all sites and clients.
//
// The pieces: Stamp/ParseStamp make every written block unique and
// self-checking; History records operations and faults from many
// goroutines; Workload drives iSCSI clients at one or more sites and
// records what they see; Schedule generates a seeded, replayable fault
// schedule and runs it through a Faults implementation; Check decides
// and explains; PlotLatency draws write latency against the faults.
package checker

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Verdict is the checker's answer.
type Verdict string

const (
	// VerdictOK: the history is linearizable.
	VerdictOK Verdict = "ok"
	// VerdictIllegal: it is not; Result.Anomalies say where.
	VerdictIllegal Verdict = "illegal"
	// VerdictUnknown: porcupine ran out of time and no certain anomaly
	// was found.
	VerdictUnknown Verdict = "unknown"
)

// AnomalyKind classifies a violation.
type AnomalyKind string

const (
	// LostWrite: a read returned a value older than an acknowledged
	// write that completed before the read began, and no later read
	// returned that write's value (or the value of a write begun after it
	// was acknowledged and before the read began): as far as the history
	// shows, the acknowledged data is gone (I1).
	LostWrite AnomalyKind = "lost write"
	// StaleRead: a read returned a value older than one that provably
	// existed before it began (an acknowledged write, or another read
	// that had already returned the newer value), while the newer value
	// is seen again later or was never acknowledged: the read was served
	// from a stale copy (I3).
	StaleRead AnomalyKind = "stale read"
	// CorruptRead: the block was neither zeros nor a valid stamp for
	// this block (torn write, corruption, another block's data).
	CorruptRead AnomalyKind = "corrupt read"
	// PhantomRead: a read returned a stamp that no write in the history
	// wrote.
	PhantomRead AnomalyKind = "phantom read"
	// FailedWriteApplied: a read returned the value of a write that was
	// reported as certainly not executed.
	FailedWriteApplied AnomalyKind = "failed write applied"
	// FutureRead: a read returned a value whose write began only after
	// the read had returned.
	FutureRead AnomalyKind = "read from the future"
	// NotLinearizable: porcupine found no linearization and none of the
	// simple patterns above explains why (see the visualization).
	NotLinearizable AnomalyKind = "not linearizable"
)

// Anomaly is one explained violation.
type Anomaly struct {
	Kind  AnomalyKind
	Block uint64
	// Read is the offending read (zero for NotLinearizable).
	Read Op
	// Source is the write whose value the read returned, when known.
	Source *Op
	// Newer proves a newer value existed before the read began: an
	// acknowledged write, or a read that had returned the newer value.
	Newer *Op
	// Possible lists what the read could have returned given the writes
	// alone (acknowledged ones that were not overwritten before it began,
	// concurrent and indeterminate ones).
	Possible []Value
	// Text explains it in a sentence or three.
	Text string
}

// Result is the outcome of Check.
type Result struct {
	Verdict Verdict
	// Ops is the number of operations given to porcupine: acknowledged
	// reads and acknowledged or indeterminate writes.
	Ops int
	// Reads and Writes count the checked ops; IndeterminateWrites is the
	// part of Writes whose outcome is unknown.
	Reads, Writes, IndeterminateWrites int
	// Dropped counts ops that carry no information: failed ops and reads
	// that did not complete.
	Dropped int
	// Blocks is the number of blocks (partitions) checked.
	Blocks int
	// IllegalBlocks are the blocks without a linearization.
	IllegalBlocks []uint64
	Anomalies     []Anomaly
	// Explanation is a human-readable summary naming the offending
	// operations.
	Explanation string
	// Elapsed is how long the check took.
	Elapsed time.Duration

	model  porcupine.Model
	info   porcupine.LinearizationInfo
	faults []FaultEvent
}

// OK is true for VerdictOK.
func (r Result) OK() bool { return r.Verdict == VerdictOK }

func (r Result) String() string {
	s := fmt.Sprintf("%s: %d ops (%d reads, %d writes of which %d indeterminate; %d dropped) on %d blocks, checked in %v",
		r.Verdict, r.Ops, r.Reads, r.Writes, r.IndeterminateWrites, r.Dropped, r.Blocks, r.Elapsed.Round(time.Millisecond))
	if r.Explanation != "" {
		s += "\n" + r.Explanation
	}
	return s
}

// Options tune CheckWith.
type Options struct {
	// Timeout bounds porcupine's search; 0 means none.
	Timeout time.Duration
	// HTMLPath, when set, receives porcupine's visualization (with the
	// faults and anomalies marked).
	HTMLPath string
}

// Check checks h for linearizability of every block as a register, with
// porcupine bounded by timeout (0: no bound), and explains violations.
func Check(h *History, timeout time.Duration) Result {
	return CheckWith(h, Options{Timeout: timeout})
}

// regOp is a porcupine input: one checked operation.
type regOp struct {
	idx     int // into the checked ops
	write   bool
	block   uint64
	value   Value
	corrupt bool
}

// CheckWith is Check with options. When HTMLPath is set and writing the
// visualization fails, the error is added to the explanation.
func CheckWith(h *History, opts Options) Result {
	start := time.Now()
	res := Result{faults: h.Faults()}
	var ops []Op
	failedWrites := map[uint64][]Op{} // not checked, but explain reads of them
	for _, op := range h.Ops() {
		if op.Return < op.Call {
			op.Return = op.Call
		}
		if op.Kind == Write && op.Outcome == Failed {
			failedWrites[op.Block] = append(failedWrites[op.Block], op)
		}
		switch {
		case op.Kind == Write && op.Outcome == OK:
			res.Writes++
		case op.Kind == Write && op.Outcome == Indeterminate:
			res.Writes++
			res.IndeterminateWrites++
		case op.Kind == Read && op.Outcome == OK:
			res.Reads++
		default:
			res.Dropped++
			continue
		}
		ops = append(ops, op)
	}
	res.Ops = len(ops)

	// Partitions by block, in block order: partition i is blocks[i].
	byBlock := map[uint64][]int{}
	for i, op := range ops {
		byBlock[op.Block] = append(byBlock[op.Block], i)
	}
	blocks := make([]uint64, 0, len(byBlock))
	for b := range byBlock {
		blocks = append(blocks, b)
	}
	slices.Sort(blocks)
	res.Blocks = len(blocks)

	pops := make([]porcupine.Operation, len(ops))
	for i, op := range ops {
		ret := int64(op.Return)
		if op.Kind == Write && op.Outcome == Indeterminate {
			// It may take effect at any time after its call.
			ret = math.MaxInt64
		}
		meta := op.Site + ", " + op.Outcome.String()
		if op.Err != "" {
			meta += ": " + op.Err
		}
		pops[i] = porcupine.Operation{
			ClientId: op.Client,
			Input:    regOp{idx: i, write: op.Kind == Write, block: op.Block, value: op.Value, corrupt: op.Corrupt},
			Call:     int64(op.Call),
			Output:   op.Value,
			Return:   ret,
			Metadata: meta,
		}
	}
	res.model = registerModel()
	verdict, info := porcupine.CheckOperationsVerbose(res.model, pops, opts.Timeout)
	res.info = info

	var suspects []uint64
	switch verdict {
	case porcupine.Ok:
		res.Verdict = VerdictOK
	case porcupine.Illegal:
		res.Verdict = VerdictIllegal
		partials := info.PartialLinearizations()
		for i, b := range blocks {
			longest := 0
			if i < len(partials) {
				for _, p := range partials[i] {
					longest = max(longest, len(p))
				}
			}
			if longest < len(byBlock[b]) {
				res.IllegalBlocks = append(res.IllegalBlocks, b)
				suspects = append(suspects, b)
			}
		}
	default:
		res.Verdict = VerdictUnknown
		suspects = blocks
	}
	for _, b := range suspects {
		var bops []Op
		for _, i := range byBlock[b] {
			bops = append(bops, ops[i])
		}
		bops = append(bops, failedWrites[b]...)
		found := analyzeBlock(b, bops)
		if len(found) == 0 && res.Verdict == VerdictIllegal {
			found = []Anomaly{notLinearizable(b, ops, byBlock[b], partialsFor(info, blocks, b), bops)}
		}
		res.Anomalies = append(res.Anomalies, found...)
	}
	if res.Verdict == VerdictUnknown && len(res.Anomalies) > 0 {
		// Each pattern analyzeBlock finds rules out every linearization.
		res.Verdict = VerdictIllegal
		for _, a := range res.Anomalies {
			if len(res.IllegalBlocks) == 0 || res.IllegalBlocks[len(res.IllegalBlocks)-1] != a.Block {
				res.IllegalBlocks = append(res.IllegalBlocks, a.Block)
			}
		}
	}
	res.Explanation = explain(res, verdict)
	if opts.HTMLPath != "" {
		if err := res.WriteHTML(opts.HTMLPath); err != nil {
			res.Explanation += fmt.Sprintf("\n(visualization not written: %v)", err)
		}
	}
	res.Elapsed = time.Since(start)
	return res
}

func partialsFor(info porcupine.LinearizationInfo, blocks []uint64, b uint64) [][]int {
	i, ok := slices.BinarySearch(blocks, b)
	all := info.PartialLinearizations()
	if !ok || i >= len(all) {
		return nil
	}
	return all[i]
}

// registerModel is one block: reads return the last value written, or
// zeros before any write. It is partitioned by block.
func registerModel() porcupine.Model {
	return porcupine.Model{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			by := map[uint64][]porcupine.Operation{}
			for _, op := range history {
				b := op.Input.(regOp).block
				by[b] = append(by[b], op)
			}
			keys := make([]uint64, 0, len(by))
			for b := range by {
				keys = append(keys, b)
			}
			slices.Sort(keys)
			out := make([][]porcupine.Operation, len(keys))
			for i, b := range keys {
				out[i] = by[b]
			}
			return out
		},
		Init: func() any { return Value{} },
		Step: func(state, input, output any) (bool, any) {
			in := input.(regOp)
			if in.write {
				return true, in.value
			}
			st := state.(Value)
			return !in.corrupt && output.(Value) == st, st
		},
		Hash: func(state any) uint64 {
			v := state.(Value)
			return uint64(v.Client)*0x9e3779b97f4a7c15 ^ v.Seq*0xbf58476d1ce4e5b9 ^ v.LBA
		},
		DescribeOperation: func(input, output any) string {
			in := input.(regOp)
			if in.write {
				return fmt.Sprintf("write(%d, %s)", in.block, in.value)
			}
			if in.corrupt {
				return fmt.Sprintf("read(%d) -> corrupt", in.block)
			}
			return fmt.Sprintf("read(%d) -> %s", in.block, output.(Value))
		},
		DescribeState: func(state any) string { return state.(Value).String() },
		DescribeOperationMetadata: func(info any) string {
			if info == nil {
				return ""
			}
			return info.(string)
		},
	}
}

// analyzeBlock looks for violations that are certain from real-time
// order alone. Every pattern reported rules out all linearizations, so
// it is sound to report them whatever porcupine says; it does not find
// every violation (porcupine does).
func analyzeBlock(block uint64, ops []Op) []Anomaly {
	var writes, reads []*Op
	byValue := map[Value][]*Op{}
	for i := range ops {
		op := &ops[i]
		switch op.Kind {
		case Write:
			writes = append(writes, op)
			byValue[op.Value] = append(byValue[op.Value], op)
		case Read:
			if op.Outcome == OK {
				reads = append(reads, op)
			}
		}
	}
	// source is the write a value came from (nil for zeros), ok false
	// when no write that may have happened wrote it.
	source := func(v Value) (*Op, bool) {
		if v.IsZero() {
			return nil, true
		}
		for _, w := range byValue[v] {
			if w.Outcome != Failed {
				return w, true
			}
		}
		return nil, false
	}
	// before: a is certainly in effect before b begins (nil = zeros,
	// which precede everything).
	before := func(a, b *Op) bool {
		return a == nil || (a.Outcome == OK && a.Return < b.Call)
	}
	// Indexes that keep this linear-logarithmic in the history's length
	// (torture runs put tens of thousands of operations on one block):
	// acknowledged writes by completion, and reads of a known write by
	// completion, each with a running maximum of the start of the write.
	idx := newWriteIndex(writes)
	type readOfWrite struct{ r, w *Op }
	var known []readOfWrite
	for _, r := range reads {
		if r.Corrupt {
			continue
		}
		if w, ok := source(r.Value); ok && w != nil {
			known = append(known, readOfWrite{r, w})
		}
	}
	slices.SortFunc(known, func(a, b readOfWrite) int { return cmp.Compare(a.r.Return, b.r.Return) })
	latest := make([]int, len(known)) // latest[i]: the one in known[:i+1] whose write began last
	for i := range known {
		latest[i] = i
		if i > 0 && known[latest[i-1]].w.Call >= known[i].w.Call {
			latest[i] = latest[i-1]
		}
	}
	var out []Anomaly
	for _, r := range reads {
		a := Anomaly{Block: block, Read: *r}
		v := r.Value
		if r.Corrupt {
			a.Kind = CorruptRead
			a.Possible = idx.possible(r)
			a.Text = fmt.Sprintf("block %d: %s: %s returned a block that is neither zeros nor a valid stamp for this block", block, a.Kind, describe(r))
			if !v.IsZero() {
				a.Text += fmt.Sprintf(" (it holds %s, written for block %d)", v, v.LBA)
			}
			a.Text += "; it could have returned " + values(a.Possible) + "."
			out = append(out, a)
			continue
		}
		src, ok := source(v)
		if !ok {
			a.Possible = idx.possible(r)
			if ws := byValue[v]; len(ws) > 0 {
				a.Kind, a.Source = FailedWriteApplied, ws[0]
				a.Text = fmt.Sprintf("block %d: %s: %s returned %s, written by %s, which was reported as certainly not executed",
					block, a.Kind, describe(r), v, describe(ws[0]))
			} else {
				a.Kind = PhantomRead
				a.Text = fmt.Sprintf("block %d: %s: %s returned %s, which no write in the history wrote", block, a.Kind, describe(r), v)
			}
			a.Text += "; it could have returned " + values(a.Possible) + "."
			out = append(out, a)
			continue
		}
		a.Source = src
		if src != nil && src.Call > r.Return {
			a.Kind = FutureRead
			a.Possible = idx.possible(r)
			a.Text = fmt.Sprintf("block %d: %s: %s returned %s, but its write (%s) began only after the read returned",
				block, a.Kind, describe(r), v, describe(src))
			out = append(out, a)
			continue
		}
		// A newer value certainly in place before the read began: the
		// latest acknowledged write after the source, completed before
		// the read.
		if newer := idx.newerThan(src, r, before); newer != nil {
			a.Newer = newer
			a.Possible = idx.possible(r)
			// Did the newer data survive? A later read that returns it,
			// or a value written after it (and begun before this read),
			// says the data was there and this read was stale.
			var seenLater *Op
			for _, r2 := range reads {
				if r2.Call <= r.Return || r2.Corrupt {
					continue
				}
				if r2.Value == newer.Value {
					seenLater = r2
					break
				}
				if w2, ok := source(r2.Value); ok && w2 != nil && w2 != src && w2.Call > newer.Return && w2.Call < r.Call {
					seenLater = r2
					break
				}
			}
			if seenLater != nil {
				a.Kind = StaleRead
				a.Text = fmt.Sprintf("block %d: %s: %s returned %s%s, but %s had overwritten it before the read began; "+
					"a later read (%s) saw %s, so the data was there and this read was served from a stale copy; "+
					"it could have returned %s.",
					block, a.Kind, describe(r), v, srcText(src), describe(newer), describe(seenLater), seenLater.Value, values(a.Possible))
			} else {
				a.Kind = LostWrite
				a.Text = fmt.Sprintf("block %d: %s: %s returned %s%s, but %s had overwritten it and was acknowledged before the read began; "+
					"no later read returned it (or a value written after it and before this read began): as far as the history shows, the acknowledged write is gone; "+
					"it could have returned %s.",
					block, a.Kind, describe(r), v, srcText(src), describe(newer), values(a.Possible))
			}
			out = append(out, a)
			continue
		}
		// Or a newer value another read had already returned: of the
		// reads done before this one began, the one whose write began
		// last is the best witness.
		k := sort.Search(len(known), func(i int) bool { return known[i].r.Return >= r.Call })
		if k == 0 {
			continue
		}
		best := known[latest[k-1]]
		if best.w == src || !before(src, best.w) {
			continue
		}
		r2, w2 := best.r, best.w
		a.Kind, a.Newer = StaleRead, r2
		a.Possible = idx.possible(r)
		a.Text = fmt.Sprintf("block %d: %s: %s returned %s%s, but an earlier read (%s) had already returned %s, written by %s after that; "+
			"it could have returned %s.", block, a.Kind, describe(r), v, srcText(src), describe(r2), r2.Value, describe(w2), values(a.Possible))
		out = append(out, a)
	}
	return out
}

// writeIndex answers questions about one block's writes relative to a
// read: the acknowledged writes sorted by completion, with the latest
// start among each prefix.
type writeIndex struct {
	all     []*Op
	acked   []*Op           // Outcome OK, by Return
	maxCall []time.Duration // maxCall[i]: latest Call among acked[:i+1]
}

func newWriteIndex(writes []*Op) *writeIndex {
	x := &writeIndex{all: writes}
	for _, w := range writes {
		if w.Outcome == OK {
			x.acked = append(x.acked, w)
		}
	}
	slices.SortFunc(x.acked, func(a, b *Op) int { return cmp.Compare(a.Return, b.Return) })
	x.maxCall = make([]time.Duration, len(x.acked))
	for i, w := range x.acked {
		x.maxCall[i] = w.Call
		if i > 0 {
			x.maxCall[i] = max(x.maxCall[i], x.maxCall[i-1])
		}
	}
	return x
}

// ackedBefore is how many acknowledged writes completed before t.
func (x *writeIndex) ackedBefore(t time.Duration) int {
	return sort.Search(len(x.acked), func(i int) bool { return x.acked[i].Return >= t })
}

// newerThan is the acknowledged write that completed last before r
// began among those certainly after src (before(src, w)), or nil.
func (x *writeIndex) newerThan(src, r *Op, before func(a, b *Op) bool) *Op {
	if src != nil && src.Outcome != OK {
		return nil // nothing is certainly after a write of unknown outcome
	}
	for i := x.ackedBefore(r.Call) - 1; i >= 0; i-- {
		w := x.acked[i]
		if src != nil && w.Return < src.Return {
			break // it began before src ended, as every earlier one did
		}
		if w != src && before(src, w) {
			return w
		}
	}
	return nil
}

// possible lists the values r could have returned judging by the writes
// alone: zeros unless a write was acknowledged before r began, and every
// write that may have happened, begun before r returned, and not
// overwritten by an acknowledged write that began after it was
// acknowledged and completed before r began.
func (x *writeIndex) possible(r *Op) []Value {
	k := x.ackedBefore(r.Call)
	var latestStart time.Duration
	if k > 0 {
		latestStart = x.maxCall[k-1]
	}
	var out []Value
	if k == 0 {
		out = append(out, Value{})
	}
	for _, w := range x.all {
		if w.Outcome == Failed || w.Call > r.Return || (k > 0 && w.Outcome == OK && w.Return < latestStart) {
			continue
		}
		out = append(out, w.Value)
	}
	return out
}

func possible(r *Op, writes []*Op) []Value { return newWriteIndex(writes).possible(r) }

func describe(op *Op) string {
	verb := "read"
	if op.Kind == Write {
		verb = "write of " + op.Value.String()
	}
	s := fmt.Sprintf("client %d's %s at %s [%v, %v]", op.Client, verb, op.Site, dur(op.Call), dur(op.Return))
	if op.Outcome != OK {
		s += " (" + op.Outcome.String() + ")"
	}
	return s
}

func srcText(src *Op) string {
	if src == nil {
		return " (the initial zeros)"
	}
	return fmt.Sprintf(" (from %s)", describe(src))
}

func dur(d time.Duration) string {
	return d.Round(time.Microsecond).String()
}

func values(vs []Value) string {
	if len(vs) == 0 {
		return "nothing consistent"
	}
	var s []string
	for i, v := range vs {
		if i == 8 {
			s = append(s, fmt.Sprintf("and %d more", len(vs)-8))
			break
		}
		s = append(s, v.String())
	}
	return "one of {" + strings.Join(s, ", ") + "}"
}

// notLinearizable explains a block porcupine rejected when no simple
// pattern applies, from the longest partial linearization.
func notLinearizable(block uint64, ops []Op, idx []int, partials [][]int, blockOps []Op) Anomaly {
	longest := 0
	var best []int
	for _, p := range partials {
		if len(p) > longest {
			longest, best = len(p), p
		}
	}
	// Partial linearizations hold ids within the partition (0..n-1 in
	// partition order).
	placed := map[int]bool{}
	for _, id := range best {
		placed[id] = true
	}
	var left []*Op
	for j, i := range idx {
		if !placed[j] {
			left = append(left, &ops[i])
		}
	}
	slices.SortFunc(left, func(a, b *Op) int { return cmp.Compare(a.Call, b.Call) })
	var names []string
	for i, op := range left {
		if i == 5 {
			names = append(names, fmt.Sprintf("and %d more", len(left)-5))
			break
		}
		names = append(names, describe(op)+" -> "+op.Value.String())
	}
	a := Anomaly{Kind: NotLinearizable, Block: block}
	a.Text = fmt.Sprintf("block %d: %s: the longest linearizable prefix orders %d of %d operations; not placed: %s",
		block, a.Kind, longest, len(idx), strings.Join(names, "; "))
	if len(left) > 0 {
		a.Read = *left[0]
		if a.Read.Kind == Read {
			var writes []*Op
			for i := range blockOps {
				if blockOps[i].Kind == Write {
					writes = append(writes, &blockOps[i])
				}
			}
			a.Possible = possible(&a.Read, writes)
			a.Text += fmt.Sprintf("; judging by the writes alone, that read could have returned %s", values(a.Possible))
		}
	}
	return a
}

func explain(res Result, v porcupine.CheckResult) string {
	var b strings.Builder
	switch {
	case res.Verdict == VerdictOK:
		return ""
	case res.Verdict == VerdictUnknown:
		b.WriteString("porcupine timed out before deciding; no certain anomaly found")
	case v == porcupine.Unknown:
		fmt.Fprintf(&b, "porcupine timed out, but %d certain anomalies were found", len(res.Anomalies))
	default:
		fmt.Fprintf(&b, "not linearizable: %d of %d blocks have no linearization", len(res.IllegalBlocks), res.Blocks)
	}
	counts := map[AnomalyKind]int{}
	for _, a := range res.Anomalies {
		counts[a.Kind]++
	}
	var kinds []string
	for _, k := range []AnomalyKind{LostWrite, StaleRead, CorruptRead, PhantomRead, FailedWriteApplied, FutureRead, NotLinearizable} {
		if counts[k] > 0 {
			kinds = append(kinds, fmt.Sprintf("%d %s", counts[k], k))
		}
	}
	if len(kinds) > 0 {
		b.WriteString(" (" + strings.Join(kinds, ", ") + ")")
	}
	for i, a := range res.Anomalies {
		if i == 20 {
			fmt.Fprintf(&b, "\n... and %d more", len(res.Anomalies)-20)
			break
		}
		b.WriteString("\n- " + a.Text)
	}
	if len(res.faults) > 0 {
		b.WriteString("\nfaults:")
		for _, f := range res.faults {
			fmt.Fprintf(&b, " %v %s;", dur(f.At), f.Label())
		}
	}
	return b.String()
}

// WriteHTML writes porcupine's visualization of the checked history to
// path, with the faults (tag "faults") and the anomalous reads marked.
func (r *Result) WriteHTML(path string) error {
	if r.model.Step == nil {
		return fmt.Errorf("checker: no check result to visualize")
	}
	info := r.info
	var ann []porcupine.Annotation
	for _, f := range r.faults {
		ann = append(ann, porcupine.Annotation{
			Tag: "faults", Start: int64(f.At), Description: f.Label(),
			Details: fmt.Sprintf("%v %s %s", dur(f.At), f.Label(), f.Err), BackgroundColor: "#ffd6a5",
		})
	}
	for _, a := range r.Anomalies {
		if a.Read.Kind == 0 {
			continue
		}
		ann = append(ann, porcupine.Annotation{
			ClientId: a.Read.Client, Start: int64(a.Read.Call), End: int64(a.Read.Return),
			Description: string(a.Kind), Details: a.Text, BackgroundColor: "#ffadad",
		})
	}
	info.AddAnnotations(ann)
	return porcupine.VisualizePath(r.model, info, path)
}
