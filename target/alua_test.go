package target

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"reflect"
	"slices"
	"sync"
	"testing"
)

// Two or three sites as a cluster's provider reports them: the writer's
// group active/optimized, another in-sync site active/non-optimized, a
// resyncing one unavailable. Initiator "iqn.host-b" prefers group 2.
func sitesProvider(states map[uint16]PathState) PortGroupsFunc {
	return func(initiator string) []PortGroup {
		var gs []PortGroup
		for _, id := range []uint16{3, 1, 2} { // not in order on purpose
			st, ok := states[id]
			if !ok {
				continue
			}
			gs = append(gs, PortGroup{
				ID: id, State: st,
				Portals:   []string{fmt.Sprintf("127.0.0.%d:3260", id)},
				Preferred: initiator == "iqn.host-b" && id == 2,
			})
		}
		return gs
	}
}

func states(gs []PortGroup) map[uint16]PathState {
	m := map[uint16]PathState{}
	for _, g := range gs {
		m[g.ID] = g.State
	}
	return m
}

func TestResolvePortGroups(t *testing.T) {
	AO, AN, U, T := PathActiveOptimized, PathActiveNonOptimized, PathUnavailable, PathTransitioning
	cases := []struct {
		name      string
		provider  map[uint16]PathState // nil: no provider (single site)
		local     PathState            // the volume at site 1 (own group)
		initiator string
		want      map[uint16]PathState
	}{
		{"single site", nil, AO, "iqn.x", map[uint16]PathState{1: AO}},
		{"single site unavailable", nil, U, "iqn.x", map[uint16]PathState{1: U}},
		{"writer here", map[uint16]PathState{1: AO, 2: AN}, AO, "iqn.x", map[uint16]PathState{1: AO, 2: AN}},
		{"writer there", map[uint16]PathState{1: AN, 2: AO}, AN, "iqn.x", map[uint16]PathState{1: AN, 2: AO}},
		// The volume knows better than the cluster view about its own site.
		{"own state from volume", map[uint16]PathState{1: AN, 2: AO}, T, "iqn.x", map[uint16]PathState{1: T, 2: AO}},
		{"preferred overrides writer", map[uint16]PathState{1: AO, 2: AN}, AO, "iqn.host-b", map[uint16]PathState{1: AN, 2: AO}},
		{"preference of another initiator", map[uint16]PathState{1: AO, 2: AN}, AO, "iqn.host-a", map[uint16]PathState{1: AO, 2: AN}},
		{"preferred cannot serve: writer stays", map[uint16]PathState{1: AO, 2: U}, AO, "iqn.host-b", map[uint16]PathState{1: AO, 2: U}},
		{"preferred, third site resyncing", map[uint16]PathState{1: AO, 2: AN, 3: U}, AO, "iqn.host-b", map[uint16]PathState{1: AN, 2: AO, 3: U}},
		{"preferred, this site down", map[uint16]PathState{1: AN, 2: AO}, U, "iqn.host-b", map[uint16]PathState{1: U, 2: AO}},
		// A provider that forgot this site still gets it reported.
		{"own group missing", map[uint16]PathState{2: AO}, AN, "iqn.x", map[uint16]PathState{1: AN, 2: AO}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var fn PortGroupsFunc
			if c.provider != nil {
				fn = sitesProvider(c.provider)
			}
			gs := resolvePortGroups(fn, c.initiator, 1, 1, c.local, []string{"0.0.0.0:3260"})
			if got := states(gs); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("states %v, want %v", got, c.want)
			}
			if !slices.IsSortedFunc(gs, func(a, b PortGroup) int { return int(a.ID) - int(b.ID) }) {
				t.Fatalf("groups not sorted by ID: %+v", gs)
			}
			for _, g := range gs {
				if g.RelPort != g.ID {
					t.Fatalf("group %d: relative port %d, want %d", g.ID, g.RelPort, g.ID)
				}
				if len(g.Portals) != 1 {
					t.Fatalf("group %d: portals %v", g.ID, g.Portals)
				}
			}
		})
	}
}

func TestResolvePortGroupsDropsBadGroups(t *testing.T) {
	fn := func(string) []PortGroup {
		return []PortGroup{{ID: 0, State: PathActiveOptimized}, {ID: 2, State: PathActiveOptimized}, {ID: 2, State: PathUnavailable}, {ID: 1, RelPort: 9}}
	}
	gs := resolvePortGroups(fn, "iqn.x", 1, 7, PathActiveNonOptimized, nil)
	want := []PortGroup{{ID: 1, RelPort: 7, State: PathActiveNonOptimized}, {ID: 2, RelPort: 2, State: PathActiveOptimized}}
	if !reflect.DeepEqual(gs, want) {
		t.Fatalf("groups %+v, want %+v", gs, want)
	}
}

