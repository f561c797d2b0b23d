package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/metrolun/metrolun/internal/mirrorfloor"
)

// The runtime's floor under the mirror floor (bench-mirror with
// METROLUN_MIRROR_FLOOR=1): a Go client in this process sends 4 KiB
// requests one at a time to a `metrolun mirror-floor-echo` process that
// writes nothing and acks at once, over loopback, TLS or plain. What a
// round trip between two Go processes costs here, before any storage or
// iSCSI.

// PingPong is one measurement.
type PingPong struct {
	TLS bool
	// Mode is "bare" (the caller writes each request and reads its ack
	// on one goroutine, no mirrorfloor.Client), "turns" (through
	// mirrorfloor.Client: at queue depth 1 the caller reads its own ack)
	// or "reader" (mirrorfloor.Client with Options.Reader: a reader
	// goroutine hands each ack to its caller, as replica/ does).
	Mode string
	// RTT is the mean time of a round trip.
	RTT time.Duration
	// ClientCPU and EchoCPU are each process's CPU per round trip
	// (/proc, 10 ms ticks: the client's includes whatever else this test
	// process does meanwhile, which is nothing).
	ClientCPU, EchoCPU time.Duration
}

// RunPingPong starts an echo from bin and makes n round trips of size
// bytes after a warm-up.
func RunPingPong(ctx context.Context, bin string, useTLS bool, mode string, size, n int) (PingPong, error) {
	r := PingPong{TLS: useTLS, Mode: mode}
	port, err := FreePort()
	if err != nil {
		return r, err
	}
	addr := net.JoinHostPort(Loopback, strconv.Itoa(port))
	args := []string{"mirror-floor-echo", "--listen", addr}
	dir, err := os.MkdirTemp("", "pingpong")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	cert := filepath.Join(dir, "echo.pem")
	if useTLS {
		args = append(args, "--tls-cert", cert)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := WaitTCP(addr, 10*time.Second); err != nil {
		return r, err
	}
	var tc *tls.Config
	if useTLS {
		if tc, err = mirrorfloor.ClientTLS(cert); err != nil {
			return r, err
		}
	}
	p := make([]byte, size)
	var rt func() error
	if mode == "bare" {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return r, err
		}
		if tc != nil {
			conn = tls.Client(conn, tc)
		}
		defer conn.Close()
		req := mirrorfloor.AppendRequest(nil, 1, p, 0)
		ack := make([]byte, mirrorfloor.AckSize)
		rt = func() error {
			if _, err := conn.Write(req); err != nil {
				return err
			}
			_, err := io.ReadFull(conn, ack)
			return err
		}
	} else {
		c, err := mirrorfloor.Dial(addr, tc, mirrorfloor.Options{Reader: mode == "reader"})
		if err != nil {
			return r, err
		}
		defer c.Close()
		rt = func() error { return c.Write(p, 0, false) }
	}
	for range n / 10 {
		if err := rt(); err != nil {
			return r, err
		}
	}
	self, echo := []int{os.Getpid()}, []int{cmd.Process.Pid}
	c0, _ := ProcCPU(self)
	e0, err := ProcCPU(echo)
	if err != nil {
		return r, err
	}
	start := time.Now()
	for range n {
		if err := rt(); err != nil {
			return r, err
		}
	}
	el := time.Since(start)
	c1, _ := ProcCPU(self)
	e1, err := ProcCPU(echo)
	if err != nil {
		return r, err
	}
	r.RTT = el / time.Duration(n)
	r.ClientCPU = (c1 - c0) / time.Duration(n)
	r.EchoCPU = (e1 - e0) / time.Duration(n)
	return r, nil
}

func (p PingPong) String() string {
	mode := "plain"
	if p.TLS {
		mode = "TLS"
	}
	mode += ", " + p.Mode
	return fmt.Sprintf("%s: %.1f µs per round trip, CPU %.1f µs client + %.1f µs echo", mode,
		us(p.RTT), us(p.ClientCPU), us(p.EchoCPU))
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
