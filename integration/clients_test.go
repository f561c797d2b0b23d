package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRealClients drives a demo target with clients nobody here wrote:
// iscsi-ls for discovery, qemu-img for a whole 1 GiB image in and out, and
// qemu-io for pattern writes and verified reads.
func TestRealClients(t *testing.T) {
	requireTool(t, "iscsi-ls", "qemu-img", "qemu-io")
	d := StartDemoT(t, DemoOptions{Bin: metrolunBin(t), Dir: filepath.Join(t.TempDir(), "demo"), Size: "1GiB"})
	url := d.File.DataMembers()[0].ISCSI
	portal := url[:strings.Index(url[len("iscsi://"):], "/")+len("iscsi://")]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	t.Run("iscsi-ls", func(t *testing.T) {
		res, err := RunTool(ctx, time.Minute, nil, "iscsi-ls", "-s", portal)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(res.Stdout, "Target:iqn.2026-11.io.metrolun:demo") || !strings.Contains(res.Stdout, "Lun:0") ||
			!strings.Contains(res.Stdout, "DIRECT_ACCESS") {
			t.Fatalf("iscsi-ls -s output lacks the target or its LUN:\n%s", res.Stdout)
		}
	})

	t.Run("qemu-img convert 1GiB round trip", func(t *testing.T) {
		dir := t.TempDir()
		src, back := filepath.Join(dir, "src.img"), filepath.Join(dir, "back.img")
		writeTestImage(t, src, 1<<30)
		if _, err := RunTool(ctx, 5*time.Minute, nil, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, url); err != nil {
			t.Fatal(err)
		}
		if _, err := RunTool(ctx, 5*time.Minute, nil, "qemu-img", "convert", "-f", "raw", "-O", "raw", url, back); err != nil {
			t.Fatal(err)
		}
		sameContent(t, src, back)
	})

	t.Run("qemu-io patterns", func(t *testing.T) {
		io := func(cmds ...string) (ToolResult, error) {
			args := []string{"-f", "raw"}
			for _, c := range cmds {
				args = append(args, "-c", c)
			}
			return RunTool(ctx, time.Minute, nil, "qemu-io", append(args, url)...)
		}
		res, err := io("write -P 0xa5 4096 1M", "write -P 0x5a 1052672 64k", "read -P 0xa5 4096 1M", "read -P 0x5a 1052672 64k")
		if err != nil || strings.Contains(res.Stdout, "Pattern verification failed") {
			t.Fatalf("pattern write/read: %v\n%s", err, res.Stdout)
		}
		// The check can fail: a wrong pattern must be reported.
		res, _ = io("read -P 0x77 4096 4k")
		if !strings.Contains(res.Stdout+res.Stderr, "Pattern verification failed") {
			t.Fatalf("qemu-io did not notice a wrong pattern:\n%s%s", res.Stdout, res.Stderr)
		}
		// Unaligned writes go through qemu's read-modify-write.
		if res, err := io("write -P 0x22 0 8192", "write -P 0x11 100 3000", "read -P 0x22 0 100", "read -P 0x11 100 3000", "read -P 0x22 3100 5092"); err != nil ||
			strings.Contains(res.Stdout, "Pattern verification failed") {
			t.Fatalf("unaligned write: %v\n%s", err, res.Stdout)
		}
	})
}

// writeTestImage writes a sparse image with random data in scattered
// extents (so holes and data both travel) of the given size.
func writeTestImage(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(42))
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += 32 << 20 {
		rng.Read(buf)
		n := int64(len(buf)) - int64(rng.Intn(4096))
		if _, err := f.WriteAt(buf[:n], off+int64(rng.Intn(1<<20))*512%(16<<20)); err != nil {
			t.Fatal(err)
		}
	}
	// The last bytes of the LUN carry data too.
	if _, err := f.WriteAt([]byte("end of the image"), size-16); err != nil {
		t.Fatal(err)
	}
}

func sameContent(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 8<<20), make([]byte, 8<<20)
	for off := int64(0); ; off += int64(len(ba)) {
		na, ea := fa.ReadAt(ba, off)
		nb, _ := fb.ReadAt(bb, off)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s and %s differ in the 8 MiB at offset %d", a, b, off)
		}
		if ea != nil {
			return
		}
	}
}

// TestServeCHAPAndShutdown runs `metrolun serve` from a config file with
// an allow list and mutual CHAP, checks who gets in with iscsi-inq, then
// checks that SIGTERM ends the process cleanly.
func TestServeCHAPAndShutdown(t *testing.T) {
	requireTool(t, "iscsi-inq")
	bin := metrolunBin(t)
	dir := t.TempDir()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`name = "site-a"
data_dir = %q
iscsi {
  listen = ["127.0.0.1:%d"]
}
target "iqn.2026-11.io.metrolun:chap" {
  allow_initiators = ["iqn.2026-11.io.metrolun:good"]
  chap {
    username = "user1"
    secret = "secret-of-12b"
    mutual_username = "tgt1"
    mutual_secret = "other-secret-12"
  }
  lun "0" {
    path = %q
    size = "16MiB"
  }
}
`, dir, port, filepath.Join(dir, "lun0.img"))
	path := filepath.Join(dir, "m.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// The log goes to a file: the process writes it while the test reads.
	logPath := filepath.Join(dir, "serve.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	log := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	cmd := exec.Command(bin, "serve", "--config", path)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = groupAttr()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		killGroup(cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
	})
	if err := WaitTCP(fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	url := func(cred string) string {
		return fmt.Sprintf("iscsi://%s127.0.0.1:%d/iqn.2026-11.io.metrolun:chap/0", cred, port)
	}
	mutual := []string{"LIBISCSI_CHAP_TARGET_USERNAME=tgt1", "LIBISCSI_CHAP_TARGET_PASSWORD=other-secret-12"}
	cases := []struct {
		name, initiator, cred string
		env                   []string
		ok                    bool
	}{
		{"one-way CHAP", "iqn.2026-11.io.metrolun:good", "user1%secret-of-12b@", nil, true},
		{"mutual CHAP", "iqn.2026-11.io.metrolun:good", "user1%secret-of-12b@", mutual, true},
		{"wrong secret", "iqn.2026-11.io.metrolun:good", "user1%not-the-secret@", nil, false},
		{"no CHAP", "iqn.2026-11.io.metrolun:good", "", nil, false},
		{"initiator not allowed", "iqn.2026-11.io.metrolun:bad", "user1%secret-of-12b@", nil, false},
		{"target fails mutual CHAP", "iqn.2026-11.io.metrolun:good", "user1%secret-of-12b@",
			[]string{"LIBISCSI_CHAP_TARGET_USERNAME=tgt1", "LIBISCSI_CHAP_TARGET_PASSWORD=wrong-secret-12"}, false},
	}
	for _, c := range cases {
		res, err := RunTool(ctx, 30*time.Second, c.env, "iscsi-inq", "-i", c.initiator, url(c.cred))
		got := err == nil && strings.Contains(res.Stdout, "DIRECT_ACCESS")
		if got != c.ok {
			t.Errorf("%s: logged in=%v, want %v (%v)", c.name, got, c.ok, err)
		}
	}
	if strings.Contains(log(), "secret-of-12b") || strings.Contains(log(), "other-secret-12") {
		t.Error("a CHAP secret appears in the log")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve exited with %v after SIGTERM:\n%s", err, log())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop within 30s of SIGTERM")
	}
	if !strings.Contains(log(), "stopped") {
		t.Errorf("no clean-stop log line:\n%s", log())
	}
}
