package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// fakeAuthClock is the limiter's clock, moved by the test; waits are
// recorded and not slept.
type fakeAuthClock struct{ t time.Time }

func limiterAt(c *fakeAuthClock) (*authLimiter, *[]time.Duration) {
	l := newAuthLimiter()
	l.now = func() time.Time { return c.t }
	var waits []time.Duration
	l.sleep = func(ctx context.Context, d time.Duration) error {
		waits = append(waits, d)
		return nil
	}
	return l, &waits
}

func TestAuthLimiterPerName(t *testing.T) {
	clk := &fakeAuthClock{t: time.Unix(1000, 0)}
	l, waits := limiterAt(clk)
	ctx := context.Background()
	// A burst of failed checks passes without waiting, from different
	// addresses too: the name's bucket is shared.
	for i := range authPerName.burst {
		if _, err := l.admit(ctx, "iqn.victim", fmt.Sprintf("10.0.0.%d", i)); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	if len(*waits) != 0 {
		t.Fatalf("the first %d checks waited: %v", authPerName.burst, *waits)
	}
	// Then each waits one more second, up to authMaxWait; past that a
	// check is refused without waiting.
	for i := 1; i <= 2; i++ {
		if _, err := l.admit(ctx, "iqn.victim", "10.0.1.1"); err != nil {
			t.Fatalf("check %d after the burst: %v", i, err)
		}
		if w := (*waits)[len(*waits)-1]; w != time.Duration(i)*time.Second {
			t.Fatalf("check %d after the burst waited %v, want %ds", i, w, i)
		}
	}
	var lim *errAuthLimited
	if _, err := l.admit(ctx, "iqn.victim", "10.0.1.2"); !errors.As(err, &lim) {
		t.Fatalf("third check after the burst: %v, want a refusal", err)
	}
	// Another name is not held up.
	if _, err := l.admit(ctx, "iqn.other", "10.0.2.1"); err != nil || len(*waits) != 2 {
		t.Fatalf("another name: %v, waits %v", err, *waits)
	}
	// Time refills the bucket; a correct answer gives its token back.
	clk.t = clk.t.Add(3 * time.Second)
	for range 3 {
		tk, err := l.admit(ctx, "iqn.victim", "10.0.3.1")
		if err != nil {
			t.Fatal(err)
		}
		tk.Succeeded()
	}
	if len(*waits) != 2 {
		t.Fatalf("successful checks waited: %v", *waits)
	}
}

func TestAuthLimiterPerAddress(t *testing.T) {
	clk := &fakeAuthClock{t: time.Unix(1000, 0)}
	l, waits := limiterAt(clk)
	// One address trying many names is bounded by its own bucket.
	n := 0
	for ; n < 1000; n++ {
		if _, err := l.admit(context.Background(), fmt.Sprintf("iqn.name%d", n), "10.9.9.9"); err != nil {
			break
		}
	}
	// burst, then a wait of 1/rate more per check up to authMaxWait.
	want := authPerAddr.burst + int(float64(authPerAddr.rate)*authMaxWait.Seconds())
	if n != want {
		t.Fatalf("%d checks from one address before a refusal, want %d (waits %v)", n, want, *waits)
	}
}

// TestAuthLimiterPerIPv6Prefix: addresses of one IPv6 /64 share a
// bucket, so a host cannot multiply its guesses by taking a new address
// for every login.
func TestAuthLimiterPerIPv6Prefix(t *testing.T) {
	clk := &fakeAuthClock{t: time.Unix(1000, 0)}
	l, _ := limiterAt(clk)
	n := 0
	for ; n < 1000; n++ {
		if _, err := l.admit(context.Background(), fmt.Sprintf("iqn.name%d", n), fmt.Sprintf("2001:db8:5:6::%x", n+1)); err != nil {
			break
		}
	}
	want := authPerAddr.burst + int(float64(authPerAddr.rate)*authMaxWait.Seconds())
	if n != want {
		t.Fatalf("%d checks from one /64 before a refusal, want %d", n, want)
	}
	if _, err := l.admit(context.Background(), "iqn.elsewhere", "2001:db8:5:7::1"); err != nil {
		t.Fatalf("another /64 was held up: %v", err)
	}
}

func TestAuthLimiterTableBounded(t *testing.T) {
	clk := &fakeAuthClock{t: time.Unix(1000, 0)}
	l, _ := limiterAt(clk)
	for i := range 3 * authTableSize {
		l.admit(context.Background(), fmt.Sprintf("iqn.n%d", i), fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255))
		if i%1000 == 0 {
			clk.t = clk.t.Add(10 * time.Millisecond)
		}
	}
	if len(l.keys) > authTableSize {
		t.Fatalf("%d keys remembered, bound %d", len(l.keys), authTableSize)
	}
	// Refilled buckets are forgotten when room is needed.
	clk.t = clk.t.Add(time.Hour)
	if _, err := l.admit(context.Background(), "iqn.late", "10.200.0.1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.keys["name:iqn.late"]; !ok || len(l.keys) > 3 {
		t.Fatalf("after an hour: %d keys, iqn.late remembered: %v", len(l.keys), ok)
	}
}

// syncBuffer is a log sink the server writes from its goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestE2ECHAPGuessRate: a wrong CHAP secret tried over and over gets a
// few checks a second, not one per round trip (about 1,300 a second
// before the limiter); each failure is logged with the initiator's name,
// address and reason; the right secret still logs in afterwards.
func TestE2ECHAPGuessRate(t *testing.T) {
	var logs syncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	oneWay := &CHAPConfig{Username: "alice", Secret: "alice-secret-12"}
	s := startServer(t, DefaultLimits(), TargetConfig{CHAP: oneWay}, Config{Logger: log})
	const window = 2 * time.Second
	tries := 0
	for start := time.Now(); time.Since(start) < window && tries < 5000; tries++ {
		in := dial(t, s.addr)
		if st := in.tryLogin(loginOpts{chapUser: "alice", chapSecret: "guess"}); st != 0x0201 {
			t.Fatalf("try %d: status 0x%04x, want 0x0201", tries, st)
		}
		in.nc.Close()
	}
	// The burst, one a second after it, and the one in progress when
	// the window closed.
	if limit := authPerName.burst + int(window.Seconds()) + 1; tries > limit {
		t.Fatalf("%d wrong secrets answered in %v, want at most %d", tries, window, limit)
	}
	out := logs.String()
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "login rejected") {
			line = l
			break
		}
	}
	for _, want := range []string{"initiator=" + e2eInitiator, "remote=127.0.0.1:", "reason=\"authentication failed\"", "wrong name or response"} {
		if !strings.Contains(line, want) {
			t.Errorf("failed login logged as %q: no %q", line, want)
		}
	}
	if strings.Contains(out, "guess") || strings.Contains(out, oneWay.Secret) {
		t.Error("a secret or a guess reached the log")
	}
	// The owner of the name gets in once the guessing stops (its check
	// may wait for a token, within authMaxWait).
	in := dial(t, s.addr)
	if st := in.tryLogin(loginOpts{chapUser: "alice", chapSecret: oneWay.Secret}); st != 0 {
		t.Fatalf("right secret after the guessing: status 0x%04x", st)
	}
}
