package replica

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/metrolun/metrolun/integration/proxy"
)

// BenchmarkSiteWAN measures a two-site Site pair with the WAN proxy on
// every link between them (replication and forwarding), adding RTT/2 each
// way:
//
//   - write at the writer, queue depth 1: latency as a ratio to the RTT
//     (the physical limit is 1.0 plus local work);
//
//   - write at the other site (forwarded, DESIGN.md step 3), queue depth
//     1: the same ratio; one round trip, not two, means about 1.0;
//
//   - write at the writer, queue depth 32: IOPS as a fraction of 32/RTT;
//
//   - read at the other site, queue depth 1: served locally under a lease,
//     as fast as at the writer whatever the RTT (ratio to the writer's).
//
//     go test -run XXX -bench SiteWAN -benchtime 100x ./replica/
func BenchmarkSiteWAN(b *testing.B) {
	for _, rtt := range []time.Duration{0, time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond} {
		b.Run(fmt.Sprintf("rtt=%v", rtt), func(b *testing.B) {
			a, r := wanSites(b, rtt)
			data := bytes.Repeat([]byte{0x42}, 4096)
			for _, c := range []struct {
				name string
				s    *Site
				qd   int
				read bool
			}{
				{"write-writer-qd1", a, 1, false},
				{"write-forwarded-qd1", r, 1, false},
				{"write-writer-qd32", a, 32, false},
				{"read-writer-qd1", a, 1, true},
				{"read-replica-qd1", r, 1, true},
			} {
				b.Run(c.name, func(b *testing.B) {
					b.SetBytes(4096)
					b.ResetTimer()
					start := time.Now()
					var wg sync.WaitGroup
					per := (b.N + c.qd - 1) / c.qd
					for w := 0; w < c.qd; w++ {
						wg.Add(1)
						go func(w int) {
							defer wg.Done()
							buf := make([]byte, 4096)
							for i := 0; i < per; i++ {
								off := int64((w*per+i)%1024) * 4096
								var err error
								if c.read {
									err = c.s.ReadAt(buf, off)
								} else {
									err = c.s.WriteAt(data, off, false)
								}
								if err != nil {
									b.Error(err)
									return
								}
							}
						}(w)
					}
					wg.Wait()
					el := time.Since(start)
					ops := float64(per * c.qd)
					lat := el / time.Duration(per)
					if rtt > 0 && !c.read {
						if c.qd == 1 {
							b.ReportMetric(float64(lat)/float64(rtt), "latency/RTT")
						} else {
							b.ReportMetric(ops/el.Seconds()/(float64(c.qd)/rtt.Seconds()), "IOPS/(qd/RTT)")
						}
					}
					b.ReportMetric(float64(lat.Microseconds()), "µs/op")
					b.ReportMetric(ops/el.Seconds(), "IOPS")
				})
			}
		})
	}
}

// wanSites starts sites "a" (the writer) and "b" (in sync) with a proxy
// in front of each, adding rtt/2 each way, and waits until b holds a
// read lease.
func wanSites(b *testing.B, rtt time.Duration) (*Site, *Site) {
	b.Helper()
	c := newFakeCluster("a", "b")
	lns, addrs := map[string]net.Listener{}, map[string]string{}
	for _, n := range []string{"a", "b"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		lns[n] = ln
		px, err := proxy.New("127.0.0.1:0", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { px.Close() })
		px.Set(proxy.Shape{Latency: rtt / 2}, proxy.Shape{Latency: rtt / 2})
		addrs[n] = px.Addr()
	}
	sites := map[string]*Site{}
	for _, n := range []string{"a", "b"} {
		dir := filepath.Join(b.TempDir(), n)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		store, err := OpenLocal(filepath.Join(dir, "lun.img"), 8<<20)
		if err != nil {
			b.Fatal(err)
		}
		peer := "b"
		if n == "b" {
			peer = "a"
		}
		s, err := NewSite(SiteConfig{
			Name: n, Store: store, Dir: dir, Peers: map[string]string{peer: addrs[peer]},
			Control: fakeControl{c, n}, Lease: 300*time.Millisecond + 2*rtt, ReplicaTimeout: 5 * time.Second,
			RegionSize: 1 << 20, Logger: hclog.NewNullLogger(),
		})
		if err != nil {
			b.Fatal(err)
		}
		go s.Serve(lns[n])
		b.Cleanup(func() { s.Close() })
		sites[n] = s
	}
	c.setWriter("a")
	buf := make([]byte, 4096)
	deadline := time.Now().Add(20 * time.Second)
	for {
		// A write through b proves the forwarding path; a read at b that
		// does not wait proves the lease.
		if err := sites["b"].WriteAt(buf, 0, false); err == nil {
			t0 := time.Now()
			if err := sites["b"].ReadAt(buf, 0); err == nil && time.Since(t0) < rtt/2+5*time.Millisecond {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("site b does not serve within 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return sites["a"], sites["b"]
}
