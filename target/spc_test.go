package target

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

func cdbInquiry(evpd bool, page byte, alloc uint16) []byte {
	c := []byte{0x12, 0, page, 0, 0, 0}
	if evpd {
		c[1] = 1
	}
	binary.BigEndian.PutUint16(c[3:], alloc)
	return c
}

func TestStandardInquiry(t *testing.T) {
	e := newLUEnv(t, LUNConfig{Product: "disk"})
	r := e.do(e.nexus("i", 1), cdbInquiry(false, 0, 255), nil)
	wantGood(t, r, "inquiry")
	b := r.data
	if len(b) < 36 {
		t.Fatalf("standard INQUIRY data is %d bytes; SPC-4 needs at least 36", len(b))
	}
	checks := []struct {
		name      string
		got, want int
	}{
		{"peripheral qualifier/device type", int(b[0]), 0x00},
		{"version (SPC-4)", int(b[2]), 0x06},
		{"response data format", int(b[3] & 0x0f), 2},
		{"additional length", int(b[4]), len(b) - 5},
		{"TPGS implicit ALUA", int(b[5]>>4) & 3, 1},
		{"3PC (EXTENDED COPY is supported)", int(b[5]>>3) & 1, 1},
		{"MULTIP", int(b[6]>>4) & 1, 1},
		{"CMDQUE", int(b[7]>>1) & 1, 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
		}
	}
	if got := string(b[8:16]); got != "METROLUN" {
		t.Errorf("vendor %q", got)
	}
	if got := string(b[16:32]); got != "disk            " {
		t.Errorf("product %q, want space padded", got)
	}
	for _, x := range b[8:36] {
		if x < 0x20 || x > 0x7e {
			t.Fatalf("non-printable ASCII in identification fields: % x", b[8:36])
		}
	}
	// Version descriptors include SPC-4 (0460h) and SBC-3 (04C0h).
	found := map[uint16]bool{}
	for i := 58; i+2 <= min(len(b), 74); i += 2 {
		found[binary.BigEndian.Uint16(b[i:])] = true
	}
	if !found[0x0460] || !found[0x04c0] {
		t.Errorf("version descriptors %v lack SPC-4 or SBC-3", found)
	}
}

// vpdDesignator is one designation descriptor of VPD page 83h.
type vpdDesignator struct {
	proto, codeSet, assoc, typ byte
	piv                        bool
	value                      []byte
}

func parseDesignators(tb testing.TB, body []byte) []vpdDesignator {
	tb.Helper()
	var out []vpdDesignator
	for len(body) > 0 {
		if len(body) < 4 || len(body) < 4+int(body[3]) {
			tb.Fatalf("designation descriptor overruns the page: % x", body)
		}
		l := int(body[3])
		out = append(out, vpdDesignator{
			proto: body[0] >> 4, codeSet: body[0] & 0x0f,
			piv: body[1]&0x80 != 0, assoc: body[1] >> 4 & 3, typ: body[1] & 0x0f,
			value: body[4 : 4+l],
		})
		body = body[4+l:]
	}
	return out
}

