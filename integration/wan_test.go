package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/initiator"
)

// BenchmarkClusterWAN: a two-site cluster of real processes (default
// timings) with every inter-site link through the proxy at 0, 10 and 50
// ms round trip, driven through iSCSI by the Go initiator at queue depth
// 1: writes at the writer and at the other site (forwarded) as a ratio to
// the RTT, and reads at the other site as a ratio to reads at the writer
// (both local under a lease: about 1 whatever the RTT). Then 4 KiB writes
// at queue depth 32 at each site (32 sessions, as the Go initiator runs
// one command at a time per session, each on its own blocks): IOPS as a
// fraction of 32/RTT, the most a depth of 32 allows (issue 13: >= 0.9).
//
//	go test -run XXX -bench 'ClusterWAN/rtt=(10|50)ms' -benchtime 1x ./integration/
func BenchmarkClusterWAN(b *testing.B) {
	for _, rtt := range []time.Duration{0, 10 * time.Millisecond, 50 * time.Millisecond} {
		b.Run(fmt.Sprintf("rtt=%v", rtt), func(b *testing.B) {
			ctx := context.Background()
			c, err := StartTorture(ctx, TortureConfig{Bin: metrolunBin(b), Dir: filepath.Join(b.TempDir(), "c"), Sites: 2})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(c.Close)
			if err := c.Latency(rtt / 2); err != nil {
				b.Fatal(err)
			}
			var writer string
			for deadline := time.Now().Add(30 * time.Second); writer == ""; {
				rs, err := c.Status(ctx)
				if err == nil {
					for _, r := range rs {
						if r.Status != nil && r.Status.Site != nil && r.Status.Site.Role == "writer" {
							writer = r.Name
						}
					}
				}
				if time.Now().After(deadline) {
					b.Fatal("no writer within 30s")
				}
				time.Sleep(100 * time.Millisecond)
			}
			sessions := map[string]*initiator.Session{}
			for _, t := range c.Targets() {
				s, err := initiator.Dial(ctx, t.Addr, t.IQN, "iqn.2026-11.io.metrolun:wan-"+t.Site, initiator.Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { s.Close() })
				sessions[t.Site] = s
			}
			var other string
			for s := range sessions {
				if s != writer {
					other = s
				}
			}
			const n = 40
			buf := make([]byte, 4096)
			timeOps := func(s *initiator.Session, write bool, base uint64) time.Duration {
				start := time.Now()
				for i := range n {
					lba := base + uint64(i)*8
					var err error
					if write {
						err = s.WriteBlocks(ctx, 0, lba, buf, false)
					} else {
						_, err = s.ReadBlocks(ctx, 0, lba, 8)
					}
					if err != nil {
						b.Fatalf("qd1 %s at %s: %v\n%s", map[bool]string{true: "write", false: "read"}[write], s.Addr(), err, c.LogTails(40))
					}
				}
				return time.Since(start) / n
			}
			// qd32: 32 sessions per site, logged in before the clock starts.
			const depth, perSession = 32, 40
			deep := map[string][]*initiator.Session{}
			for _, t := range c.Targets() {
				for range depth {
					s, err := initiator.Dial(ctx, t.Addr, t.IQN, "iqn.2026-11.io.metrolun:wan-"+t.Site, initiator.Options{})
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { s.Close() })
					deep[t.Site] = append(deep[t.Site], s)
				}
			}
			qd32 := func(site string, ss []*initiator.Session, base uint64) float64 {
				var wg sync.WaitGroup
				errs := make(chan error, len(ss))
				start := time.Now()
				for i, s := range ss {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for k := range perSession {
							lba := base + uint64(i*perSession+k)*8
							if err := s.WriteBlocks(ctx, 0, lba, buf, false); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				el := time.Since(start)
				close(errs)
				for err := range errs {
					b.Fatalf("qd32 write at %s: %v\n%s", site, err, c.LogTails(40))
				}
				return float64(len(ss)*perSession) / el.Seconds()
			}
			b.ResetTimer()
			ww := timeOps(sessions[writer], true, 0)
			wf := timeOps(sessions[other], true, 4096)
			rw := timeOps(sessions[writer], false, 16384)
			rr := timeOps(sessions[other], false, 16384)
			qw := qd32(writer, deep[writer], 32768)
			qf := qd32(other, deep[other], 65536)
			b.StopTimer()
			if rtt > 0 {
				b.ReportMetric(float64(ww)/float64(rtt), "write-at-writer/RTT")
				b.ReportMetric(float64(wf)/float64(rtt), "write-forwarded/RTT")
			}
			b.ReportMetric(float64(ww.Microseconds()), "write-at-writer-µs")
			b.ReportMetric(float64(wf.Microseconds()), "write-forwarded-µs")
			b.ReportMetric(float64(rw.Microseconds()), "read-at-writer-µs")
			b.ReportMetric(float64(rr.Microseconds()), "read-at-replica-µs")
			b.ReportMetric(float64(rr)/float64(rw), "read-replica/writer")
			b.ReportMetric(qw, "qd32-write-at-writer-IOPS")
			b.ReportMetric(qf, "qd32-write-forwarded-IOPS")
			if rtt > 0 {
				ideal := depth / rtt.Seconds()
				b.ReportMetric(qw/ideal, "qd32-write-at-writer/(32/RTT)")
				b.ReportMetric(qf/ideal, "qd32-write-forwarded/(32/RTT)")
			}
		})
	}
}
