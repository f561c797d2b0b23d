package integration

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/conformance-baseline.txt (TestConformance) or testdata/conformance-tgtd.txt (TestConformanceTgtd) from this run")

// binDir holds the metrolun binary built for this test binary.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "metrolun-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// metrolunBin returns the metrolun binary, building it once per test
// binary (into TestMain's directory) the first time a test needs it.
// A failed build fails the test: it never skips.
func metrolunBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildBin, buildErr = BuildMetrolun(context.Background(), binDir)
	})
	if buildErr != nil {
		t.Fatalf("no metrolun binary: %v", buildErr)
	}
	return buildBin
}

// requireTool fails (never skips) when an external client is missing.
func requireTool(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := Tool(n); err != nil {
			t.Fatal(err)
		}
	}
}
