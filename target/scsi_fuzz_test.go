package target

import "testing"

// FuzzPrepareCDB runs arbitrary CDBs (up to 32 bytes, as an Extended CDB
// AHS allows) with arbitrary Data-Out through prepare()+exec() against a
// small LU. DESIGN.md I6: no panic, sense data always fixed format (18 bytes but for
// COPY ABORTED), and
// nothing written outside the volume.
func FuzzPrepareCDB(f *testing.F) {
	seeds := [][]byte{
		cdbRW(0x28, 0, 1), cdbRW(0x2a, 63, 1), cdbRW(0x88, ^uint64(0), 1), cdbRW(0x08, 0, 0),
		cdbInquiry(true, 0x83, 255), cdbCAW(1, 2), cdbWriteSame(0x93, 0, 4, 0x08), cdbUnmap(24),
		cdbGetLBAStatus(0, 64), cdbModeSense(true, false, 0, 0x3f, 0), cdbModeSelect(false, 24),
		cdbPROut(prsaRegister, 0), cdbPRIn(3), {0xa3, 0x0c, 0x02, 0x9e, 0, 0x10, 0, 0, 1, 0, 0, 0},
		{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, {0x1b, 0, 0, 0, 0, 0}, {0x16, 0, 0, 0, 0, 0},
		cdbRW(0x2f, 0, 2), {0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0},
	}
	for i, s := range seeds {
		out := make([]byte, 1024)
		if s[0] == 0x42 {
			out = unmapParams([2]uint64{1, 2})
		}
		if s[0] == 0x5f {
			out = prParams(0, 7, 0)
		}
		f.Add(s, out, byte(i))
	}
	// Parameter lists that reach deep: an EXTENDED COPY of 4 blocks within
	// the LU (named by its NAA, the same for every test LU), and SANITIZE
	// OVERWRITE with a 4-byte pattern, with and without IMMED.
	naa := newLUEnv(f, LUNConfig{BlockSize: 512, Volume: newMemVolume(64 * 512)}).lu
	list := xlist(1, 0, [][]byte{identCSCD(naa)}, [][]byte{segB2B(0, 0, 4, 0, 8)})
	f.Add(cdbXcopy(len(list)), list, byte(0))
	f.Add(cdbRCR(0, 1, 64), []byte{}, byte(0))
	sanitize := []byte{0x01, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef}
	f.Add([]byte{0x48, 0x01, 0, 0, 0, 0, 0, 0, byte(len(sanitize)), 0}, sanitize, byte(0))
	f.Add([]byte{0x48, 0x81, 0, 0, 0, 0, 0, 0, byte(len(sanitize)), 0}, sanitize, byte(0x02))
	f.Add([]byte{0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0}, []byte{}, byte(0x02))
	f.Fuzz(func(t *testing.T, cdb, out []byte, flags byte) {
		if len(cdb) == 0 || len(cdb) > 32 {
			return
		}
		bs := 512
		if flags&0x01 != 0 {
			bs = 4096
		}
		const nb = 64
		vol := newMemVolume(int64(nb * bs))
		e := newLUEnv(t, LUNConfig{BlockSize: bs, Volume: vol, Thin: flags&0x02 != 0, ReadOnly: flags&0x04 != 0, WriteCache: flags&0x40 != 0})
		a, b := e.nexus("iqn.a", 1), e.nexus("iqn.b", 2)
		lu := e.lu
		if flags&0x08 != 0 {
			lu = nil // a LUN without an LU
		}
		// Some state for the reservation paths.
		e.lu.mu.Lock()
		switch flags >> 4 & 3 {
		case 1:
			e.lu.pr.res6 = e.lu.itn(b)
		case 2:
			e.lu.pr.regs = []registration{{port: b.id, rel: e.lu.relPort, key: 7}}
			e.lu.pr.holder, e.lu.pr.rtype = e.lu.itn(b), prExclusiveAccess
		case 3:
			e.lu.addUA(a.id, ascBusDeviceReset)
		}
		e.lu.mu.Unlock()
		vol.writes = 0

		check := func(res *scsiResult, where string) {
			switch res.status {
			case statusGood, statusCheckCondition, statusReservationConflict, statusBusy:
			default:
				t.Fatalf("%s: status 0x%02x", where, res.status)
			}
			if res.status == statusCheckCondition {
				s := res.sense
				// Fixed format; more than 18 bytes only with additional
				// sense bytes (EXTENDED COPY forwards a copy target's
				// sense there, SPC-4 section 6.4.6).
				if len(s) < 18 || len(s) > 252 || (s[0] != 0x70 && s[0] != 0xf0) || int(s[7]) != len(s)-8 ||
					len(s) > 18 && s[2]&0x0f != 0x0a {
					t.Fatalf("%s: sense % x is not fixed format", where, s)
				}
			} else if len(res.sense) != 0 {
				t.Fatalf("%s: sense data with status 0x%02x", where, res.status)
			}
		}
		cmd, res := prepare(e.tgt, lu, a, cdb, 0, len(out))
		if res != nil {
			check(res, "prepare")
			if vol.writes+vol.unmaps+vol.caws != 0 {
				t.Fatal("a refused command reached the volume")
			}
		} else {
			if cmd.dataOut < 0 || cmd.alloc < 0 {
				t.Fatalf("negative lengths: dataOut %d alloc %d", cmd.dataOut, cmd.alloc)
			}
			if cmd.dataOut > maxTransferBytes*2+8 {
				t.Fatalf("command wants %d bytes of Data-Out", cmd.dataOut)
			}
			data := out[:min(len(out), cmd.dataOut)]
			res = cmd.exec(data)
			check(res, "exec")
			if res.status == statusGood && cmd.dataIn && len(res.data) > cmd.alloc {
				t.Fatalf("%d bytes of Data-In for allocation length %d", len(res.data), cmd.alloc)
			}
			if res.release != nil {
				res.release()
			}
		}
		if v := vol.violationList(); len(v) > 0 {
			t.Fatalf("volume accessed outside [0, size): %v", v)
		}
		if flags&0x04 != 0 && vol.writes+vol.unmaps+vol.caws != 0 {
			t.Fatalf("read-only LU modified by % x", cdb)
		}
	})
}
