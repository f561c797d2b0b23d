package checker

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func val(client int, seq, block uint64) Value {
	return Value{Client: uint32(client), Seq: seq, LBA: block}
}

func wr(client int, seq, block uint64, call, ret int, oc Outcome) Op {
	return Op{Client: client, Site: "site-a", Block: block, Kind: Write, Value: val(client, seq, block), Call: ms(call), Return: ms(ret), Outcome: oc}
}

func rd(client int, block uint64, v Value, call, ret int) Op {
	return Op{Client: client, Site: "site-a", Block: block, Kind: Read, Value: v, Call: ms(call), Return: ms(ret), Outcome: OK}
}

func check(t *testing.T, ops ...Op) Result {
	t.Helper()
	return Check(HistoryOf(ops, nil), 10*time.Second)
}

func wantAnomaly(t *testing.T, res Result, kind AnomalyKind) Anomaly {
	t.Helper()
	if res.Verdict != VerdictIllegal {
		t.Fatalf("verdict %s, want illegal:\n%s", res.Verdict, res)
	}
	for _, a := range res.Anomalies {
		if a.Kind == kind {
			return a
		}
	}
	t.Fatalf("no %s anomaly in:\n%s", kind, res)
	return Anomaly{}
}

func TestSequentialHistoryPasses(t *testing.T) {
	var ops []Op
	clock := 0
	seq := uint64(0)
	last := map[uint64]Value{}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 400 {
		b := uint64(rng.IntN(4))
		if rng.IntN(2) == 0 {
			seq++
			ops = append(ops, wr(0, seq, b, clock, clock+1, OK))
			last[b] = val(0, seq, b)
		} else {
			ops = append(ops, rd(1, b, last[b], clock, clock+1))
		}
		clock += 2
	}
	res := check(t, ops...)
	if !res.OK() || res.Ops != 400 || res.Blocks != 4 || len(res.Anomalies) != 0 {
		t.Fatalf("sequential history: %s", res)
	}
}

func TestLostWriteFails(t *testing.T) {
	// W1 and W2 acknowledged one after the other; later reads return W1:
	// W2 is gone.
	w1 := wr(0, 1, 5, 0, 10, OK)
	w2 := wr(1, 1, 5, 20, 30, OK)
	res := check(t, w1, w2,
		rd(2, 5, w1.Value, 40, 50),
		rd(3, 5, w1.Value, 60, 70),
		// Another block, fine, must not be blamed.
		wr(0, 2, 6, 0, 5, OK), rd(1, 6, val(0, 2, 6), 6, 8))
	a := wantAnomaly(t, res, LostWrite)
	if a.Block != 5 || a.Newer == nil || a.Newer.Value != w2.Value || a.Source == nil || a.Source.Value != w1.Value {
		t.Fatalf("anomaly %+v", a)
	}
	if len(res.IllegalBlocks) != 1 || res.IllegalBlocks[0] != 5 {
		t.Fatalf("illegal blocks %v", res.IllegalBlocks)
	}
	// The explanation names the block, the clients and the values.
	for _, want := range []string{"block 5", "lost write", "client 1's write of c1#1@5", "client 2's read", "c0#1@5"} {
		if !strings.Contains(res.Explanation, want) {
			t.Errorf("explanation lacks %q:\n%s", want, res.Explanation)
		}
	}
	// What the read could have returned: only W2.
	if len(a.Possible) != 1 || a.Possible[0] != w2.Value {
		t.Errorf("possible values %v, want [%v]", a.Possible, w2.Value)
	}
}

func TestLostWriteOfInitialZeros(t *testing.T) {
	// An acknowledged write, then a read of zeros.
	res := check(t, wr(0, 1, 9, 0, 10, OK), rd(1, 9, Value{}, 20, 30))
	a := wantAnomaly(t, res, LostWrite)
	if a.Source != nil {
		t.Fatalf("source %v, want the initial zeros", a.Source)
	}
}