func TestVPDPages(t *testing.T) {
	e := newLUEnv(t, LUNConfig{Thin: true})
	n := e.nexus("i", 1)
	for _, code := range supportedVPD {
		t.Run(fmt.Sprintf("page%02x", code), func(t *testing.T) {
			r := e.do(n, cdbInquiry(true, code, 0xffff), nil)
			wantGood(t, r, "vpd")
			b := r.data
			if len(b) < 4 {
				t.Fatalf("page is %d bytes", len(b))
			}
			if b[0] != 0 {
				t.Errorf("peripheral byte 0x%02x", b[0])
			}
			if b[1] != code {
				t.Fatalf("PAGE CODE 0x%02x, want 0x%02x", b[1], code)
			}
			if l := int(binary.BigEndian.Uint16(b[2:])); l != len(b)-4 {
				t.Fatalf("PAGE LENGTH %d, but %d bytes follow", l, len(b)-4)
			}
			body := b[4:]
			switch code {
			case 0x00:
				if !bytes.Equal(body, supportedVPD) {
					t.Fatalf("supported pages % x, want % x", body, supportedVPD)
				}
				for i := 1; i < len(body); i++ {
					if body[i] <= body[i-1] {
						t.Fatalf("supported pages not ascending: % x", body)
					}
				}
			case 0x80:
				if string(body) != e.lu.serial || len(body) == 0 {
					t.Fatalf("unit serial %q, want %q", body, e.lu.serial)
				}
			case 0x83:
				ds := parseDesignators(t, body)
				var naa *vpdDesignator
				for i := range ds {
					if ds[i].typ == 3 && ds[i].assoc == 0 {
						naa = &ds[i]
					}
				}
				if naa == nil {
					t.Fatalf("no NAA designator for the LU: %+v", ds)
				}
				if naa.codeSet != 1 || len(naa.value) != 8 {
					t.Fatalf("NAA designator code set %d, length %d; want binary, 8", naa.codeSet, len(naa.value))
				}
				if naa.value[0]>>4 != 3 {
					t.Fatalf("NAA field %d, want 3 (locally assigned)", naa.value[0]>>4)
				}
				for _, d := range ds {
					if d.codeSet == 3 && (len(d.value)%4 != 0 || d.value[len(d.value)-1] != 0) {
						t.Fatalf("SCSI name string designator not NUL-terminated and padded to 4: %q", d.value)
					}
				}
			case 0xb0:
				if len(body) != 0x3c {
					t.Fatalf("Block Limits page length %d, want 0x3c", len(body))
				}
				if body[0]&1 != 1 {
					t.Fatal("WSNZ not set, but WRITE SAME with zero blocks is refused")
				}
				if body[1] != maxCompareAndWriteBlocks {
					t.Fatalf("MAXIMUM COMPARE AND WRITE LENGTH %d", body[1])
				}
				if got := binary.BigEndian.Uint32(body[4:]); got != maxTransferBytes/512 {
					t.Fatalf("MAXIMUM TRANSFER LENGTH %d", got)
				}
			case 0xb2:
				if body[1]&0x80 == 0 || body[1]&0x04 == 0 || body[2]&7 != 2 {
					t.Fatalf("thin LU: LBP page % x lacks LBPU/LBPRZ/thin", body)
				}
			}
		})
	}
}

// TestNAAIdentitySharedAcrossSites checks DESIGN.md I5: two servers with the
// same target name and LUN present the same NAA and serial.
func TestNAAIdentitySharedAcrossSites(t *testing.T) {
	a := newLUEnv(t, LUNConfig{ID: 3})
	b := newLUEnv(t, LUNConfig{ID: 3})
	c := newLUEnv(t, LUNConfig{ID: 4})
	if a.lu.naa != b.lu.naa || a.lu.serial != b.lu.serial {
		t.Fatal("same target and LUN give different identities")
	}
	if a.lu.naa == c.lu.naa || a.lu.serial == c.lu.serial {
		t.Fatal("different LUNs share an identity")
	}
}

// dataInCases lists Data-In commands with an allocation length, for the
// truncation property.
func dataInCases() []struct {
	name string
	cdb  func(alloc uint16) []byte
	min  int // smallest allocation length the command accepts
} {
	be32cdb := func(b []byte, off int, alloc uint16) []byte {
		binary.BigEndian.PutUint32(b[off:], uint32(alloc))
		return b
	}
	type tc = struct {
		name string
		cdb  func(alloc uint16) []byte
		min  int
	}
	cases := []tc{
		{"inquiry", func(a uint16) []byte { return cdbInquiry(false, 0, a) }, 0},
		{"mode sense6 all", func(a uint16) []byte { return []byte{0x1a, 0, 0x3f, 0, byte(min(a, 255)), 0} }, 0},
		{"mode sense10 all", func(a uint16) []byte {
			c := []byte{0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 0, 0}
			binary.BigEndian.PutUint16(c[7:], a)
			return c
		}, 0},
		{"report luns", func(a uint16) []byte { return be32cdb(make12(0xa0, 0), 6, a) }, 16},
		{"read capacity16", func(a uint16) []byte {
			c := make([]byte, 16)
			c[0], c[1] = 0x9e, 0x10
			return be32cdb(c, 10, a)
		}, 0},
		{"rsoc all", func(a uint16) []byte { return be32cdb(make12(0xa3, 0x0c), 6, a) }, 0},
		{"rsoc all rctd", func(a uint16) []byte {
			c := be32cdb(make12(0xa3, 0x0c), 6, a)
			c[2] = 0x80
			return c
		}, 0},
		{"rsoc one", func(a uint16) []byte {
			c := be32cdb(make12(0xa3, 0x0c), 6, a)
			c[2], c[3] = 1, 0x28
			return c
		}, 0},
		{"rstmf", func(a uint16) []byte { return be32cdb(make12(0xa3, 0x0d), 6, a) }, 4},
		{"rtpg", func(a uint16) []byte { return be32cdb(make12(0xa3, 0x0a), 6, a) }, 0},
		{"request sense", func(a uint16) []byte { return []byte{0x03, 0, 0, 0, byte(min(a, 255)), 0} }, 0},
	}
	for _, code := range supportedVPD {
		code := code
		cases = append(cases, tc{fmt.Sprintf("vpd %02x", code), func(a uint16) []byte { return cdbInquiry(true, code, a) }, 0})
	}
	for sa := byte(0); sa < 4; sa++ {
		sa := sa
		cases = append(cases, tc{fmt.Sprintf("pr in sa%d", sa), func(a uint16) []byte {
			c := make([]byte, 10)
			c[0], c[1] = 0x5e, sa
			binary.BigEndian.PutUint16(c[7:], a)
			return c
		}, 0})
	}
	return cases
}