// rtpgDesc is one decoded target port group descriptor.
type rtpgDesc struct {
	pref    bool
	state   PathState
	id      uint16
	relPort []uint16
}

// parseRTPG decodes REPORT TARGET PORT GROUPS data (SPC-4 section 6.36.2)
// strictly: lengths must add up.
func parseRTPG(tb testing.TB, b []byte, extended bool) []rtpgDesc {
	tb.Helper()
	if len(b) < 4 || int(binary.BigEndian.Uint32(b)) != len(b)-4 {
		tb.Fatalf("RETURN DATA LENGTH does not match %d bytes: % x", len(b), b)
	}
	d := b[4:]
	if extended {
		if len(b) < 8 || b[4]>>4&7 != 1 {
			tb.Fatalf("extended header: % x", b[:min(8, len(b))])
		}
		d = b[8:]
	}
	var out []rtpgDesc
	for len(d) > 0 {
		if len(d) < 8 {
			tb.Fatalf("truncated descriptor % x", d)
		}
		n := int(d[7])
		if len(d) < 8+4*n {
			tb.Fatalf("descriptor with %d ports in %d bytes", n, len(d))
		}
		if d[1] != 0x80|0x08|0x04|0x02|0x01 {
			tb.Fatalf("supported states 0x%02x", d[1])
		}
		x := rtpgDesc{pref: d[0]&0x80 != 0, state: PathState(d[0] & 0x0f), id: binary.BigEndian.Uint16(d[2:])}
		for i := 0; i < n; i++ {
			x.relPort = append(x.relPort, binary.BigEndian.Uint16(d[8+4*i+2:]))
		}
		out = append(out, x)
		d = d[8+4*n:]
	}
	return out
}

func rtpgCDB(extended bool, alloc uint32) []byte {
	c := make12(0xa3, 0x0a)
	if extended {
		c[1] |= 0x20
	}
	binary.BigEndian.PutUint32(c[6:], alloc)
	return c
}

func TestReportTargetPortGroupsSites(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	e.lu.groups = sitesProvider(map[uint16]PathState{1: PathActiveOptimized, 2: PathActiveNonOptimized, 3: PathUnavailable})
	AO, AN, U := PathActiveOptimized, PathActiveNonOptimized, PathUnavailable
	for _, c := range []struct {
		initiator string
		volume    PathState
		want      []rtpgDesc
	}{
		{"iqn.host-a", AO, []rtpgDesc{{true, AO, 1, []uint16{1}}, {false, AN, 2, []uint16{2}}, {false, U, 3, []uint16{3}}}},
		{"iqn.host-b", AO, []rtpgDesc{{false, AN, 1, []uint16{1}}, {true, AO, 2, []uint16{2}}, {false, U, 3, []uint16{3}}}},
		// This site lost its lease: its own volume says so.
		{"iqn.host-a", U, []rtpgDesc{{false, U, 1, []uint16{1}}, {false, AN, 2, []uint16{2}}, {false, U, 3, []uint16{3}}}},
	} {
		e.vol.setState(c.volume)
		n := e.nexus(c.initiator, 1)
		for _, ext := range []bool{false, true} {
			r := e.do(n, rtpgCDB(ext, 1024), nil)
			wantGood(t, r, "rtpg")
			hdr := 4
			if ext {
				hdr = 8
			}
			if len(r.data) != hdr+12*len(c.want) {
				t.Fatalf("%s: %d bytes, want %d", c.initiator, len(r.data), hdr+12*len(c.want))
			}
			if got := parseRTPG(t, r.data, ext); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("%s, volume %d, extended %v:\n got %+v\nwant %+v", c.initiator, c.volume, ext, got, c.want)
			}
		}
		// A short allocation length gets a prefix; RETURN DATA LENGTH
		// still gives the full length (SPC-4 section 4.2.5.6).
		r := e.do(n, rtpgCDB(false, 10), nil)
		wantGood(t, r, "short rtpg")
		if len(r.data) != 10 || binary.BigEndian.Uint32(r.data) != uint32(12*len(c.want)) {
			t.Fatalf("short RTPG: % x", r.data)
		}
	}
}

