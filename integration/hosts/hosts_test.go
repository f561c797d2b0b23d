package hosts

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// enabled fails nothing and says why the host tests do not run unless
// METROLUN_HOSTS=1; once enabled, nothing in them skips.
func enabled(t *testing.T) {
	t.Helper()
	if os.Getenv("METROLUN_HOSTS") != "1" {
		t.Skip("host tests boot a Linux guest under TCG (minutes): run with METROLUN_HOSTS=1, or make hosts")
	}
}

// TestGuestBoots boots the guest alone and checks what every host test
// relies on: the Debian kernel, iscsid and multipathd running, the
// guest's initiator name, and the tools the tests call.
func TestGuestBoots(t *testing.T) {
	enabled(t)
	share := NewShare(t, Settings{})
	vm := BootT(t, share)
	ctx := context.Background()
	out, err := vm.Run(ctx, 30*time.Second, `uname -r; cat /etc/iscsi/initiatorname.iscsi; pidof iscsid >/dev/null && echo iscsid; pidof multipathd >/dev/null && echo multipathd; for p in iscsiadm multipath multipathd sg_inq sg_rtpg lvcreate; do command -v $p; done`)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest booted in %v:\n%s", vm.Booted.Round(time.Millisecond), out)
	for _, want := range []string{"-amd64", "InitiatorName=" + GuestIQN, "iscsid", "multipathd", "/iscsiadm", "/multipath\n", "/multipathd", "/sg_inq", "/sg_rtpg", "/lvcreate"} {
		if !strings.Contains(out, want) {
			t.Errorf("guest lacks %q", want)
		}
	}
}