func make12(op, sa byte) []byte {
	c := make([]byte, 12)
	c[0], c[1] = op, sa
	return c
}

// TestAllocationLengthTruncates is the SPC-4 4.2.5.6 property: the device
// server transfers min(allocation length, available) bytes, and those are
// a prefix of what it would send with a large allocation length.
func TestAllocationLengthTruncates(t *testing.T) {
	e := newLUEnv(t, LUNConfig{Thin: true})
	n := e.nexus("iqn.init", 1)
	// Give PERSISTENT RESERVE IN something to report.
	wantGood(t, e.do(n, cdbPROut(0, 0), prParams(0, 0x1234, 0)), "register")
	wantGood(t, e.do(n, cdbPROut(1, 1), prParams(0x1234, 0, 0)), "reserve")
	for _, c := range dataInCases() {
		t.Run(c.name, func(t *testing.T) {
			full := e.do(n, c.cdb(0xffff), nil)
			wantGood(t, full, "full")
			if c.name != "request sense" && len(full.data) == 0 {
				t.Fatal("no data")
			}
			for _, alloc := range []int{0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 36, 64, 255} {
				if alloc < c.min {
					continue
				}
				if strings.HasPrefix(c.name, "mode sense6") || c.name == "request sense" {
					alloc = min(alloc, 255)
				}
				r := e.do(n, c.cdb(uint16(alloc)), nil)
				wantGood(t, r, fmt.Sprintf("alloc %d", alloc))
				want := full.data[:min(alloc, len(full.data))]
				if !bytes.Equal(r.data, want) {
					t.Fatalf("alloc %d: got % x, want % x", alloc, r.data, want)
				}
				if r.cmd.alloc != alloc {
					t.Fatalf("alloc %d parsed as %d", alloc, r.cmd.alloc)
				}
			}
		})
	}
}

func TestReportLUNs(t *testing.T) {
	e := newLUEnv(t, LUNConfig{ID: 0})
	for _, id := range []uint64{300, 5} {
		lu, err := newLU(e.tgt, LUNConfig{ID: id, Volume: newMemVolume(1 << 16)}, 1)
		if err != nil {
			t.Fatal(err)
		}
		e.tgt.lus[id] = lu
		e.tgt.lunList = append(e.tgt.lunList, id)
	}
	e.tgt.lunList = []uint64{0, 5, 300}
	n := e.nexus("i", 1)
	rl := func(sel byte, alloc uint32) []byte {
		c := make12(0xa0, 0)
		c[2] = sel
		binary.BigEndian.PutUint32(c[6:], alloc)
		return c
	}
	r := e.do(n, rl(0, 4096), nil)
	wantGood(t, r, "report luns")
	if got := binary.BigEndian.Uint32(r.data); got != 24 || len(r.data) != 32 {
		t.Fatalf("LUN LIST LENGTH %d, data %d bytes; want 24, 32", got, len(r.data))
	}
	want := [][8]byte{
		{0, 0},       // peripheral device addressing, LUN 0
		{0, 5},       // LUN 5
		{0x41, 0x2c}, // flat space addressing, LUN 300
	}
	for i, w := range want {
		var got [8]byte
		copy(got[:], r.data[8+8*i:])
		if got != w {
			t.Fatalf("LUN %d: % x, want % x", i, got, w)
		}
		if decodeLUN(got) != e.tgt.lunList[i] {
			t.Fatalf("decodeLUN(% x) = %d", got, decodeLUN(got))
		}
	}
	// SELECT REPORT 1: well-known LUs only, of which there are none.
	r = e.do(n, rl(1, 4096), nil)
	wantGood(t, r, "select report 1")
	if binary.BigEndian.Uint32(r.data) != 0 {
		t.Fatalf("well-known LUN list not empty: % x", r.data)
	}
	// SPC-4 6.33: ALLOCATION LENGTH less than 16 is an error.
	for _, a := range []uint32{0, 1, 8, 15} {
		r := e.do(n, rl(0, a), nil)
		wantSense(t, r, senseIllegalRequest, ascInvalidFieldInCDB, fmt.Sprintf("alloc %d", a))
		if binary.BigEndian.Uint16(r.sense[16:]) != 6 || r.sense[15]&0xc0 != 0xc0 {
			t.Fatalf("alloc %d: field pointer does not point at the ALLOCATION LENGTH", a)
		}
	}
	wantSense(t, e.do(n, rl(3, 4096), nil), senseIllegalRequest, ascInvalidFieldInCDB, "select report 3")
}

