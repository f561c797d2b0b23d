package target

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Login redirection (RFC 7143 section 11.13.5): a target that
// should not serve a session answers the initiator's first login request
// with status class 1 and a TargetAddress key naming where to log in
// instead, then closes the connection. The initiator retries there; a
// permanent redirect (detail 0x02) tells it to update its records, a
// temporary one (0x01) to come back here next time.

// RedirectFunc decides whether a normal session's login should go
// elsewhere. It is called once per leading login (a new session, not a
// connection joining one, never discovery) after the target is known to
// exist and to admit the initiator, and before authentication, with the
// initiator's name, the target's and the ISID (12 hex digits; the same
// ISID as a live session of the initiator reinstates it, RFC 7143
// section 6.3.5). ok false means log in here. addr is host[:port] (host a DNS name, an IPv4
// address or a bracketed IPv6 address; port 3260 when omitted); a
// trailing ",tag" portal group tag is dropped, since a redirect carries
// none (section 13.8). It runs on the login path of every connection, so
// it must be cheap and may block only briefly and for a bounded time (the
// login's own deadline runs meanwhile); it may be called concurrently.
type RedirectFunc func(initiator, target, isid string) (addr string, permanent bool, ok bool)

// Login response status details of class 1 (section 11.13.5).
const (
	statusClassRedirect = 0x01
	redirectTemporary   = 0x01
	redirectPermanent   = 0x02
)

// errRedirected ends a login that was redirected; serve closes the
// connection, as section 11.13.5 requires after a non-zero status class.
var errRedirected = errors.New("login redirected")

// defaultISCSIPort is the IANA port a TargetAddress without one means.
const defaultISCSIPort = 3260

// redirect asks the server's RedirectFunc about a login and returns the
// status and TargetAddress to answer with, or nil to log in here. A hook
// that panics, or an address that is malformed or names the portal the
// initiator is already on (a loop), is logged and the login goes on here:
// a bad redirect must never lock initiators out.
func (c *conn) redirect(initiator, target string, isid [6]byte) (*loginStatus, string) {
	fn := c.srv.cfg.Redirect
	if fn == nil {
		return nil, ""
	}
	addr, permanent, ok, err := callRedirect(fn, initiator, target, hex6(isid))
	if !ok && err == nil {
		return nil, ""
	}
	to := ""
	if err == nil {
		to, err = redirectAddress(addr)
	}
	if err == nil && c.isOwnPortal(to) {
		err = errors.New("it is the portal the initiator is on")
	}
	if err != nil {
		c.log.Warn("redirect refused, logging in here", "initiator", initiator, "target", target, "address", addr, "error", err)
		return nil, ""
	}
	st := &loginStatus{statusClassRedirect, redirectTemporary, "target moved temporarily"}
	if permanent {
		st = &loginStatus{statusClassRedirect, redirectPermanent, "target moved permanently"}
	}
	c.log.Info("login redirected", "initiator", initiator, "target", target, "to", to, "permanent", permanent)
	return st, to
}

// callRedirect calls fn, turning a panic into an error.
func callRedirect(fn RedirectFunc, initiator, target, isid string) (addr string, permanent, ok bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("redirect hook panicked: %v", r)
		}
	}()
	addr, permanent, ok = fn(initiator, target, isid)
	return addr, permanent, ok, nil
}

// redirectAddress checks addr and returns it as a redirect's TargetAddress
// value: domainname[:port] (section 13.8), without a portal group tag.
func redirectAddress(addr string) (string, error) {
	if i := strings.LastIndexByte(addr, ','); i >= 0 {
		if _, err := strconv.ParseUint(addr[i+1:], 10, 16); err != nil {
			return "", fmt.Errorf("portal group tag %q is not a number in 0..65535", addr[i+1:])
		}
		addr = addr[:i]
	}
	if addr == "" {
		return "", errors.New("empty address")
	}
	// Section 6.1: a value is at most 255 bytes unless its key says
	// otherwise, and TargetAddress does not.
	if len(addr) > 255 {
		return "", fmt.Errorf("address is %d bytes, more than 255", len(addr))
	}
	var host, port string
	var hasPort bool
	if strings.HasPrefix(addr, "[") {
		end := strings.IndexByte(addr, ']')
		if end < 0 {
			return "", errors.New("unclosed '[' in IPv6 address")
		}
		host = addr[1:end]
		rest := addr[end+1:]
		port, hasPort = strings.CutPrefix(rest, ":")
		if rest != "" && !hasPort {
			return "", fmt.Errorf("unexpected %q after the IPv6 address", rest)
		}
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil {
			return "", fmt.Errorf("%q is not an IPv6 address", host)
		}
	} else {
		if strings.Count(addr, ":") > 1 {
			return "", errors.New("an IPv6 address must be in brackets")
		}
		host, port, hasPort = strings.Cut(addr, ":")
		if err := checkHostName(host); err != nil {
			return "", err
		}
	}
	if hasPort {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return "", fmt.Errorf("port %q is not in 1..65535", port)
		}
	}
	return addr, nil
}

// checkHostName accepts a dotted-decimal IPv4 address or a DNS name of
// letters, digits and hyphens (RFC 1123 labels).
func checkHostName(h string) error {
	if h == "" {
		return errors.New("empty host")
	}
	if net.ParseIP(h) != nil {
		return nil
	}
	numeric := true
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host %q is not a valid name", h)
		}
		for i := 0; i < len(label); i++ {
			ch := label[i]
			if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-') {
				return fmt.Errorf("host %q has invalid character %q", h, ch)
			}
			if ch < '0' || ch > '9' {
				numeric = false
			}
		}
	}
	if numeric {
		return fmt.Errorf("host %q is neither an IPv4 address nor a name", h)
	}
	return nil
}

// isOwnPortal reports whether addr (as redirectAddress returns it) is
// the address this connection came in on or one of the server's portals:
// the hook is asked again there, so the initiator would go round. Names
// are compared as written, not resolved: that would block on DNS.
func (c *conn) isOwnPortal(addr string) bool {
	if sameAddr(addr, c.nc.LocalAddr().String()) {
		return true
	}
	for _, p := range c.srv.cfg.Portals {
		if sameAddr(addr, p) {
			return true
		}
	}
	return false
}

func sameAddr(a, b string) bool {
	ha, pa := splitPortal(a)
	hb, pb := splitPortal(b)
	if pa != pb {
		return false
	}
	if ia, ib := net.ParseIP(ha), net.ParseIP(hb); ia != nil && ib != nil {
		return ia.Equal(ib)
	}
	return strings.EqualFold(ha, hb)
}

// splitPortal splits host[:port], the port defaulting to 3260.
func splitPortal(a string) (host, port string) {
	if h, p, err := net.SplitHostPort(a); err == nil {
		return h, p
	}
	return strings.TrimSuffix(strings.TrimPrefix(a, "["), "]"), strconv.Itoa(defaultISCSIPort)
}
