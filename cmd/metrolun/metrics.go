package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/metrolun/metrolun/target"
)

// Prometheus metrics of one member: I/O rates and latencies of the LUN as
// the initiators see them, and the cluster's state (epoch, writer,
// in-sync set, replication lag, resync progress), read at scrape time.

var ioLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Name:    "metrolun_io_seconds",
	Help:    "Latency of volume operations at this site, by operation and outcome.",
	Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18), // 50 µs .. 6.5 s
}, []string{"op", "result"})

var ioBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "metrolun_io_bytes_total",
	Help: "Bytes read and written through this site.",
}, []string{"op"})

var volumeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "metrolun_volume_errors_total",
	Help: "Volume failures answered to an initiator as CHECK CONDITION, by command and kind (no_space, medium, outcome_unknown, not_ready, other).",
}, []string{"op", "kind"})

var transitionBusy = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "metrolun_transition_busy_total",
	Help: "Commands of single-path initiators answered BUSY (which they retry) instead of NOT READY or ABORTED COMMAND during a writer transition.",
})

func countVolumeError(e target.VolumeError) {
	volumeErrors.WithLabelValues(e.Op, e.Kind()).Inc()
}

// metered wraps a volume with the I/O metrics.
type metered struct{ target.Volume }

// Unwrap lets target find what the wrapped volume implements beyond
// target.Volume (the shared record of a mirrored LUN).
func (m metered) Unwrap() target.Volume { return m.Volume }

func observe(op string, start time.Time, err error) {
	res := "ok"
	if err != nil {
		res = "error"
	}
	ioLatency.WithLabelValues(op, res).Observe(time.Since(start).Seconds())
}

func (m metered) ReadAt(p []byte, off int64) error {
	t := time.Now()
	err := m.Volume.ReadAt(p, off)
	observe("read", t, err)
	if err == nil {
		ioBytes.WithLabelValues("read").Add(float64(len(p)))
	}
	return err
}

// TryReadAt passes target.InlineReader on, so that reads served on a
// connection's reader are counted too.
func (m metered) TryReadAt(p []byte, off int64) (bool, error) {
	ir, ok := m.Volume.(target.InlineReader)
	if !ok {
		return false, nil
	}
	t := time.Now()
	done, err := ir.TryReadAt(p, off)
	if !done && err == nil {
		return false, nil
	}
	observe("read", t, err)
	if err == nil {
		ioBytes.WithLabelValues("read").Add(float64(len(p)))
	}
	return done, err
}

func (m metered) WriteAt(p []byte, off int64, fua bool) error {
	t := time.Now()
	err := m.Volume.WriteAt(p, off, fua)
	observe("write", t, err)
	if err == nil {
		ioBytes.WithLabelValues("write").Add(float64(len(p)))
	}
	return err
}

func (m metered) Flush() error {
	t := time.Now()
	err := m.Volume.Flush()
	observe("flush", t, err)
	return err
}

func (m metered) Unmap(off, n int64) error {
	t := time.Now()
	err := m.Volume.Unmap(off, n)
	observe("unmap", t, err)
	return err
}

func (m metered) CompareAndWrite(off int64, cmp, data []byte) (int, error) {
	t := time.Now()
	at, err := m.Volume.CompareAndWrite(off, cmp, data)
	observe("compare_and_write", t, err)
	return at, err
}

// metricsHandler serves /metrics for this member.
func (m *member) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(ioLatency, ioBytes, volumeErrors, transitionBusy)
	reg.MustRegister(&clusterCollector{m: m})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