func TestStaleReadFails(t *testing.T) {
	w1 := wr(0, 1, 5, 0, 10, OK)
	w2 := wr(1, 1, 5, 20, 30, OK)
	res := check(t, w1, w2,
		rd(2, 5, w1.Value, 40, 50), // old value after W2 completed
		rd(3, 5, w2.Value, 60, 70)) // W2 is still there
	a := wantAnomaly(t, res, StaleRead)
	if a.Read.Client != 2 || a.Newer.Value != w2.Value {
		t.Fatalf("anomaly %+v", a)
	}
	for _, want := range []string{"stale read", "stale copy", "client 3's read"} {
		if !strings.Contains(res.Explanation, want) {
			t.Errorf("explanation lacks %q:\n%s", want, res.Explanation)
		}
	}
}

func TestStaleReadAfterNewerRead(t *testing.T) {
	// W2 is not acknowledged (indeterminate) but one read saw it; a read
	// that starts after that one returns the older value.
	w1 := wr(0, 1, 3, 0, 10, OK)
	w2 := wr(1, 1, 3, 20, 30, Indeterminate)
	res := check(t, w1, w2, rd(2, 3, w2.Value, 40, 50), rd(3, 3, w1.Value, 60, 70))
	a := wantAnomaly(t, res, StaleRead)
	if a.Newer == nil || a.Newer.Kind != Read || a.Newer.Client != 2 {
		t.Fatalf("anomaly %+v", a)
	}
}

func TestConcurrentLinearizablePasses(t *testing.T) {
	w1 := wr(0, 1, 1, 0, 100, OK)
	w2 := wr(1, 1, 1, 200, 300, OK)
	w3 := wr(2, 1, 1, 210, 290, OK)
	res := check(t,
		w1,
		rd(1, 1, w1.Value, 10, 20),   // sees W1 while it is in flight
		rd(2, 1, Value{}, 15, 25),    // overlaps: may still see zeros
		rd(3, 1, w1.Value, 150, 160), // after W1
		w2, w3,
		rd(3, 1, w3.Value, 220, 230), // W3 first...
		rd(4, 1, w2.Value, 310, 320), // ...then W2 (both concurrent)
		rd(4, 1, w2.Value, 330, 340),
	)
	if !res.OK() {
		t.Fatalf("linearizable concurrent history rejected:\n%s", res)
	}
	// Same, but the last reads disagree: W3 after W2 was read after both
	// completed. Order W2 < W3 is possible too, so only W3 then W2 then
	// W3 again is illegal.
	res = check(t, w2, w3, rd(3, 1, w2.Value, 310, 320), rd(4, 1, w3.Value, 330, 340), rd(5, 1, w2.Value, 350, 360))
	if res.OK() {
		t.Fatalf("flip-flop between two completed writes accepted:\n%s", res)
	}
}

func TestIndeterminateWritesEitherWay(t *testing.T) {
	w1 := wr(0, 1, 2, 0, 10, OK)
	w2 := wr(1, 1, 2, 20, 30, Indeterminate) // gave up at 30
	for name, reads := range map[string][]Op{
		"applied":                  {rd(2, 2, w2.Value, 40, 50), rd(2, 2, w2.Value, 60, 70)},
		"not applied":              {rd(2, 2, w1.Value, 40, 50), rd(2, 2, w1.Value, 60, 70)},
		"applied late":             {rd(2, 2, w1.Value, 40, 50), rd(2, 2, w2.Value, 1000, 1010)},
		"applied before its reply": {rd(2, 2, w2.Value, 25, 28)},
	} {
		res := check(t, append([]Op{w1, w2}, reads...)...)
		if !res.OK() || res.IndeterminateWrites != 1 {
			t.Errorf("%s: %s", name, res)
		}
	}
	// But once seen it cannot disappear.
	res := check(t, w1, w2, rd(2, 2, w2.Value, 40, 50), rd(3, 2, w1.Value, 60, 70))
	wantAnomaly(t, res, StaleRead)
}

