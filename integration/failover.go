package integration

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/integration/initiator"
)

// ParseISCSIURL splits iscsi://host:port/iqn/lun into the portal and the
// target name (the LUN is 0 for every demo URL).
func ParseISCSIURL(s string) (portal, iqn string, err error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "iscsi" {
		return "", "", fmt.Errorf("not an iscsi:// URL: %q", s)
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) < 1 || parts[0] == "" {
		return "", "", fmt.Errorf("no target name in %q", s)
	}
	return u.Host, parts[0], nil
}

// Member process control for a demo cluster.

// RestartMember starts `metrolun serve` again for a member of the demo
// whose process is gone, from its own config, in a process group of its
// own. The caller stops it with StopMember (tests also do so in Cleanup).
func RestartMember(d *Demo, name string) (*exec.Cmd, error) {
	cfg := filepath.Join(d.Dir, name, "metrolun.hcl")
	logf, err := os.OpenFile(filepath.Join(d.Dir, name+"-restart.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(d.bin, "serve", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	for i := range d.File.Members {
		if d.File.Members[i].Name == name {
			d.File.Members[i].PID = cmd.Process.Pid
		}
	}
	return cmd, nil
}

// StopMember sends SIGTERM and waits up to 20 s, then kills.
func StopMember(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	waited := make(chan struct{})
	go func() { cmd.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-waited
	}
}

// InSync is admin.InSync, the one definition of in sync: the cluster
// counts name in sync and does not fence it, and the site sees itself in
// the in-sync set as the writer, or as a replica that the writer streams
// to as in sync.
func InSync(ms []MemberStatus, name string) bool { return admin.InSync(ms, name) }

// WaitInSync polls `metrolun status` until name is in sync, up to d.
func WaitInSync(ctx context.Context, bin, dir, name string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		ms, err := ClusterStatus(ctx, bin, dir)
		if err == nil && InSync(ms, name) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not in sync after %v (last status error: %v)", name, d, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Prober writes one 4 KiB block after another through one site, each
// stamped with a sequence number, reconnecting after errors. It records
// when every write was issued and acknowledged, so a test can find the
// first write issued after a fault that succeeded, and read back every
// acknowledged write.
type Prober struct {
	Site   string
	portal string
	iqn    string
	base   uint64 // first LBA (in 512-byte blocks) of this prober's area
	blocks uint64 // area size in 4 KiB writes

	mu    sync.Mutex
	acked []ProbeOp
	errs  []error
	next  uint64

	stop chan struct{}
	done chan struct{}
}

// ProbeOp is one acknowledged write.
type ProbeOp struct {
	N          uint64 // sequence number, also the stamp
	LBA        uint64
	Start, End time.Time
}

// StartProber runs a prober against url over LBAs [base, base+8*blocks).
func StartProber(ctx context.Context, site, url string, base, blocks uint64) (*Prober, error) {
	portal, iqn, err := ParseISCSIURL(url)
	if err != nil {
		return nil, err
	}
	p := &Prober{Site: site, portal: portal, iqn: iqn, base: base, blocks: blocks,
		stop: make(chan struct{}), done: make(chan struct{})}
	go p.run(ctx)
	return p, nil
}

func (p *Prober) block(n uint64) []byte {
	b := make([]byte, 4096)
	for i := 0; i+16 <= len(b); i += 16 {
		binary.BigEndian.PutUint64(b[i:], n)
		binary.BigEndian.PutUint64(b[i+8:], p.base)
	}
	return b
}

func (p *Prober) run(ctx context.Context) {
	defer close(p.done)
	var s *initiator.Session
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	for {
		select {
		case <-p.stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		if s == nil {
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			var err error
			s, err = initiator.Dial(dctx, p.portal, p.iqn, "iqn.2026-11.io.metrolun:prober-"+p.Site, initiator.Options{})
			cancel()
			if err != nil {
				p.fail(err)
				s = nil
				select {
				case <-p.stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
		}
		p.mu.Lock()
		n := p.next
		p.next++
		p.mu.Unlock()
		lba := p.base + (n%p.blocks)*8
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.WriteBlocks(wctx, 0, lba, p.block(n), false)
		cancel()
		end := time.Now()
		if err != nil {
			p.fail(err)
			var ce *initiator.ConnError
			if errors.As(err, &ce) || errors.Is(err, initiator.ErrClosed) || s.Err() != nil {
				s.Close()
				s = nil
			}
			continue
		}
		p.mu.Lock()
		p.acked = append(p.acked, ProbeOp{N: n, LBA: lba, Start: start, End: end})
		p.mu.Unlock()
	}
}

func (p *Prober) fail(err error) {
	p.mu.Lock()
	if len(p.errs) < 1000 {
		p.errs = append(p.errs, err)
	}
	p.mu.Unlock()
}

// Stop ends the prober and waits for it.
func (p *Prober) Stop() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// Acked returns the acknowledged writes so far.
func (p *Prober) Acked() []ProbeOp {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.acked)
}

// Errors returns how many writes failed so far.
func (p *Prober) Errors() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.errs)
}

// FirstAckIssuedAfter is the first acknowledged write issued at or after
// t, if any.
func (p *Prober) FirstAckIssuedAfter(t time.Time) (ProbeOp, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, op := range p.acked {
		if !op.Start.Before(t) {
			return op, true
		}
	}
	return ProbeOp{}, false
}

// Verify reads back, through url, the latest acknowledged write of every
// block this prober wrote and checks its stamp (I1). A block whose later
// write failed with an unknown outcome may hold that later value instead:
// a stamp at least as new as the acknowledged one is accepted.
func (p *Prober) Verify(ctx context.Context, url string) (int, error) {
	portal, iqn, err := ParseISCSIURL(url)
	if err != nil {
		return 0, err
	}
	s, err := initiator.Dial(ctx, portal, iqn, "iqn.2026-11.io.metrolun:verify-"+p.Site, initiator.Options{})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	latest := map[uint64]uint64{}
	for _, op := range p.Acked() {
		latest[op.LBA] = max(latest[op.LBA], op.N)
	}
	for lba, n := range latest {
		b, err := s.ReadBlocks(ctx, 0, lba, 8)
		if err != nil {
			return 0, fmt.Errorf("read LBA %d: %w", lba, err)
		}
		got := binary.BigEndian.Uint64(b)
		if got < n || binary.BigEndian.Uint64(b[8:]) != p.base {
			return 0, fmt.Errorf("LBA %d at %s: write %d was acknowledged through %s, the block holds stamp %d (area %d)",
				lba, url, n, p.Site, got, binary.BigEndian.Uint64(b[8:]))
		}
	}
	return len(latest), nil
}
