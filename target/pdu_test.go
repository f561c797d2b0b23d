package target

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"testing"
)

// wire encodes p the way the writer does.
func wire(p *PDU, hd, dd bool) []byte {
	iov, _ := p.appendWire(nil, hd, dd, nil)
	var b []byte
	for _, v := range iov {
		b = append(b, v...)
	}
	return b
}

func TestCRC32CVectors(t *testing.T) {
	// RFC 3720 Appendix B.4 (kept by RFC 7143): CRC32C test vectors and
	// the byte order they take on the wire.
	inc, dec, ones := make([]byte, 32), make([]byte, 32), make([]byte, 32)
	for i := range inc {
		inc[i], dec[i], ones[i] = byte(i), byte(31-i), 0xff
	}
	for _, c := range []struct {
		name string
		in   []byte
		want uint32
		wire []byte
	}{
		{"32 zeros", make([]byte, 32), 0x8a9136aa, []byte{0xaa, 0x36, 0x91, 0x8a}},
		{"32 ones", ones, 0x62a8ab43, []byte{0x43, 0xab, 0xa8, 0x62}},
		{"incrementing", inc, 0x46dd794e, []byte{0x4e, 0x79, 0xdd, 0x46}},
		{"decrementing", dec, 0x113fdb5c, []byte{0x5c, 0xdb, 0x3f, 0x11}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := crc32.Checksum(c.in, crc32c); got != c.want {
				t.Fatalf("CRC32C 0x%08x, want 0x%08x", got, c.want)
			}
			// As a data digest: the 4 bytes after the 32-byte segment.
			p := &PDU{Data: c.in}
			p.BHS[0] = opDataIn
			w := wire(p, false, true)
			if got := w[len(w)-4:]; !bytes.Equal(got, c.wire) {
				t.Fatalf("data digest on the wire % x, want % x", got, c.wire)
			}
		})
	}
}

func TestPDURoundTrip(t *testing.T) {
	for _, hd := range []bool{false, true} {
		for _, dd := range []bool{false, true} {
			for _, ahsLen := range []int{0, 4, 20} {
				for _, n := range []int{0, 1, 2, 3, 4, 5, 47, 48, 8191, 8192} {
					name := fmt.Sprintf("hd=%v/dd=%v/ahs=%d/data=%d", hd, dd, ahsLen, n)
					t.Run(name, func(t *testing.T) {
						p := &PDU{Data: pattern(n, byte(n))}
						p.BHS[0], p.BHS[1] = opSCSICmd, 0x80
						p.put32(16, 0x01020304)
						for i := 32; i < 48; i++ {
							p.BHS[i] = byte(i)
						}
						if ahsLen > 0 {
							p.AHS = pattern(ahsLen, 9)
						}
						if n == 0 {
							p.Data = nil
						}
						w := wire(p, hd, dd)
						pad := (4 - n%4) % 4
						want := bhsLen + ahsLen + n + pad
						if hd {
							want += 4
						}
						if dd && n > 0 {
							want += 4
						}
						if len(w) != want {
							t.Fatalf("wire length %d, want %d", len(w), want)
						}
						// Header fields written by appendWire (RFC 7143 11.2.1).
						if int(w[4])*4 != ahsLen || int(w[5])<<16|int(w[6])<<8|int(w[7]) != n {
							t.Fatalf("TotalAHSLength %d / DataSegmentLength %d", w[4], int(w[5])<<16|int(w[6])<<8|int(w[7]))
						}
						if hd {
							sum := crc32.Checksum(w[:bhsLen+ahsLen], crc32c)
							if got := binary.LittleEndian.Uint32(w[bhsLen+ahsLen:]); got != sum {
								t.Fatalf("header digest 0x%08x, want 0x%08x", got, sum)
							}
						}
						dataStart := bhsLen + ahsLen
						if hd {
							dataStart += 4
						}
						if !bytes.Equal(w[dataStart+n:dataStart+n+pad], make([]byte, pad)) {
							t.Fatal("padding is not zero")
						}
						rd := &pduReader{r: bytes.NewReader(w), headerCRC: hd, dataCRC: dd, maxData: 8192}
						got, err := rd.ReadPDU()
						if err != nil {
							t.Fatalf("ReadPDU: %v", err)
						}
						if got.BHS != p.BHS || !bytes.Equal(got.AHS, p.AHS) || !bytes.Equal(got.Data, p.Data) {
							t.Fatal("PDU changed in the round trip")
						}
						if _, err := rd.ReadPDU(); err != io.EOF {
							t.Fatalf("bytes left after the PDU: %v", err)
						}
					})
				}
			}
		}
	}
}

func TestPDUTooLongRejectedBeforeRead(t *testing.T) {
	for _, n := range []int{101, 0xffffff} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			var p PDU
			p.BHS[0] = opDataOut
			p.setDataSegmentLength(n)
			// Only the header is there: a reader that tried to read or
			// allocate the data segment would hit EOF instead.
			rd := &pduReader{r: bytes.NewReader(p.BHS[:]), maxData: 100}
			got, err := rd.ReadPDU()
			if !errors.Is(err, errTooLong) {
				t.Fatalf("err %v, want errTooLong", err)
			}
			if got == nil || got.Data != nil {
				t.Fatal("the header must come back (for the Reject) without data")
			}
		})
	}
	// Exactly maxData is fine.
	p := &PDU{Data: make([]byte, 100)}
	rd := &pduReader{r: bytes.NewReader(wire(p, false, false)), maxData: 100}
	if _, err := rd.ReadPDU(); err != nil {
		t.Fatalf("data segment of exactly maxData: %v", err)
	}
}