func TestCommandTableProperties(t *testing.T) {
	seen := map[[2]uint16]string{}
	for _, o := range commandTable {
		// The CDB usage data is one byte per CDB byte (SPC-4 6.35.3).
		if len(o.usage) != o.cdbLen {
			t.Errorf("%s: usage data is %d bytes, CDB length %d", o.name, len(o.usage), o.cdbLen)
		}
		// The group code of the opcode fixes the CDB length (SPC-4 4.2.5.1).
		if l := len16(o.usage[0]); l != 0 && l != o.cdbLen {
			t.Errorf("%s: opcode 0x%02x is a %d-byte group, table says %d", o.name, o.usage[0], l, o.cdbLen)
		}
		if o.parse == nil || o.exec == nil {
			t.Errorf("%s: missing parse or exec", o.name)
		}
		// The service action sits in the usage data where the command has it.
		if saOpcode(o.usage[0]) && uint16(o.usage[1]&0x1f) != o.sa {
			t.Errorf("%s: usage byte 1 0x%02x does not carry service action 0x%02x", o.name, o.usage[1], o.sa)
		}
		key := [2]uint16{uint16(o.usage[0]), o.sa}
		if prev, dup := seen[key]; dup {
			t.Errorf("%s and %s share opcode/service action", o.name, prev)
		}
		seen[key] = o.name
		// lookup finds the entry from a CDB that starts like its usage data.
		cdb := make([]byte, 16)
		cdb[0] = o.usage[0]
		if saOpcode(o.usage[0]) {
			cdb[1] = byte(o.sa)
		}
		if got, res := lookup(cdb); res != nil || got != o {
			t.Errorf("%s: lookup(% x) found another command", o.name, cdb[:2])
		}
		// The CONTROL byte is the last byte of every CDB.
		if o.usage[len(o.usage)-1]&^0x07 != 0 {
			t.Errorf("%s: CONTROL byte usage 0x%02x", o.name, o.usage[len(o.usage)-1])
		}
	}
}

