package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
)

func hostsCmd() *cobra.Command {
	var f clusterFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "hosts (--config FILE | --dir DIR)",
		Short: "Show every initiator logged in anywhere in the cluster: its paths per site, their ALUA states and round trips",
		Long: `hosts asks a data site (GET /v1/hosts) for every initiator with a session
anywhere in the cluster: its sessions per site, the ALUA access state each
path reports to it, and each session's round trip measured with NOP-In
pings (iscsi nop_interval). It flags a host with paths to one site only
(it loses I/O with that site), a host whose nearest site (lowest round
trip) is not its preferred one (the writer's, without a prefer block), and
an initiator name with sessions at one site from two addresses: most
likely several hosts sharing one name (QEMU's default without -name, a
cloned image), which the cluster takes for one host (reservations,
redirects and ALUA preferences are per name). Give each host its own.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps, client, err := f.connect()
			if err != nil {
				return err
			}
			r, err := askHosts(cmd, client, eps)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			printHosts(os.Stdout, r)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the answer as JSON")
	return cmd
}

// askHosts asks the data sites in turn and keeps the first answer that
// knows every site's sessions, else the one that misses the fewest.
func askHosts(cmd *cobra.Command, client *admin.Client, eps []admin.Endpoint) (admin.HostsResponse, error) {
	var best *admin.HostsResponse
	var errs []error
	for _, ep := range eps {
		if ep.Role != conf.RoleData {
			continue
		}
		r, err := client.Hosts(cmd.Context(), ep)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ep.Name, err))
			continue
		}
		if best == nil || len(r.Unheard) < len(best.Unheard) {
			best = &r
		}
		if len(r.Unheard) == 0 {
			break
		}
	}
	if best == nil {
		return admin.HostsResponse{}, errors.Join(append([]error{errors.New("no data site answered")}, errs...)...)
	}
	return *best, nil
}

func printHosts(w io.Writer, r admin.HostsResponse) {
	fmt.Fprintf(w, "asked %s; data sites: %s\n", r.Member, strings.Join(r.Sites, ", "))
	if len(r.Unheard) > 0 {
		fmt.Fprintf(w, "sessions not known at: %s (their paths are missing below)\n", strings.Join(r.Unheard, ", "))
	}
	if len(r.Hosts) == 0 {
		fmt.Fprintln(w, "no initiator is logged in")
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INITIATOR\tSITE\tISID\tALUA STATE\tRTT\tREMOTE\tNOTE")
	for _, h := range r.Hosts {
		var notes []string
		if h.Preferred != "" {
			notes = append(notes, fmt.Sprintf("prefers %s (%s)", h.Preferred, h.PreferredBy))
		}
		if h.OneSite {
			notes = append(notes, "ONE SITE ONLY")
		}
		if h.NotNearest {
			notes = append(notes, "NEAREST IS "+h.Nearest)
		}
		if h.SharedName {
			notes = append(notes, "SEVERAL HOSTS SHARE THIS NAME?")
		}
		for i, p := range h.Paths {
			name, note := "", ""
			if i == 0 {
				name, note = h.Initiator, strings.Join(notes, "; ")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, p.Site, p.ISID, p.State, rttString(p.RTT), orDash(p.Remote), note)
		}
	}
	tw.Flush()
}

func rttString(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}
