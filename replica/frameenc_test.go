package replica

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// TestAppendFrameDecodesAsMarshal: the hand-written encoder and
// msgpack.Marshal give frames that decode to the same Frame, over every
// field at its encoding's edges (fixint, 8, 16, 32 and 64 bits, negative,
// empty and omitted fields, str and bin lengths past each boundary).
func TestAppendFrameDecodesAsMarshal(t *testing.T) {
	uints := []uint64{0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, math.MaxUint32, math.MaxUint32 + 1, math.MaxUint64}
	ints := []int64{0, 1, -1, -32, -33, 0x7f, 0x80, math.MaxInt32, math.MinInt32, math.MaxInt64, math.MinInt64}
	lens := []int{0, 1, 31, 32, 255, 256, 65535, 65536}
	rng := rand.New(rand.NewPCG(1, 2))
	// Every field of Frame is set in some frame below: a field added to
	// Frame and not to the hand-written encoder fails here, not on the
	// wire.
	seen := map[string]bool{}
	defer func() {
		ft := reflect.TypeOf(Frame{})
		for j := range ft.NumField() {
			if !seen[ft.Field(j).Name] {
				t.Errorf("no generated frame sets Frame.%s: add it to this test (and to appendFrame and decodeFrame)", ft.Field(j).Name)
			}
		}
	}()
	for i := range 2000 {
		f := &Frame{
			Kind:   uint8(uints[rng.IntN(len(uints))]),
			Epoch:  uints[rng.IntN(len(uints))],
			Seq:    uints[rng.IntN(len(uints))],
			Offset: ints[rng.IntN(len(ints))],
			Length: uint32(uints[rng.IntN(len(uints))]),
			CRC:    uint32(uints[rng.IntN(len(uints))]),
			Flags:  uint8(uints[rng.IntN(len(uints))]),
			Ref:    uints[rng.IntN(len(uints))],
			At:     ints[rng.IntN(len(ints))],
			Commit: uints[rng.IntN(len(uints))],
		}
		if n := lens[rng.IntN(len(lens))]; n > 0 {
			f.Data = make([]byte, n)
			f.Data[n-1] = byte(i)
		}
		f.Err = string(bytes.Repeat([]byte{'x'}, lens[rng.IntN(len(lens))]))
		f.From = string(bytes.Repeat([]byte{'n'}, lens[rng.IntN(4)]))
		if i%3 == 0 {
			f.Image = &ImageID{UUID: "0123456789abcdef0123456789abcdef", Gen: uints[rng.IntN(len(uints))], Empty: i%2 == 0}
		}
		fv := reflect.ValueOf(*f)
		for j := range fv.NumField() {
			if !fv.Field(j).IsZero() {
				seen[fv.Type().Field(j).Name] = true
			}
		}
		b, err := appendFrame([]byte("junk"), f)
		if err != nil {
			t.Fatal(err)
		}
		if string(b[:4]) != "junk" || int(binary.BigEndian.Uint32(b[4:])) != len(b)-8 {
			t.Fatalf("frame %d: bad prefix", i)
		}
		var got, want Frame
		if err := msgpack.Unmarshal(b[8:], &got); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		m, err := msgpack.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := msgpack.Unmarshal(m, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("frame %d: appendFrame decodes to %+v, Marshal to %+v", i, got, want)
		}
		// decodeFrame reads both encodings as Unmarshal does.
		for _, enc := range [][]byte{b[8:], m} {
			var d Frame
			if err := decodeFrame(enc, &d); err != nil {
				t.Fatalf("frame %d: decodeFrame: %v", i, err)
			}
			if len(d.Data) == 0 && len(want.Data) == 0 {
				d.Data = want.Data
			}
			if !reflect.DeepEqual(d, want) {
				t.Fatalf("frame %d: decodeFrame gives %+v, Unmarshal %+v", i, d, want)
			}
		}
		// skipBody (a refused forwarded frame) finds kind and seq first.
		if want.Seq != 0 {
			bg := &bodyGuard{conn: nopConn{}, timeout: 1}
			err := skipBody(bufio.NewReader(bytes.NewReader(b[8:])), len(b)-8, bg, errNotWriter)
			rf, ok := err.(*refusedFrame)
			if !ok || rf.Kind != want.Kind || rf.Seq != want.Seq {
				t.Fatalf("frame %d: skipBody: %v", i, err)
			}
		}
	}
}

func TestAppendFrameBound(t *testing.T) {
	f := &Frame{Kind: FrameWrite, Epoch: 1, Seq: 1, Data: make([]byte, maxFrameLen)}
	b, err := appendFrame([]byte("x"), f)
	if err == nil || string(b) != "x" {
		t.Fatalf("an oversize frame: %v, %d bytes left", err, len(b))
	}
}

// nopConn is a net.Conn whose deadlines do nothing (skipBody sets one).
type nopConn struct{ net.Conn }

func (nopConn) SetReadDeadline(time.Time) error { return nil }

// FuzzDecodeFrame: whatever msgpack.Unmarshal and decodeFrame both
// accept, they decode alike; decodeFrame never panics.
func FuzzDecodeFrame(f *testing.F) {
	for _, fr := range []*Frame{writeFrame([]byte("abc"), 9), {Kind: FrameHelloAck, Image: &ImageID{UUID: "u", Gen: 3}, From: "a", Err: "e"}} {
		b, _ := appendFrame(nil, fr)
		f.Add(b[4:])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if msgpackFits(body) != nil {
			return
		}
		var d, u Frame
		derr := decodeFrame(body, &d)
		uerr := msgpack.Unmarshal(body, &u)
		if derr != nil || uerr != nil {
			return
		}
		if len(d.Data) == 0 && len(u.Data) == 0 {
			d.Data = u.Data
		}
		if !reflect.DeepEqual(d, u) {
			t.Fatalf("decodeFrame %+v, Unmarshal %+v", d, u)
		}
	})
}