func TestReportSupportedOperationCodes(t *testing.T) {
	e := newLUEnv(t, LUNConfig{Thin: true})
	n := e.nexus("i", 1)
	rsoc := func(opts, op byte, sa uint16) []byte {
		c := make12(0xa3, 0x0c)
		c[2], c[3] = opts, op
		binary.BigEndian.PutUint16(c[4:], sa)
		binary.BigEndian.PutUint32(c[6:], 1<<16)
		return c
	}
	for _, rctd := range []bool{false, true} {
		t.Run(fmt.Sprintf("all rctd=%v", rctd), func(t *testing.T) {
			var opts byte
			if rctd {
				opts = 0x80
			}
			r := e.do(n, rsoc(opts, 0, 0), nil)
			wantGood(t, r, "rsoc all")
			if l := binary.BigEndian.Uint32(r.data); int(l) != len(r.data)-4 {
				t.Fatalf("COMMAND DATA LENGTH %d, %d bytes follow", l, len(r.data)-4)
			}
			dlen := 8
			if rctd {
				dlen = 20
			}
			ents := rsocEntries()
			if (len(r.data)-4)/dlen != len(ents) || (len(r.data)-4)%dlen != 0 {
				t.Fatalf("%d bytes of descriptors for %d commands", len(r.data)-4, len(ents))
			}
			for i, en := range ents {
				o := en.o
				d := r.data[4+dlen*i:]
				if d[0] != o.usage[0] {
					t.Fatalf("descriptor %d: opcode 0x%02x, want 0x%02x (%s)", i, d[0], o.usage[0], o.name)
				}
				if servactv := d[5]&1 != 0; servactv != en.hasSA {
					t.Errorf("%s: SERVACTV=%v", o.name, servactv)
				} else if servactv && binary.BigEndian.Uint16(d[2:]) != en.sa {
					t.Errorf("%s: service action 0x%x", o.name, binary.BigEndian.Uint16(d[2:]))
				}
				if got := int(binary.BigEndian.Uint16(d[6:])); got != o.cdbLen {
					t.Errorf("%s: CDB LENGTH %d, want %d", o.name, got, o.cdbLen)
				}
				if ctdp := d[5]&2 != 0; ctdp != rctd {
					t.Errorf("%s: CTDP=%v with RCTD=%v", o.name, ctdp, rctd)
				}
				if rctd && binary.BigEndian.Uint16(d[8:]) != 0x0a {
					t.Errorf("%s: timeouts descriptor length %d, want 10", o.name, binary.BigEndian.Uint16(d[8:]))
				}
			}
		})
	}
	// One-command form for every entry: REPORTING OPTIONS 001b for plain
	// opcodes, 010b for service actions, and 011b for either.
	for _, en := range rsocEntries() {
		o := en.o
		t.Run(fmt.Sprintf("one %s sa %d", o.name, en.sa), func(t *testing.T) {
			opts := []byte{3}
			if en.hasSA {
				opts = append(opts, 2)
			} else {
				opts = append(opts, 1)
			}
			for _, opt := range opts {
				r := e.do(n, rsoc(opt, o.usage[0], en.sa), nil)
				wantGood(t, r, "rsoc one")
				if r.data[1]&7 != 3 {
					t.Fatalf("option %d: SUPPORT %d, want 3", opt, r.data[1]&7)
				}
				size := int(binary.BigEndian.Uint16(r.data[2:]))
				if size != o.cdbLen || len(r.data) != 4+size {
					t.Fatalf("option %d: CDB SIZE %d, %d bytes of usage data; CDB length %d", opt, size, len(r.data)-4, o.cdbLen)
				}
				if !bytes.Equal(r.data[4:], o.usage) {
					t.Fatalf("usage data % x, want % x", r.data[4:], o.usage)
				}
			}
		})
	}
	t.Run("unsupported opcode", func(t *testing.T) {
		r := e.do(n, rsoc(1, 0x02, 0), nil)
		wantGood(t, r, "rsoc")
		if r.data[1]&7 != 1 {
			t.Fatalf("SUPPORT %d for an unsupported opcode, want 1", r.data[1]&7)
		}
	})
	t.Run("option 1 with a service action opcode", func(t *testing.T) {
		wantSense(t, e.do(n, rsoc(1, 0x9e, 0x10), nil), senseIllegalRequest, ascInvalidFieldInCDB, "opt 1 on 9e")
	})
	t.Run("option 2 without service actions", func(t *testing.T) {
		wantSense(t, e.do(n, rsoc(2, 0x28, 0), nil), senseIllegalRequest, ascInvalidFieldInCDB, "opt 2 on 28")
	})
	t.Run("reserved option", func(t *testing.T) {
		wantSense(t, e.do(n, rsoc(4, 0x28, 0), nil), senseIllegalRequest, ascInvalidFieldInCDB, "opt 4")
	})
}

func TestRSOCPersistentReserveServiceActions(t *testing.T) {
	// PERSISTENT RESERVE IN and OUT are told apart by a SERVICE ACTION
	// field; SPC-4 6.35.2 reports one descriptor per supported service
	// action with SERVACTV=1.
	e := newLUEnv(t, LUNConfig{})
	c := make12(0xa3, 0x0c)
	binary.BigEndian.PutUint32(c[6:], 1<<16)
	r := e.do(e.nexus("i", 1), c, nil)
	wantGood(t, r, "rsoc")
	for d := r.data[4:]; len(d) >= 8; d = d[8:] {
		if (d[0] == 0x5e || d[0] == 0x5f) && d[5]&1 == 0 {
			t.Fatalf("opcode 0x%02x reported with SERVACTV=0", d[0])
		}
	}
}