func TestFailedAndPhantomWrites(t *testing.T) {
	w1 := wr(0, 1, 4, 0, 10, OK)
	failed := wr(1, 1, 4, 20, 30, Failed)
	res := check(t, w1, failed, rd(2, 4, failed.Value, 40, 50))
	wantAnomaly(t, res, FailedWriteApplied)
	if res.Dropped != 1 || res.Writes != 1 {
		t.Fatalf("counts: %s", res)
	}
	res = check(t, w1, rd(2, 4, val(7, 7, 4), 40, 50))
	wantAnomaly(t, res, PhantomRead)
	// A failed write that nobody sees is fine, and is not checked.
	res = check(t, w1, failed, rd(2, 4, w1.Value, 40, 50))
	if !res.OK() || res.Ops != 2 || res.Dropped != 1 {
		t.Fatalf("failed write not seen: %s", res)
	}
	// Reads that did not complete say nothing.
	bad := rd(3, 4, val(9, 9, 4), 60, 70)
	bad.Outcome = Indeterminate
	res = check(t, w1, bad)
	if !res.OK() || res.Dropped != 1 {
		t.Fatalf("indeterminate read checked: %s", res)
	}
}

func TestCorruptAndFutureReads(t *testing.T) {
	w1 := wr(0, 1, 8, 0, 10, OK)
	torn := rd(1, 8, Value{}, 20, 30)
	torn.Corrupt = true
	res := check(t, w1, torn)
	a := wantAnomaly(t, res, CorruptRead)
	if !strings.Contains(a.Text, "neither zeros nor a valid stamp") {
		t.Fatalf("text %q", a.Text)
	}
	w2 := wr(0, 2, 8, 100, 110, OK)
	res = check(t, w1, w2, rd(1, 8, w2.Value, 20, 30))
	wantAnomaly(t, res, FutureRead)
}

func TestNotLinearizableFallback(t *testing.T) {
	// Two reads disagree about the order of two overlapping writes: no
	// simple pattern, porcupine still says no.
	wa := wr(0, 1, 1, 0, 100, OK)
	wb := wr(1, 1, 1, 0, 100, OK)
	res := check(t, wa, wb,
		rd(2, 1, wa.Value, 10, 20), rd(2, 1, wb.Value, 30, 40),
		rd(3, 1, wb.Value, 10, 20), rd(3, 1, wa.Value, 30, 40))
	if res.Verdict != VerdictIllegal {
		t.Fatalf("verdict %s:\n%s", res.Verdict, res)
	}
	if len(res.Anomalies) == 0 || !strings.Contains(res.Explanation, "block 1") {
		t.Fatalf("no explanation:\n%s", res)
	}
}

func TestVisualizationHTML(t *testing.T) {
	w1 := wr(0, 1, 5, 0, 10, OK)
	w2 := wr(1, 1, 5, 20, 30, OK)
	h := HistoryOf([]Op{w1, w2, rd(2, 5, w1.Value, 40, 50)},
		[]FaultEvent{{At: ms(15), Step: Step{Kind: FaultKill9, Target: "site-b", Duration: ms(10)}}})
	path := filepath.Join(t.TempDir(), "viz.html")
	res := CheckWith(h, Options{Timeout: 10 * time.Second, HTMLPath: path})
	if res.Verdict != VerdictIllegal {
		t.Fatal(res)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("<html")) || !bytes.Contains(b, []byte("kill9 site-b")) || !bytes.Contains(b, []byte("lost write")) {
		t.Fatalf("visualization lacks the page, the fault or the anomaly (%d bytes)", len(b))
	}
	if !strings.Contains(res.Explanation, "kill9 site-b") {
		t.Errorf("explanation does not list the faults:\n%s", res.Explanation)
	}
}

