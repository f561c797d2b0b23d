package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/initiator"
)

// ALUA access states (SPC-4 section 6.36.2, table 160).
const (
	aluaOptimized     = 0x0
	aluaNonOptimized  = 0x1
	aluaUnavailable   = 0x3
	aluaTransitioning = 0xf
)

// tpgDesc is one target port group as REPORT TARGET PORT GROUPS gives it.
type tpgDesc struct {
	ID      uint16
	State   byte
	Pref    bool
	RelPort uint16
}

func (d tpgDesc) String() string {
	name := map[byte]string{aluaOptimized: "active/optimized", aluaNonOptimized: "active/non-optimized", aluaUnavailable: "unavailable", aluaTransitioning: "transitioning"}[d.State]
	if name == "" {
		name = fmt.Sprintf("state %d", d.State)
	}
	if d.Pref {
		name += "+PREF"
	}
	return fmt.Sprintf("group %d (port %d) %s", d.ID, d.RelPort, name)
}

// siteLUN splits a demo member's iscsi:// URL into portal and target.
func siteLUN(t *testing.T, m Member) (portal, iqn string) {
	t.Helper()
	u, err := url.Parse(m.ISCSI)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	return u.Host, parts[0]
}

// command runs one CDB on LUN 0 through a new session from initiatorIQN
// and returns the Data-In. A pending unit attention is taken and the
// command sent once more.
func command(ctx context.Context, portal, iqn, initiatorIQN string, cdb []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := initiator.Dial(ctx, portal, iqn, initiatorIQN, initiator.Options{})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	for try := 0; ; try++ {
		data, err := s.Command(ctx, 0, cdb, 4096, nil)
		var se *initiator.SCSIError
		if try == 0 && errors.As(err, &se) && se.SenseKey == initiator.SenseUnitAttention {
			continue
		}
		return data, err
	}
}

// reportTPG issues REPORT TARGET PORT GROUPS at portal as initiatorIQN and
// decodes the answer strictly.
func reportTPG(ctx context.Context, portal, iqn, initiatorIQN string) ([]tpgDesc, error) {
	cdb := []byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0}
	b, err := command(ctx, portal, iqn, initiatorIQN, cdb)
	if err != nil {
		return nil, err
	}
	return decodeTPG(b)
}

// decodeTPG decodes REPORT TARGET PORT GROUPS parameter data strictly.
func decodeTPG(b []byte) ([]tpgDesc, error) {
	if len(b) < 4 || int(binary.BigEndian.Uint32(b)) != len(b)-4 {
		return nil, fmt.Errorf("RTPG: RETURN DATA LENGTH does not match %d bytes: % x", len(b), b)
	}
	var out []tpgDesc
	for d := b[4:]; len(d) > 0; {
		if len(d) < 8 || len(d) < 8+4*int(d[7]) {
			return nil, fmt.Errorf("RTPG: truncated descriptor % x", d)
		}
		if d[7] != 1 {
			return nil, fmt.Errorf("RTPG: group with %d target ports, want 1", d[7])
		}
		out = append(out, tpgDesc{
			ID: binary.BigEndian.Uint16(d[2:]), State: d[0] & 0x0f, Pref: d[0]&0x80 != 0,
			RelPort: binary.BigEndian.Uint16(d[10:]),
		})
		d = d[12:]
	}
	return out, nil
}

// deviceID is what VPD page 83h says at one site.
type deviceID struct {
	NAA      string
	TPG, Rel uint16
}