func TestReportSupportedTMFs(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	c := make12(0xa3, 0x0d)
	binary.BigEndian.PutUint32(c[6:], 16)
	r := e.do(n, c, nil)
	wantGood(t, r, "rstmf")
	// ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET and
	// TARGET RESET are what tmf.go implements.
	if r.data[0] != 0xda {
		t.Fatalf("supported TMFs 0x%02x, want 0xda", r.data[0])
	}
	binary.BigEndian.PutUint32(c[6:], 3)
	wantSense(t, e.do(n, c, nil), senseIllegalRequest, ascInvalidFieldInCDB, "alloc 3")
}

func TestReserveRelease6(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	a, b := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2)
	reserve, release := []byte{0x16, 0, 0, 0, 0, 0}, []byte{0x17, 0, 0, 0, 0, 0}
	rd, wr := cdbRW(0x28, 0, 1), cdbRW(0x2a, 0, 1)
	blk := make([]byte, 512)

	wantGood(t, e.do(a, reserve, nil), "a reserve")
	wantGood(t, e.do(a, reserve, nil), "a reserve again")
	wantGood(t, e.do(a, wr, blk), "holder writes")
	wantConflict(t, e.do(b, rd, nil), "b read")
	wantConflict(t, e.do(b, wr, blk), "b write")
	wantConflict(t, e.do(b, reserve, nil), "b reserve")
	wantGood(t, e.do(b, cdbInquiry(false, 0, 36), nil), "b inquiry")
	wantGood(t, e.do(b, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0}, nil), "b report luns")
	// RELEASE from a nexus that does not hold the reservation is GOOD and
	// releases nothing (SPC-2 7.17).
	wantGood(t, e.do(b, release, nil), "b release")
	wantConflict(t, e.do(b, rd, nil), "b read after its release")
	// Persistent reservation commands conflict with a RESERVE(6) held by
	// another nexus.
	wantConflict(t, e.do(b, cdbPROut(0, 0), prParams(0, 0xb, 0)), "b register")
	wantGood(t, e.do(a, release, nil), "a release")
	wantGood(t, e.do(b, rd, nil), "b read after release")

	// The reservation goes with the nexus (SPC-2 5.5.1).
	wantGood(t, e.do(a, reserve, nil), "a reserve")
	e.lu.nexusGone(a)
	wantGood(t, e.do(b, wr, blk), "b write after a's session ended")

	// RESERVE(6) conflicts while persistent reservation keys exist.
	wantGood(t, e.do(b, cdbPROut(0, 0), prParams(0, 0xb, 0)), "b register")
	wantConflict(t, e.do(a, reserve, nil), "reserve with PR registrations")
	wantConflict(t, e.do(b, reserve, nil), "registrant's reserve")
}

func TestReportTargetPortGroups(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	for _, ext := range []bool{false, true} {
		c := make12(0xa3, 0x0a)
		if ext {
			c[1] |= 0x20
		}
		binary.BigEndian.PutUint32(c[6:], 1024)
		r := e.do(n, c, nil)
		wantGood(t, r, "rtpg")
		b := r.data
		if l := binary.BigEndian.Uint32(b); int(l) != len(b)-4 {
			t.Fatalf("RETURN DATA LENGTH %d, %d bytes follow", l, len(b)-4)
		}
		d := b[4:]
		if ext {
			if b[4]>>4&7 != 1 {
				t.Fatalf("extended header format %d", b[4]>>4&7)
			}
			d = b[8:]
		}
		if d[0]&0x0f != byte(PathActiveOptimized) || d[0]&0x80 == 0 {
			t.Fatalf("state byte 0x%02x, want PREF, active/optimized", d[0])
		}
		if tpg := binary.BigEndian.Uint16(d[2:]); tpg != e.lu.portGroup {
			t.Fatalf("TPG %d, want %d", tpg, e.lu.portGroup)
		}
		if d[7] != 1 || len(d) != 12 || binary.BigEndian.Uint16(d[10:]) != e.lu.relPort {
			t.Fatalf("target port list % x", d)
		}
	}
}

type rsocEntry struct {
	o     *opInfo
	sa    uint16
	hasSA bool
}

// rsocEntries expands the command table into RSOC descriptors: one per
// service action for commands that have them (SPC-4 section 6.35.2).
func rsocEntries() []rsocEntry {
	var out []rsocEntry
	for _, o := range commandTable {
		switch {
		case saOpcode(o.usage[0]):
			out = append(out, rsocEntry{o, o.sa, true})
		case len(o.sas) > 0:
			for _, sa := range o.sas {
				out = append(out, rsocEntry{o, sa, true})
			}
		default:
			out = append(out, rsocEntry{o: o})
		}
	}
	return out
}
