package integration

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTgtdReference starts Debian's tgtd on a private loopback portal and
// checks, with libiscsi's own clients, that it serves a thin-provisioned
// LUN of the requested size. Everything else that compares against tgtd
// relies on this.
func TestTgtdReference(t *testing.T) {
	requireTool(t, "tgtd", "tgtadm", "iscsi-inq", "iscsi-readcapacity16", "iscsi-ls")
	const size = 256 << 20
	tg := StartTgtdT(t, TgtdOptions{Size: size, IQN: "iqn.2026-11.io.metrolun:tgtd-test"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	inq, raw, err := Inquiry(ctx, tg.URL)
	if err != nil {
		t.Fatalf("iscsi-inq %s: %v", tg.URL, err)
	}
	if got := inq["Peripheral Device Type"]; got != "DIRECT_ACCESS" {
		t.Errorf("iscsi-inq: device type %q, want DIRECT_ACCESS\n%s", got, raw)
	}
	if got := inq["Vendor"]; got != "IET" {
		t.Errorf("iscsi-inq: vendor %q, want tgtd's IET\n%s", got, raw)
	}

	rc, err := ReadCapacity(ctx, tg.URL)
	if err != nil {
		t.Fatalf("iscsi-readcapacity16 %s: %v", tg.URL, err)
	}
	if rc.Bytes != size {
		t.Errorf("iscsi-readcapacity16: Total size %d, want %d\n%s", rc.Bytes, size, rc.Raw)
	}
	if !strings.Contains(rc.Raw, "Total size:"+strconv.Itoa(size)) {
		t.Errorf("iscsi-readcapacity16 output does not name the LUN size %d:\n%s", size, rc.Raw)
	}
	if !rc.LBPME {
		t.Errorf("LUN is not thin provisioned (LBPME=0):\n%s", rc.Raw)
	}

	res, err := RunTool(ctx, clientTimeout, nil, "iscsi-ls", "-s", "iscsi://"+tg.Portal)
	if err != nil {
		t.Fatalf("iscsi-ls: %v", err)
	}
	if !strings.Contains(res.Stdout, tg.IQN) || !strings.Contains(res.Stdout, "Portal:"+tg.Portal) {
		t.Errorf("iscsi-ls does not list %s at %s:\n%s", tg.IQN, tg.Portal, res.Stdout)
	}
}

// TestTgtdSideBySide checks that two tgtds coexist: private control
// sockets, distinct portals, separate LUNs.
func TestTgtdSideBySide(t *testing.T) {
	requireTool(t, "tgtd", "tgtadm", "iscsi-readcapacity16")
	a := StartTgtdT(t, TgtdOptions{Size: 64 << 20})
	b := StartTgtdT(t, TgtdOptions{Size: 128 << 20, FullyProvisioned: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range []struct {
		tg   *Tgtd
		size int64
		thin bool
	}{{a, 64 << 20, true}, {b, 128 << 20, false}} {
		rc, err := ReadCapacity(ctx, c.tg.URL)
		if err != nil {
			t.Fatal(err)
		}
		if rc.Bytes != c.size || rc.LBPME != c.thin {
			t.Errorf("%s: size %d thin %v, want %d %v", c.tg.URL, rc.Bytes, rc.LBPME, c.size, c.thin)
		}
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCapacity(ctx, b.URL); err != nil {
		t.Errorf("stopping one tgtd disturbed the other: %v", err)
	}
}
