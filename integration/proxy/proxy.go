// Package proxy is the WAN between sites in tests and benchmarks: a TCP
// proxy that adds latency and jitter, caps bandwidth, partitions either
// direction and resets connections, all changeable while traffic flows.
// The kernel here has no netem; this is the only WAN emulation.
//
// Direction "forward" is client to upstream (A to B when A dials B
// through the proxy); "back" is the answers.
package proxy

import (
	"context"
	"math/rand"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Shape is the behaviour of the link, per direction.
type Shape struct {
	Latency   time.Duration // one-way delay added to every byte
	Jitter    time.Duration // up to this much more, uniformly; order is kept
	Bandwidth int64         // bytes per second; 0 is unlimited
	Blocked   bool          // partitioned: nothing passes until unblocked
}

// Proxy forwards connections from its listener to one upstream address.
type Proxy struct {
	ln       net.Listener
	upstream string

	mu      sync.Mutex
	fwd     Shape
	back    Shape
	changed chan struct{} // closed and replaced on every change
	conns   map[*pair]struct{}
	closed  bool
	wg      sync.WaitGroup
}

type pair struct {
	a, b net.Conn
	dead chan struct{} // closed by kill
	once sync.Once
}

// kill ends both connections and wakes the pipes, whatever they wait for.
func (c *pair) kill(rst bool) {
	c.once.Do(func() {
		if tc, ok := c.a.(*net.TCPConn); ok && rst {
			tc.SetLinger(0) // RST, not FIN
		}
		c.a.Close()
		c.b.Close()
		close(c.dead)
	})
}

// New listens on listen (use 127.0.0.1:0) and forwards to upstream.
func New(listen, upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, upstream: upstream, changed: make(chan struct{}), conns: map[*pair]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Set changes both directions' shape; it applies to bytes not yet sent.
func (p *Proxy) Set(forward, back Shape) {
	p.mu.Lock()
	p.fwd, p.back = forward, back
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// Partition blocks (or heals) each direction, keeping latency and bandwidth.
func (p *Proxy) Partition(forward, back bool) {
	p.mu.Lock()
	f, b := p.fwd, p.back
	p.mu.Unlock()
	f.Blocked, b.Blocked = forward, back
	p.Set(f, b)
}

// Reset closes every connection through the proxy, as a peer reset would.
func (p *Proxy) Reset() {
	p.mu.Lock()
	conns := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.kill(true)
	}
}

// Close stops the proxy and every connection, and waits for its goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	close(p.changed) // wakes connections waiting out a partition
	p.changed = make(chan struct{})
	p.mu.Unlock()
	err := p.ln.Close()
	p.Reset()
	p.wg.Wait()
	return err
}

// shape returns a direction's current shape and a channel closed when it
// changes.
func (p *Proxy) shape(forward bool) (Shape, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if forward {
		return p.fwd, p.changed
	}
	return p.back, p.changed
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(a net.Conn) {
	defer p.wg.Done()
	// A connection made during a partition waits for the heal before it
	// reaches the upstream, as a SYN would be retransmitted.
	for {
		f, ch := p.shape(true)
		b, _ := p.shape(false)
		if !f.Blocked && !b.Blocked {
			break
		}
		select {
		case <-ch:
		case <-time.After(time.Minute):
			a.Close()
			return
		}
		p.mu.Lock()
		closed := p.closed
		p.mu.Unlock()
		if closed {
			a.Close()
			return
		}
	}
	b, err := net.DialTimeout("tcp", p.upstream, 10*time.Second)
	if err != nil {
		a.Close()
		return
	}
	pr := &pair{a: a, b: b, dead: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		a.Close()
		b.Close()
		return
	}
	p.conns[pr] = struct{}{}
	p.mu.Unlock()
	var dirs sync.WaitGroup
	dirs.Add(2)
	go func() { defer dirs.Done(); p.pipe(pr, a, b, true) }()
	go func() { defer dirs.Done(); p.pipe(pr, b, a, false) }()
	dirs.Wait()
	p.mu.Lock()
	delete(p.conns, pr)
	p.mu.Unlock()
}

type chunk struct {
	data []byte
	due  time.Time
}

// pipe moves bytes from src to dst in one direction: a reader stamps each
// chunk with its due time; a sender waits for that time, for the partition
// to heal and for bandwidth, then writes.
func (p *Proxy) pipe(pr *pair, src, dst net.Conn, forward bool) {
	// Bounded queue: a blocked or slow direction pushes back on the
	// sender through TCP instead of buffering without limit.
	q := make(chan chunk, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer close(q)
		rng := rand.New(rand.NewSource(time.Now().UnixNano()))
		var last time.Time
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				s, _ := p.shape(forward)
				due := time.Now().Add(s.Latency)
				if s.Jitter > 0 {
					due = due.Add(time.Duration(rng.Int63n(int64(s.Jitter))))
				}
				if due.Before(last) {
					due = last // TCP keeps order
				}
				last = due
				select {
				case q <- chunk{buf[:n], due}:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	var lim *rate.Limiter
	var limBW int64
	go func() {
		<-pr.dead
		cancel()
	}()
loop:
	for c := range q {
		for {
			s, changed := p.shape(forward)
			if s.Blocked {
				select {
				case <-changed:
				case <-ctx.Done():
					break loop
				}
				continue
			}
			if d := time.Until(c.due); d > 0 {
				select {
				case <-time.After(d):
				case <-changed:
				case <-ctx.Done():
					break loop
				}
				continue
			}
			if s.Bandwidth > 0 {
				if lim == nil || limBW != s.Bandwidth {
					lim = rate.NewLimiter(rate.Limit(s.Bandwidth), 64<<10)
					limBW = s.Bandwidth
				}
				if err := waitBytes(ctx, lim, len(c.data)); err != nil {
					break loop
				}
			}
			break
		}
		if _, err := dst.Write(c.data); err != nil {
			break
		}
	}
	// One direction ended: end the other too (a half-closed proxy would
	// hide a dead peer).
	pr.kill(false)
	cancel()
	for range q {
	}
}

// waitBytes takes n tokens in bursts the limiter allows.
func waitBytes(ctx context.Context, lim *rate.Limiter, n int) error {
	for n > 0 {
		m := min(n, lim.Burst())
		if err := lim.WaitN(ctx, m); err != nil {
			return err
		}
		n -= m
	}
	return nil
}
