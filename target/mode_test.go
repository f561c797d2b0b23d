package target

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

func cdbModeSense(ten, dbd bool, pc, page, sub byte) []byte {
	var c []byte
	if ten {
		c = make([]byte, 10)
		c[0] = 0x5a
		binary.BigEndian.PutUint16(c[7:], 4096)
	} else {
		c = make([]byte, 6)
		c[0], c[4] = 0x1a, 255
	}
	if dbd {
		c[1] = 0x08
	}
	c[2], c[3] = pc<<6|page, sub
	return c
}

type modeData struct {
	dsp   byte
	bd    []byte
	pages map[byte][]byte
	order []byte
}

// parseModeData decodes MODE SENSE parameter data (SPC-4 7.5.4, 7.5.5).
func parseModeData(tb testing.TB, b []byte, ten bool) modeData {
	tb.Helper()
	var md modeData
	var hdr, bdl int
	if ten {
		hdr = 8
		if l := int(binary.BigEndian.Uint16(b)); l != len(b)-2 {
			tb.Fatalf("MODE DATA LENGTH %d, %d bytes follow", l, len(b)-2)
		}
		md.dsp = b[3]
		bdl = int(binary.BigEndian.Uint16(b[6:]))
	} else {
		hdr = 4
		if l := int(b[0]); l != len(b)-1 {
			tb.Fatalf("MODE DATA LENGTH %d, %d bytes follow", l, len(b)-1)
		}
		md.dsp = b[2]
		bdl = int(b[3])
	}
	md.bd = b[hdr : hdr+bdl]
	md.pages = map[byte][]byte{}
	for p := b[hdr+bdl:]; len(p) > 0; {
		if len(p) < 2 || len(p) < 2+int(p[1]) {
			tb.Fatalf("mode page overruns the data: % x", p)
		}
		code := p[0] & 0x3f
		if p[0]&0x40 != 0 {
			tb.Fatalf("page 0x%02x in SUBPAGE format", code)
		}
		md.pages[code] = p[:2+int(p[1])]
		md.order = append(md.order, code)
		p = p[2+int(p[1]):]
	}
	return md
}

func TestModeSense(t *testing.T) {
	const nb = 1000
	e := newLUEnv(t, LUNConfig{Volume: newMemVolume(nb * 512), WriteCache: true})
	n := e.nexus("i", 1)
	wantLen := map[byte]int{0x01: 12, 0x08: 20, 0x0a: 12, 0x1c: 12}
	for _, ten := range []bool{false, true} {
		for _, dbd := range []bool{false, true} {
			t.Run(fmt.Sprintf("ten=%v dbd=%v", ten, dbd), func(t *testing.T) {
				r := e.do(n, cdbModeSense(ten, dbd, pcCurrent, 0x3f, 0), nil)
				wantGood(t, r, "mode sense")
				md := parseModeData(t, r.data, ten)
				if dbd && len(md.bd) != 0 {
					t.Fatalf("DBD=1 but %d bytes of block descriptors", len(md.bd))
				}
				if !dbd {
					// Short LBA mode parameter block descriptor (SBC-3 6.4.2).
					if len(md.bd) != 8 {
						t.Fatalf("block descriptor length %d, want 8", len(md.bd))
					}
					if got := binary.BigEndian.Uint32(md.bd); got != nb {
						t.Fatalf("NUMBER OF LOGICAL BLOCKS %d, want %d", got, nb)
					}
					if got := int(md.bd[5])<<16 | int(md.bd[6])<<8 | int(md.bd[7]); got != 512 {
						t.Fatalf("LOGICAL BLOCK LENGTH %d", got)
					}
				}
				if md.dsp&0x80 != 0 {
					t.Fatal("WP set on a writable LU")
				}
				if fmt.Sprint(md.order) != fmt.Sprint([]byte{0x01, 0x08, 0x0a, 0x1c}) {
					t.Fatalf("pages % x, want 01 08 0a 1c in ascending order", md.order)
				}
				for code, l := range wantLen {
					if len(md.pages[code]) != l {
						t.Fatalf("page 0x%02x is %d bytes, want %d", code, len(md.pages[code]), l)
					}
				}
				if md.pages[0x08][2]&0x04 == 0 {
					t.Fatal("caching page WCE=0 with WriteCache configured")
				}
			})
		}
	}
	t.Run("single page", func(t *testing.T) {
		r := e.do(n, cdbModeSense(true, true, pcCurrent, 0x08, 0), nil)
		wantGood(t, r, "caching page")
		md := parseModeData(t, r.data, true)
		if len(md.order) != 1 || md.order[0] != 0x08 {
			t.Fatalf("asked for page 08h, got % x", md.order)
		}
	})
	t.Run("changeable", func(t *testing.T) {
		r := e.do(n, cdbModeSense(false, true, pcChangeable, 0x3f, 0), nil)
		wantGood(t, r, "changeable")
		md := parseModeData(t, r.data, false)
		if md.pages[0x08][2] != 0x04 {
			t.Fatalf("changeable caching byte 2 0x%02x, want WCE only", md.pages[0x08][2])
		}
		for i, x := range md.pages[0x01][2:] {
			if x != 0 {
				t.Fatalf("read-write error recovery byte %d changeable", i+2)
			}
		}
	})
	t.Run("saved values", func(t *testing.T) {
		wantSense(t, e.do(n, cdbModeSense(false, false, pcSaved, 0x3f, 0), nil), senseIllegalRequest, ascSavingParamsNotSupported, "pc=3")
	})
	t.Run("unsupported page", func(t *testing.T) {
		r := e.do(n, cdbModeSense(true, false, pcCurrent, 0x02, 0), nil)
		wantSense(t, r, senseIllegalRequest, ascInvalidFieldInCDB, "page 2")
		if binary.BigEndian.Uint16(r.sense[16:]) != 2 {
			t.Fatalf("field pointer %d, want 2", binary.BigEndian.Uint16(r.sense[16:]))
		}
	})
}