func TestHistoryJSONRoundTrip(t *testing.T) {
	h := NewHistory()
	h.Add(wr(0, 1, 5, 0, 10, OK))
	h.Add(rd(1, 5, val(0, 1, 5), 20, 30))
	h.AddFault(FaultEvent{At: ms(12), Step: Step{At: ms(12), Kind: FaultPartition, Target: "a", Peer: "b", Duration: ms(5)}})
	path := filepath.Join(t.TempDir(), "h.json")
	if err := h.SaveJSON(path); err != nil {
		t.Fatal(err)
	}
	g, err := LoadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(g.Ops()) != fmt.Sprint(h.Ops()) || fmt.Sprint(g.Faults()) != fmt.Sprint(h.Faults()) {
		t.Fatalf("round trip differs:\n%v\n%v", g.Ops(), h.Ops())
	}
}

func TestStamp(t *testing.T) {
	for _, bs := range []int{64, 512, 4096} {
		a := Stamp(3, 17, 1000, bs)
		if len(a) != bs {
			t.Fatalf("len %d", len(a))
		}
		v, ok := ParseStamp(a)
		if !ok || v != (Value{Client: 3, Seq: 17, LBA: 1000}) {
			t.Fatalf("bs %d: parse %v %v", bs, v, ok)
		}
		if v, corrupt := ReadValue(1000, a); corrupt || v.Seq != 17 {
			t.Fatalf("ReadValue at its own LBA: %v %v", v, corrupt)
		}
		if _, corrupt := ReadValue(1001, a); !corrupt {
			t.Fatal("a stamp read at another LBA is not flagged")
		}
		b := Stamp(4, 17, 1000, bs)
		if bytes.Equal(a[32:], b[32:]) {
			t.Fatal("filler does not depend on the header")
		}
		// Torn: first half of one write, second half of another.
		torn := append(append([]byte(nil), a[:bs/2]...), b[bs/2:]...)
		if _, ok := ParseStamp(torn); ok {
			t.Fatalf("bs %d: torn block parsed", bs)
		}
		// One flipped bit anywhere.
		for _, i := range []int{0, 9, 20, bs / 2, bs - 1} {
			c := append([]byte(nil), a...)
			c[i] ^= 0x10
			if _, ok := ParseStamp(c); ok {
				t.Fatalf("bs %d: flipped bit at %d not detected", bs, i)
			}
		}
		// A stamp of another block size.
		if _, ok := ParseStamp(Stamp(3, 17, 1000, bs*2)[:bs]); ok {
			t.Fatal("a prefix of a larger stamp parsed")
		}
		if v, ok := ParseStamp(make([]byte, bs)); !ok || !v.IsZero() {
			t.Fatal("zeros are not the initial value")
		}
		if v, corrupt := ReadValue(5, make([]byte, bs)); corrupt || !v.IsZero() {
			t.Fatal("zeros flagged corrupt")
		}
		if _, ok := ParseStamp(bytes.Repeat([]byte{0xff}, bs)); ok {
			t.Fatal("0xff block parsed")
		}
	}
	if _, ok := ParseStamp([]byte{1, 2, 3}); ok {
		t.Fatal("short garbage parsed")
	}
}

func FuzzParseStamp(f *testing.F) {
	f.Add(Stamp(1, 2, 3, 64))
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, ok := ParseStamp(b)
		if ok && !v.IsZero() && !bytes.Equal(Stamp(v.Client, v.Seq, v.LBA, len(b)), b) {
			t.Fatalf("parsed %v from a block Stamp would not make", v)
		}
	})
}

// TestCheckSavedHistory checks a history a run saved with SaveJSON (a
// torture run's history.json), given as CHECKER_HISTORY=path; without
// it, it skips. It fails when the history is not linearizable, naming
// the offending operations.
func TestCheckSavedHistory(t *testing.T) {
	path := os.Getenv("CHECKER_HISTORY")
	if path == "" {
		t.Skip("set CHECKER_HISTORY=path/to/history.json to check a saved history")
	}
	h, err := LoadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	res := CheckWith(h, Options{Timeout: 5 * time.Minute, HTMLPath: filepath.Join(t.TempDir(), "history.html")})
	t.Logf("%d ops, %d faults: %s", h.Len(), len(h.Faults()), res)
	if !res.OK() {
		t.Fatalf("%s is not linearizable", path)
	}
}
