package hosts

import (
	"os"
	"strings"
	"testing"
	"time"
)

// The testdata files are sg3-utils 1.46 output captured in the guest
// against a two-site demo (site-a writer, group 1).

func TestParseInqTPG(t *testing.T) {
	b, err := os.ReadFile("testdata/sg_inq_vpd83.txt")
	if err != nil {
		t.Fatal(err)
	}
	g, err := parseInqTPG(string(b))
	if err != nil || g != 1 {
		t.Fatalf("parseInqTPG = %d, %v; want 1", g, err)
	}
	// No designator, or two, is an error rather than a guess.
	if _, err := parseInqTPG(strings.ReplaceAll(string(b), "Target port group: 0x1", "")); err == nil {
		t.Error("no target port group designator: want an error")
	}
	if _, err := parseInqTPG(string(b) + "\n      Target port group: 0x2\n"); err == nil {
		t.Error("two target port group designators: want an error")
	}
}

func TestParseRTPG(t *testing.T) {
	b, err := os.ReadFile("testdata/sg_rtpg.txt")
	if err != nil {
		t.Fatal(err)
	}
	groups, err := parseRTPG(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 2 || groups[1] != "active/optimized" || groups[2] != "active/non-optimized" {
		t.Fatalf("parseRTPG = %v", groups)
	}
	swapped := strings.NewReplacer("0x00 (active/optimized)", "0x0e (offline)").Replace(string(b))
	if groups, _ := parseRTPG(swapped); groups[1] != "offline" {
		t.Fatalf("a changed state is not seen: %v", groups)
	}
	if _, err := parseRTPG("sg_rtpg: command not supported\n"); err == nil {
		t.Error("no group: want an error")
	}
}

func TestParsePaths(t *testing.T) {
	out := "sda|1METROLUN7ffb4617d66413e6|active|ready|50|1METROLUN7ffb4617d66413e6|35975\n" +
		"sdb|1METROLUN7ffb4617d66413e6|failed|faulty|##|1METROLUN7ffb4617d66413e6|45351\n" +
		"sdc|1METROLUN7ffb4617d66413e6|undef|undef|10|[orphan]|-\n"
	ps, err := parsePaths(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []Path{
		{Dev: "sda", WWID: "1METROLUN7ffb4617d66413e6", DMState: "active", Checker: "ready", Prio: 50, Map: "1METROLUN7ffb4617d66413e6", Port: 35975},
		{Dev: "sdb", WWID: "1METROLUN7ffb4617d66413e6", DMState: "failed", Checker: "faulty", Prio: -1, Map: "1METROLUN7ffb4617d66413e6", Port: 45351},
		{Dev: "sdc", WWID: "1METROLUN7ffb4617d66413e6", DMState: "undef", Checker: "undef", Prio: 10, Map: "", Port: -1},
	}
	if len(ps) != len(want) {
		t.Fatalf("parsePaths = %+v", ps)
	}
	for i := range want {
		if ps[i] != want[i] {
			t.Errorf("path %d = %+v, want %+v", i, ps[i], want[i])
		}
	}
	if _, err := parsePaths("sda|x|active\n"); err == nil {
		t.Error("short line: want an error")
	}
}

func TestSettings(t *testing.T) {
	mp := Settings{FastIOFailTmo: "off"}.MultipathConf()
	for _, want := range []string{`vendor "METROLUN"`, "prio alua", `hardware_handler "1 alua"`, "fast_io_fail_tmo off", "polling_interval " + Recommended.PollingInterval, "no_path_retry " + Recommended.NoPathRetry} {
		if !strings.Contains(mp, want) {
			t.Errorf("multipath.conf lacks %q:\n%s", want, mp)
		}
	}
	ic := DebianDefaults.IscsidConf()
	for _, want := range []string{"replacement_timeout = 120", "noop_out_interval = 5", "noop_out_timeout = 5"} {
		if !strings.Contains(ic, want) {
			t.Errorf("iscsid.conf lacks %q:\n%s", want, ic)
		}
	}
}

func TestParsePingTimeouts(t *testing.T) {
	// libiscsi's format (drivers/scsi/libiscsi.c, iscsi_check_transport_timeouts)
	// with the connection prefix iscsi_conn_printk adds; HZ 250.
	log := `[   61.101010] sd 2:0:0:0: alua: port group 01 state A non-preferred supports TOlUSNA
[  140.500000]  connection2:0: ping timeout of 1 secs expired, recv timeout 1, last rx 4294922000, last ping 4294922250, now 4294922503
[  140.510000]  connection2:0: detected conn error (1022)
[  301.000000]  connection1:0: ping timeout of 5 secs expired, recv timeout 1, last rx 4294962000, last ping 4294962250, now 4294963500
`
	ps := parsePingTimeouts(log)
	if len(ps) != 2 {
		t.Fatalf("parsePingTimeouts: %d lines, want 2: %+v", len(ps), ps)
	}
	p := ps[0]
	if p.Conn != "connection2:0" || p.PingTmo != 1 || p.RecvTmo != 1 || p.LastRecv != 4294922000 || p.LastPing != 4294922250 || p.Now != 4294922503 {
		t.Fatalf("parsePingTimeouts[0] = %+v", p)
	}
	if got := p.SinceRecv(250); got != 2012*time.Millisecond {
		t.Errorf("SinceRecv = %v, want 2.012s", got)
	}
	if got := p.SincePing(250); got != 1012*time.Millisecond {
		t.Errorf("SincePing = %v, want 1.012s", got)
	}
	if ps[1].PingTmo != 5 || ps[1].SinceRecv(250) != 6*time.Second {
		t.Errorf("parsePingTimeouts[1] = %+v, %v since the last receive", ps[1], ps[1].SinceRecv(250))
	}
	if ps := parsePingTimeouts("nothing here"); len(ps) != 0 {
		t.Errorf("no ping timeout: got %+v", ps)
	}
}

func TestWriterLine(t *testing.T) {
	site, at, ok := writerLine("2026-12-07T13:06:20.224Z [INFO]  metrolun.site-a.raft: writer: term=13 epoch=7")
	if !ok || site != "site-a" || !at.Equal(time.Date(2026, 12, 7, 13, 6, 20, 224e6, time.UTC)) {
		t.Fatalf("writerLine = %q, %v, %v", site, at, ok)
	}
	for _, line := range []string{
		"2026-12-07T13:06:20.229Z [INFO]  metrolun.site-a.replica: writer: starting: epoch=7",
		"2026-12-07T13:06:23.716Z [WARN]  metrolun.site-a.raft: writer lease renewal failed; not the writer any more: epoch=7",
		"not a time [INFO]  metrolun.site-a.raft: writer: term=13 epoch=7",
		"",
	} {
		if _, _, ok := writerLine(line); ok {
			t.Errorf("writerLine(%q): want no match", line)
		}
	}
}
