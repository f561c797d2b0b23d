package replica

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// prefixOnly is a stream that sends a length prefix and then blocks, as
// a hostile peer holding a connection open would: a read past the prefix
// fails the test instead of hanging it.
type prefixOnly struct {
	t   *testing.T
	hdr []byte
}

func (p *prefixOnly) Read(b []byte) (int, error) {
	if len(p.hdr) == 0 {
		p.t.Error("ReadFrame read past a length prefix it should have refused")
		return 0, io.EOF
	}
	n := copy(b, p.hdr)
	p.hdr = p.hdr[n:]
	return n, nil
}

func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestReadFrameLimits: the length prefix is checked against the limit of
// the connection's state before anything is allocated or read.
func TestReadFrameLimits(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int
		n     uint32
	}{
		{"32 MiB before the hello", MaxHelloLen, 32 << 20},
		{"a hello of 5 KiB", MaxHelloLen, 5 << 10},
		{"an ack of 64 KiB", MaxControlLen, 64 << 10},
		{"a hello answer of 1 MiB", MaxHelloAckLen, 1 << 20},
		{"a data frame over the largest", MaxDataFrameLen, maxFrameLen + 1},
		{"4 GiB", MaxDataFrameLen, 1<<32 - 1},
	} {
		var err error
		a := allocated(func() {
			r := bufio.NewReaderSize(&prefixOnly{t: t, hdr: binary.BigEndian.AppendUint32(nil, tc.n)}, 16)
			_, err = ReadFrame(r, tc.limit)
		})
		if !errors.Is(err, ErrFrame) {
			t.Errorf("%s: got %v, want ErrFrame", tc.name, err)
		}
		if a > 64<<10 {
			t.Errorf("%s: refusing it allocated %d bytes", tc.name, a)
		}
	}
	// Within the limit, a hello is read.
	var buf bytes.Buffer
	WriteFrame(&buf, &Frame{Kind: FrameHello, Epoch: 1, From: "site-b", Offset: 1 << 30})
	if f, err := ReadFrame(bufio.NewReader(&buf), MaxHelloLen); err != nil || f.From != "site-b" {
		t.Fatalf("hello within the limit: %v", err)
	}
}

// TestReadFrameLengthInsideBody: msgpack allocates a bin or str from its
// own length header, so a small frame claiming a 2 GiB field must be
// refused before decoding (before this check it allocated 2 GiB).
func TestReadFrameLengthInsideBody(t *testing.T) {
	bodies := map[string][]byte{
		"bin32 of 2 GiB":       {0x81, 0xa1, 'd', 0xc6, 0x7f, 0xff, 0xff, 0x00, 1, 2, 3},
		"str32 of 2 GiB":       {0x81, 0xa1, 'x', 0xdb, 0x7f, 0xff, 0xff, 0x00, 'a'},
		"array32 of 2^31":      {0x81, 0xa1, 'z', 0xdd, 0x7f, 0xff, 0xff, 0x00, 1},
		"map32 of 2^31":        {0xdf, 0x7f, 0xff, 0xff, 0x00, 1, 1},
		"ext32 of 2 GiB":       {0x81, 0xa1, 'z', 0xc9, 0x7f, 0xff, 0xff, 0x00, 1, 1},
		"nested too deep":      bytes.Repeat([]byte{0x91}, 20),
		"unused code 0xc1":     {0xc1},
		"truncated fixstr":     {0x81, 0xa5, 'd'},
		"bin16 past the end":   {0x81, 0xa1, 'd', 0xc5, 0x01, 0x00, 1},
		"map16 past the end":   {0xde, 0x00, 0x10, 1, 1},
		"array16 past the end": {0x81, 0xa1, 'z', 0xdc, 0x00, 0x09, 1},
	}
	for name, body := range bodies {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
		b = append(b, body...)
		var err error
		a := allocated(func() { _, err = ReadFrame(bufio.NewReader(bytes.NewReader(b)), MaxDataFrameLen) })
		if !errors.Is(err, ErrFrame) {
			t.Errorf("%s: got %v, want ErrFrame", name, err)
		}
		if a > 1<<20 {
			t.Errorf("%s: allocated %d bytes", name, a)
		}
	}
	// Every kind of value a frame may hold passes the check.
	full := &Frame{Kind: FrameHelloAck, Epoch: 1 << 40, Seq: 1, Offset: 1 << 33, Length: 70000, Data: make([]byte, 32),
		CRC: 0xffffffff, Flags: FlagEmpty, Err: string(bytes.Repeat([]byte("e"), 300)), From: "site-a", Ref: 1 << 20, At: -5}
	body, err := msgpack.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	if err := msgpackFits(body); err != nil {
		t.Fatalf("a valid frame fails the length check: %v", err)
	}
	for _, v := range []any{nil, true, false, -1, -100, 1.5, float32(2.5), int64(-1 << 40), uint64(1 << 63), []any{1, "a", []byte{1}},
		map[string]any{"a": map[string]any{"b": []any{}}}, msgpack.RawMessage{0xd4, 1, 2}, time.Unix(1, 5)} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := msgpackFits(b); err != nil {
			t.Errorf("%#v (% x): %v", v, b, err)
		}
	}
}

