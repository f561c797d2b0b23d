package conf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxISCSINameLen is the longest iSCSI name, in bytes (RFC 7143 §4.2.7).
const maxISCSINameLen = 223

// checkMemberName enforces [a-z0-9-]{1,63}: a name that fits a DNS label,
// a file name and a metric label without escaping.
// CheckMemberName checks a cluster member's name (also a certificate's,
// `metrolun certs`): 1 to 63 of a-z, 0-9 and -, so that it is a DNS label.
func CheckMemberName(s string) error { return checkMemberName(s) }

func checkMemberName(s string) error {
	if s == "" {
		return errors.New("is required; expected 1 to 63 of a-z, 0-9 and -")
	}
	if len(s) > 63 {
		return fmt.Errorf("is %d characters long; expected 1 to 63 of a-z, 0-9 and -", len(s))
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("%q contains %q; expected 1 to 63 of a-z, 0-9 and -", s, r)
		}
	}
	return nil
}

// checkISCSIName checks an iSCSI name in one of the three formats of
// RFC 7143 §4.2.7: iqn.yyyy-mm.reversed.domain[:anything],
// eui.<16 hex digits> or naa.<16 or 32 hex digits>.
//
// Names are compared after the stringprep of RFC 3722, which lower-cases
// them, so an upper-case iqn name would never match what an initiator
// sends; it is rejected rather than silently folded. Non-ASCII characters,
// which the iSCSI stringprep profile allows, are not accepted here.
func checkISCSIName(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty; expected an iqn., eui. or naa. name")
	case len(s) > maxISCSINameLen:
		return fmt.Errorf("is %d bytes long; an iSCSI name is at most %d bytes (RFC 7143 §4.2.7)", len(s), maxISCSINameLen)
	case strings.HasPrefix(s, "iqn."):
		return checkIQN(s)
	case strings.HasPrefix(s, "eui."):
		if !isHex(s[4:]) || len(s) != 4+16 {
			return fmt.Errorf("%q: expected eui. followed by 16 hex digits (RFC 7143 §4.2.7.5)", s)
		}
		return nil
	case strings.HasPrefix(s, "naa."):
		if !isHex(s[4:]) || (len(s) != 4+16 && len(s) != 4+32) {
			return fmt.Errorf("%q: expected naa. followed by 16 or 32 hex digits (RFC 7143 §4.2.7.6)", s)
		}
		return nil
	default:
		if l := strings.ToLower(s); l != s && checkISCSIName(l) == nil {
			return fmt.Errorf("%q: iSCSI names are lower case; write %q", s, l)
		}
		return fmt.Errorf("%q: expected a name starting with iqn., eui. or naa. (RFC 7143 §4.2.7)", s)
	}
}

func checkIQN(s string) error {
	const form = "expected iqn.yyyy-mm.reversed.domain[:anything] (RFC 7143 §4.2.7.4)"
	for _, r := range s {
		switch {
		case r >= 'A' && r <= 'Z':
			return fmt.Errorf("%q: iSCSI names are lower case; write %q", s, strings.ToLower(s))
		case !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == ':'):
			return fmt.Errorf("%q contains %q; expected only a-z, 0-9, '-', '.' and ':'", s, r)
		}
	}
	rest := s[len("iqn."):]
	if len(rest) < len("yyyy-mm.") || !isDigits(rest[0:4]) || rest[4] != '-' || !isDigits(rest[5:7]) || rest[7] != '.' {
		return fmt.Errorf("%q: %s", s, form)
	}
	if m, _ := strconv.Atoi(rest[5:7]); m < 1 || m > 12 {
		return fmt.Errorf("%q: month %s is not 01..12; %s", s, rest[5:7], form)
	}
	authority, unique, hasColon := strings.Cut(rest[8:], ":")
	for _, label := range strings.Split(authority, ".") {
		if label == "" {
			return fmt.Errorf("%q: the reversed domain name has an empty label; %s", s, form)
		}
	}
	if hasColon && unique == "" {
		return fmt.Errorf("%q: nothing follows ':'; %s", s, form)
	}
	return nil
}

func isHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return s != ""
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// NormalizePortal checks a listen entry and returns it as host:port. A
// missing port becomes DefaultPort, an IP address is written in its
// canonical form and a host name is lower-cased. An empty host means every
// address. Nothing is resolved.
func NormalizePortal(s string) (string, error) {
	const form = "expected host:port, host, [ipv6]:port or [ipv6]"
	if s == "" {
		return "", errors.New("empty portal; " + form)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// No port: a bare host, a bracketed IPv6 address or a bare one.
		host, port = s, ""
		if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
			host = host[1 : len(host)-1]
			if _, err := netip.ParseAddr(host); err != nil || !strings.Contains(host, ":") {
				return "", fmt.Errorf("%q: %q is not an IPv6 address; %s", s, host, form)
			}
		} else if strings.Contains(host, ":") {
			if _, err := netip.ParseAddr(host); err != nil {
				return "", fmt.Errorf("%q: %s", s, form)
			}
		}
	}
	p := DefaultPort
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || !isDigits(port) || n < 1 || n > 65535 {
			return "", fmt.Errorf("%q: port %q is not a number 1..65535", s, port)
		}
		p = n
	}
	if host != "" {
		if a, err := netip.ParseAddr(host); err == nil {
			host = a.String()
		} else if err := checkHostname(host); err != nil {
			return "", fmt.Errorf("%q: %v", s, err)
		} else {
			host = strings.ToLower(host)
		}
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// normalizeHostPort checks an address metrolun binds or dials between
// members and returns it normalised as NormalizePortal does. Unlike a
// portal, it must name its port: there is no well-known one. An empty host
// ("":7400) means every local address and suits only a listen address.
func normalizeHostPort(s string) (string, error) {
	if s == "" {
		return "", errors.New(`empty address; expected host:port such as "192.0.2.1:7400" or "[2001:db8::1]:7400"`)
	}
	if _, port, err := net.SplitHostPort(s); err != nil || port == "" {
		return "", fmt.Errorf(`%q: expected host:port with an explicit port, such as "192.0.2.1:7400" or "[2001:db8::1]:7400"`, s)
	}
	return NormalizePortal(s)
}

// isWildcardHost reports whether host, as normalizeHostPort leaves it,
// means every local address: "", 0.0.0.0 or ::.
func isWildcardHost(host string) bool {
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsUnspecified()
}

// checkHostname accepts a DNS name of letters, digits and hyphens
// (RFC 1123 §2.1).
func checkHostname(h string) error {
	if len(h) > 253 {
		return errors.New("host name is longer than 253 characters")
	}
	labels := strings.Split(strings.TrimSuffix(h, "."), ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("host %q is neither an IP address nor a host name", h)
		}
		for i, r := range l {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' && i > 0 && i < len(l)-1
			if !ok {
				return fmt.Errorf("host %q is neither an IP address nor a host name", h)
			}
		}
	}
	// An all-numeric last label is a mistyped IP address, not a name.
	if isDigits(labels[len(labels)-1]) {
		return fmt.Errorf("host %q is not a valid IP address", h)
	}
	return nil
}

// parseLUNLabel reads the label of a lun block: a decimal LUN number
// without sign or leading zeros, 0..16383 (the 14 bits of the flat space
// LUN addressing method of SAM).
func parseLUNLabel(s string) (int, error) {
	const form = "expected a LUN number 0..16383 written in decimal, such as \"0\""
	if !isDigits(s) || len(s) > 1 && s[0] == '0' || len(s) > 5 {
		return 0, fmt.Errorf("%q: %s", s, form)
	}
	n, _ := strconv.Atoi(s)
	if n > maxLUN {
		return 0, fmt.Errorf("%q: %s", s, form)
	}
	return n, nil
}

const maxLUN = 16383

// checkPrintableASCII accepts what SPC-4 allows in the ASCII fields of
// INQUIRY and VPD data: bytes 0x20 to 0x7e.
func checkPrintableASCII(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("is %d characters long; at most %d are allowed", len(s), max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return fmt.Errorf("%q contains a byte outside printable ASCII (0x20-0x7e)", s)
		}
	}
	return nil
}

// checkText accepts a UTF-8 text value for a login key (RFC 7143 §6.1):
// valid UTF-8, no control characters, at most max bytes.
func checkText(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("is %d bytes long; at most %d are allowed", len(s), max)
	}
	if !utf8.ValidString(s) {
		return errors.New("is not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return errors.New("contains a control character")
		}
	}
	return nil
}
