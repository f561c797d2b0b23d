package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/cmd/netguard"
	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/replica"
	"github.com/metrolun/metrolun/target"
)

func serveCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run one member from a config file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return fmt.Errorf("--config FILE is required")
			}
			cfg, err := conf.Load(path)
			if err != nil {
				return err
			}
			return serve(cfg)
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "config file (HCL)")
	addMirrorFloorFlags(cmd)
	return cmd
}

func newLogger(cfg *conf.Config) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "metrolun." + cfg.Name,
		Level:      hclog.LevelFromString(cfg.LogLevel),
		JSONFormat: cfg.LogFormat == "json",
		Output:     os.Stderr,
	})
}

// serve runs a member until SIGINT or SIGTERM, then stops it cleanly:
// in-flight commands finish and are answered before the volumes close.
func serve(cfg *conf.Config) error {
	log := newLogger(cfg)
	var mem *member
	var clustered target.Volume
	var groups target.PortGroupsFunc
	var redirect target.RedirectFunc
	var singlePath target.SinglePathFunc
	if cfg.Cluster != nil {
		var err error
		if mem, err = startMember(cfg, log); err != nil {
			return err
		}
		defer mem.close()
		if cl := cfg.Cluster; cl.AdminListen != "" {
			stop, err := serveAdmin(mem, log)
			if err != nil {
				return err
			}
			defer stop()
		}
		if cfg.Role == conf.RoleWitness {
			return waitSignal(log, cfg, nil, mem.stopc)
		}
		clustered = metered{mem.site}
		groups = mem.portGroups
		singlePath = mem.singlePath
		if cfg.Cluster.RedirectLogins {
			redirect = mem.redirect
		}
	}
	srv, err := buildServer(cfg, log, clustered, groups, redirect, singlePath)
	if err != nil {
		return err
	}
	if mem != nil {
		mem.book.srv.Store(srv)
	}
	var listeners []net.Listener
	for _, addr := range cfg.ISCSI.Listen {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for _, o := range listeners {
				o.Close()
			}
			srv.Shutdown(context.Background())
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		lim := netguard.Limits{MaxConns: cfg.ISCSI.MaxConnections, MaxConnsPerIP: cfg.ISCSI.MaxConnectionsPerIP}
		listeners = append(listeners, guard(l, "iscsi", lim, log))
	}
	if addr := os.Getenv("METROLUN_PPROF"); addr != "" {
		// Profiling for developers: net/http/pprof, which has no
		// authentication, so only on a loopback address.
		if err := loopbackOnly(addr); err != nil {
			log.Error("METROLUN_PPROF ignored", "error", err)
		} else {
			go func() { log.Warn("pprof stopped", "error", http.ListenAndServe(addr, nil)) }()
		}
	}
	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { errc <- srv.Serve(l) }()
	}
	log.Info("serving", "name", cfg.Name, "portals", cfg.ISCSI.Listen)
	var stop <-chan error
	if mem != nil {
		stop = mem.stopc
	}
	serveErr := waitSignal(log, cfg, errc, stop)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Error("shutdown", "error", err)
		return err
	}
	log.Info("stopped")
	return serveErr
}

// guard caps what the port l can hold (cmd/netguard), within the
// process's descriptors.
func guard(l net.Listener, name string, lim netguard.Limits, log hclog.Logger) net.Listener {
	lim = lim.Clamp(netguard.NoFile())
	log.Debug("port limits", "port", name, "addr", l.Addr().String(), "max_conns", lim.MaxConns, "max_conns_per_ip", lim.MaxConnsPerIP)
	return netguard.Wrap(l, name, lim, log)
}

// waitSignal blocks until SIGINT/SIGTERM, a listener error, or the
// cluster member must stop (member.watch: nil when it was removed, which
// is a clean end).
func waitSignal(log hclog.Logger, cfg *conf.Config, errc <-chan error, stop <-chan error) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	if errc == nil {
		log.Info("serving", "name", cfg.Name, "role", cfg.Role)
	}
	select {
	case s := <-sig:
		log.Info("stopping", "signal", s.String())
		return nil
	case err := <-errc:
		log.Error("listener failed", "error", err)
		return err
	case err := <-stop:
		if err != nil {
			log.Error("stopping", "error", err)
			return err
		}
		log.Info("stopping: removed from the cluster; to bring this site back, start it with join = true and an empty raft directory, then `metrolun member add`")
		return nil
	}
}

