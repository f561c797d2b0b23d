package replica

import (
	"bytes"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/proxy"
)

// BenchmarkMirrorWAN measures synchronous mirroring through the WAN proxy
// at several round-trip times: the latency of one 4 KiB write at queue
// depth 1 as a ratio to the RTT (the physical limit is 1.0 plus local
// work), and IOPS at queue depth 32 as a fraction of 32/RTT.
//
//	go test -run XXX -bench MirrorWAN -benchtime 200x ./replica/
func BenchmarkMirrorWAN(b *testing.B) {
	for _, rtt := range []time.Duration{0, time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond} {
		for _, qd := range []int{1, 32} {
			b.Run(fmt.Sprintf("rtt=%v/qd=%d", rtt, qd), func(b *testing.B) {
				m := wanPair(b, rtt)
				data := bytes.Repeat([]byte{0x42}, 4096)
				b.SetBytes(4096)
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				per := (b.N + qd - 1) / qd
				for w := 0; w < qd; w++ {
					wg.Add(1)
					go func(w int) {
						defer wg.Done()
						for i := 0; i < per; i++ {
							off := int64((w*per+i)%1024) * 4096
							if err := m.WriteAt(data, off, false); err != nil {
								b.Error(err)
								return
							}
						}
					}(w)
				}
				wg.Wait()
				el := time.Since(start)
				ops := float64(per * qd)
				if rtt > 0 {
					if qd == 1 {
						b.ReportMetric(float64(el)/ops/float64(rtt), "latency/RTT")
					} else {
						b.ReportMetric(ops/el.Seconds()/(float64(qd)/rtt.Seconds()), "IOPS/(qd/RTT)")
					}
				}
				b.ReportMetric(ops/el.Seconds(), "IOPS")
			})
		}
	}
}

// wanPair is a writer and one replica on loopback with the proxy between
// them adding rtt/2 each way.
func wanPair(b *testing.B, rtt time.Duration) *Mirror {
	b.Helper()
	dir := b.TempDir()
	a, err := OpenLocal(filepath.Join(dir, "a.img"), 8<<20)
	if err != nil {
		b.Fatal(err)
	}
	r, err := OpenLocal(filepath.Join(dir, "b.img"), 8<<20)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		NewReceiver(r, 1).Serve(c)
	}()
	px, err := proxy.New("127.0.0.1:0", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { px.Close() })
	px.Set(proxy.Shape{Latency: rtt / 2}, proxy.Shape{Latency: rtt / 2})
	c, err := net.Dial("tcp", px.Addr())
	if err != nil {
		b.Fatal(err)
	}
	m := NewMirror(a, 1, NewLink(c))
	b.Cleanup(func() { m.Close() })
	return m
}
