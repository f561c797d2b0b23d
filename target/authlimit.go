package target

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// CHAP proves an initiator knows a secret one guess at a time, and a
// guess costs the target one MD5 (RFC 7143 section 12.1.3): without a
// bound, a wrong secret can be tried about 1,300 times a second. Every
// check of a CHAP response takes a token from the bucket of the
// initiator's name and from that of its address; a correct response
// gives them back. While a bucket is empty a check waits, up to
// authMaxWait, for its token; past that the login is refused without
// looking at the response, so guesses made faster than the buckets
// refill learn nothing. Separate connections do not help a guesser: the
// buckets are per name and per address, not per connection.
//
// The cost: a guesser who knows a victim's initiator name keeps that
// name's logins waiting or refused while it guesses. That is the price of
// bounding guesses per name; the log names both.
var (
	authPerName = bucketSpec{rate: 1, burst: 8}
	authPerAddr = bucketSpec{rate: 4, burst: 16}
)

// bucketSpec is a token bucket's refill rate (tokens a second) and size.
type bucketSpec struct {
	rate  float64
	burst int
}

const (
	authMaxWait = 2 * time.Second
	// authTableSize bounds the remembered names and addresses; keys
	// beyond it share one bucket per kind.
	authTableSize = 4096
)

// bucket is a token bucket whose tokens can go negative: a check that
// takes a missing token waits until it would have been there. It is not
// golang.org/x/time/rate's Limiter because a correct answer must give its
// token back after the check, and Reservation.Cancel restores nothing
// once the reserved time has passed.
type bucket struct {
	spec   bucketSpec
	tokens float64
	at     time.Time // when tokens was counted
}

func (b *bucket) refill(now time.Time) {
	if now.After(b.at) {
		b.tokens = min(b.tokens+now.Sub(b.at).Seconds()*b.spec.rate, float64(b.spec.burst))
		b.at = now
	}
}

// take removes a token and returns how long until it would have been
// there.
func (b *bucket) take(now time.Time) time.Duration {
	b.refill(now)
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.spec.rate * float64(time.Second))
}

func (b *bucket) giveBack() { b.tokens = min(b.tokens+1, float64(b.spec.burst)) }

func (b *bucket) full(now time.Time) bool {
	b.refill(now)
	return b.tokens >= float64(b.spec.burst)
}

// authLimiter holds the buckets. A bucket that has refilled is the same
// as a new one, so it can be forgotten, which keeps the table small.
type authLimiter struct {
	mu       sync.Mutex
	keys     map[string]*bucket
	overflow map[bucketSpec]*bucket
	now      func() time.Time
	sleep    func(context.Context, time.Duration) error // tests replace it
}

func newAuthLimiter() *authLimiter {
	return &authLimiter{keys: map[string]*bucket{}, overflow: map[bucketSpec]*bucket{}, now: time.Now, sleep: sleepCtx}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errAuthLimited is the refusal of a check that would wait too long.
type errAuthLimited struct{ wait time.Duration }

func (e *errAuthLimited) Error() string {
	return fmt.Sprintf("too many failed CHAP logins from this initiator name or address (next check in %v)", e.wait.Round(time.Millisecond))
}

// authTicket is one admitted check: Succeeded gives its tokens back.
type authTicket struct {
	l  *authLimiter
	bs []*bucket
}

func (t *authTicket) Succeeded() {
	t.l.mu.Lock()
	defer t.l.mu.Unlock()
	for _, b := range t.bs {
		b.giveBack()
	}
	t.bs = nil
}

// admit waits until a check for initiator name from address addr may
// run, or refuses it (errAuthLimited, or ctx's error).
func (l *authLimiter) admit(ctx context.Context, name, addr string) (*authTicket, error) {
	l.mu.Lock()
	now := l.now()
	t := &authTicket{l: l}
	var wait time.Duration
	for _, k := range []struct {
		key  string
		spec bucketSpec
	}{{"name:" + name, authPerName}, {"addr:" + authSource(addr), authPerAddr}} {
		b := l.bucket(k.key, k.spec, now)
		t.bs = append(t.bs, b)
		wait = max(wait, b.take(now))
	}
	l.mu.Unlock()
	if wait > authMaxWait {
		// Refused unchecked; it does not push the next check further.
		t.Succeeded()
		return nil, &errAuthLimited{wait: wait}
	}
	if wait > 0 {
		if err := l.sleep(ctx, wait); err != nil {
			t.Succeeded()
			return nil, err
		}
	}
	return t, nil
}

// bucket returns key's bucket; l.mu is held.
func (l *authLimiter) bucket(key string, spec bucketSpec, now time.Time) *bucket {
	if b, ok := l.keys[key]; ok {
		return b
	}
	if len(l.keys) >= authTableSize {
		for k, b := range l.keys {
			if b.full(now) {
				delete(l.keys, k)
			}
		}
	}
	fresh := &bucket{spec: spec, tokens: float64(spec.burst), at: now}
	if len(l.keys) >= authTableSize {
		b, ok := l.overflow[spec]
		if !ok {
			b = fresh
			l.overflow[spec] = b
		}
		return b
	}
	l.keys[key] = fresh
	return fresh
}

// authSource is the key failed checks from addr are counted under: an
// IPv4 address as it is, an IPv6 address by its /64, which one host
// usually holds whole (the listener's per-source cap counts the same way).
func authSource(addr string) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	if ip = ip.Unmap(); ip.Is6() && !ip.IsLoopback() {
		if p, err := ip.WithZone("").Prefix(64); err == nil {
			return p.String()
		}
	}
	return ip.String()
}
