package target

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// CHAPConfig holds the secrets for one-way and, optionally, mutual CHAP
// (RFC 7143 section 12.1.3, RFC 1994). Secrets are never logged.
type CHAPConfig struct {
	Username       string
	Secret         string
	MutualUsername string
	MutualSecret   string
}

const chapMD5 = "5" // CHAP_A value for MD5, the only algorithm RFC 7143 requires

type chapState int

const (
	chapStart      chapState = iota // AuthMethod=CHAP agreed, waiting for CHAP_A
	chapChallenged                  // challenge sent, waiting for CHAP_N/CHAP_R
	chapDone
)

// chapExchange is the target side of one CHAP authentication.
type chapExchange struct {
	cfg       *CHAPConfig
	state     chapState
	id        byte
	challenge []byte
}

var errCHAPFailed = errors.New("CHAP authentication failed")

// step consumes the CHAP keys of one login request and returns the keys to
// answer with. It returns errCHAPFailed (wrapped with a reason that holds
// no secret) when the initiator cannot authenticate.
func (c *chapExchange) step(kvs map[string]string) ([]KV, error) {
	switch c.state {
	case chapStart:
		a, ok := kvs["CHAP_A"]
		if !ok {
			return nil, nil // may arrive in the next PDU
		}
		if pickList(a, []string{chapMD5}) == "" {
			return []KV{{"CHAP_A", "Reject"}}, fmt.Errorf("%w: no supported CHAP_A in %q", errCHAPFailed, a)
		}
		var b [17]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		c.id = b[0]
		c.challenge = append([]byte(nil), b[1:]...)
		c.state = chapChallenged
		return []KV{
			{"CHAP_A", chapMD5},
			{"CHAP_I", strconv.Itoa(int(c.id))},
			{"CHAP_C", "0x" + hex.EncodeToString(c.challenge)},
		}, nil
	case chapChallenged:
		name, okN := kvs["CHAP_N"]
		resp, okR := kvs["CHAP_R"]
		if !okN || !okR {
			return nil, fmt.Errorf("%w: CHAP_N and CHAP_R missing", errCHAPFailed)
		}
		r, err := decodeCHAPBinary(resp)
		if err != nil {
			return nil, fmt.Errorf("%w: CHAP_R: %v", errCHAPFailed, err)
		}
		want := chapResponse(c.id, c.cfg.Secret, c.challenge)
		if subtle.ConstantTimeCompare([]byte(name), []byte(c.cfg.Username)) != 1 ||
			subtle.ConstantTimeCompare(r, want) != 1 {
			return nil, fmt.Errorf("%w: wrong name or response for user %q", errCHAPFailed, name)
		}
		c.state = chapDone
		ci, hasI := kvs["CHAP_I"]
		cc, hasC := kvs["CHAP_C"]
		if !hasI && !hasC {
			// One-way CHAP. A target configured for mutual CHAP still
			// admits an initiator that does not ask it to prove itself.
			return nil, nil
		}
		if c.cfg.MutualUsername == "" || !hasI || !hasC {
			return nil, fmt.Errorf("%w: initiator asked for mutual CHAP, which is not configured", errCHAPFailed)
		}
		id, err := parseNumber(ci)
		if err != nil || id > 255 || len(ci) > 1 && ci[0] == '0' && ci[1] != 'x' && ci[1] != 'X' {
			return nil, fmt.Errorf("%w: CHAP_I %q", errCHAPFailed, ci)
		}
		chal, err := decodeCHAPBinary(cc)
		if err != nil || len(chal) == 0 {
			return nil, fmt.Errorf("%w: CHAP_C: bad value", errCHAPFailed)
		}
		// A reflected challenge lets an attacker use us as an oracle
		// (RFC 7143 section 12.1.3).
		if subtle.ConstantTimeCompare(chal, c.challenge) == 1 {
			return nil, fmt.Errorf("%w: initiator reflected the target's challenge", errCHAPFailed)
		}
		return []KV{
			{"CHAP_N", c.cfg.MutualUsername},
			{"CHAP_R", "0x" + hex.EncodeToString(chapResponse(byte(id), c.cfg.MutualSecret, chal))},
		}, nil
	}
	return nil, nil
}

func chapResponse(id byte, secret string, challenge []byte) []byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeCHAPBinary decodes a binary value in hex (0x) or base64 (0b) form
// (RFC 7143 section 6.1).
func decodeCHAPBinary(s string) ([]byte, error) {
	switch {
	case strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X"):
		h := s[2:]
		if len(h)%2 == 1 {
			h = "0" + h
		}
		return hex.DecodeString(h)
	case strings.HasPrefix(s, "0b") || strings.HasPrefix(s, "0B"):
		return base64.StdEncoding.DecodeString(s[2:])
	}
	return nil, errors.New("binary value must start with 0x or 0b")
}
