package target

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// chapMD5Resp is RFC 1994 section 4.1 computed independently of chap.go:
// MD5 over the identifier, the secret and the challenge.
func chapMD5Resp(id byte, secret string, challenge []byte) []byte {
	buf := append([]byte{id}, secret...)
	buf = append(buf, challenge...)
	sum := md5.Sum(buf)
	return sum[:]
}

// challenged runs the first CHAP step and returns the identifier and
// challenge the target sent.
func challenged(t *testing.T, c *chapExchange, alg string) (byte, []byte) {
	t.Helper()
	out, err := c.step(map[string]string{"CHAP_A": alg})
	if err != nil {
		t.Fatalf("CHAP_A=%s: %v", alg, err)
	}
	m := map[string]string{}
	for _, kv := range out {
		m[kv.Key] = kv.Value
	}
	if m["CHAP_A"] != "5" {
		t.Fatalf("CHAP_A answer %q, want 5 (MD5)", m["CHAP_A"])
	}
	id, err := strconv.Atoi(m["CHAP_I"])
	if err != nil || id < 0 || id > 255 {
		t.Fatalf("CHAP_I %q", m["CHAP_I"])
	}
	if !strings.HasPrefix(m["CHAP_C"], "0x") {
		t.Fatalf("CHAP_C %q not hex", m["CHAP_C"])
	}
	chal, err := hex.DecodeString(m["CHAP_C"][2:])
	if err != nil || len(chal) < 16 {
		t.Fatalf("CHAP_C %q: %v (RFC 7143 12.1.3 wants at least 16 bytes here)", m["CHAP_C"], err)
	}
	return byte(id), chal
}

func TestCHAPOneWay(t *testing.T) {
	cfg := &CHAPConfig{Username: "alice", Secret: "0123456789ab"}
	for _, form := range []string{"hex", "HEX", "base64"} {
		t.Run(form, func(t *testing.T) {
			c := &chapExchange{cfg: cfg}
			id, chal := challenged(t, c, "7,5")
			resp := chapMD5Resp(id, cfg.Secret, chal)
			var r string
			switch form {
			case "hex":
				r = "0x" + hex.EncodeToString(resp)
			case "HEX":
				r = "0X" + strings.ToUpper(hex.EncodeToString(resp))
			case "base64":
				r = "0b" + base64.StdEncoding.EncodeToString(resp)
			}
			out, err := c.step(map[string]string{"CHAP_N": "alice", "CHAP_R": r})
			if err != nil {
				t.Fatalf("correct response refused: %v", err)
			}
			if len(out) != 0 || c.state != chapDone {
				t.Fatalf("out %v state %d", out, c.state)
			}
		})
	}
	t.Run("two exchanges get different challenges", func(t *testing.T) {
		_, c1 := challenged(t, &chapExchange{cfg: cfg}, "5")
		_, c2 := challenged(t, &chapExchange{cfg: cfg}, "5")
		if string(c1) == string(c2) {
			t.Fatal("challenge repeated")
		}
	})
}

func TestCHAPFailures(t *testing.T) {
	cfg := &CHAPConfig{Username: "alice", Secret: "0123456789ab"}
	cases := []struct {
		name string
		keys func(id byte, chal []byte) map[string]string
	}{
		{"wrong secret", func(id byte, chal []byte) map[string]string {
			return map[string]string{"CHAP_N": "alice", "CHAP_R": "0x" + hex.EncodeToString(chapMD5Resp(id, "wrong-secret", chal))}
		}},
		{"wrong name", func(id byte, chal []byte) map[string]string {
			return map[string]string{"CHAP_N": "bob", "CHAP_R": "0x" + hex.EncodeToString(chapMD5Resp(id, cfg.Secret, chal))}
		}},
		{"wrong identifier", func(id byte, chal []byte) map[string]string {
			return map[string]string{"CHAP_N": "alice", "CHAP_R": "0x" + hex.EncodeToString(chapMD5Resp(id+1, cfg.Secret, chal))}
		}},
		{"truncated response", func(id byte, chal []byte) map[string]string {
			return map[string]string{"CHAP_N": "alice", "CHAP_R": "0x" + hex.EncodeToString(chapMD5Resp(id, cfg.Secret, chal)[:15])}
		}},
		{"bad hex", func(id byte, chal []byte) map[string]string {
			return map[string]string{"CHAP_N": "alice", "CHAP_R": "0xZZ" + hex.EncodeToString(chapMD5Resp(id, cfg.Secret, chal))[2:]}
		}},
		{"no prefix", func(id byte, chal []byte) map[string]string {
			return map[string]string{"CHAP_N": "alice", "CHAP_R": hex.EncodeToString(chapMD5Resp(id, cfg.Secret, chal))}
		}},
		{"bad base64", func(id byte, chal []byte) map[string]string {
			return map[string]string{"CHAP_N": "alice", "CHAP_R": "0b!!!"}
		}},
		{"missing CHAP_R", func(id byte, chal []byte) map[string]string {
			return map[string]string{"CHAP_N": "alice"}
		}},
		{"missing CHAP_N", func(id byte, chal []byte) map[string]string {
			return map[string]string{"CHAP_R": "0x" + hex.EncodeToString(chapMD5Resp(id, cfg.Secret, chal))}
		}},
		{"mutual asked but not configured", func(id byte, chal []byte) map[string]string {
			return map[string]string{"CHAP_N": "alice", "CHAP_R": "0x" + hex.EncodeToString(chapMD5Resp(id, cfg.Secret, chal)),
				"CHAP_I": "3", "CHAP_C": "0x00112233445566778899aabbccddeeff"}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			x := &chapExchange{cfg: cfg}
			id, chal := challenged(t, x, "5")
			if _, err := x.step(c.keys(id, chal)); !errors.Is(err, errCHAPFailed) {
				t.Fatalf("err %v, want errCHAPFailed", err)
			}
		})
	}
	t.Run("unsupported algorithm", func(t *testing.T) {
		x := &chapExchange{cfg: cfg}
		out, err := x.step(map[string]string{"CHAP_A": "6,7"})
		if !errors.Is(err, errCHAPFailed) {
			t.Fatalf("err %v", err)
		}
		if v, _ := answerOf(out, "CHAP_A"); v != "Reject" {
			t.Fatalf("CHAP_A answered %q, want Reject", v)
		}
	})
	t.Run("waits for CHAP_A", func(t *testing.T) {
		x := &chapExchange{cfg: cfg}
		out, err := x.step(map[string]string{"CHAP_N": "alice"})
		if err != nil || out != nil || x.state != chapStart {
			t.Fatalf("out %v err %v state %d", out, err, x.state)
		}
	})
}

