package target_test

// Per-command latency at queue depth 1: the Go initiator logs in over
// loopback TCP and issues one 4 KiB READ(16) or WRITE(16) at a time to an
// LU on a local file (the single-site setup of `make bench`). ns/op is the
// round trip as the initiator sees it, client included.
//
//	go test ./target/ -run XXX -bench LatencyQD1 -benchtime 20000x -count 5
//
// "proc" runs the target in a child process (this test binary, running
// TestLatencyServer), as in a deployment; "inproc" runs it in the
// benchmark's process, where -cpuprofile sees it, but where it shares the
// Go scheduler with the initiator.
//
// An external test package: replica (the file volume) imports target.

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/initiator"
	"github.com/metrolun/metrolun/replica"
	"github.com/metrolun/metrolun/target"
)

const (
	latTarget    = "iqn.2026-11.io.metrolun:latency"
	latInitiator = "iqn.2026-11.io.metrolun:latency-client"
	latLUNBytes  = 64 << 20
	latServeEnv  = "METROLUN_LATENCY_SERVE" // the LU file, for TestLatencyServer
)

// serveLatencyTarget serves one LU over the file at path on a loopback
// port and returns its address and a stop function.
func serveLatencyTarget(tb testing.TB, path string) (string, func()) {
	tb.Helper()
	vol, err := replica.OpenLocal(path, latLUNBytes)
	if err != nil {
		tb.Fatal(err)
	}
	srv := target.NewServer(target.Config{NOPInterval: 5 * time.Second, NOPTimeout: 30 * time.Second})
	if err := srv.AddTarget(target.TargetConfig{
		Name: latTarget,
		// As `metrolun demo` configures its LUN (conf.DefaultLUN).
		LUNs: []target.LUNConfig{{ID: 0, Volume: vol, BlockSize: 512, Thin: true, WriteCache: true}},
	}); err != nil {
		tb.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	return l.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			tb.Errorf("shutdown: %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				tb.Errorf("Serve: %v", err)
			}
		case <-ctx.Done():
			tb.Error("Serve did not return after Shutdown")
		}
		vol.Close()
	}
}

// TestLatencyServer is BenchmarkLatencyQD1's target process: it prints
// "addr=host:port" and serves until its stdin closes.
func TestLatencyServer(t *testing.T) {
	path := os.Getenv(latServeEnv)
	if path == "" {
		t.Skip("the target process of BenchmarkLatencyQD1")
	}
	addr, stop := serveLatencyTarget(t, path)
	os.Stdout.WriteString("addr=" + addr + "\n")
	io.Copy(io.Discard, os.Stdin)
	stop()
}

// startLatencyTarget starts the target, in a child process when proc,
// and returns a logged-in session.
func startLatencyTarget(b *testing.B, proc bool) *initiator.Session {
	b.Helper()
	path := filepath.Join(b.TempDir(), "lun0")
	var addr string
	if proc {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLatencyServer$", "-test.count=1")
		cmd.Env = append(os.Environ(), latServeEnv+"="+path)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			stdin.Close()
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					b.Errorf("target process: %v", err)
				}
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				b.Error("target process did not exit within 15s of its stdin closing")
			}
		})
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if !strings.HasPrefix(line, "addr=") {
			b.Fatalf("target process: %q, %v", line, err)
		}
		addr = strings.TrimSpace(strings.TrimPrefix(line, "addr="))
		go io.Copy(io.Discard, stdout)
	} else {
		var stop func()
		addr, stop = serveLatencyTarget(b, path)
		b.Cleanup(stop)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := initiator.Dial(ctx, addr, latTarget, latInitiator, initiator.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Logout(ctx); err != nil {
			b.Errorf("logout: %v", err)
		}
		s.Close()
	})
	return s
}

func BenchmarkLatencyQD1(b *testing.B) {
	const (
		ioBytes  = 4096
		ioBlocks = ioBytes / 512
		span     = latLUNBytes / 512 / ioBlocks // I/Os before the LBA wraps
	)
	ctx := context.Background()
	for _, where := range []string{"proc", "inproc"} {
		proc := where == "proc"
		b.Run(where+"/write4k", func(b *testing.B) {
			s := startLatencyTarget(b, proc)
			buf := make([]byte, ioBytes)
			for i := range buf {
				buf[i] = byte(i)
			}
			b.SetBytes(ioBytes)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := s.WriteBlocks(ctx, 0, uint64(i%span)*ioBlocks, buf, false); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(where+"/read4k", func(b *testing.B) {
			s := startLatencyTarget(b, proc)
			// Written first, so that reads come from the page cache rather
			// than a hole.
			buf := make([]byte, 1<<20)
			for off := uint64(0); off < latLUNBytes; off += uint64(len(buf)) {
				if err := s.WriteBlocks(ctx, 0, off/512, buf, false); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(ioBytes)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				data, err := s.ReadBlocks(ctx, 0, uint64(i%span)*ioBlocks, ioBlocks)
				if err != nil {
					b.Fatal(err)
				}
				if len(data) != ioBytes {
					b.Fatalf("read %d bytes", len(data))
				}
			}
		})
	}
}
