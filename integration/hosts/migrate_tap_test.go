package hosts

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// pdu builds an iSCSI PDU: a 48-byte header with opcode, task tag, AHS
// length, data segment length and (for a SCSI Command) the CDB's first
// byte, then the AHS, the data and its padding.
func pdu(op byte, itt uint32, cdb0 byte, ahsWords int, data []byte) []byte {
	b := make([]byte, 48)
	b[0] = op
	b[4] = byte(ahsWords)
	b[5], b[6], b[7] = byte(len(data)>>16), byte(len(data)>>8), byte(len(data))
	binary.BigEndian.PutUint32(b[16:20], itt)
	b[32] = cdb0
	b = append(b, make([]byte, 4*ahsWords)...)
	b = append(b, data...)
	return append(b, make([]byte, (4-len(data)%4)%4)...)
}

// checkCondition sets a SCSI Response's status to CHECK CONDITION.
func checkCondition(b []byte) []byte {
	b[3] = 0x02
	return b
}

// TestWireTapCountsWriteCompletions runs PDUs through a wire tap both
// ways: only a GOOD SCSI Response to a WRITE counts, whatever comes
// between (a READ's response, a NOP-In with padded data, AHS, a write
// answered CHECK CONDITION), and every byte arrives unchanged.
func TestWireTapCountsWriteCompletions(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := &completions{}
	tap, err := newWireTap(ln.Addr().String(), done)
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	toTarget := bytes.Join([][]byte{
		pdu(0x03, 0, 0, 0, []byte("InitiatorName=x")),        // login
		pdu(0x01, 7, 0x2a, 0, bytes.Repeat([]byte{1}, 4096)), // WRITE(10), immediate data
		pdu(0x01, 8, 0x28, 1, nil),                           // READ(10), an AHS
		pdu(0x01, 9, 0x8a, 0, nil),                           // WRITE(16), its data to come
		pdu(0x05, 9, 0, 0, bytes.Repeat([]byte{2}, 513)),     // Data-Out, padded
		pdu(0x01, 10, 0x2a, 0, nil),                          // WRITE(10) that fails
	}, nil)
	toInitiator := bytes.Join([][]byte{
		pdu(0x23, 0, 0, 0, []byte("TargetPortalGroupTag=1")), // login response
		pdu(0x21, 8, 0, 0, nil),                              // READ done
		pdu(0x20, 0, 0, 0, []byte("abc")),                    // NOP-In, padded
		pdu(0x21, 7, 0, 0, nil),                              // WRITE(10) done
		pdu(0x21, 9, 0, 0, nil),                              // WRITE(16) done
		pdu(0x21, 7, 0, 0, nil),                              // a tag already answered
		checkCondition(pdu(0x21, 10, 0, 0, nil)),             // WRITE(10) failed
	}, nil)
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b := make([]byte, len(toTarget))
		io.ReadFull(c, b)
		got <- b
		c.Write(toInitiator)
	}()
	from := time.Now()
	c, err := net.Dial("tcp", tap.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(toTarget); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(toInitiator))
	if _, err := io.ReadFull(c, back); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, toTarget) {
		t.Fatal("the target got other bytes than the initiator sent")
	}
	if !bytes.Equal(back, toInitiator) {
		t.Fatal("the initiator got other bytes than the target sent")
	}
	g, err := done.longestGap(from, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if g.Completed != 2 {
		t.Fatalf("%d write completions counted, want 2", g.Completed)
	}
}

// TestLongestGapSpansTheWindowStart: the stretch under way when the
// window opens counts from the last completion before it.
func TestLongestGapSpansTheWindowStart(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := &completions{}
	for _, ms := range []int{0, 10, 20, 900, 910, 1500} {
		c.add(t0.Add(time.Duration(ms) * time.Millisecond))
	}
	g, err := c.longestGap(t0.Add(100*time.Millisecond), t0.Add(1000*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if g.Length != 880*time.Millisecond || !g.Start.Equal(t0.Add(20*time.Millisecond)) || g.Completed != 2 {
		t.Fatalf("got %+v, want 880ms from 20ms with 2 completions", g)
	}
}