func TestCHAPMutual(t *testing.T) {
	cfg := &CHAPConfig{Username: "alice", Secret: "0123456789ab", MutualUsername: "target", MutualSecret: "ba9876543210"}
	myChal := []byte("initiator-challenge-16+")
	base := func(t *testing.T) (*chapExchange, map[string]string) {
		x := &chapExchange{cfg: cfg}
		id, chal := challenged(t, x, "5")
		return x, map[string]string{"CHAP_N": "alice", "CHAP_R": "0x" + hex.EncodeToString(chapMD5Resp(id, cfg.Secret, chal))}
	}
	t.Run("answer verifies", func(t *testing.T) {
		x, m := base(t)
		m["CHAP_I"], m["CHAP_C"] = "77", "0x"+hex.EncodeToString(myChal)
		out, err := x.step(m)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := answerOf(out, "CHAP_N")
		r, _ := answerOf(out, "CHAP_R")
		if n != "target" {
			t.Fatalf("CHAP_N %q", n)
		}
		want := "0x" + hex.EncodeToString(chapMD5Resp(77, cfg.MutualSecret, myChal))
		if !strings.EqualFold(r, want) {
			t.Fatalf("target's CHAP_R %s, want %s", r, want)
		}
	})
	t.Run("hex identifier", func(t *testing.T) {
		x, m := base(t)
		m["CHAP_I"], m["CHAP_C"] = "0x4d", "0x"+hex.EncodeToString(myChal)
		out, err := x.step(m)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := answerOf(out, "CHAP_R")
		if r != "0x"+hex.EncodeToString(chapMD5Resp(0x4d, cfg.MutualSecret, myChal)) {
			t.Fatal("hex CHAP_I misread")
		}
	})
	t.Run("reflected challenge", func(t *testing.T) {
		// RFC 7143 12.1.3: the target must refuse its own challenge back.
		x := &chapExchange{cfg: cfg}
		id, chal := challenged(t, x, "5")
		m := map[string]string{"CHAP_N": "alice", "CHAP_R": "0x" + hex.EncodeToString(chapMD5Resp(id, cfg.Secret, chal)),
			"CHAP_I": strconv.Itoa(int(id)), "CHAP_C": "0x" + hex.EncodeToString(chal)}
		out, err := x.step(m)
		if !errors.Is(err, errCHAPFailed) {
			t.Fatalf("reflected challenge accepted: %v", out)
		}
		for _, kv := range out {
			if kv.Key == "CHAP_R" {
				t.Fatal("answered a reflected challenge")
			}
		}
	})
	for _, bad := range []struct{ name, i, c string }{
		{"bad challenge hex", "1", "0xZZ"},
		{"empty challenge", "1", "0x"},
		{"identifier > 255", "300", "0x0011"},
		{"identifier not a number", "one", "0x0011"},
		{"only CHAP_I", "1", ""},
	} {
		t.Run(bad.name, func(t *testing.T) {
			x, m := base(t)
			m["CHAP_I"] = bad.i
			if bad.c != "" {
				m["CHAP_C"] = bad.c
			}
			if _, err := x.step(m); !errors.Is(err, errCHAPFailed) {
				t.Fatalf("err %v, want errCHAPFailed", err)
			}
		})
	}
	t.Run("initiator not asking", func(t *testing.T) {
		x, m := base(t)
		out, err := x.step(m)
		if err != nil || len(out) != 0 || x.state != chapDone {
			t.Fatalf("one-way login with mutual configured: %v %v", out, err)
		}
	})
}

func TestCHAPIdentifierLeadingZero(t *testing.T) {
	// RFC 7143 section 6.1: a decimal-constant has no leading zeros, and a
	// numerical value is decimal or 0x-hex. "010" is therefore malformed;
	// it must not silently become identifier 8.
	cfg := &CHAPConfig{Username: "alice", Secret: "0123456789ab", MutualUsername: "target", MutualSecret: "ba9876543210"}
	x := &chapExchange{cfg: cfg}
	id, chal := challenged(t, x, "5")
	myChal := []byte("initiator-challenge-16+")
	out, err := x.step(map[string]string{"CHAP_N": "alice", "CHAP_R": "0x" + hex.EncodeToString(chapMD5Resp(id, cfg.Secret, chal)),
		"CHAP_I": "010", "CHAP_C": "0x" + hex.EncodeToString(myChal)})
	if err == nil {
		r, _ := answerOf(out, "CHAP_R")
		if r == "0x"+hex.EncodeToString(chapMD5Resp(8, cfg.MutualSecret, myChal)) {
			t.Fatal("CHAP_I=010 was read as octal 8")
		}
	}
}