func TestModeSenseUnsupportedSubpageFieldPointer(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	r := e.do(e.nexus("i", 1), cdbModeSense(true, false, pcCurrent, 0x08, 0x01), nil)
	wantSense(t, r, senseIllegalRequest, ascInvalidFieldInCDB, "subpage 1")
	if r.sense[15]&0xc0 != 0xc0 || binary.BigEndian.Uint16(r.sense[16:]) != 3 {
		t.Fatalf("field pointer %d (0x%02x), want CDB byte 3", binary.BigEndian.Uint16(r.sense[16:]), r.sense[15])
	}
}

// modeSelectList builds a MODE SELECT parameter list with the given pages.
func modeSelectList(ten bool, bd []byte, pages ...[]byte) []byte {
	var b []byte
	if ten {
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b[6:], uint16(len(bd)))
	} else {
		b = []byte{0, 0, 0, byte(len(bd))}
	}
	b = append(b, bd...)
	for _, p := range pages {
		b = append(b, p...)
	}
	return b
}

func cdbModeSelect(ten bool, n int) []byte {
	if ten {
		c := make([]byte, 10)
		c[0], c[1] = 0x55, 0x10
		binary.BigEndian.PutUint16(c[7:], uint16(n))
		return c
	}
	return []byte{0x15, 0x10, 0, 0, byte(n), 0}
}

func currentPage(tb testing.TB, e *lunEnv, n *Nexus, code byte) []byte {
	tb.Helper()
	r := e.do(n, cdbModeSense(true, true, pcCurrent, code, 0), nil)
	wantGood(tb, r, "mode sense")
	return append([]byte(nil), parseModeData(tb, r.data, true).pages[code]...)
}

func TestModeSelectWCE(t *testing.T) {
	for _, ten := range []bool{false, true} {
		t.Run(fmt.Sprintf("ten=%v", ten), func(t *testing.T) {
			e := newLUEnv(t, LUNConfig{WriteCache: true})
			a, b := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2)
			tur := []byte{0, 0, 0, 0, 0, 0}
			wantGood(t, e.do(b, tur, nil), "b known to the LU")

			page := currentPage(t, e, a, 0x08)
			page[2] &^= 0x04 // WCE=0
			list := modeSelectList(ten, nil, page)
			wantGood(t, e.do(a, cdbModeSelect(ten, len(list)), list), "mode select")
			if got := currentPage(t, e, a, 0x08); got[2]&0x04 != 0 {
				t.Fatal("WCE still 1 after MODE SELECT")
			}
			// SPC-4 6.11: the other nexus gets MODE PARAMETERS CHANGED, the
			// issuing one does not.
			wantGood(t, e.do(a, tur, nil), "a tur")
			wantSense(t, e.do(b, tur, nil), senseUnitAttention, ascModeParamsChanged, "b tur")
			wantGood(t, e.do(b, tur, nil), "b tur again")
			// Writes are now durable before GOOD.
			wantGood(t, e.do(a, cdbRW(0x2a, 0, 1), make([]byte, 512)), "write")
			if e.vol.fuaWrites != 1 {
				t.Fatal("write with WCE=0 was not written through")
			}
			// Selecting the same values changes nothing and raises no UA.
			wantGood(t, e.do(a, cdbModeSelect(ten, len(list)), list), "same mode select")
			wantGood(t, e.do(b, tur, nil), "no UA without a change")
		})
	}
}