// buildServer turns the config into a target server with its LUs. In a
// cluster the one LUN is served from clustered (the mirrored volume), and
// groups gives every site's port group, and singlePath which initiators
// have no other path (target/retrybusy.go).
func buildServer(cfg *conf.Config, log hclog.Logger, clustered target.Volume, groups target.PortGroupsFunc, redirect target.RedirectFunc, singlePath target.SinglePathFunc) (*target.Server, error) {
	ic := cfg.ISCSI
	tcfg := target.Config{
		Limits: target.Limits{
			MaxRecvDataSegmentLength: ic.MaxRecvDataSegmentLength,
			MaxBurstLength:           ic.MaxBurstLength,
			FirstBurstLength:         ic.FirstBurstLength,
			MaxOutstandingR2T:        ic.MaxOutstandingR2T,
			ImmediateData:            ic.ImmediateData,
			InitialR2T:               ic.InitialR2T,
			HeaderDigest:             ic.HeaderDigest,
			DataDigest:               ic.DataDigest,
			QueueDepth:               ic.QueueDepth,
		},
		PortalGroup:   uint16(ic.PortalGroup),
		Portals:       ic.Listen,
		PortGroups:    groups,
		Redirect:      redirect,
		NOPInterval:   ic.NOPInterval,
		NOPTimeout:    ic.NOPTimeout,
		DiscoveryCHAP: chapConfig(ic.DiscoveryCHAP),
		Logger:        log.Named("iscsi"),
		MemoryBudget:  ic.MemoryBudget,
		OnVolumeError: countVolumeError,
		SinglePath:    singlePath,
		OnTransitionBusy: func() {
			transitionBusy.Inc()
		},
	}
	srv := target.NewServer(tcfg)
	for _, t := range cfg.Targets {
		tc := target.TargetConfig{
			Name:            t.Name,
			Alias:           t.Alias,
			AllowInitiators: t.AllowInitiators,
			CHAP:            chapConfig(t.CHAP),
		}
		for _, l := range t.LUNs {
			if clustered != nil {
				tc.LUNs = append(tc.LUNs, lunConfig(l, clustered))
				continue
			}
			vol, err := openSingleLUN(cfg.DataDir, t.Name, l, log.Named("store").With("target", t.Name, "lun", l.ID))
			if err != nil {
				return nil, fmt.Errorf("target %s LUN %d: %w", t.Name, l.ID, err)
			}
			fv, err := mirrorFloor(vol, log.Named("store"))
			if err != nil {
				vol.Close()
				return nil, fmt.Errorf("target %s LUN %d: %w", t.Name, l.ID, err)
			}
			lc := lunConfig(l, fv)
			// A single site keeps APTPL reservations in a file of its own;
			// a cluster's are in the shared record.
			lc.PRStateFile = filepath.Join(cfg.DataDir, target.PRStateFileName(t.Name, uint64(l.ID)))
			tc.LUNs = append(tc.LUNs, lc)
			log.Info("LUN ready", "target", t.Name, "lun", l.ID, "path", l.Path, "bytes", vol.Size())
		}
		if err := srv.AddTarget(tc); err != nil {
			return nil, err
		}
	}
	return srv, nil
}

func lunConfig(l conf.LUN, vol target.Volume) target.LUNConfig {
	return target.LUNConfig{
		ID:         uint64(l.ID),
		Volume:     vol,
		BlockSize:  l.BlockSize,
		ReadOnly:   l.ReadOnly,
		Serial:     l.Serial,
		Product:    l.Product,
		Thin:       l.Thin,
		WriteCache: l.WriteCache,

		PhysicalBlockSize: l.PhysicalBlockSize,
	}
}