func vpd83(ctx context.Context, portal, iqn string) (deviceID, error) {
	var id deviceID
	b, err := command(ctx, portal, iqn, "iqn.2026-11.io.metrolun:alua-vpd", []byte{0x12, 0x01, 0x83, 0x10, 0x00, 0})
	if err != nil {
		return id, err
	}
	if len(b) < 4 || int(binary.BigEndian.Uint16(b[2:])) != len(b)-4 {
		return id, fmt.Errorf("VPD 83: page length does not match: % x", b)
	}
	for d := b[4:]; len(d) >= 4 && len(d) >= 4+int(d[3]); d = d[4+int(d[3]):] {
		v := d[4 : 4+int(d[3])]
		switch assoc, typ := d[1]>>4&3, d[1]&0x0f; {
		case assoc == 0 && typ == 3:
			id.NAA = fmt.Sprintf("%x", v)
		case assoc == 1 && typ == 4 && len(v) == 4:
			id.Rel = binary.BigEndian.Uint16(v[2:])
		case assoc == 1 && typ == 5 && len(v) == 4:
			id.TPG = binary.BigEndian.Uint16(v[2:])
		}
	}
	return id, nil
}

// TestALUA runs a two-site cluster and checks what multipath sees (I5):
// both sites report the same two target port groups, the writer's
// active/optimized and the other active/non-optimized, each site names
// its own group in VPD 83h under one NAA identifier, SendTargets at
// either site lists both portals, the optimized group follows the writer
// through `metrolun promote`, and a prefer block makes a site
// active/optimized for one initiator only.
func TestALUA(t *testing.T) {
	requireTool(t, "iscsi-ls")
	d := startCluster(t)
	ctx := t.Context()
	bin := metrolunBin(t)
	sites := map[string]Member{"site-a": member(d, "site-a"), "site-b": member(d, "site-b")}
	group := map[string]uint16{"site-a": 1, "site-b": 2} // the demo's portal groups
	other := map[string]string{"site-a": "site-b", "site-b": "site-a"}
	const anyInit = "iqn.2026-11.io.metrolun:alua-any"

	// expect is what every site should answer once the writer is w:
	// the writer's group optimized (and PREF), the other non-optimized.
	expect := func(optimized string) []tpgDesc {
		var want []tpgDesc
		for _, name := range []string{"site-a", "site-b"} {
			g := tpgDesc{ID: group[name], RelPort: group[name], State: aluaNonOptimized}
			if name == optimized {
				g.State, g.Pref = aluaOptimized, true
			}
			want = append(want, g)
		}
		return want
	}
	// waitGroups polls (bounded) until RTPG at site as initiatorIQN gives want.
	waitGroups := func(site, initiatorIQN string, want []tpgDesc) {
		t.Helper()
		portal, iqn := siteLUN(t, sites[site])
		var got []tpgDesc
		var err error
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, err = reportTPG(ctx, portal, iqn, initiatorIQN)
			if err == nil && reflect.DeepEqual(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("RTPG at %s for %s: %v (error %v), want %v", site, initiatorIQN, got, err, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	ms, err := ClusterStatus(ctx, bin, d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	writer := Writer(ms)
	if writer == "" {
		t.Fatalf("no writer: %+v", ms)
	}
	for _, s := range []string{"site-a", "site-b"} {
		waitGroups(s, anyInit, expect(writer))
	}
	t.Logf("writer %s: both sites report %v", writer, expect(writer))

	// VPD 83h: one device, a port group per site.
	var naa string
	for _, s := range []string{"site-a", "site-b"} {
		portal, iqn := siteLUN(t, sites[s])
		id, err := vpd83(ctx, portal, iqn)
		if err != nil {
			t.Fatal(err)
		}
		if id.TPG != group[s] || id.Rel != group[s] || id.NAA == "" {
			t.Fatalf("VPD 83 at %s: %+v, want target port group and relative port %d", s, id, group[s])
		}
		if naa == "" {
			naa = id.NAA
		} else if id.NAA != naa {
			t.Fatalf("NAA at %s is %s, at site-a %s", s, id.NAA, naa)
		}
	}

	// Discovery at either site finds both portals, each with its tag.
	for _, s := range []string{"site-b", "site-a"} {
		portal, iqn := siteLUN(t, sites[s])
		res, err := RunTool(ctx, 30*time.Second, nil, "iscsi-ls", "-s", "iscsi://"+portal)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range []string{"site-a", "site-b"} {
			p, _ := siteLUN(t, sites[x])
			line := fmt.Sprintf("Target:%s Portal:%s,%d", iqn, p, group[x])
			if !strings.Contains(res.Stdout, line) {
				t.Fatalf("iscsi-ls -s at %s does not list %q:\n%s", s, line, res.Stdout)
			}
		}
		if n := strings.Count(res.Stdout, "Lun:0 "); n != 2 {
			t.Fatalf("iscsi-ls -s at %s logged in to %d portals, want 2:\n%s", s, n, res.Stdout)
		}
	}

	// The optimized group follows the writer.
	to := other[writer]
	if res, err := RunTool(ctx, 60*time.Second, nil, bin, "promote", to, "--dir", d.Dir); err != nil {
		t.Fatalf("promote %s: %v", to, err)
	} else {
		t.Logf("promote %s: %s", to, bytes.TrimSpace([]byte(res.Stdout)))
	}
	writer = to
	for _, s := range []string{"site-a", "site-b"} {
		waitGroups(s, anyInit, expect(writer))
	}
	t.Logf("after promote: both sites report %v", expect(writer))

	// A preference: restart the non-writer site with a prefer block for
	// one initiator; that initiator sees the site optimized (though it is
	// not the writer), any other initiator still sees the writer's.
	pref := other[writer]
	const prefInit = "iqn.2026-11.io.metrolun:alua-pref"
	restartWithPreference(t, d, bin, sites[pref], prefInit)
	waitGroups(pref, anyInit, expect(writer))
	waitGroups(pref, prefInit, expect(pref))
	// The preferred site also comes first in its SendTargets answer, for
	// initiators that take the first address.
	portal, iqn := siteLUN(t, sites[pref])
	got, err := initiator.Discover(ctx, portal, prefInit)
	if err != nil {
		t.Fatal(err)
	}
	wp, _ := siteLUN(t, sites[writer])
	want := []initiator.Target{{Name: iqn, Addresses: []string{fmt.Sprintf("%s,%d", portal, group[pref]), fmt.Sprintf("%s,%d", wp, group[writer])}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("SendTargets at %s for %s: %+v, want %+v", pref, prefInit, got, want)
	}
	// Any other initiator gets the writer's portal first.
	if got, err = initiator.Discover(ctx, portal, anyInit); err != nil {
		t.Fatal(err)
	}
	want[0].Addresses[0], want[0].Addresses[1] = want[0].Addresses[1], want[0].Addresses[0]
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("SendTargets at %s for %s: %+v, want %+v", pref, anyInit, got, want)
	}
	t.Logf("prefer %s for %s: %v", pref, prefInit, expect(pref))
}

// restartWithPreference stops member m (SIGTERM to its process, which the
// demo started), adds a prefer block for initiatorIQN -> m to its config
// and starts it again; it is stopped in t.Cleanup.
func restartWithPreference(t *testing.T, d *Demo, bin string, m Member, initiatorIQN string) {
	t.Helper()
	restartWithPrefer(t, d, bin, m, initiatorIQN, m.Name)
}

// restartWithPrefer is restartWithPreference with a prefer block for
// initiatorIQN (or "*") naming site (or "auto").
func restartWithPrefer(t *testing.T, d *Demo, bin string, m Member, initiatorIQN, site string) {
	t.Helper()
	if err := syscall.Kill(m.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	until(t, m.Name+" stopped", 30*time.Second, func() bool { return !processAlive(m.PID) })
	cfgPath := filepath.Join(d.Dir, m.Name, "metrolun.hcl")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	block := fmt.Sprintf("cluster {\n  prefer {\n    initiator = %q\n    site = %q\n  }\n", initiatorIQN, site)
	cfg := strings.Replace(string(b), "cluster {\n", block, 1)
	if cfg == string(b) {
		t.Fatalf("%s has no cluster block:\n%s", cfgPath, b)
	}
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(d.Dir, m.Name+"-prefer.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		waited := make(chan struct{})
		go func() { cmd.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-waited
		}
	})
}
