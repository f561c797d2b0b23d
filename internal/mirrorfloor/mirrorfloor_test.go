package mirrorfloor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/metrolun/metrolun/target"
)

// echoPair returns a client connected over loopback TCP to a server
// that runs serve on the accepted connection.
func echoPair(t *testing.T, o Options, serve func(net.Conn)) *Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		serve(conn)
	}()
	c, err := Dial(ln.Addr().String(), nil, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); <-done })
	return c
}

func readReq(r io.Reader) (id uint64, op byte, data []byte, off int64, err error) {
	var h [reqSize]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return
	}
	op = h[0]
	data = make([]byte, binary.LittleEndian.Uint32(h[4:]))
	id = binary.LittleEndian.Uint64(h[8:])
	off = int64(binary.LittleEndian.Uint64(h[16:]))
	_, err = io.ReadFull(r, data)
	return
}

func ack(id uint64, status uint32) []byte {
	var a [ackSize]byte
	binary.LittleEndian.PutUint64(a[:], id)
	binary.LittleEndian.PutUint32(a[8:], status)
	return a[:]
}

// Writes pipeline: the echo here reads all k requests before it answers
// any, then answers them in reverse order. A client that waited for an
// ack before sending the next request would never get there (the echo's
// read deadline fails the test), and one that matched acks to writes by
// order would hand them the wrong results.
func TestPipelines(t *testing.T) { bothModes(t, testPipelines) }

// bothModes runs a test with acks read by the callers in turn and by a
// reader goroutine.
func bothModes(t *testing.T, f func(*testing.T, Options)) {
	for _, o := range []Options{{}, {Reader: true}} {
		name := "turns"
		if o.Reader {
			name = "reader"
		}
		t.Run(name, func(t *testing.T) { f(t, o) })
	}
}

func testPipelines(t *testing.T, o Options) {
	const k = 32
	got := make(chan error, 1)
	c := echoPair(t, o, func(conn net.Conn) {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		var ids []uint64
		for range k {
			id, _, data, off, err := readReq(conn)
			if err != nil {
				got <- err
				return
			}
			if int64(data[0]) != off/4096 {
				got <- errors.New("data does not match its offset")
				return
			}
			ids = append(ids, id)
		}
		got <- nil
		for i := len(ids) - 1; i >= 0; i-- {
			// Odd requests fail at the echo: each write must get its own.
			conn.Write(ack(ids[i], uint32(ids[i]%2)))
		}
	})
	errs := make([]error, k)
	ids := make([]uint64, k)
	var wg sync.WaitGroup
	for i := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(i)}, 4096)
			cl, err := c.send(opWrite, 0, p, int64(i)*4096)
			if err != nil {
				errs[i] = err
				return
			}
			ids[i] = cl.id
			errs[i] = c.wait(cl)
		}()
	}
	wg.Wait()
	if err := <-got; err != nil {
		t.Fatalf("the echo did not get %d requests before answering any: %v", k, err)
	}
	for i := range k {
		if want := ids[i]%2 == 1; (errs[i] != nil) != want {
			t.Errorf("write %d (request %d): error %v, want failure %v", i, ids[i], errs[i], want)
		}
	}
}

// A write whose ack never comes fails: the echo goes away after reading
// it, sends half an ack, stays silent, or acks a request not in flight.
// Later writes fail at once.
func TestLostAck(t *testing.T) { bothModes(t, testLostAck) }