func chapConfig(c *conf.CHAP) *target.CHAPConfig {
	if c == nil {
		return nil
	}
	return &target.CHAPConfig{
		Username:       c.Username,
		Secret:         string(c.Secret),
		MutualUsername: c.MutualUsername,
		MutualSecret:   string(c.MutualSecret),
	}
}

// serveAdmin starts the admin endpoint: HTTPS with the member's
// certificate when the cluster has a tls block, else plain HTTP; every
// request behind the guard.
func serveAdmin(mem *member, log hclog.Logger) (stop func(), err error) {
	cl := mem.cfg.Cluster
	g, err := adminGuard(cl, mem.tls)
	if err != nil {
		return nil, err
	}
	al, err := net.Listen("tcp", cl.AdminListen)
	if err != nil {
		return nil, fmt.Errorf("admin listen on %s: %w", cl.AdminListen, err)
	}
	// The guard caps connections before the TLS handshake costs anything.
	al, scheme := adminListener(guard(al, "admin", netguard.Admin, log), mem.tls)
	// Requests are small and answered at once; /v1/verify may take long
	// to answer, so writes are not bounded.
	hs := &http.Server{Handler: mem.adminHandler(g), ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
		ErrorLog: log.Named("admin").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}
	go hs.Serve(al)
	log.Info("admin endpoint", "url", scheme+"://"+cl.AdminListen, "token", cl.AdminTokenFile != "",
		"client_certificates", mem.tls != nil, "public_metrics", cl.AdminPublicMetrics)
	if cl.AdminInsecure {
		log.Warn("admin endpoint without authentication (admin_insecure = true): anyone who reaches " + cl.AdminListen +
			" can promote, fence, add and remove members")
	}
	return func() { hs.Close() }, nil
}

// adminListener wraps ln in TLS (adminTLS) when the member has a TLS
// config, and says which scheme clients use.
func adminListener(ln net.Listener, tcfg *tls.Config) (net.Listener, string) {
	if tc := adminTLS(tcfg); tc != nil {
		return tls.NewListener(ln, tc), "https"
	}
	return ln, "http"
}

// openSingleLUN opens a standalone site's LUN. A missing directory is an
// error (replica.OpenLocal), never created: it is most often a mount
// missing at boot. A missing file is created only at the LU's first start
// here, which a record in data_dir remembers: after that a missing file
// is a lost image, and serving a new empty one under the same serial
// would hand initiators zeros for their data (DESIGN.md I8).
func openSingleLUN(dataDir, targetName string, l conf.LUN, log hclog.Logger) (*replica.LocalFile, error) {
	pr := target.PRStateFileName(targetName, uint64(l.ID)) // pr-<target>-<hash>-lun<N>.state
	record := filepath.Join(dataDir, "lu-"+strings.TrimSuffix(strings.TrimPrefix(pr, "pr-"), ".state")+".created")
	if _, err := os.Stat(l.Path); errors.Is(err, os.ErrNotExist) {
		if _, rerr := os.Stat(record); rerr == nil {
			return nil, fmt.Errorf("%w: %s is missing (a missing mount or disk?), but this LU was started here before (%s). "+
				"It is created only at the first start; to serve an empty LU under the same identity on purpose, create an empty file there",
				replica.ErrNoBackingStore, l.Path, record)
		}
	}
	vol, err := openStore(l.Path, l.Size, dataDir, log)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(record); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dataDir, 0o755); err != nil {
			vol.Close()
			return nil, err
		}
		if err := os.WriteFile(record, []byte("path "+l.Path+"\n"), 0o600); err != nil {
			vol.Close()
			return nil, fmt.Errorf("LU record: %w", err)
		}
	}
	// Ranges whose write-back failed stay unreadable across a restart.
	if err := vol.PersistLost(strings.TrimSuffix(record, ".created") + ".lost"); err != nil {
		vol.Close()
		return nil, fmt.Errorf("lost ranges: %w", err)
	}
	return vol, nil
}

// loopbackOnly accepts host:port only when host is a loopback IP address
// (a name could resolve anywhere).
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s: the profiling endpoint has no authentication and listens only on a loopback address such as 127.0.0.1:6060", addr)
	}
	return nil
}