func TestModeSelectErrors(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	caching := currentPage(t, e, n, 0x08)
	ctl := currentPage(t, e, n, 0x0a)
	bd := make([]byte, 8)
	bd[6] = 0x02 // 512
	badBD := make([]byte, 8)
	badBD[6] = 0x10 // 4096
	mut := func(p []byte, i int, x byte) []byte {
		q := append([]byte(nil), p...)
		q[i] ^= x
		return q
	}
	cases := []struct {
		name  string
		list  []byte
		asc   uint16
		field int // -1: no field pointer check
	}{
		{"non-changeable caching bit", modeSelectList(true, nil, mut(caching, 2, 0x01)), ascInvalidFieldInParam, 8 + 2},
		{"non-changeable control byte", modeSelectList(true, nil, mut(ctl, 3, 0x20)), ascInvalidFieldInParam, 8 + 3},
		{"wrong page length", modeSelectList(true, nil, append([]byte{0x08, 16}, make([]byte, 16)...)), ascInvalidFieldInParam, 8 + 1},
		{"unknown page", modeSelectList(true, nil, []byte{0x02, 2, 0, 0}), ascInvalidFieldInParam, 8},
		{"block length change", modeSelectList(true, badBD, caching), ascInvalidFieldInParam, -1},
		{"truncated page", modeSelectList(true, nil, caching[:10]), ascParamListLength, -1},
		{"short header", make([]byte, 5), ascParamListLength, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.do(n, cdbModeSelect(true, len(c.list)), c.list)
			wantSense(t, r, senseIllegalRequest, c.asc, c.name)
			if c.field >= 0 {
				if r.sense[15]&0xc0 != 0x80 || int(binary.BigEndian.Uint16(r.sense[16:])) != c.field {
					t.Fatalf("field pointer 0x%02x/%d, want parameter list byte %d", r.sense[15], binary.BigEndian.Uint16(r.sense[16:]), c.field)
				}
			}
		})
	}
	good := modeSelectList(true, bd, caching)
	wantGood(t, e.do(n, cdbModeSelect(true, len(good)), good), "with a matching block descriptor")
	sp := cdbModeSelect(false, 0)
	sp[1] |= 0x01
	wantSense(t, e.do(n, sp, nil), senseIllegalRequest, ascInvalidFieldInCDB, "SP=1")
	nopf := cdbModeSelect(false, 0)
	nopf[1] = 0
	wantSense(t, e.do(n, nopf, nil), senseIllegalRequest, ascInvalidFieldInCDB, "PF=0")
}

func TestModeSelectSoftwareWriteProtect(t *testing.T) {
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	ctl := currentPage(t, e, n, 0x0a)
	ctl[4] |= 0x08 // SWP
	list := modeSelectList(false, nil, ctl)
	wantGood(t, e.do(n, cdbModeSelect(false, len(list)), list), "set SWP")
	wantSense(t, e.do(n, cdbRW(0x2a, 0, 1), make([]byte, 512)), senseDataProtect, ascWriteProtected, "write with SWP")
	r := e.do(n, cdbModeSense(false, true, pcCurrent, 0x3f, 0), nil)
	if md := parseModeData(t, r.data, false); md.dsp&0x80 == 0 {
		t.Fatal("WP clear with SWP set")
	}
	ctl[4] &^= 0x08
	list = modeSelectList(false, nil, ctl)
	wantGood(t, e.do(n, cdbModeSelect(false, len(list)), list), "clear SWP")
	wantGood(t, e.do(n, cdbRW(0x2a, 0, 1), make([]byte, 512)), "write after clearing SWP")
}

func TestModeSelectDescriptorSense(t *testing.T) {
	// SPC-4 7.5.7: D_SENSE=1 makes the device server return descriptor
	// format sense data (response code 72h) with CHECK CONDITION.
	e := newLUEnv(t, LUNConfig{})
	n := e.nexus("i", 1)
	ctl := currentPage(t, e, n, 0x0a)
	ctl[2] |= 0x04
	list := modeSelectList(false, nil, ctl)
	wantGood(t, e.do(n, cdbModeSelect(false, len(list)), list), "set D_SENSE")
	if currentPage(t, e, n, 0x0a)[2]&0x04 == 0 {
		t.Fatal("D_SENSE not kept")
	}
	r := e.do(n, cdbRW(0x28, 1<<20, 1), nil)
	if r.status != statusCheckCondition || len(r.sense) < 8 || r.sense[0]&0x7f != 0x72 {
		t.Fatalf("with D_SENSE=1 sense starts % x, want response code 72h", r.sense[:min(8, len(r.sense))])
	}
	if r.sense[1]&0x0f != senseIllegalRequest || !bytes.Equal(r.sense[2:4], []byte{0x21, 0x00}) {
		t.Fatalf("descriptor sense % x, want ILLEGAL REQUEST 21/00", r.sense)
	}
}
