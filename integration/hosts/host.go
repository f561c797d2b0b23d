package hosts

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration"
)

// GuestIQN is the guest's initiator name (scripts/build-guest.sh).
const GuestIQN = "iqn.2026-11.io.metrolun:guest"

// Settings are the initiator's timeouts: the multipath.conf lines and
// iscsid.conf lines the guest starts with, as written in those files. An
// empty field takes the value docs/hosts-linux.md recommends
// (Recommended).
type Settings struct {
	// multipath.conf
	FindMultipaths  string // find_multipaths (defaults): "strict", "smart", "greedy", "no"
	PollingInterval string // polling_interval (defaults), seconds
	FastIOFailTmo   string // fast_io_fail_tmo: seconds, or "off"
	DevLossTmo      string // dev_loss_tmo: seconds or "infinity"; multipathd ignores it for iSCSI, and empty leaves it out
	NoPathRetry     string // no_path_retry: "queue", "fail" or a number of checks
	// iscsid.conf
	ReplacementTimeout string // node.session.timeo.replacement_timeout, seconds
	NoopOutInterval    string // node.conn[0].timeo.noop_out_interval, seconds
	NoopOutTimeout     string // node.conn[0].timeo.noop_out_timeout, seconds
}

// Recommended are the settings docs/hosts-linux.md gives and explains.
var Recommended = Settings{
	FindMultipaths:     "smart",
	PollingInterval:    "1",
	FastIOFailTmo:      "off",
	NoPathRetry:        "queue",
	ReplacementTimeout: "0",
	NoopOutInterval:    "1",
	NoopOutTimeout:     "1",
}

// DebianDefaults are what a bookworm host runs with when multipath.conf
// has only the README's device section (multipath-tools 0.9.4 built-in
// fast_io_fail_tmo 5 and dev_loss_tmo 600, polling_interval 5) and
// iscsid.conf is Debian's (replacement_timeout 120, NOP-Out every 5 s,
// 5 s to answer), no_path_retry as the README had it.
var DebianDefaults = Settings{
	FindMultipaths:     "strict",
	PollingInterval:    "5",
	FastIOFailTmo:      "5",
	DevLossTmo:         "600",
	NoPathRetry:        "30",
	ReplacementTimeout: "120",
	NoopOutInterval:    "5",
	NoopOutTimeout:     "5",
}

func (s Settings) withDefaults() Settings {
	r := Recommended
	for _, f := range []struct {
		dst *string
		v   string
	}{
		{&r.FindMultipaths, s.FindMultipaths},
		{&r.PollingInterval, s.PollingInterval},
		{&r.FastIOFailTmo, s.FastIOFailTmo},
		{&r.DevLossTmo, s.DevLossTmo},
		{&r.NoPathRetry, s.NoPathRetry},
		{&r.ReplacementTimeout, s.ReplacementTimeout},
		{&r.NoopOutInterval, s.NoopOutInterval},
		{&r.NoopOutTimeout, s.NoopOutTimeout},
	} {
		if f.v != "" {
			*f.dst = f.v
		}
	}
	return r
}

// MultipathConf is the guest's /etc/multipath.conf: the README's device
// section with the timeouts of s.
func (s Settings) MultipathConf() string {
	s = s.withDefaults()
	devLoss := ""
	if s.DevLossTmo != "" {
		devLoss = "        dev_loss_tmo " + s.DevLossTmo + "\n"
	}
	return fmt.Sprintf(`defaults {
    user_friendly_names no
    find_multipaths %s
    polling_interval %s
}
devices {
    device {
        vendor "METROLUN"
        product ".*"
        path_grouping_policy group_by_prio
        prio alua
        hardware_handler "1 alua"
        path_checker tur
        failback immediate
        no_path_retry %s
        fast_io_fail_tmo %s
%s    }
}
`, s.FindMultipaths, s.PollingInterval, s.NoPathRetry, s.FastIOFailTmo, devLoss)
}

// IscsidConf is the guest's /etc/iscsi/iscsid.conf: Debian's defaults
// that matter here, with the timeouts of s.
func (s Settings) IscsidConf() string {
	s = s.withDefaults()
	return fmt.Sprintf(`iscsid.startup = /bin/true
node.startup = manual
node.session.timeo.replacement_timeout = %s
node.conn[0].timeo.login_timeout = 5
node.conn[0].timeo.logout_timeout = 5
node.conn[0].timeo.noop_out_interval = %s
node.conn[0].timeo.noop_out_timeout = %s
node.session.err_timeo.abort_timeout = 5
node.session.err_timeo.lu_reset_timeout = 5
node.session.err_timeo.tgt_reset_timeout = 5
node.session.initial_login_retry_max = 2
node.session.cmds_max = 128
node.session.queue_depth = 32
node.session.iscsi.InitialR2T = No
node.session.iscsi.ImmediateData = Yes
node.session.iscsi.FirstBurstLength = 262144
node.session.iscsi.MaxBurstLength = 16776192
node.conn[0].iscsi.MaxRecvDataSegmentLength = 262144
node.conn[0].iscsi.HeaderDigest = None
node.session.nr_sessions = 1
node.session.iscsi.FastAbort = Yes
`, s.ReplacementTimeout, s.NoopOutInterval, s.NoopOutTimeout)
}

var (
	agentOnce sync.Once
	agentBin  string
	agentErr  error
)

// buildAgent builds the guest's program (package guest) once per test
// binary: static, for linux/amd64.
func buildAgent() (string, error) {
	agentOnce.Do(func() {
		root, err := integration.ModuleRoot()
		if err != nil {
			agentErr = err
			return
		}
		dir, err := os.MkdirTemp("", "metrolun-hosts-agent-")
		if err != nil {
			agentErr = err
			return
		}
		agentBin = filepath.Join(dir, "agent")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", agentBin, "./integration/hosts/guest")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = fmt.Errorf("go build ./integration/hosts/guest: %w\n%s", err, out)
		}
	})
	return agentBin, agentErr
}

// NewShare makes the directory the guest mounts at /mnt/share: the
// agent, and the initiator configuration of s under etc/.
func NewShare(t testing.TB, s Settings) string {
	t.Helper()
	bin, err := buildAgent()
	if err != nil {
		t.Fatal(err)
	}
	share := t.TempDir()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(share, "agent"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(share, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{"multipath.conf": s.MultipathConf(), "iscsid.conf": s.IscsidConf()} {
		if err := os.WriteFile(filepath.Join(share, "etc", name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return share
}

// BootT boots the guest with share and kills it when the test ends. A
// guest that is not built fails the test.
func BootT(t testing.TB, share string) *VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	log := filepath.Join(t.TempDir(), "console.log")
	vm, err := Boot(ctx, VMOptions{Dir: GuestDir(), Share: share, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Stop()
		if t.Failed() {
			t.Logf("guest console (last lines): %s", strings.ReplaceAll(tail(log, 40), " | ", "\n"))
		}
	})
	return vm
}
