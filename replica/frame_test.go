package replica

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func writeFrame(data []byte, seq uint64) *Frame {
	return &Frame{Kind: FrameWrite, Epoch: 3, Seq: seq, Offset: 4096, Length: uint32(len(data)), Data: data, CRC: Checksum(data)}
}

func TestFrameRoundTrip(t *testing.T) {
	frames := []*Frame{
		writeFrame(bytes.Repeat([]byte{0xab}, 4096), 1),
		{Kind: FrameUnmap, Epoch: 3, Seq: 2, Offset: 0, Length: 1 << 20},
		{Kind: FrameFlush, Epoch: 3, Seq: 3},
		{Kind: FrameAck, Epoch: 3, Seq: 3},
		{Kind: FrameNack, Epoch: 4, Seq: 3, Err: "old epoch"},
	}
	var buf bytes.Buffer
	for _, f := range frames {
		if err := WriteFrame(&buf, f); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(&buf)
	for i, want := range frames {
		got, err := ReadFrame(r, MaxDataFrameLen)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got.Kind != want.Kind || got.Epoch != want.Epoch || got.Seq != want.Seq ||
			got.Offset != want.Offset || got.Length != want.Length || !bytes.Equal(got.Data, want.Data) || got.Err != want.Err {
			t.Fatalf("frame %d: got %+v, want %+v", i, got, want)
		}
	}
}

func TestFrameRejects(t *testing.T) {
	good := writeFrame([]byte("0123456789abcdef"), 7)
	corrupt := func(mut func(f *Frame)) []byte {
		f := *good
		f.Data = append([]byte(nil), good.Data...)
		mut(&f)
		var buf bytes.Buffer
		if err := WriteFrame(&buf, &f); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	cases := map[string][]byte{
		"bad checksum":    corrupt(func(f *Frame) { f.Data[0] ^= 1 }),
		"length mismatch": corrupt(func(f *Frame) { f.Length++ }),
		"unknown kind":    corrupt(func(f *Frame) { f.Kind = 99 }),
		"epoch zero":      corrupt(func(f *Frame) { f.Epoch = 0 }),
		"negative offset": corrupt(func(f *Frame) { f.Offset = -512 }),
		"ack with data":   corrupt(func(f *Frame) { f.Kind = FrameAck }),
		"lost with data":  corrupt(func(f *Frame) { f.Kind = FrameLost }),
		"lost, no length": corrupt(func(f *Frame) { f.Kind, f.Data, f.Length, f.CRC = FrameLost, nil, 0, 0 }),
		"lost with flags": corrupt(func(f *Frame) { f.Kind, f.Data, f.CRC, f.Flags = FrameLost, nil, 0, FlagFUA }),
		"huge prefix":     binary.BigEndian.AppendUint32(nil, maxFrameLen+1),
		"zero prefix":     binary.BigEndian.AppendUint32(nil, 0),
		"not msgpack":     append(binary.BigEndian.AppendUint32(nil, 3), 0xc1, 0xc1, 0xc1),
	}
	for name, b := range cases {
		_, err := ReadFrame(bufio.NewReader(bytes.NewReader(b)), MaxDataFrameLen)
		if !errors.Is(err, ErrFrame) {
			t.Errorf("%s: got %v, want ErrFrame", name, err)
		}
	}
}

// FuzzReadFrame feeds hostile bytes to the decoder: it must not panic, and
// whatever it accepts must be a valid frame that survives a round trip.
func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, writeFrame([]byte("seed data"), 1))
	WriteFrame(&buf, &Frame{Kind: FrameAck, Epoch: 1, Seq: 9})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 1, 0x80})
	// A bin claiming 2 GiB inside an 11-byte body (msgpack allocated it).
	f.Add([]byte{0, 0, 0, 11, 0x81, 0xa1, 'd', 0xc6, 0x7f, 0xff, 0xff, 0x00, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for i := 0; i < 8; i++ {
			fr, err := ReadFrame(r, MaxDataFrameLen)
			if err != nil {
				return
			}
			if err := fr.Validate(); err != nil {
				t.Fatalf("accepted an invalid frame: %v", err)
			}
			if fr.Kind == FrameWrite && Checksum(fr.Data) != fr.CRC {
				t.Fatal("accepted a write with a bad checksum")
			}
			var out bytes.Buffer
			if err := WriteFrame(&out, fr); err != nil {
				t.Fatal(err)
			}
			back, err := ReadFrame(bufio.NewReader(&out), MaxDataFrameLen)
			if err != nil || back.Seq != fr.Seq || !bytes.Equal(back.Data, fr.Data) {
				t.Fatalf("round trip failed: %v", err)
			}
		}
	})
}
