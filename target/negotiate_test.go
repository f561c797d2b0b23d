package target

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// answerOf returns the value answered for key, or "" when absent.
func answerOf(out []KV, key string) (string, bool) {
	for _, kv := range out {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return "", false
}

func TestNegotiateKeyKinds(t *testing.T) {
	lim := DefaultLimits() // MaxBurst 1 MiB, FirstBurst 256 KiB, ImmediateData Yes, InitialR2T No
	cases := []struct {
		key, offer string
		want       string // "" means no answer (declarative)
		check      func(p Params) bool
	}{
		// List: the first value of the initiator's list that we accept.
		{"HeaderDigest", "CRC32C,None", "CRC32C", func(p Params) bool { return p.HeaderDigest }},
		{"HeaderDigest", "None,CRC32C", "None", func(p Params) bool { return !p.HeaderDigest }},
		{"DataDigest", "Adler32,CRC32C", "CRC32C", func(p Params) bool { return p.DataDigest }},
		{"HeaderDigest", "MD5", "Reject", nil},
		// Min.
		{"MaxBurstLength", "65536", "65536", func(p Params) bool { return p.MaxBurstLength == 65536 }},
		{"MaxBurstLength", "16777215", "1048576", func(p Params) bool { return p.MaxBurstLength == 1048576 }},
		{"FirstBurstLength", "0x1000", "4096", func(p Params) bool { return p.FirstBurstLength == 4096 }},
		{"MaxConnections", "8", "1", func(p Params) bool { return p.MaxConnections == 1 }},
		{"MaxOutstandingR2T", "16", "1", func(p Params) bool { return p.MaxOutstandingR2T == 1 }},
		{"ErrorRecoveryLevel", "2", "0", func(p Params) bool { return p.ErrorRecoveryLevel == 0 }},
		{"DefaultTime2Retain", "0", "0", func(p Params) bool { return p.DefaultTime2Retain == 0 }},
		// Max.
		{"DefaultTime2Wait", "0", "2", func(p Params) bool { return p.DefaultTime2Wait == 2 }},
		{"DefaultTime2Wait", "30", "30", func(p Params) bool { return p.DefaultTime2Wait == 30 }},
		// AND.
		{"ImmediateData", "Yes", "Yes", func(p Params) bool { return p.ImmediateData }},
		{"ImmediateData", "No", "No", func(p Params) bool { return !p.ImmediateData }},
		{"IFMarker", "Yes", "No", nil},
		{"OFMarker", "No", "No", nil},
		// OR.
		{"InitialR2T", "No", "No", func(p Params) bool { return !p.InitialR2T }},
		{"InitialR2T", "Yes", "Yes", func(p Params) bool { return p.InitialR2T }},
		{"DataPDUInOrder", "No", "Yes", func(p Params) bool { return p.DataPDUInOrder }},
		{"DataSequenceInOrder", "No", "Yes", func(p Params) bool { return p.DataSequenceInOrder }},
		// Declarative: no answer.
		{"MaxRecvDataSegmentLength", "4096", "", func(p Params) bool { return p.InitiatorRecvDSL == 4096 }},
		{"InitiatorAlias", "host1", "", func(p Params) bool { return p.InitiatorAlias == "host1" }},
		{"InitiatorName", "iqn.x", "", func(p Params) bool { return p.InitiatorName == "iqn.x" }},
		{"SessionType", "Discovery", "", func(p Params) bool { return p.SessionType == "Discovery" }},
		// Out of range or malformed: Reject, nothing changes.
		{"MaxBurstLength", "511", "Reject", func(p Params) bool { return p.MaxBurstLength == 262144 }},
		{"MaxBurstLength", "16777216", "Reject", nil},
		{"FirstBurstLength", "abc", "Reject", func(p Params) bool { return p.FirstBurstLength == 65536 }},
		{"MaxConnections", "0", "Reject", nil},
		{"MaxConnections", "65536", "Reject", nil},
		{"ErrorRecoveryLevel", "3", "Reject", nil},
		{"DefaultTime2Wait", "3601", "Reject", nil},
		{"MaxOutstandingR2T", "0", "Reject", nil},
		{"MaxRecvDataSegmentLength", "511", "Reject", func(p Params) bool { return p.InitiatorRecvDSL == 8192 }},
		{"MaxRecvDataSegmentLength", "16777216", "Reject", nil},
		{"ImmediateData", "maybe", "Reject", func(p Params) bool { return p.ImmediateData }},
		{"InitialR2T", "yes", "Reject", nil},
		// Unknown keys, including X- extensions.
		{"FooBar", "1", "NotUnderstood", nil},
		{"X-com.example.Feature", "Yes", "NotUnderstood", nil},
		{"X#org.example.thing", "1", "NotUnderstood", nil},
	}
	for _, c := range cases {
		t.Run(c.key+"="+c.offer, func(t *testing.T) {
			n := newNegotiator(lim, true)
			out, rest, err := n.answer([]KV{{c.key, c.offer}}, false)
			if err != nil {
				t.Fatalf("answer: %v", err)
			}
			if len(rest) != 0 {
				t.Fatalf("rest %v", rest)
			}
			got, ok := answerOf(out, c.key)
			if c.want == "" {
				if ok {
					t.Fatalf("declarative key answered %q", got)
				}
			} else if got != c.want {
				t.Fatalf("answer %q (present %v), want %q", got, ok, c.want)
			}
			if len(out) > 1 {
				t.Fatalf("more than one answer: %v", out)
			}
			if c.check != nil && !c.check(n.p) {
				t.Fatalf("params after negotiation: %+v", n.p)
			}
		})
	}
}

func TestNegotiateSessionTypeUnsupported(t *testing.T) {
	n := newNegotiator(DefaultLimits(), true)
	_, _, err := n.answer([]KV{{"SessionType", "Bogus"}}, false)
	var ne *negotiationError
	if !errors.As(err, &ne) {
		t.Fatalf("err %v, want a negotiationError", err)
	}
}

func TestNegotiateLeadingOnlyOnNonLeading(t *testing.T) {
	leadingOnly := []KV{
		{"MaxConnections", "1"}, {"InitialR2T", "Yes"}, {"ImmediateData", "No"},
		{"MaxBurstLength", "4096"}, {"FirstBurstLength", "4096"}, {"DefaultTime2Wait", "5"},
		{"DefaultTime2Retain", "5"}, {"MaxOutstandingR2T", "1"}, {"DataPDUInOrder", "Yes"},
		{"DataSequenceInOrder", "Yes"}, {"ErrorRecoveryLevel", "0"}, {"SessionType", "Normal"},
	}
	n := newNegotiator(DefaultLimits(), false)
	before := n.p
	out, _, err := n.answer(leadingOnly, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range leadingOnly {
		if got, _ := answerOf(out, kv.Key); got != "Irrelevant" {
			t.Errorf("%s on a non-leading connection answered %q, want Irrelevant", kv.Key, got)
		}
	}
	if n.p != before {
		t.Fatalf("leading-only keys changed the parameters of a non-leading connection")
	}
	// Connection-scoped keys still negotiate there.
	out, _, _ = n.answer([]KV{{"HeaderDigest", "CRC32C"}, {"MaxRecvDataSegmentLength", "1024"}}, false)
	if got, _ := answerOf(out, "HeaderDigest"); got != "CRC32C" || n.p.InitiatorRecvDSL != 1024 {
		t.Fatalf("connection keys on a non-leading connection: %v %+v", out, n.p)
	}
}

func TestNegotiateAuthKeysLeftToLogin(t *testing.T) {
	n := newNegotiator(DefaultLimits(), true)
	out, rest, _ := n.answer([]KV{{"AuthMethod", "CHAP,None"}, {"CHAP_A", "5"}, {"CHAP_N", "u"}, {"InitiatorName", "i"}}, true)
	if len(out) != 0 || len(rest) != 3 {
		t.Fatalf("out %v rest %v", out, rest)
	}
	// Answers to keys we offered are not negotiated again.
	out, _, _ = n.answer([]KV{{"MaxBurstLength", "Reject"}, {"Foo", "NotUnderstood"}, {"X", "Irrelevant"}}, false)
	if len(out) != 0 {
		t.Fatalf("answered an answer: %v", out)
	}
}

func TestNegotiateFinish(t *testing.T) {
	count := func(out []KV, key string) int {
		n := 0
		for _, kv := range out {
			if kv.Key == key {
				n++
			}
		}
		return n
	}
	t.Run("MaxRecvDataSegmentLength declared once", func(t *testing.T) {
		lim := DefaultLimits()
		lim.MaxRecvDataSegmentLength = 65536
		n := newNegotiator(lim, true)
		out, _, _ := n.answer([]KV{{"MaxRecvDataSegmentLength", "4096"}}, false)
		out = n.finish(out)
		out = n.finish(out)
		if c := count(out, "MaxRecvDataSegmentLength"); c != 1 {
			t.Fatalf("MaxRecvDataSegmentLength declared %d times: %v", c, out)
		}
		if v, _ := answerOf(out, "MaxRecvDataSegmentLength"); v != "65536" {
			t.Fatalf("declared %q, want our limit 65536", v)
		}
		if n.p.TargetRecvDSL != 65536 || n.p.InitiatorRecvDSL != 4096 {
			t.Fatalf("recv lengths %d/%d", n.p.TargetRecvDSL, n.p.InitiatorRecvDSL)
		}
	})
	t.Run("FirstBurstLength clamped to MaxBurstLength", func(t *testing.T) {
		// RFC 7143 13.14: FirstBurstLength MUST NOT exceed MaxBurstLength.
		for _, offer := range [][]KV{
			{{"MaxBurstLength", "4096"}},
			{{"MaxBurstLength", "4096"}, {"FirstBurstLength", "65536"}},
			{{"FirstBurstLength", "16777215"}, {"MaxBurstLength", "512"}},
		} {
			n := newNegotiator(DefaultLimits(), true)
			out, _, _ := n.answer(offer, false)
			n.finish(out)
			if n.p.FirstBurstLength > n.p.MaxBurstLength {
				t.Fatalf("%v: FirstBurstLength %d > MaxBurstLength %d", offer, n.p.FirstBurstLength, n.p.MaxBurstLength)
			}
		}
	})
	t.Run("defaults above our limits are declared", func(t *testing.T) {
		lim := DefaultLimits()
		lim.MaxBurstLength, lim.FirstBurstLength, lim.ImmediateData = 131072, 16384, false
		n := newNegotiator(lim, true)
		out := n.finish(nil)
		if v, _ := answerOf(out, "MaxBurstLength"); v != "131072" || n.p.MaxBurstLength != 131072 {
			t.Fatalf("MaxBurstLength %q / %d", v, n.p.MaxBurstLength)
		}
		if v, _ := answerOf(out, "FirstBurstLength"); v != "16384" || n.p.FirstBurstLength != 16384 {
			t.Fatalf("FirstBurstLength %q / %d", v, n.p.FirstBurstLength)
		}
		if v, _ := answerOf(out, "ImmediateData"); v != "No" || n.p.ImmediateData {
			t.Fatalf("ImmediateData %q / %v", v, n.p.ImmediateData)
		}
	})
	t.Run("negotiated values never exceed the limits", func(t *testing.T) {
		lim := DefaultLimits()
		n := newNegotiator(lim, true)
		out, _, _ := n.answer([]KV{{"MaxBurstLength", "16777215"}, {"FirstBurstLength", "16777215"}, {"MaxOutstandingR2T", "65535"}}, false)
		n.finish(out)
		if n.p.MaxBurstLength > lim.MaxBurstLength || n.p.FirstBurstLength > lim.FirstBurstLength || n.p.MaxOutstandingR2T > lim.MaxOutstandingR2T {
			t.Fatalf("params %+v exceed limits %+v", n.p, lim)
		}
	})
}

func TestNegotiateDuplicateKeyRejected(t *testing.T) {
	// RFC 7143 6.2 (RFC 3720 5.3): an attempt to renegotiate or redeclare a
	// parameter MUST be detected; the target answers with a Login reject.
	for _, split := range []bool{false, true} {
		n := newNegotiator(DefaultLimits(), true)
		var err error
		if split {
			_, _, err = n.answer([]KV{{"MaxBurstLength", "65536"}}, false)
			if err == nil {
				_, _, err = n.answer([]KV{{"MaxBurstLength", "4096"}}, false)
			}
		} else {
			_, _, err = n.answer([]KV{{"MaxBurstLength", "65536"}, {"MaxBurstLength", "4096"}}, false)
		}
		if err == nil {
			t.Fatalf("split=%v: MaxBurstLength negotiated twice without error", split)
		}
	}
}

// FuzzLogin feeds arbitrary login text into the negotiator (leading and
// not) and into a CHAP exchange. Nothing may panic, negotiated values stay
// within the RFC ranges and our limits, and CHAP never succeeds without
// the right response.
func FuzzLogin(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.x\x00SessionType=Normal\x00MaxBurstLength=4096\x00FirstBurstLength=65536\x00"), byte(0))
	f.Add([]byte("HeaderDigest=CRC32C,None\x00DataDigest=None\x00MaxRecvDataSegmentLength=512\x00"), byte(1))
	f.Add([]byte("CHAP_A=5\x00CHAP_N=user\x00CHAP_R=0x00\x00CHAP_I=1\x00CHAP_C=0x1234\x00"), byte(2))
	f.Add([]byte("CHAP_A=7,5\x00"), byte(3))
	f.Add([]byte("CHAP_I=010\x00CHAP_C=0b3q2+7w==\x00"), byte(6))
	f.Fuzz(func(t *testing.T, text []byte, mode byte) {
		kvs, err := ParseText(text)
		if err != nil {
			return
		}
		lim := DefaultLimits()
		n := newNegotiator(lim, mode&1 == 0)
		out, rest, err := n.answer(kvs, mode&4 != 0)
		if err != nil {
			var ne *negotiationError
			if !errors.As(err, &ne) {
				t.Fatalf("answer error of type %T", err)
			}
		} else {
			out = n.finish(out)
			p := n.p
			if p.FirstBurstLength > p.MaxBurstLength {
				t.Fatalf("FirstBurstLength %d > MaxBurstLength %d", p.FirstBurstLength, p.MaxBurstLength)
			}
			if p.MaxBurstLength > lim.MaxBurstLength && n.seen["MaxBurstLength"] {
				t.Fatalf("MaxBurstLength %d above our limit", p.MaxBurstLength)
			}
			if p.InitiatorRecvDSL < 512 || p.InitiatorRecvDSL > 1<<24-1 {
				t.Fatalf("InitiatorRecvDSL %d outside 512..2^24-1", p.InitiatorRecvDSL)
			}
			if p.MaxConnections != 1 || p.ErrorRecoveryLevel != 0 || p.MaxOutstandingR2T < 1 || p.MaxOutstandingR2T > lim.MaxOutstandingR2T {
				t.Fatalf("params %+v", p)
			}
			mrdsl := 0
			for _, kv := range out {
				if kv.Key == "MaxRecvDataSegmentLength" && kv.Value != "Reject" {
					mrdsl++
				}
				if len(kv.Key) == 0 || len(kv.Key) > maxKeyLen {
					t.Fatalf("answer key %q", kv.Key)
				}
				if def, ok := keyDefs[kv.Key]; ok && (def.kind == kindMin || def.kind == kindMax) && kv.Key != "MaxRecvDataSegmentLength" {
					if x, err := strconv.ParseUint(kv.Value, 10, 64); err == nil && (x < def.min || x > def.max) {
						t.Fatalf("answer %s=%s outside %d..%d", kv.Key, kv.Value, def.min, def.max)
					}
				}
			}
			if mrdsl != 1 {
				t.Fatalf("MaxRecvDataSegmentLength declared %d times", mrdsl)
			}
			if _, err := ParseText(EncodeText(out)); err != nil {
				t.Fatalf("our answer does not parse: %v", err)
			}
		}
		for _, kv := range rest {
			if kv.Key != "AuthMethod" && !strings.HasPrefix(kv.Key, "CHAP_") {
				t.Fatalf("rest holds %s", kv.Key)
			}
		}

		// CHAP: a fresh exchange, challenged, then the fuzzer's keys.
		cfg := &CHAPConfig{Username: "user", Secret: "secret-12345", MutualUsername: "tgt", MutualSecret: "other-secret"}
		if mode&2 == 0 {
			cfg.MutualUsername, cfg.MutualSecret = "", ""
		}
		m := map[string]string{}
		for _, kv := range kvs {
			m[kv.Key] = kv.Value
		}
		c := &chapExchange{cfg: cfg}
		if _, err := c.step(m); err != nil {
			if !errors.Is(err, errCHAPFailed) {
				t.Fatalf("chap step error %v not errCHAPFailed", err)
			}
			return
		}
		if c.state == chapStart {
			m["CHAP_A"] = "5"
			if _, err := c.step(m); err != nil {
				t.Fatal(err)
			}
		}
		right := fmt.Sprintf("0x%x", chapMD5Resp(c.id, cfg.Secret, c.challenge))
		if mode&8 != 0 {
			m["CHAP_N"], m["CHAP_R"] = cfg.Username, right
		}
		ans, err := c.step(m)
		if err != nil {
			if !errors.Is(err, errCHAPFailed) {
				t.Fatalf("chap step error %v not errCHAPFailed", err)
			}
			return
		}
		r, derr := decodeCHAPBinary(m["CHAP_R"])
		if m["CHAP_N"] != cfg.Username || derr != nil || string(r) != string(chapMD5Resp(c.id, cfg.Secret, c.challenge)) {
			t.Fatalf("CHAP accepted N=%q R=%q", m["CHAP_N"], m["CHAP_R"])
		}
		if len(ans) > 0 {
			chal, err := decodeCHAPBinary(m["CHAP_C"])
			if err != nil || string(chal) == string(c.challenge) || cfg.MutualUsername == "" {
				t.Fatalf("mutual answer for CHAP_C=%q", m["CHAP_C"])
			}
		}
	})
}