func testLostAck(t *testing.T, o Options) {
	o.Timeout = 200 * time.Millisecond
	for _, tc := range []struct {
		name  string
		after func(net.Conn, uint64)
	}{
		{"closed", func(net.Conn, uint64) {}},
		{"short", func(conn net.Conn, id uint64) { conn.Write(ack(id, 0)[:ackSize-3]) }},
		{"silent", func(conn net.Conn, id uint64) {
			// Until the client gives up and closes.
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.Copy(io.Discard, conn)
		}},
		{"unknown", func(conn net.Conn, id uint64) { conn.Write(ack(id+1000, 0)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := echoPair(t, o, func(conn net.Conn) {
				id, _, _, _, err := readReq(conn)
				if err == nil {
					tc.after(conn, id)
				}
			})
			if err := c.Write(make([]byte, 512), 0, false); err == nil {
				t.Fatal("write succeeded without its ack")
			}
			if err := c.Write(make([]byte, 512), 0, false); err == nil {
				t.Fatal("a write after a lost ack succeeded")
			}
		})
	}
}

type failStore struct{ writes, syncs error }

func (f failStore) WriteAt(p []byte, off int64) (int, error) { return len(p), f.writes }
func (f failStore) Sync() error                              { return f.syncs }

// The echo acks what it did: a write or flush that failed there fails
// the caller's, and the connection serves on.
func TestEchoStatus(t *testing.T) {
	bad := errors.New("bad disk")
	for _, st := range []failStore{{writes: bad}, {syncs: bad}} {
		c := echoPair(t, Options{}, func(conn net.Conn) { Serve(conn, st) })
		werr := c.Write(make([]byte, 512), 0, true)
		ferr := c.Flush()
		if (werr == nil) || (ferr == nil) != (st.syncs == nil) {
			t.Errorf("store %+v: write %v, flush %v", st, werr, ferr)
		}
	}
	c := echoPair(t, Options{}, func(conn net.Conn) { Serve(conn, failStore{}) })
	if err := c.Write(make([]byte, 512), 0, true); err != nil {
		t.Errorf("write to a good store: %v", err)
	}
}

// memVolume is the local side of a Volume.
type memVolume struct {
	target.Volume
	b   []byte
	err error
}

func (m *memVolume) WriteAt(p []byte, off int64, fua bool) error {
	copy(m.b[off:], p)
	return m.err
}

// End to end over TLS: concurrent writes of 4 KiB and 1 MiB land at the
// same offsets locally and in the echo's file; a local failure fails the
// write although the echo has it.
func TestVolumeTLS(t *testing.T) { bothModes(t, testVolumeTLS) }

func testVolumeTLS(t *testing.T, o Options) {
	dir := t.TempDir()
	stc, err := ServerTLS(filepath.Join(dir, "echo.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ctc, err := ClientTLS(filepath.Join(dir, "echo.pem"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "image"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go ServeListener(ln, stc, f, t.Logf)
	c, err := Dial(ln.Addr().String(), ctc, o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 32 << 20
	local := &memVolume{b: make([]byte, size)}
	v := &Volume{Volume: local, C: c}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 4096
			if i%4 == 0 {
				n = 1 << 20
			}
			p := bytes.Repeat([]byte{byte(i + 1)}, n)
			if err := v.WriteAt(p, int64(i)*(size/16), false); err != nil {
				t.Errorf("write %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	remote := make([]byte, size)
	if _, err := f.ReadAt(remote, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(remote, local.b) {
		t.Error("the echo's image differs from the local one")
	}
	local.err = errors.New("local disk")
	if err := v.WriteAt(make([]byte, 4096), 0, false); err == nil {
		t.Error("a write that failed locally succeeded")
	}
}

// Spawned's LU state record changes only from the version it was read
// at, as target.SharedState requires.
func TestSpawnedRecord(t *testing.T) {
	s := &Spawned{}
	if ok, err := s.SetSharedState(1, []byte("x")); ok || err != nil {
		t.Fatalf("set from a version never read: %v %v", ok, err)
	}
	b := []byte("rec")
	if ok, err := s.SetSharedState(0, b); !ok || err != nil {
		t.Fatalf("set from version 0: %v %v", ok, err)
	}
	b[0] = 'X'
	if v, d := s.SharedState(); v != 1 || string(d) != "rec" || s.SharedVersion() != 1 {
		t.Fatalf("version %d, record %q", v, d)
	}
}
