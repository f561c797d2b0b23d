package initiator

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/initiator/servetest"
)

func TestMain(m *testing.M) { os.Exit(servetest.Main(m)) }

const testInitiator = "iqn.2026-11.io.metrolun:initiator-test"

func dialT(t *testing.T, srv *servetest.Server, opts Options) *Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Dial(ctx, srv.Addr, srv.IQN, testInitiator, opts)
	if err != nil {
		t.Fatalf("dial %s: %v\n%s", srv.Addr, err, srv.LogTail(10))
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestLiveServe drives a real `metrolun serve` (64 MiB sparse LUN,
// default limits) with this initiator.
func TestLiveServe(t *testing.T) {
	srv := servetest.Start(t, servetest.Options{Size: "64MiB"})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	s := dialT(t, srv, Options{})
	p := s.Params()
	if !p.ImmediateData || p.InitialR2T || p.FirstBurstLength != 256<<10 || p.MaxBurstLength != 1<<20 || p.TSIH == 0 {
		t.Errorf("negotiated %+v", p)
	}

	if err := s.TestUnitReady(ctx, 0); err != nil {
		t.Fatalf("TEST UNIT READY: %v", err)
	}
	inq, err := s.Inquiry(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if inq.DeviceType != 0 || inq.PeripheralQualifier != 0 || inq.Product == "" {
		t.Errorf("INQUIRY: %+v", inq)
	}
	vpd, err := s.InquiryVPD(ctx, 0, 0x80)
	if err != nil || len(vpd) < 5 {
		t.Errorf("unit serial number VPD: %v (%d bytes)", err, len(vpd))
	}
	bs, blocks, err := s.ReadCapacity16(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if bs != 512 || blocks != 64<<20/512 {
		t.Fatalf("READ CAPACITY(16): block size %d, %d blocks; want 512, %d", bs, blocks, 64<<20/512)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	cases := []struct {
		name string
		lba  uint64
		n    int
		fua  bool
	}{
		{"first block", 0, 1, false},
		{"eight blocks", 1000, 8, false},
		{"last block", blocks - 1, 1, false},
		{"FUA", 2048, 4, true},
		{"exactly FirstBurstLength", 8192, 512, false},
		{"2 MiB + 3 blocks, R2T after the first burst", 16384, 4096 + 3, false},
		{"1 MiB FUA", 32768, 2048, true},
	}
	for _, c := range cases {
		data := randBytes(rng, c.n*int(bs))
		r2ts := s.Stats().R2Ts.Load()
		if err := s.WriteBlocks(ctx, 0, c.lba, data, c.fua); err != nil {
			t.Fatalf("%s: write: %v", c.name, err)
		}
		// Beyond FirstBurstLength the target must solicit the rest.
		if solicited := s.Stats().R2Ts.Load() - r2ts; (len(data) > p.FirstBurstLength) != (solicited > 0) {
			t.Fatalf("%s: %d bytes took %d R2Ts (FirstBurstLength %d)", c.name, len(data), solicited, p.FirstBurstLength)
		}
		got, err := s.ReadBlocks(ctx, 0, c.lba, uint32(c.n))
		if err != nil {
			t.Fatalf("%s: read: %v", c.name, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: read back differs from what was written", c.name)
		}
	}
	if err := s.SyncCache(ctx, 0); err != nil {
		t.Fatalf("SYNCHRONIZE CACHE: %v", err)
	}

	// Out of range: ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE,
	// and certainly not executed.
	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"read past the end", func() error { _, err := s.ReadBlocks(ctx, 0, blocks, 1); return err }},
		{"read across the end", func() error { _, err := s.ReadBlocks(ctx, 0, blocks-1, 2); return err }},
		{"write across the end", func() error { return s.WriteBlocks(ctx, 0, blocks-1, make([]byte, 1024), false) }},
	} {
		err := op.do()
		var se *SCSIError
		if !errors.As(err, &se) || se.Status != StatusCheckCondition || se.SenseKey != SenseIllegalRequest || se.ASC != 0x21 || se.ASCQ != 0 {
			t.Fatalf("%s: got %v, want CHECK CONDITION ILLEGAL REQUEST 0x21/0x00", op.name, err)
		}
		if Indeterminate(err) {
			t.Fatalf("%s: an LBA out of range counts as indeterminate", op.name)
		}
	}
	// The last block is still what was written there (the failed write
	// across the end did not touch it).
	if got, err := s.ReadBlocks(ctx, 0, blocks-1, 1); err != nil || bytes.Equal(got, make([]byte, 512)) {
		t.Fatalf("last block after the refused write: %v", err)
	}
	// A LUN that does not exist.
	if err := s.TestUnitReady(ctx, 5); err == nil {
		t.Fatal("TEST UNIT READY on LUN 5 succeeded")
	} else if Indeterminate(err) {
		t.Fatalf("LUN 5: %v counts as indeterminate", err)
	}

	// Several goroutines share one session: commands are serialised.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for i := range 10 {
				lba := uint64(40000 + g*100 + i)
				d := randBytes(r, 512)
				if err := s.WriteBlocks(ctx, 0, lba, d, false); err != nil {
					errs <- err
					return
				}
				got, err := s.ReadBlocks(ctx, 0, lba, 1)
				if err != nil || !bytes.Equal(got, d) {
					errs <- errors.New("concurrent round trip differs")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Other negotiations against the same target: all data solicited by
	// R2T (InitialR2T=Yes, ImmediateData=No), and small PDUs both ways.
	for _, o := range []Options{
		{InitialR2T: true, NoImmediateData: true},
		{MaxRecvDataSegmentLength: 4096, FirstBurstLength: 4096, MaxBurstLength: 16384},
		{InitialR2T: true, FirstBurstLength: 512, MaxBurstLength: 512},
	} {
		s2 := dialT(t, srv, o)
		p := s2.Params()
		if p.InitialR2T != o.InitialR2T || p.ImmediateData == o.NoImmediateData {
			t.Errorf("options %+v negotiated %+v", o, p)
		}
		data := randBytes(rng, 300*512)
		if err := s2.WriteBlocks(ctx, 0, 50000, data, false); err != nil {
			t.Fatalf("options %+v: write: %v", o, err)
		}
		got, err := s2.ReadBlocks(ctx, 0, 50000, 300)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("options %+v: read back: %v", o, err)
		}
		st, p := s2.Stats(), s2.Params()
		if o.InitialR2T && st.R2Ts.Load() < uint64((len(data)-p.FirstBurstLength)/p.MaxBurstLength) {
			t.Errorf("options %+v: %d R2Ts for %d bytes", o, st.R2Ts.Load(), len(data))
		}
		if o.MaxRecvDataSegmentLength == 4096 && st.DataIn.Load() < uint64(len(data)/4096) {
			t.Errorf("options %+v: %d Data-In PDUs for %d bytes", o, st.DataIn.Load(), len(data))
		}
		if err := s2.Logout(ctx); err != nil {
			t.Fatalf("logout: %v", err)
		}
	}

	if err := s.Ping(ctx); err != nil {
		t.Fatalf("NOP-Out ping: %v", err)
	}
	if err := s.Logout(ctx); err != nil {
		t.Fatalf("logout: %v", err)
	}
	if _, err := s.ReadBlocks(ctx, 0, 0, 1); !errors.Is(err, ErrClosed) || Indeterminate(err) {
		t.Fatalf("read after logout: %v, want ErrClosed (not sent)", err)
	}
}

// TestLiveTightLimitsKeepaliveAndShutdown runs against a target with small
// PDUs and bursts (many Data-Out and Data-In PDUs, several R2Ts per
// write) that pings idle initiators every second and drops those that do
// not answer within a second; then SIGTERM makes it ask for a logout.
func TestLiveTightLimitsKeepaliveAndShutdown(t *testing.T) {
	srv := servetest.Start(t, servetest.Options{Size: "16MiB", BlockSize: 4096, ISCSI: `
max_recv_data_segment_length = 4096
first_burst_length = 8192
max_burst_length = 16384
nop_interval = 1
nop_timeout = 1
`})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	s := dialT(t, srv, Options{})
	p := s.Params()
	if p.TargetMaxRecvDataSegmentLength != 4096 || p.FirstBurstLength != 8192 || p.MaxBurstLength != 16384 {
		t.Fatalf("negotiated %+v", p)
	}
	bs, _, err := s.ReadCapacity16(ctx, 0)
	if err != nil || bs != 4096 {
		t.Fatalf("READ CAPACITY(16): %d %v", bs, err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	data := randBytes(rng, 25*4096) // immediate 4K, unsolicited to 8K, then R2Ts of 16K
	if err := s.WriteBlocks(ctx, 0, 7, data, true); err != nil {
		t.Fatal(err)
	}
	// (100K - 8K) / 16K = 5.75: six R2Ts; Data-Out PDUs of 4K each.
	if st := s.Stats(); st.R2Ts.Load() != 6 || st.DataOut.Load() != 24 {
		t.Fatalf("%d R2Ts and %d Data-Out PDUs, want 6 and 24", st.R2Ts.Load(), st.DataOut.Load())
	}
	got, err := s.ReadBlocks(ctx, 0, 7, 25)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}

	// Idle for several NOP intervals: the reader answers the pings, so
	// the target keeps the connection.
	time.Sleep(3500 * time.Millisecond)
	select {
	case <-s.Done():
		t.Fatalf("session ended while idle: %v\n%s", s.Err(), srv.LogTail(10))
	default:
	}
	if got, err := s.ReadBlocks(ctx, 0, 7, 25); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after idling: %v\n%s", err, srv.LogTail(10))
	}
	if n := s.Stats().PingsAnswer.Load(); n < 1 {
		t.Fatalf("%d NOP-In pings answered in 3.5s at a 1s interval", n)
	}
	if log := srv.LogText(); strings.Contains(log, "stopped answering NOP-In") {
		t.Fatalf("the target dropped a connection for unanswered NOP-Ins:\n%s", log)
	}

	// A clean shutdown asks us to log out (AsyncEvent 1): the session
	// ends by itself and later commands are not sent.
	if err := srv.Terminate(20 * time.Second); err != nil {
		t.Fatalf("serve did not stop cleanly: %v\n%s", err, srv.LogTail(20))
	}
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("session still alive 10s after the target shut down")
	}
	if err := s.Err(); !errors.Is(err, ErrTargetLogout) {
		// The target closes the connection 2s after its request at the
		// latest; either way the request must have been seen first.
		t.Fatalf("session ended with %v, want ErrTargetLogout", err)
	}
	if err := s.WriteBlocks(ctx, 0, 0, make([]byte, 4096), false); err == nil || Indeterminate(err) {
		t.Fatalf("write after the target's logout request: %v, want not sent", err)
	}
}
