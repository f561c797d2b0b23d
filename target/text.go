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

// maxTextAnswer bounds a text answer kept for continuation: a SendTargets
// answer grows with targets and portals, both bounded by configuration.
const maxTextAnswer = 1 << 20

// textAnswer is a Text Response longer than the initiator's
// MaxRecvDataSegmentLength, sent one PDU per Text Request (RFC 7143
// section 11.11.1: C=1 and a Target Transfer Tag on every PDU but the
// last; the initiator asks for the next with an empty Text Request that
// carries the tag, section 11.10.4).
type textAnswer struct {
	itt  uint32
	ttt  uint32
	rest []byte
}

// textRequestIn is a Text Request still being received: the initiator
// sent it with C=1 (RFC 7143 section 11.10.2) and continues it in further
// requests with the same Initiator Task Tag and the Target Transfer Tag
// of our empty answer. buf holds the text so far, at most maxTextLen.
type textRequestIn struct {
	itt uint32
	ttt uint32
	buf []byte
}

// takeTTT returns a fresh Target Transfer Tag (never 0xffffffff or 0).
func (c *conn) takeTTT() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	ttt := c.nextTTT
	c.nextTTT++
	if c.nextTTT == 0xffffffff {
		c.nextTTT = 1
	}
	return ttt
}

// textRequest handles a Text Request (RFC 7143 section 11.10) on the
// reader goroutine.
func (c *conn) textRequest(p *PDU) {
	if !c.sess.admit(p.CmdSN(), p.Immediate()) {
		return
	}
	defer c.sess.done()
	cont := p.Flags()&0x40 != 0
	if cont && p.Final() {
		// Section 11.10.2: a request with C=1 has F=0.
		c.textIn = nil
		c.reject(p, rejectProtocol)
		return
	}
	var text []byte
	if ttt := p.TTT(); ttt != 0xffffffff {
		if in := c.textIn; in != nil && in.ttt == ttt {
			// The next part of a request that spans PDUs.
			c.textIn = nil
			if in.itt != p.ITT() {
				c.reject(p, rejectInvalidField)
				return
			}
			if len(in.buf)+len(p.Data) > maxTextLen {
				c.log.Warn("text request too long, rejected", "limit", maxTextLen)
				c.reject(p, rejectProtocol)
				return
			}
			text = append(in.buf, p.Data...)
		} else {
			// The initiator wants the next part of an answer.
			a := c.text
			if a == nil || a.ttt != ttt || a.itt != p.ITT() {
				c.reject(p, rejectInvalidField)
				return
			}
			c.sendTextPart(p)
			return
		}
	} else {
		// A request with TTT 0xffffffff starts afresh: an answer still
		// being sent, or a request still being received, is dropped
		// (section 11.10.4).
		c.text, c.textIn = nil, nil
		if len(p.Data) > maxTextLen {
			c.reject(p, rejectProtocol)
			return
		}
		text = p.Data
		if cont {
			text = append([]byte(nil), text...)
		}
	}
	if cont {
		// Section 11.10.2: the text continues in the next request, which
		// carries the tag of this empty answer (section 11.10.4).
		c.textIn = &textRequestIn{itt: p.ITT(), ttt: c.takeTTT(), buf: text}
		r := &PDU{}
		r.BHS[0] = opTextRsp
		copy(r.BHS[8:16], p.BHS[8:16])
		r.put32(16, p.ITT())
		r.put32(20, c.textIn.ttt)
		c.send(r, txStatus, nil)
		return
	}
	kvs, err := ParseText(text)
	if err != nil {
		c.reject(p, rejectProtocol)
		return
	}
	var out []KV
	for _, kv := range kvs {
		switch kv.Key {
		case "SendTargets":
			if c.sess.params.SessionType == "Normal" && kv.Value == "All" {
				out = append(out, KV{"SendTargets", "Reject"})
				continue
			}
			out = append(out, c.srv.sendTargets(kv.Value, c.params.InitiatorName, c.nc.LocalAddr())...)
		default:
			if _, known := keyDefs[kv.Key]; known {
				// Renegotiation in full feature phase is not offered.
				out = append(out, KV{kv.Key, "Reject"})
			} else {
				out = append(out, KV{kv.Key, "NotUnderstood"})
			}
		}
	}
	data := EncodeText(out)
	if len(data) > maxTextAnswer {
		c.log.Warn("text answer too long, sent empty", "bytes", len(data), "limit", maxTextAnswer)
		data = nil
	}
	c.text = &textAnswer{itt: p.ITT(), rest: data}
	c.sendTextPart(p)
}

// sendTextPart sends the next part of c.text in answer to p: at most
// MaxRecvDataSegmentLength bytes, cut after a whole key=value pair when
// one fits (a pair may span PDUs, section 6.1, but not every initiator
// joins them).
func (c *conn) sendTextPart(p *PDU) {
	a := c.text
	n := textCut(a.rest, c.params.InitiatorRecvDSL)
	r := &PDU{}
	r.BHS[0] = opTextRsp
	copy(r.BHS[8:16], p.BHS[8:16])
	r.put32(16, a.itt)
	r.Data = a.rest[:n]
	a.rest = a.rest[n:]
	if len(a.rest) == 0 {
		r.BHS[1] = 0x80 // F: the answer is complete
		r.put32(20, 0xffffffff)
		c.text = nil
	} else {
		r.BHS[1] = 0x40 // C: more follows
		a.ttt = c.takeTTT()
		r.put32(20, a.ttt)
	}
	c.send(r, txStatus, nil)
}

// textCut returns how many bytes of data go in one PDU of at most max
// bytes: all of them, or up to the last pair's NUL that fits, or max.
func textCut(data []byte, max int) int {
	if len(data) <= max {
		return len(data)
	}
	if i := bytes.LastIndexByte(data[:max], 0); i >= 0 {
		return i + 1
	}
	return max
}
