package target

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// KV is one key=value pair of a login or text data segment.
type KV struct{ Key, Value string }

// Text limits. RFC 7143 section 6.1: keys are at most 63 bytes, values at
// most 255 bytes unless a key says otherwise (CHAP_C and CHAP_R are binary
// values that may be larger, and SendTargets answers are long).
const (
	maxKeyLen   = 63
	maxValueLen = 8192
	maxPairs    = 256
	// maxTextLen bounds a whole (possibly multi-PDU) text or login request.
	maxTextLen = 64 * 1024
)

// ParseText splits a data segment of NUL-terminated key=value pairs. It
// rejects what RFC 7143 section 6.1 forbids: a pair without '=', an empty
// or oversized key, a key with characters outside [A-Za-z0-9.\-+@_].
func ParseText(data []byte) ([]KV, error) {
	var out []KV
	for len(data) > 0 {
		i := bytes.IndexByte(data, 0)
		var pair []byte
		if i < 0 {
			// The last pair must be NUL-terminated; tolerate a missing
			// terminator the way most initiators' peers do.
			pair, data = data, nil
		} else {
			pair, data = data[:i], data[i+1:]
		}
		if len(pair) == 0 {
			continue
		}
		eq := bytes.IndexByte(pair, '=')
		if eq < 0 {
			return nil, fmt.Errorf("text pair %q has no '='", truncate(pair))
		}
		key, val := pair[:eq], pair[eq+1:]
		if len(key) == 0 || len(key) > maxKeyLen {
			return nil, fmt.Errorf("text key %q: length %d not in 1..%d", truncate(key), len(key), maxKeyLen)
		}
		for _, c := range key {
			if !isKeyChar(c) {
				return nil, fmt.Errorf("text key %q has invalid character %q", truncate(key), c)
			}
		}
		if len(val) > maxValueLen {
			return nil, fmt.Errorf("value of %s is %d bytes, more than %d", key, len(val), maxValueLen)
		}
		if len(out) == maxPairs {
			return nil, fmt.Errorf("more than %d text pairs", maxPairs)
		}
		out = append(out, KV{string(key), string(val)})
	}
	return out, nil
}

func isKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '-' || c == '+' || c == '@' || c == '_'
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// EncodeText is the inverse of ParseText.
func EncodeText(kvs []KV) []byte {
	var b []byte
	for _, kv := range kvs {
		b = append(b, kv.Key...)
		b = append(b, '=')
		b = append(b, kv.Value...)
		b = append(b, 0)
	}
	return b
}

// parseNumber reads a decimal or 0x-hex numerical value (RFC 7143 section 6.1).
func parseNumber(s string) (uint64, error) {
	if strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X") {
		return strconv.ParseUint(s[2:], 16, 64)
	}
	return strconv.ParseUint(s, 10, 64)
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}