var (
	descEpoch   = prometheus.NewDesc("metrolun_epoch", "Current writer epoch.", nil, nil)
	descWriter  = prometheus.NewDesc("metrolun_writer", "1 if this member is the writer.", nil, nil)
	descLeader  = prometheus.NewDesc("metrolun_raft_leader", "1 if this member is the Raft leader.", nil, nil)
	descInSync  = prometheus.NewDesc("metrolun_in_sync", "1 for each data site in the in-sync set.", []string{"site"}, nil)
	descLag     = prometheus.NewDesc("metrolun_replication_lag_bytes", "Bytes sent to a replica and not yet acknowledged (at the writer).", []string{"replica"}, nil)
	descDirty   = prometheus.NewDesc("metrolun_dirty_regions", "Regions a replica misses (at the writer).", []string{"replica"}, nil)
	descResync  = prometheus.NewDesc("metrolun_resync_progress_ratio", "Resync progress of a replica, 0..1 (at the writer).", []string{"replica"}, nil)
	descApplied = prometheus.NewDesc("metrolun_applied_seq", "Highest sequence number applied at this site in its epoch.", nil, nil)
	descLost    = prometheus.NewDesc("metrolun_lost_regions", "64 KiB regions whose reads fail at this site (a failed write-back here or at the writer) until rewritten.", nil, nil)

	// The hosts (metrolun hosts, cmd/paths): this site's own sessions,
	// and every initiator in the cluster as this member knows it.
	descSessionRTT   = prometheus.NewDesc("metrolun_session_rtt_seconds", "Smoothed NOP-In round trip of a session at this site.", []string{"initiator", "isid"}, nil)
	descSessionState = prometheus.NewDesc("metrolun_session_alua_state", "1 for the ALUA access state this site reports to a session's initiator.", []string{"initiator", "isid", "state"}, nil)
	descHostPaths    = prometheus.NewDesc("metrolun_host_sessions", "Live sessions of an initiator at a site (cluster-wide).", []string{"initiator", "site"}, nil)
	descHostOneSite  = prometheus.NewDesc("metrolun_host_one_site", "1 if an initiator has paths to one site only while the cluster has more.", []string{"initiator"}, nil)
	descHostShared   = prometheus.NewDesc("metrolun_host_shared_name", "1 if an initiator name has sessions at one site from two addresses (several hosts sharing one name, most likely).", []string{"initiator"}, nil)
	descHostFar      = prometheus.NewDesc("metrolun_host_not_nearest", "1 if an initiator's nearest site (lowest RTT) is not its preferred one.", []string{"initiator"}, nil)
	descHostsUnheard = prometheus.NewDesc("metrolun_hosts_sites_unheard", "Data sites whose session lists this member has not had.", nil, nil)
)

type clusterCollector struct{ m *member }

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEpoch, descWriter, descLeader, descInSync, descLag, descDirty, descResync, descApplied, descLost,
		descSessionRTT, descSessionState, descHostPaths, descHostOneSite, descHostShared, descHostFar, descHostsUnheard} {
		ch <- d
	}
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.status()
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(descEpoch, prometheus.GaugeValue, float64(st.Raft.Epoch))
	ch <- prometheus.MustNewConstMetric(descWriter, prometheus.GaugeValue, b(st.Raft.Writer == c.m.cfg.Name && st.Raft.LeaseLeft != ""))
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, b(st.Raft.State == "leader"))
	for _, s := range st.Raft.InSync {
		ch <- prometheus.MustNewConstMetric(descInSync, prometheus.GaugeValue, 1, s)
	}
	c.collectHosts(ch, b)
	if st.Site == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(st.Site.Seq))
	ch <- prometheus.MustNewConstMetric(descLost, prometheus.GaugeValue, float64(st.Site.LostRegions))
	for _, p := range st.Site.Peers {
		ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(p.LagBytes), p.Name)
		ch <- prometheus.MustNewConstMetric(descDirty, prometheus.GaugeValue, float64(p.DirtyRegions), p.Name)
		prog := 1.0
		if p.ResyncTotal > 0 {
			prog = float64(p.ResyncDone) / float64(p.ResyncTotal)
		} else if p.State != "in-sync" {
			prog = 0
		}
		ch <- prometheus.MustNewConstMetric(descResync, prometheus.GaugeValue, prog, p.Name)
	}
}

func (c *clusterCollector) collectHosts(ch chan<- prometheus.Metric, b func(bool) float64) {
	hr := c.m.hosts()
	ch <- prometheus.MustNewConstMetric(descHostsUnheard, prometheus.GaugeValue, float64(len(hr.Unheard)))
	// A label set must not repeat within a scrape.
	seen := map[[2]string]bool{}
	for _, h := range hr.Hosts {
		per := map[string]int{}
		for _, p := range h.Paths {
			per[p.Site]++
			k := [2]string{h.Initiator, p.ISID}
			if p.Site != c.m.cfg.Name || seen[k] {
				continue
			}
			seen[k] = true
			if p.RTT > 0 {
				ch <- prometheus.MustNewConstMetric(descSessionRTT, prometheus.GaugeValue, p.RTT.Seconds(), h.Initiator, p.ISID)
			}
			ch <- prometheus.MustNewConstMetric(descSessionState, prometheus.GaugeValue, 1, h.Initiator, p.ISID, p.State)
		}
		for site, n := range per {
			ch <- prometheus.MustNewConstMetric(descHostPaths, prometheus.GaugeValue, float64(n), h.Initiator, site)
		}
		ch <- prometheus.MustNewConstMetric(descHostOneSite, prometheus.GaugeValue, b(h.OneSite), h.Initiator)
		ch <- prometheus.MustNewConstMetric(descHostShared, prometheus.GaugeValue, b(h.SharedName), h.Initiator)
		ch <- prometheus.MustNewConstMetric(descHostFar, prometheus.GaugeValue, b(h.NotNearest), h.Initiator)
	}
}
