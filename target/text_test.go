package target

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestTextRoundTrip(t *testing.T) {
	cases := [][]KV{
		{{"InitiatorName", "iqn.1994-05.com.redhat:abc"}},
		{{"HeaderDigest", "CRC32C,None"}, {"MaxRecvDataSegmentLength", "262144"}, {"X-com.example.key", "v"}},
		{{"a", "b=c"}, {"k", ""}},
		{{strings.Repeat("k", maxKeyLen), strings.Repeat("v", maxValueLen)}},
		{{"CHAP_C", "0x" + strings.Repeat("ab", 512)}},
		{{"A.b-c+d@e_f", "x"}},
	}
	var many []KV
	for i := 0; i < maxPairs; i++ {
		many = append(many, KV{fmt.Sprintf("K%d", i), "1"})
	}
	cases = append(cases, many)
	for i, kvs := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			enc := EncodeText(kvs)
			if enc[len(enc)-1] != 0 {
				t.Fatal("encoded text does not end with NUL")
			}
			got, err := ParseText(enc)
			if err != nil {
				t.Fatalf("ParseText: %v", err)
			}
			if !reflect.DeepEqual(got, kvs) {
				t.Fatalf("round trip: %v, want %v", got, kvs)
			}
		})
	}
}

func TestParseTextTolerance(t *testing.T) {
	// A missing final NUL and empty pairs (NUL NUL) are tolerated.
	got, err := ParseText([]byte("a=1\x00\x00b=2"))
	if err != nil || !reflect.DeepEqual(got, []KV{{"a", "1"}, {"b", "2"}}) {
		t.Fatalf("got %v, %v", got, err)
	}
	if got, err := ParseText(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty text: %v, %v", got, err)
	}
}

func TestParseTextRejects(t *testing.T) {
	var tooMany bytes.Buffer
	for i := 0; i <= maxPairs; i++ {
		fmt.Fprintf(&tooMany, "K%d=1\x00", i)
	}
	cases := []struct {
		name string
		in   string
	}{
		{"no equals", "InitiatorName\x00"},
		{"empty key", "=value\x00"},
		{"key too long", strings.Repeat("k", maxKeyLen+1) + "=1\x00"},
		{"space in key", "Initiator Name=x\x00"},
		{"non-ASCII key", "Kéy=1\x00"},
		{"star in key", "a*b=1\x00"},
		{"slash in key", "a/b=1\x00"},
		{"value too long", "k=" + strings.Repeat("v", maxValueLen+1) + "\x00"},
		{"bad pair after good one", "a=1\x00junk\x00"},
		{"too many pairs", tooMany.String()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got, err := ParseText([]byte(c.in)); err == nil {
				t.Fatalf("accepted: %v", got)
			}
		})
	}
}

func TestParseNumber(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0", 0, true}, {"8192", 8192, true}, {"0x2000", 8192, true}, {"0X10", 16, true},
		{"", 0, false}, {"-1", 0, false}, {"12a", 0, false}, {"0x", 0, false}, {"99999999999999999999", 0, false},
	} {
		got, err := parseNumber(c.in)
		if (err == nil) != c.ok || c.ok && got != c.want {
			t.Errorf("parseNumber(%q) = %d, %v", c.in, got, err)
		}
	}
}

// FuzzParseText: no panic; anything accepted obeys RFC 7143 6.1 and the
// limits, and encodes back to text that parses to the same pairs.
func FuzzParseText(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.x\x00SessionType=Normal\x00"))
	f.Add([]byte("a=b=c\x00\x00d="))
	f.Add([]byte("=\x00"))
	f.Add([]byte(strings.Repeat("k", 64) + "=1"))
	f.Add([]byte("CHAP_R=0x0123\x00CHAP_N=user\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		kvs, err := ParseText(in)
		if err != nil {
			return
		}
		if len(kvs) > maxPairs {
			t.Fatalf("%d pairs", len(kvs))
		}
		for _, kv := range kvs {
			if len(kv.Key) == 0 || len(kv.Key) > maxKeyLen {
				t.Fatalf("key length %d", len(kv.Key))
			}
			for i := 0; i < len(kv.Key); i++ {
				if !isKeyChar(kv.Key[i]) {
					t.Fatalf("key %q has %q", kv.Key, kv.Key[i])
				}
			}
			if len(kv.Value) > maxValueLen || strings.IndexByte(kv.Value, 0) >= 0 {
				t.Fatalf("value of %d bytes or with NUL", len(kv.Value))
			}
		}
		again, err := ParseText(EncodeText(kvs))
		if err != nil || len(again) != len(kvs) || (len(kvs) > 0 && !reflect.DeepEqual(again, kvs)) {
			t.Fatalf("re-encoded text: %v, %v; want %v", again, err, kvs)
		}
	})
}
