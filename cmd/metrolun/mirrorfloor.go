package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/internal/mirrorfloor"
	"github.com/metrolun/metrolun/target"
)

// The floor of mirroring, a measuring aid for bench-mirror
// (internal/mirrorfloor, docs/bench.md): `metrolun demo --sites 1
// --mirror-floor MODE` runs a single site whose LUN's writes are also
// made, over one connection, by a `metrolun mirror-floor-echo` process
// that it starts as a member. The serve member learns of the echo from
// hidden flags (not from the environment, which a shell or a test would
// pass on to members it never meant to change); neither those flags nor
// the command are meant for anything but measuring.
var floorFlags struct {
	echo string // the echo's host:port; empty: no floor
	cert string // its certificate (PEM); empty: plain TCP
	// mode: "reader" (acks read by a goroutine of their own and handed
	// to the writes, as replica/ does, instead of by the waiting writes
	// in turn) or "spawn" (the volume has an LU state record,
	// mirrorfloor.Spawned, so that its writes never run on the iSCSI
	// reader, as a mirrored LU's).
	mode string
}

func addMirrorFloorFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&floorFlags.echo, "mirror-floor-echo", "", "measuring aid: also send every write to the mirror floor echo at this loopback address")
	f.StringVar(&floorFlags.cert, "mirror-floor-cert", "", "measuring aid: the echo's TLS certificate (empty: plain TCP)")
	f.StringVar(&floorFlags.mode, "mirror-floor-mode", "", `measuring aid: "reader" or "spawn"`)
	for _, n := range []string{"mirror-floor-echo", "mirror-floor-cert", "mirror-floor-mode"} {
		f.MarkHidden(n)
	}
}

// mirrorFloor wraps a single site's volume in a mirrorfloor.Volume when
// --mirror-floor-echo names an echo; otherwise it returns vol.
func mirrorFloor(vol target.Volume, log hclog.Logger) (target.Volume, error) {
	addr := floorFlags.echo
	if addr == "" {
		return vol, nil
	}
	if err := loopbackOnly(addr); err != nil {
		return nil, fmt.Errorf("--mirror-floor-echo: %w", err)
	}
	var tc *tls.Config
	if cert := floorFlags.cert; cert != "" {
		var err error
		if tc, err = mirrorfloor.ClientTLS(cert); err != nil {
			return nil, fmt.Errorf("--mirror-floor-cert: %w", err)
		}
	}
	if m := floorFlags.mode; m != "" && m != "reader" && m != "spawn" {
		return nil, fmt.Errorf("--mirror-floor-mode %q: want reader or spawn", m)
	}
	o := mirrorfloor.Options{Reader: floorFlags.mode == "reader"}
	c, err := mirrorfloor.Dial(addr, tc, o)
	if err != nil {
		return nil, err
	}
	spawn := floorFlags.mode == "spawn"
	log.Warn("measuring aid: every write is also sent to a mirror floor echo (no ordering, no failover; never for data)",
		"echo", addr, "tls", tc != nil, "reader_goroutine", o.Reader, "not_inline", spawn)
	v := &mirrorfloor.Volume{Volume: vol, C: c}
	if spawn {
		return &mirrorfloor.Spawned{Volume: v}, nil
	}
	return v, nil
}

func mirrorFloorEchoCmd() *cobra.Command {
	var listen, image, cert string
	var size int64
	cmd := &cobra.Command{
		Use:    "mirror-floor-echo --listen ADDR --image PATH",
		Short:  "Measuring aid: pwrite what a mirror floor volume sends, and ack it",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := loopbackOnly(listen); err != nil {
				return err
			}
			var st mirrorfloor.Store
			if image != "" {
				f, err := os.OpenFile(image, os.O_RDWR|os.O_CREATE, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := f.Truncate(size); err != nil {
					return err
				}
				st = f
			}
			var tc *tls.Config
			if cert != "" {
				var err error
				if tc, err = mirrorfloor.ServerTLS(cert); err != nil {
					return err
				}
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			fmt.Printf("mirror floor echo on %s (tls %t, image %q)\n", ln.Addr(), tc != nil, image)
			return mirrorfloor.ServeListener(ln, tc, st, func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:0", "loopback address to listen on")
	f.StringVar(&image, "image", "", "image file to write into (empty: write nothing, ack at once)")
	f.Int64Var(&size, "size", 0, "image size in bytes")
	f.StringVar(&cert, "tls-cert", "", "TLS: write a self-signed certificate here for the client to pin (empty: plain TCP)")
	return cmd
}

// errMirrorFloor says where --mirror-floor applies.
var errMirrorFloor = errors.New(`--mirror-floor: "tls", "plain", "tls-reader" or "tls-spawn", with --sites 1 only`)
