package hosts

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Path is one SCSI path of the multipath map as the guest sees it.
type Path struct {
	Dev  string // sdb
	WWID string
	// DMState is the path's state in the dm table ("active", "failed").
	DMState string
	// Checker is the path checker's verdict ("ready", "faulty", ...).
	Checker string
	Prio    int
	Map     string // the multipath map's name, empty when in none
	// Port is the iSCSI portal port the path's session logged in to
	// (which site, through its proxy).
	Port int
}

// pathsScript prints one line per multipath path: dev, wwid, dm state,
// checker state, prio and map name from multipathd, then the session's
// portal port from sysfs. multipathd's raw format leaves fields
// unpadded.
const pathsScript = `multipathd show paths raw format '%d|%w|%t|%T|%p|%m' | while IFS='|' read -r dev wwid dm chk prio map; do
	port=-
	for s in /sys/class/iscsi_session/session*; do
		n=${s##*session}
		if ls -d $s/device/target*/*:*/block/$dev >/dev/null 2>&1; then
			port=$(cat /sys/class/iscsi_connection/connection$n:0/persistent_port 2>/dev/null || echo -)
		fi
	done
	echo "$dev|$wwid|$dm|$chk|$prio|$map|$port"
done`

// parsePaths reads pathsScript's output.
func parsePaths(out string) ([]Path, error) {
	var ps []Path
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		f := strings.Split(line, "|")
		if len(f) != 7 {
			return nil, fmt.Errorf("path line %q: %d fields, want 7", line, len(f))
		}
		p := Path{Dev: f[0], WWID: f[1], DMState: f[2], Checker: f[3], Map: f[5]}
		if p.Map == "[orphan]" {
			p.Map = ""
		}
		var err error
		if p.Prio, err = strconv.Atoi(f[4]); err != nil {
			// multipathd prints "##" for a prio it has not computed.
			p.Prio = -1
		}
		if p.Port, err = strconv.Atoi(f[6]); err != nil {
			p.Port = -1
		}
		ps = append(ps, p)
	}
	return ps, nil
}

var tpgRE = regexp.MustCompile(`(?m)^\s*Target port group:\s*0x([0-9a-fA-F]+)`)

// parseInqTPG finds the target port group in `sg_inq -p 0x83` output
// (the device identification page's target port group designator).
func parseInqTPG(out string) (int, error) {
	m := tpgRE.FindAllStringSubmatch(out, -1)
	if len(m) != 1 {
		return 0, fmt.Errorf("want one target port group designator in VPD 83h, found %d: %q", len(m), out)
	}
	v, err := strconv.ParseUint(m[0][1], 16, 16)
	return int(v), err
}

var (
	rtpgGroupRE = regexp.MustCompile(`target port group id\s*:\s*0x([0-9a-fA-F]+)`)
	rtpgStateRE = regexp.MustCompile(`asymmetric access state\s*:\s*0x[0-9a-fA-F]+\s*\(([^)]*)\)`)
)

// parseRTPG reads `sg_rtpg -d` output: each target port group's
// asymmetric access state ("active/optimized", ...).
func parseRTPG(out string) (map[int]string, error) {
	groups := map[int]string{}
	cur := -1
	for _, line := range strings.Split(out, "\n") {
		if m := rtpgGroupRE.FindStringSubmatch(line); m != nil {
			v, err := strconv.ParseUint(m[1], 16, 16)
			if err != nil {
				return nil, err
			}
			cur = int(v)
			continue
		}
		if m := rtpgStateRE.FindStringSubmatch(line); m != nil {
			if cur < 0 {
				return nil, fmt.Errorf("sg_rtpg: a state before any group: %q", line)
			}
			// sg_rtpg says "active/non optimized", the kernel's ALUA
			// handler "active/non-optimized".
			groups[cur] = strings.ReplaceAll(strings.TrimSpace(m[1]), "non optimized", "non-optimized")
			cur = -1
		}
	}
	if len(groups) == 0 {
		return nil, fmt.Errorf("sg_rtpg: no target port group in %q", out)
	}
	return groups, nil
}

// PingTimeout is one "ping timeout ... expired" line of libiscsi in the
// guest's kernel log: the connection declared dead because no byte
// arrived for recv_tmo + ping_tmo seconds after a NOP-Out. The jiffies
// figures are the kernel's own.
type PingTimeout struct {
	Conn               string // "connection2:0"
	PingTmo, RecvTmo   int    // seconds, as the kernel holds them
	LastRecv, LastPing uint64 // jiffies
	Now                uint64 // jiffies, when the timer declared it
}

// SinceRecv is how long after the connection's last received byte the
// kernel declared it dead, at hz jiffies a second.
func (p PingTimeout) SinceRecv(hz int) time.Duration {
	return time.Duration(p.Now-p.LastRecv) * time.Second / time.Duration(hz)
}

// SincePing is how long after its NOP-Out the kernel declared the
// connection dead.
func (p PingTimeout) SincePing(hz int) time.Duration {
	return time.Duration(p.Now-p.LastPing) * time.Second / time.Duration(hz)
}

var pingTimeoutRE = regexp.MustCompile(`(connection\d+:\d+): ping timeout of (\d+) secs expired, recv timeout (\d+), last rx (\d+), last ping (\d+), now (\d+)`)

// parsePingTimeouts finds libiscsi's ping timeout lines in a kernel log
// (dmesg), oldest first.
func parsePingTimeouts(log string) []PingTimeout {
	var ps []PingTimeout
	for _, m := range pingTimeoutRE.FindAllStringSubmatch(log, -1) {
		p := PingTimeout{Conn: m[1]}
		p.PingTmo, _ = strconv.Atoi(m[2])
		p.RecvTmo, _ = strconv.Atoi(m[3])
		p.LastRecv, _ = strconv.ParseUint(m[4], 10, 64)
		p.LastPing, _ = strconv.ParseUint(m[5], 10, 64)
		p.Now, _ = strconv.ParseUint(m[6], 10, 64)
		ps = append(ps, p)
	}
	return ps
}

// writerLine reads a member's log line saying it became the writer
// (hclog's text format: "2026-12-07T13:06:20.224Z [INFO]
// metrolun.site-a.raft: writer: term=13 epoch=7").
func writerLine(line string) (site string, at time.Time, ok bool) {
	ts, rest, found := strings.Cut(line, " ")
	if !found {
		return "", time.Time{}, false
	}
	i := strings.Index(rest, "metrolun.")
	j := strings.Index(rest, ".raft: writer: term=")
	if i < 0 || j < i+len("metrolun.") {
		return "", time.Time{}, false
	}
	at, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return "", time.Time{}, false
	}
	return rest[i+len("metrolun.") : j], at, true
}
