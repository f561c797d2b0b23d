package replica

import (
	"bytes"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/proxy"
)

// TestHandoverWaitsOutOldLeases: after a planned move (the old writer
// released, so the cluster waited nothing out), a new writer that drops an
// unreachable replica must still wait for the read lease the old writer
// granted it before acknowledging a write without it (I3): no read at that
// replica issued after the write's acknowledgement returns the old data.
func TestHandoverWaitsOutOldLeases(t *testing.T) {
	tc := newTestCluster(t, 1<<20, "a", "b", "c")
	px, err := proxy.New("127.0.0.1:0", tc.addrs["b"])
	if err != nil {
		t.Fatal(err)
	}
	tc.addrs["b"] = px.Addr()
	a, b, c := tc.start("a"), tc.start("b"), tc.start("c")
	tc.c.setWriter("a")
	waitWriter(t, a)
	old := block(1, 4096)
	if err := a.WriteAt(old, 0, false); err != nil {
		t.Fatal(err)
	}
	until(t, "b holds a lease and shows the write", 5*time.Second, func() bool {
		got := make([]byte, 4096)
		ok, _ := b.recv.leaseValid(time.Now())
		return ok && b.ReadAt(got, 0) == nil && bytes.Equal(got, old)
	})
	// b's link goes away at once (connections refused), while it still
	// holds the lease a granted; then a planned move to c.
	px.Close()
	tc.c.revoke("a")
	tc.c.mu.Lock()
	tc.c.view.Handover = true
	tc.c.mu.Unlock()
	tc.c.setWriter("c")
	waitWriter(t, c)
	newer := block(2, 4096)
	if err := c.WriteAt(newer, 0, false); err != nil {
		t.Fatal(err)
	}
	acked := time.Now()
	got := make([]byte, 4096)
	if err := b.ReadAt(got, 0); err == nil && bytes.Equal(got, old) {
		t.Fatalf("b returned the old data %v after the new write was acknowledged", time.Since(acked))
	}
}
