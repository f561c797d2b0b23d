package integration

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/integration/initiator"
)

// TestClusterQuorumLossPDL (issue 14): with quorum_loss = "pdl", the
// data site cut off from the writer and the witness (it has lost
// quorum) answers every command, TEST UNIT READY, INQUIRY and reads
// included, with ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (05/25/00,
// VMware ESXi's permanent device loss) once it has been without a lease
// for its hold, while the writer's side keeps serving; when the
// partition heals it serves again. On the old code (no such option) the
// site answered NOT READY, transitioning (02/04/0A).
func TestClusterQuorumLossPDL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := StartTorture(ctx, TortureConfig{Bin: metrolunBin(t), Dir: filepath.Join(t.TempDir(), "c"), Sites: 2,
		QuorumLoss: conf.QuorumLossPDL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("member logs (last lines):\n%s", c.LogTails(25))
		}
		c.Close()
	})
	ws, err := c.PollWriters(ctx)
	if err != nil || len(ws) != 1 {
		t.Fatalf("writers %v (%v)", ws, err)
	}
	w := ws[0]
	var cut string
	for _, m := range c.DataSites() {
		if m.Name != w {
			cut = m.Name
		}
	}
	dial := func(site string) *initiator.Session {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		s, err := initiator.Dial(dctx, c.Member(site).ISCSI, TortureTarget, "iqn.2026-11.io.metrolun:esxi-"+site, initiator.Options{})
		if err != nil {
			t.Fatalf("login at %s: %v", site, err)
		}
		t.Cleanup(func() { s.Close() })
		for range 3 { // the power-on unit attention
			if s.TestUnitReady(dctx, 0) == nil {
				break
			}
		}
		return s
	}
	atCut, atWriter := dial(cut), dial(w)
	// The site must have served (a read needs its lease) before it is
	// cut off: one that never has, just started, is not taken as lost.
	if _, err := c.WaitInSync(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	until(t, cut+" serving reads", 30*time.Second, func() bool {
		_, err := atCut.ReadBlocks(ctx, 0, 0, 8)
		return err == nil && atCut.TestUnitReady(ctx, 0) == nil
	})
	for _, m := range c.Members {
		if m.Name != cut {
			if err := c.Partition(cut, m.Name); err != nil {
				t.Fatal(err)
			}
		}
	}
	cutAt := time.Now()
	lost := func(err error) bool { return isSense(err, initiator.SenseIllegalRequest, 0x25, 0x00) }
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		tctx, tcancel := context.WithTimeout(ctx, 10*time.Second)
		err := atCut.TestUnitReady(tctx, 0)
		tcancel()
		if lost(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s cut off for %v: TEST UNIT READY %v, want 05/25/00", cut, time.Since(cutAt).Round(time.Millisecond), err)
		}
	}
	t.Logf("%s answered 05/25/00 %v after it was cut off (hold %v)", cut, time.Since(cutAt).Round(10*time.Millisecond), c.Hold())
	if !logHas(t, c.Member(cut).Log, "lost the cluster") {
		t.Errorf("%s's log does not say that it answers as a lost device", cut)
	}
	if _, err := atCut.ReadBlocks(ctx, 0, 0, 8); !lost(err) {
		t.Errorf("READ at the lost site: %v, want 05/25/00", err)
	}
	if err := atCut.WriteBlocks(ctx, 0, 0, make([]byte, 4096), false); !lost(err) {
		t.Errorf("WRITE at the lost site: %v, want 05/25/00", err)
	}
	if _, err := atCut.Inquiry(ctx, 0); !lost(err) {
		t.Errorf("INQUIRY at the lost site: %v, want 05/25/00", err)
	}
	// The writer's side, with the witness, keeps the cluster and serves.
	until(t, w+" serving writes without "+cut, 30*time.Second, func() bool {
		return atWriter.WriteBlocks(ctx, 0, 8, make([]byte, 4096), false) == nil
	})
	if err := c.Heal(); err != nil {
		t.Fatal(err)
	}
	until(t, cut+" serving again after the heal", 2*time.Minute, func() bool {
		tctx, tcancel := context.WithTimeout(ctx, 10*time.Second)
		defer tcancel()
		_, err := atCut.ReadBlocks(tctx, 0, 0, 8)
		return err == nil
	})
}