// TestVPD83PerSite: every site gives the same LU identity (NAA, T10
// vendor ID, serial) and its own target port group and relative port.
func TestVPD83PerSite(t *testing.T) {
	type ident struct {
		naa, t10, serial  []byte
		tpg, rel          uint16
		targetName, tport string
	}
	read := func(tpgt uint16) ident {
		srv := NewServer(Config{PortalGroup: tpgt, PortGroups: sitesProvider(map[uint16]PathState{1: PathActiveOptimized, 2: PathActiveNonOptimized})})
		if err := srv.AddTarget(TargetConfig{Name: testTargetName, LUNs: []LUNConfig{{ID: 0, Volume: newMemVolume(1 << 20)}}}); err != nil {
			t.Fatal(err)
		}
		lu := srv.target(testTargetName).lus[0]
		page, ok := lu.vpd(0x83, nil)
		if !ok || int(binary.BigEndian.Uint16(page[2:])) != len(page)-4 {
			t.Fatalf("VPD 83: % x", page)
		}
		serial, _ := lu.vpd(0x80, nil)
		var id ident
		id.serial = serial[4:]
		for d := page[4:]; len(d) > 0; {
			if len(d) < 4 || len(d) < 4+int(d[3]) {
				t.Fatalf("truncated designator % x", d)
			}
			v := d[4 : 4+int(d[3])]
			assoc, typ := d[1]>>4&3, d[1]&0x0f
			switch {
			case assoc == 0 && typ == 3:
				id.naa = v
			case assoc == 0 && typ == 1:
				id.t10 = v
			case assoc == 1 && typ == 4:
				id.rel = binary.BigEndian.Uint16(v[2:])
			case assoc == 1 && typ == 5:
				id.tpg = binary.BigEndian.Uint16(v[2:])
			case assoc == 2 && typ == 8:
				id.targetName = string(bytes.TrimRight(v, "\x00"))
			case assoc == 1 && typ == 8:
				id.tport = string(bytes.TrimRight(v, "\x00"))
			}
			d = d[4+int(d[3]):]
		}
		return id
	}
	a, b := read(1), read(2)
	if len(a.naa) != 8 || !bytes.Equal(a.naa, b.naa) || !bytes.Equal(a.t10, b.t10) || !bytes.Equal(a.serial, b.serial) || a.targetName != b.targetName {
		t.Fatalf("LU identity differs between sites:\n%+v\n%+v", a, b)
	}
	if a.tpg != 1 || a.rel != 1 || b.tpg != 2 || b.rel != 2 {
		t.Fatalf("port identity: site 1 tpg %d rel %d, site 2 tpg %d rel %d", a.tpg, a.rel, b.tpg, b.rel)
	}
	if a.tport != testTargetName+",t,0x0001" || b.tport != testTargetName+",t,0x0002" {
		t.Fatalf("target port names %q, %q", a.tport, b.tport)
	}
}

func TestTargetAddresses(t *testing.T) {
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 3260}
	gs := []PortGroup{
		{ID: 1, State: PathActiveNonOptimized, Portals: []string{"127.0.0.1:3260", "[::1]:3260"}},
		{ID: 2, State: PathActiveOptimized, Portals: []string{"0.0.0.0:3261"}},
		{ID: 3, State: PathUnavailable, Portals: []string{"127.0.0.3:3260"}},
		{ID: 4, State: PathActiveNonOptimized},
	}
	got := targetAddresses(gs, local)
	want := []string{"127.0.0.2:3261,2", "127.0.0.1:3260,1", "[::1]:3260,1", "127.0.0.3:3260,3"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("TargetAddress values %q, want %q", got, want)
	}
	if p := reachablePortal("[::]:3260", &net.TCPAddr{IP: net.ParseIP("::1"), Port: 1}); p != "[::1]:3260" {
		t.Fatalf("IPv6 wildcard: %s", p)
	}
}

// sendTargets runs SendTargets=All in a discovery session and returns
// the answer.
func (in *initiator) sendTargets() []KV {
	in.t.Helper()
	p := &PDU{Data: EncodeText([]KV{{"SendTargets", "All"}})}
	p.BHS[0] = 0x40 | opTextReq
	p.BHS[1] = 0x80
	itt := in.nextITT()
	p.put32(16, itt)
	p.put32(20, 0xffffffff)
	p.put32(24, in.cmdSN)
	p.put32(28, in.expStatSN)
	in.send(p)
	r := in.recv()
	if r.Opcode() != opTextRsp || r.ITT() != itt {
		in.t.Fatalf("SendTargets: opcode 0x%02x", r.Opcode())
	}
	kvs, err := ParseText(r.Data)
	if err != nil {
		in.t.Fatal(err)
	}
	return kvs
}