// TestFrameMemoryBudget: bodies being received share FrameMemory, so
// connections beyond what it holds wait (and, after budgetWait, fail)
// instead of allocating.
func TestFrameMemoryBudget(t *testing.T) {
	if !frameBudget.TryAcquire(FrameMemory) {
		t.Fatal("frame memory in use at the start of the test")
	}
	released := false
	defer func() {
		if !released {
			frameBudget.Release(FrameMemory)
		}
	}()
	data := bytes.Repeat([]byte{7}, 1<<20)
	var buf bytes.Buffer
	WriteFrame(&buf, writeFrame(data, 1))
	done := make(chan error, 1)
	go func() {
		_, err := ReadFrame(bufio.NewReader(bytes.NewReader(buf.Bytes())), MaxDataFrameLen)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a 1 MiB frame was read with frame memory exhausted: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	frameBudget.Release(FrameMemory)
	released = true
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after frame memory was freed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the frame was not read after frame memory was freed")
	}
	// Small frames need no budget.
	if !frameBudget.TryAcquire(FrameMemory) {
		t.Fatal("frame memory not returned after a frame")
	}
	defer frameBudget.Release(FrameMemory)
	buf.Reset()
	WriteFrame(&buf, &Frame{Kind: FrameAck, Epoch: 1, Seq: 2})
	if _, err := ReadFrame(bufio.NewReader(&buf), MaxControlLen); err != nil {
		t.Fatalf("an ack with frame memory exhausted: %v", err)
	}
}

func TestBodyClasses(t *testing.T) {
	for _, tc := range []struct{ n, size int }{
		{1, 8192}, {8192, 8192}, {8193, 12288}, {128<<10 + 60, 128<<10 + 4096}, {MaxFrameData, maxFrameLen}, {maxFrameLen, maxFrameLen},
	} {
		c := bodyClass(tc.n)
		if classSize(c) != tc.size {
			t.Errorf("body of %d bytes: class size %d, want %d", tc.n, classSize(c), tc.size)
		}
		bp := getBody(c)
		if cap(*bp) < tc.n || bodyClass(cap(*bp)) != c {
			t.Errorf("body of %d bytes: buffer of %d goes back to class %d, not %d", tc.n, cap(*bp), bodyClass(cap(*bp)), c)
		}
		putBody(bp)
	}
}

// TestGrowReaderKeepsBuffered: bytes a peer sent right after its hello,
// already in the small hello buffer, are read first from the larger one.
func TestGrowReaderKeepsBuffered(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		var buf bytes.Buffer
		WriteFrame(&buf, &Frame{Kind: FrameHello, Epoch: 1, From: "site-b"})
		WriteFrame(&buf, &Frame{Kind: FrameFlush, Epoch: 1, Seq: 5})
		b.Write(buf.Bytes())
		WriteFrame(b, &Frame{Kind: FrameFlush, Epoch: 1, Seq: 6})
	}()
	small := bufio.NewReaderSize(a, MaxHelloLen)
	if f, err := ReadFrame(small, MaxHelloLen); err != nil || f.Kind != FrameHello {
		t.Fatalf("hello: %v", err)
	}
	if small.Buffered() == 0 {
		t.Fatal("the test meant the next frame to be buffered with the hello")
	}
	br := growReader(small, a, 256<<10)
	for _, seq := range []uint64{5, 6} {
		f, err := ReadFrame(br, MaxDataFrameLen)
		if err != nil || f.Seq != seq {
			t.Fatalf("frame %d after the hello: %+v, %v", seq, f, err)
		}
	}
}