func TestPDUDigestErrors(t *testing.T) {
	p := &PDU{Data: pattern(10, 1), AHS: pattern(8, 2)}
	p.BHS[0] = opSCSICmd
	good := wire(p, true, true)
	// Layout: BHS 48, AHS 8, header digest 4, data 10, pad 2, data digest 4.
	cases := []struct {
		name string
		at   int
		want error
	}{
		{"header byte", 20, errHeaderDigest},
		{"AHS byte", 50, errHeaderDigest},
		{"header digest", 57, errHeaderDigest},
		{"data byte", 60, errDataDigest},
		{"padding byte", 71, errDataDigest},
		{"data digest", 73, errDataDigest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := append([]byte(nil), good...)
			b[c.at] ^= 0x10
			rd := &pduReader{r: bytes.NewReader(b), headerCRC: true, dataCRC: true, maxData: 8192}
			got, err := rd.ReadPDU()
			if !errors.Is(err, c.want) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
			if got == nil {
				t.Fatal("no header returned with a digest error")
			}
		})
	}
	t.Run("truncated", func(t *testing.T) {
		for cut := 1; cut < len(good); cut++ {
			rd := &pduReader{r: bytes.NewReader(good[:cut]), headerCRC: true, dataCRC: true, maxData: 8192}
			if _, err := rd.ReadPDU(); err == nil {
				t.Fatalf("PDU cut at %d bytes read without error", cut)
			}
		}
	})
}

func TestExtendedCDB(t *testing.T) {
	// RFC 7143 11.3.2 / 11.2.2.3: an Extended CDB AHS holds the bytes of a
	// CDB beyond the first 16, after a reserved byte.
	p := &PDU{}
	for i := 0; i < 16; i++ {
		p.BHS[32+i] = byte(i)
	}
	ext := []byte{16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31}
	ahs := []byte{0, byte(len(ext) + 1), 1, 0}
	ahs = append(ahs, ext...)
	for len(ahs)%4 != 0 {
		ahs = append(ahs, 0)
	}
	p.AHS = ahs
	cdb, ok := extendedCDB(p)
	if !ok || len(cdb) != 32 {
		t.Fatalf("extendedCDB: ok=%v len=%d", ok, len(cdb))
	}
	for i, x := range cdb {
		if int(x) != i {
			t.Fatalf("cdb[%d]=%d", i, x)
		}
	}
	p.AHS = []byte{0, 200, 1, 0}
	if _, ok := extendedCDB(p); ok {
		t.Fatal("AHS length beyond the segment accepted")
	}
}

// FuzzReadPDU feeds arbitrary bytes to the reader with every digest
// setting. It must not panic, never return more data than maxData, and a
// PDU it accepts must survive a round trip through appendWire.
func FuzzReadPDU(f *testing.F) {
	seed := &PDU{Data: []byte("InitiatorName=iqn.x\x00"), AHS: []byte{0, 1, 1, 0}}
	seed.BHS[0] = opLoginReq
	for _, hd := range []bool{false, true} {
		for _, dd := range []bool{false, true} {
			var flags byte
			if hd {
				flags |= 1
			}
			if dd {
				flags |= 2
			}
			f.Add(flags, uint16(64), wire(seed, hd, dd))
		}
	}
	f.Add(byte(0), uint16(0), []byte{})
	f.Add(byte(3), uint16(8), make([]byte, 200))
	long := &PDU{Data: make([]byte, 300)}
	f.Add(byte(0), uint16(100), wire(long, false, false))
	f.Fuzz(func(t *testing.T, flags byte, maxData uint16, in []byte) {
		hd, dd := flags&1 != 0, flags&2 != 0
		rd := &pduReader{r: bytes.NewReader(in), headerCRC: hd, dataCRC: dd, maxData: int(maxData) % 4096}
		for i := 0; i < 64; i++ {
			p, err := rd.ReadPDU()
			if p != nil && len(p.Data) > rd.maxData {
				t.Fatalf("data segment of %d bytes with maxData %d", len(p.Data), rd.maxData)
			}
			if err != nil {
				if p != nil && errors.Is(err, errTooLong) && p.dataSegmentLength() <= rd.maxData {
					t.Fatalf("errTooLong for %d <= %d", p.dataSegmentLength(), rd.maxData)
				}
				return
			}
			if len(p.AHS) != int(p.BHS[4])*4 || len(p.Data) != p.dataSegmentLength() {
				t.Fatalf("AHS %d / data %d do not match the header", len(p.AHS), len(p.Data))
			}
			w := wire(p, hd, dd)
			again, err := (&pduReader{r: bytes.NewReader(w), headerCRC: hd, dataCRC: dd, maxData: rd.maxData}).ReadPDU()
			if err != nil {
				t.Fatalf("re-encoded PDU does not read back: %v", err)
			}
			if again.BHS != p.BHS || !bytes.Equal(again.AHS, p.AHS) || !bytes.Equal(again.Data, p.Data) {
				t.Fatal("round trip changed the PDU")
			}
		}
	})
}