// TestE2EDiscoveryAllSites: SendTargets at one site lists every site's
// portals with that site's tag, the writer's (or the preferred) first.
func TestE2EDiscoveryAllSites(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	provider := func(initiator string) []PortGroup {
		mu.Lock()
		asked = append(asked, initiator)
		mu.Unlock()
		return []PortGroup{
			{ID: 2, State: PathActiveOptimized, Portals: []string{"127.0.0.2:3260"}},
			// This site's group: no portals given, so the listener's.
			{ID: 1, State: PathActiveNonOptimized},
			{ID: 3, State: PathActiveNonOptimized, Portals: []string{"127.0.0.3:3260", "127.0.0.3:3261"}},
		}
	}
	s := startServer(t, DefaultLimits(), TargetConfig{}, Config{PortalGroup: 1, PortGroups: provider})
	s.vol.setState(PathActiveNonOptimized)
	in := dial(t, s.addr)
	in.login(loginOpts{sessionType: "Discovery"})
	got := in.sendTargets()
	want := []KV{
		{"TargetName", e2eTarget},
		{"TargetAddress", "127.0.0.2:3260,2"},
		{"TargetAddress", s.addr + ",1"},
		{"TargetAddress", "127.0.0.3:3260,3"},
		{"TargetAddress", "127.0.0.3:3261,3"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("SendTargets:\n got %v\nwant %v", got, want)
	}
	mu.Lock()
	// "" is the state-change watcher (checkALUA), which asks on its own.
	sessions := slices.DeleteFunc(slices.Clone(asked), func(s string) bool { return s == "" })
	if len(sessions) != 1 || sessions[0] != e2eInitiator {
		t.Fatalf("provider asked for %q, want the session's initiator once", asked)
	}
	mu.Unlock()
	// The login of a normal session still names this site's tag only.
	in.logout()
	in2 := dial(t, s.addr)
	in2.login(loginOpts{})
	if tag := in2.keys["TargetPortalGroupTag"]; tag != "1" {
		t.Fatalf("TargetPortalGroupTag %q, want 1", tag)
	}
	in2.logout()
}

// TestALUAStateChangeUnitAttention: when a port group's access state
// changes (the writer moved), every nexus of the LU gets ASYMMETRIC
// ACCESS STATE CHANGED once; no change, no unit attention.
func TestALUAStateChangeUnitAttention(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	// Coming up: no writer yet, then one. No unit attention for that.
	states := map[uint16]PathState{1: PathUnavailable, 2: PathUnavailable}
	var mu sync.Mutex
	e.lu.groups = func(initiator string) []PortGroup {
		mu.Lock()
		defer mu.Unlock()
		return sitesProvider(maps.Clone(states))(initiator)
	}
	tur := []byte{0, 0, 0, 0, 0, 0}
	a, b := e.nexus("iqn.host-a", 1), e.nexus("iqn.host-c", 2)
	for _, n := range []*Nexus{a, b} {
		for i := 0; e.do(n, tur, nil).status != statusGood; i++ { // the power-on UA first
			if i == 4 {
				t.Fatal("TEST UNIT READY keeps failing")
			}
		}
	}
	e.vol.setState(PathUnavailable) // this site's own group too
	e.lu.checkALUA()
	mu.Lock()
	states[1], states[2] = PathActiveOptimized, PathActiveNonOptimized
	mu.Unlock()
	e.vol.setState(PathActiveOptimized)
	e.lu.checkALUA()
	e.lu.checkALUA()
	wantGood(t, e.do(a, tur, nil), "no change after the first writer")
	mu.Lock()
	states[1], states[2] = PathActiveNonOptimized, PathActiveOptimized
	mu.Unlock()
	e.lu.checkALUA()
	e.lu.checkALUA()
	for _, n := range []*Nexus{a, b} {
		wantSense(t, e.do(n, tur, nil), senseUnitAttention, ascAsymAccessStateChanged, "after the writer moved")
		wantGood(t, e.do(n, tur, nil), "once")
	}
}

// TestALUAPreferenceChangeUnitAttention: when one initiator's preferred
// group changes (an automatic preference that follows its round trips),
// only that initiator's nexuses get ASYMMETRIC ACCESS STATE CHANGED.
func TestALUAPreferenceChangeUnitAttention(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	var mu sync.Mutex
	prefers := map[string]uint16{} // initiator -> preferred group
	e.lu.groups = func(initiator string) []PortGroup {
		mu.Lock()
		defer mu.Unlock()
		gs := sitesProvider(map[uint16]PathState{1: PathActiveOptimized, 2: PathActiveNonOptimized})(initiator)
		for i := range gs {
			gs[i].Preferred = prefers[initiator] == gs[i].ID
		}
		return gs
	}
	e.vol.setState(PathActiveOptimized)
	tur := []byte{0, 0, 0, 0, 0, 0}
	a, b := e.nexus("iqn.host-a", 1), e.nexus("iqn.host-c", 2)
	for _, n := range []*Nexus{a, b} {
		for i := 0; e.do(n, tur, nil).status != statusGood; i++ {
			if i == 4 {
				t.Fatal("TEST UNIT READY keeps failing")
			}
		}
	}
	e.lu.checkALUA()
	e.lu.checkALUA()
	wantGood(t, e.do(a, tur, nil), "no change")
	mu.Lock()
	prefers["iqn.host-a"] = 2
	mu.Unlock()
	e.lu.checkALUA()
	wantSense(t, e.do(a, tur, nil), senseUnitAttention, ascAsymAccessStateChanged, "host-a's preference moved")
	wantGood(t, e.do(a, tur, nil), "once")
	wantGood(t, e.do(b, tur, nil), "host-c's groups did not change")
}

// TestALUAWriterMoveThroughNoOptimizedGroup: a writer that moves passes
// through a moment in which no group is active/optimized at a site (the
// old writer's own group has dropped and the cluster has not named the
// new one yet). Both changes, into that moment and out of it, get
// ASYMMETRIC ACCESS STATE CHANGED: an initiator that re-read REPORT
// TARGET PORT GROUPS after the first saw no group optimized and must be
// told again. The old code gave the second change none (it counted a
// check without an optimized group as a cluster coming up), and the
// Linux guest of `make hosts` kept both paths at priority 10.
func TestALUAWriterMoveThroughNoOptimizedGroup(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	states := map[uint16]PathState{1: PathActiveOptimized, 2: PathActiveNonOptimized}
	var mu sync.Mutex
	e.lu.groups = func(initiator string) []PortGroup {
		mu.Lock()
		defer mu.Unlock()
		return sitesProvider(maps.Clone(states))(initiator)
	}
	set := func(own, other PathState) {
		mu.Lock()
		states[1], states[2] = own, other
		mu.Unlock()
		e.vol.setState(own)
	}
	tur := []byte{0, 0, 0, 0, 0, 0}
	a := e.nexus("iqn.host-a", 1)
	for i := 0; e.do(a, tur, nil).status != statusGood; i++ {
		if i == 4 {
			t.Fatal("TEST UNIT READY keeps failing")
		}
	}
	set(PathActiveOptimized, PathActiveNonOptimized)
	e.lu.checkALUA()
	e.lu.checkALUA()
	wantGood(t, e.do(a, tur, nil), "steady")
	// This site was the writer and no longer is; the cluster has not
	// named the next one.
	set(PathActiveNonOptimized, PathActiveNonOptimized)
	e.lu.checkALUA()
	wantSense(t, e.do(a, tur, nil), senseUnitAttention, ascAsymAccessStateChanged, "the old writer's group dropped")
	wantGood(t, e.do(a, tur, nil), "once")
	// The other site is the writer now.
	set(PathActiveNonOptimized, PathActiveOptimized)
	e.lu.checkALUA()
	wantSense(t, e.do(a, tur, nil), senseUnitAttention, ascAsymAccessStateChanged, "the new writer took over")
	wantGood(t, e.do(a, tur, nil), "once")
	// The same through a moment in which this site is transitioning.
	set(PathTransitioning, PathActiveNonOptimized)
	e.lu.checkALUA()
	wantSense(t, e.do(a, tur, nil), senseUnitAttention, ascAsymAccessStateChanged, "no writer, this site transitioning")
	set(PathActiveOptimized, PathActiveNonOptimized)
	e.lu.checkALUA()
	wantSense(t, e.do(a, tur, nil), senseUnitAttention, ascAsymAccessStateChanged, "this site the writer again")
}
