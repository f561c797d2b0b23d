//go:build stamp

package stamp

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReport: a window of records gives one report with every stage, in
// the order of their medians, and the gap between records.
func TestReport(t *testing.T) {
	out = filepath.Join(t.TempDir(), "stamps.txt")
	for range Window {
		Begin(Frame)
		Mark(Frame, "b")
		MarkAll("a")
		End(Frame)
	}
	Mark(Frame, "after") // no open record: dropped
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"frame: 4000 ops", "  b ", "  a ", "  end ", "  gap "} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
	if strings.Index(s, "  b ") > strings.Index(s, "  a ") {
		t.Errorf("stages not in the order of their medians:\n%s", s)
	}
	if strings.Contains(s, "after") {
		t.Errorf("a stamp outside a record was kept:\n%s", s)
	}
}
