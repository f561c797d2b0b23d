package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemo starts the real `metrolun demo`, checks demo.json and that every
// data member answers INQUIRY and READ CAPACITY (16) with the requested
// size, then checks that SIGTERM stops the demo and all its members.
func TestDemo(t *testing.T) {
	requireTool(t, "iscsi-inq", "iscsi-readcapacity16")
	bin := metrolunBin(t)
	const size = 64 << 20
	d, err := StartDemo(context.Background(), DemoOptions{Bin: bin, Dir: filepath.Join(t.TempDir(), "demo"), Size: "64MiB"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, m := range d.File.DataMembers() {
		inq, raw, err := Inquiry(ctx, m.ISCSI)
		if err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
		if inq["Peripheral Device Type"] != "DIRECT_ACCESS" {
			t.Errorf("%s: iscsi-inq:\n%s", m.Name, raw)
		}
		rc, err := ReadCapacity(ctx, m.ISCSI)
		if err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
		if rc.Bytes != size {
			t.Errorf("%s: READ CAPACITY says %d bytes, want %d (--size 64MiB)", m.Name, rc.Bytes, size)
		}
	}
	if err := d.Alive(); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(); err != nil {
		t.Errorf("demo did not stop cleanly on SIGTERM: %v", err)
	}
	for _, m := range d.File.Members {
		if processAlive(m.PID) {
			t.Errorf("member %s (pid %d) still alive after Stop", m.Name, m.PID)
		}
	}
}

// fakeMetrolun is a stand-in for the metrolun binary that behaves like
// `metrolun demo` (one member in its own session, demo.json, SIGTERM)
// or misbehaves as FAKE_DEMO_MODE says. It lets the harness's own start and
// stop logic be tested without the real binary. Every loop in it ends by
// itself within a minute.
const fakeMetrolun = `#!/bin/bash
if [ "$1" = member ]; then
	trap 'exit 0' TERM
	for i in $(seq 600); do sleep 0.1; done
	exit 0
fi
dir=
while [ $# -gt 0 ]; do
	case "$1" in --dir) dir=$2; shift;; esac
	shift
done
case "$FAKE_DEMO_MODE" in
early-exit) echo "fake: cannot open the LUN image" >&2; exit 3;;
esac
setsid "$0" member &
member=$!
case "$FAKE_DEMO_MODE" in
stubborn) trap '' TERM;;
leaky) trap 'exit 0' TERM;;
*) trap 'kill -TERM $member; wait $member; exit 0' TERM;;
esac
sleep 0.2
if [ "$FAKE_DEMO_MODE" = bad-json ]; then
	echo '{"members": [{"name": "site-a", "role": "data", "pid": 1}]}' > "$dir/demo.json"
else
	printf '{"members": [{"name": "site-a", "role": "data", "pid": %d, "iscsi": "iscsi://127.0.0.1:3260/iqn.2026-11.io.metrolun:demo/0"}, {"name": "witness", "role": "witness", "pid": %d}]}\n' $member $$ > "$dir/demo.json.tmp"
	mv "$dir/demo.json.tmp" "$dir/demo.json"
fi
for i in $(seq 600); do sleep 0.1; done
`

func TestStartDemoHarness(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "metrolun")
	if err := os.WriteFile(bin, []byte(fakeMetrolun), 0o755); err != nil {
		t.Fatal(err)
	}
	start := func(t *testing.T, mode string, opts DemoOptions) (*Demo, error) {
		t.Setenv("FAKE_DEMO_MODE", mode)
		opts.Bin = bin
		opts.Dir = filepath.Join(t.TempDir(), "demo")
		d, err := StartDemo(context.Background(), opts)
		if d != nil {
			t.Cleanup(func() { d.Stop() })
		}
		return d, err
	}
	memberGone := func(t *testing.T, d *Demo) {
		t.Helper()
		for _, m := range d.File.Members {
			if processAlive(m.PID) {
				t.Errorf("member %s (pid %d) alive after Stop", m.Name, m.PID)
			}
		}
	}

	t.Run("clean", func(t *testing.T) {
		d, err := start(t, "clean", DemoOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(d.File.Members) != 2 || d.File.DataMembers()[0].Name != "site-a" || d.File.Members[1].PID != d.PID {
			t.Fatalf("demo.json: %+v", d.File)
		}
		if err := d.Alive(); err != nil {
			t.Fatal(err)
		}
		if err := d.Stop(); err != nil {
			t.Errorf("clean stop reported %v", err)
		}
		memberGone(t, d)
		if d.Alive() == nil {
			t.Error("Alive after Stop")
		}
	})
	t.Run("ignores SIGTERM", func(t *testing.T) {
		d, err := start(t, "stubborn", DemoOptions{StopTimeout: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Stop(); err == nil || !strings.Contains(err.Error(), "did not exit within") {
			t.Errorf("Stop: %v, want a report that SIGTERM was not enough", err)
		}
		memberGone(t, d)
	})
	t.Run("leaks a member", func(t *testing.T) {
		d, err := start(t, "leaky", DemoOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Stop(); err == nil || !strings.Contains(err.Error(), "outlived the demo") {
			t.Errorf("Stop: %v, want a report of the leaked member", err)
		}
		memberGone(t, d)
	})
	t.Run("exits before ready", func(t *testing.T) {
		_, err := start(t, "early-exit", DemoOptions{})
		if err == nil || !strings.Contains(err.Error(), "cannot open the LUN image") {
			t.Errorf("StartDemo: %v, want the demo's last log line", err)
		}
	})
	t.Run("invalid demo.json", func(t *testing.T) {
		_, err := start(t, "bad-json", DemoOptions{ReadyTimeout: time.Second})
		if err == nil || !strings.Contains(err.Error(), "not an iscsi:// URL") {
			t.Errorf("StartDemo: %v, want the demo.json problem", err)
		}
	})
}

func TestParseDemoFile(t *testing.T) {
	good := `{"members": [{"name": "site-a", "role": "data", "pid": 1234, "iscsi": "iscsi://127.0.0.1:3260/iqn.2026-11.io.metrolun:demo/0"},
		{"name": "w", "role": "witness", "pid": 7}, {"name": "e", "role": "mirror-floor", "pid": 8}]}`
	d, err := ParseDemoFile([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if got := d.DataMembers(); len(got) != 1 || got[0].PID != 1234 || got[0].ISCSI == "" {
		t.Errorf("data members %+v", got)
	}
	for _, bad := range []string{
		`{"members": []}`,
		`{"members": [{"name": "a", "role": "data", "pid": 1, "iscsi": "iscsi://10.0.0.1:3260/x/0"}]}`,
		`{"members": [{"name": "a", "role": "data", "pid": 0, "iscsi": "iscsi://127.0.0.1:3260/x/0"}]}`,
		`{"members": [{"name": "a", "role": "primary", "pid": 1}]}`,
		`{"members": [{"name": "a", "role": "data", "pid": 1, "iscsi": "iscsi://127.0.0.1:3260/x/0"}, {"name": "w", "role": "witness", "pid": 2, "iscsi": "iscsi://127.0.0.1:1/x/0"}]}`,
		`{"members": [{"name": "a", "role": "data", "pid": 1, "iscsi": "iscsi://127.0.0.1:3260/x/0", "extra": 1}]}`,
		`{"members": [{"name": "a", "role": "data", "pid": 1, "iscsi": "iscsi://127.0.0.1:3260/x/0"}, {"name": "e", "role": "mirror-floor", "pid": 2, "iscsi": "iscsi://127.0.0.1:1/x/0"}]}`,
		`{"members": [`,
	} {
		if _, err := ParseDemoFile([]byte(bad)); err == nil {
			t.Errorf("ParseDemoFile accepted %s", bad)
		}
	}
}

func TestFreePorts(t *testing.T) {
	ports, err := FreePorts(8)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Fatalf("ports %v", ports)
		}
		seen[p] = true
	}
}

// TestDemoSideBySide (issue 14): `metrolun demo --addr 127.0.10.1
// --sites 2` runs beside a default demo on the same ports, each member
// on its own address; both clusters elect a writer and serve, and a
// write to one is not seen by the other.
func TestDemoSideBySide(t *testing.T) {
	requireTool(t, "qemu-io")
	bin := metrolunBin(t)
	hosts := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.10.1", "127.0.10.2", "127.0.10.3"}
	// The iSCSI port and the three cluster ports, the same for both demos.
	base, err := FreeBasePort(hosts, 4)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--sites", "2", "--cluster-port", strconv.Itoa(base + 1)}
	one := StartDemoT(t, DemoOptions{Bin: bin, Size: "64MiB", Port: base, Dir: filepath.Join(t.TempDir(), "one"), Args: args})
	two := StartDemoT(t, DemoOptions{Bin: bin, Size: "64MiB", Port: base, Dir: filepath.Join(t.TempDir(), "two"),
		Args: append([]string{"--addr", "127.0.10.1"}, args...)})
	ctx := t.Context()
	for _, c := range []struct {
		d     *Demo
		hosts []string
		fill  string
	}{{one, hosts[:2], "0x11"}, {two, hosts[3:5], "0x22"}} {
		ms := c.d.File.DataMembers()
		if len(ms) != 2 {
			t.Fatalf("%s: data members %+v", c.d.Dir, ms)
		}
		for i, m := range ms {
			if want := fmt.Sprintf("iscsi://%s:%d/", c.hosts[i], base); !strings.HasPrefix(m.ISCSI, want) {
				t.Fatalf("%s: %s at %s, want %s...", c.d.Dir, m.Name, m.ISCSI, want)
			}
		}
		st, err := ClusterStatus(ctx, bin, c.d.Dir)
		if err != nil || Writer(st) == "" {
			t.Fatalf("%s: no writer (%v)", c.d.Dir, err)
		}
		if err := qemuIO(ctx, ms[0].ISCSI, "write -P "+c.fill+" 0 64k"); err != nil {
			t.Fatalf("%s: %v", ms[0].ISCSI, err)
		}
		if err := qemuIO(ctx, ms[1].ISCSI, "read -P "+c.fill+" 0 64k"); err != nil {
			t.Fatalf("%s: %v", ms[1].ISCSI, err)
		}
	}
	// Each cluster kept its own data.
	if err := qemuIO(ctx, one.File.DataMembers()[1].ISCSI, "read -P 0x11 0 64k"); err != nil {
		t.Fatalf("the first demo after the second wrote: %v", err)
	}
	if err := one.Alive(); err != nil {
		t.Fatal(err)
	}
	if err := two.Alive(); err != nil {
		t.Fatal(err)
	}
}

// TestDemoMirrorFloor: `metrolun demo --sites 1 --mirror-floor MODE`
// (the floor of mirroring, a measuring aid for bench-mirror) runs the
// echo as a member, and a write through iSCSI lands in the echo's image
// as well as in the site's, inline or not (tls-spawn).
func TestDemoMirrorFloor(t *testing.T) {
	requireTool(t, "qemu-io")
	bin := metrolunBin(t)
	for i, mode := range []string{"tls", "plain", "tls-spawn"} {
		ports, err := FreePorts(2)
		if err != nil {
			t.Fatal(err)
		}
		d := StartDemoT(t, DemoOptions{Bin: bin, Size: "64MiB", Port: ports[0], Dir: filepath.Join(t.TempDir(), mode),
			Args: []string{"--sites", "1", "--mirror-floor", mode, "--cluster-port", strconv.Itoa(ports[1])}})
		var echo int
		for _, m := range d.File.Members {
			if m.Role == "mirror-floor" {
				echo++
			}
		}
		if echo != 1 || len(d.File.DataMembers()) != 1 {
			t.Fatalf("%s: members %+v, want one data site and one mirror-floor echo", mode, d.File.Members)
		}
		fill := byte(0x31 + i)
		if err := qemuIO(t.Context(), d.File.DataMembers()[0].ISCSI, fmt.Sprintf("write -P %#x 1M 64k", fill)); err != nil {
			t.Fatal(err)
		}
		img, err := os.ReadFile(filepath.Join(d.Dir, "mirror-floor.img"))
		if err != nil {
			t.Fatal(err)
		}
		if len(img) < 1<<20+64<<10 || !bytes.Equal(img[1<<20:1<<20+64<<10], bytes.Repeat([]byte{fill}, 64<<10)) {
			t.Errorf("%s: the echo's image does not hold the write", mode)
		}
		if err := d.Alive(); err != nil {
			t.Fatal(err)
		}
	}
}
