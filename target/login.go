package target

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Login stages, RFC 7143 section 11.12.
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// loginStatus is a login response status class and detail (section 11.13.5).
type loginStatus struct {
	class, detail byte
	msg           string
}

func (e *loginStatus) Error() string {
	return fmt.Sprintf("login failed (status 0x%02x%02x): %s", e.class, e.detail, e.msg)
}

var (
	statusAuthFailed   = func(m string) *loginStatus { return &loginStatus{0x02, 0x01, m} }
	statusNotAllowed   = func(m string) *loginStatus { return &loginStatus{0x02, 0x02, m} }
	statusNotFound     = func(m string) *loginStatus { return &loginStatus{0x02, 0x03, m} }
	statusMissingParam = func(m string) *loginStatus { return &loginStatus{0x02, 0x07, m} }
	statusInitError    = func(m string) *loginStatus { return &loginStatus{0x02, 0x00, m} }
	statusBadVersion   = func(m string) *loginStatus { return &loginStatus{0x02, 0x05, m} }
)

// login runs the login phase (RFC 7143 section 6) on a new connection. On
// success the connection is bound to a session and in full feature phase.
func (c *conn) login() error {
	var (
		neg        *negotiator
		t          *Target
		isid       [6]byte
		tsih       uint16
		cmdSN      uint32
		authWant   string // "CHAP" when the target requires it
		chap       *chapExchange
		authDone   bool
		secDone    bool
		textBuf    []byte
		stage      = -1
		first      = true // the first complete login text
		headerSeen bool   // the first login PDU's header was taken
	)
	for {
		p, err := c.rd.ReadPDU()
		if err != nil {
			return err
		}
		if p.Opcode() != opLoginReq {
			// Only Login Requests are allowed before full feature phase
			// (section 6.1): fail the login.
			c.sendLoginReject(p, statusInitError("non-login PDU during login"))
			return errors.New("non-login PDU during login phase")
		}
		flags := p.Flags()
		transit := flags&0x80 != 0
		cont := flags&0x40 != 0
		csg := int(flags>>2) & 3
		nsg := int(flags) & 3
		if transit && cont {
			c.sendLoginReject(p, statusInitError("T and C both set"))
			return errors.New("login request with both T and C")
		}
		if !headerSeen {
			headerSeen = true
			vmax, vmin := p.BHS[2], p.BHS[3]
			if vmin > 0 || vmax < vmin {
				c.sendLoginReject(p, statusBadVersion("unsupported version"))
				return fmt.Errorf("unsupported iSCSI version range %d..%d", vmin, vmax)
			}
			copy(isid[:], p.BHS[8:14])
			tsih = p.u16(14)
			c.cid = p.u16(20)
			cmdSN = p.CmdSN()
			c.statSN = p.ExpStatSN()
			neg = newNegotiator(c.srv.cfg.Limits, tsih == 0)
			stage = csg
		}
		if csg != stage && !(csg > stage) {
			c.sendLoginReject(p, statusInitError("login stage went backwards"))
			return errors.New("login stage went backwards")
		}
		stage = csg
		if csg == 2 || csg == stageFullFeature {
			c.sendLoginReject(p, statusInitError("invalid current stage"))
			return fmt.Errorf("invalid login CSG %d", csg)
		}

		// A text that spans PDUs is answered with empty responses until
		// its last part arrives (section 6.2, C bit).
		if len(textBuf)+len(p.Data) > maxTextLen {
			c.sendLoginReject(p, statusInitError("login text too long"))
			return errors.New("login text exceeds limit")
		}
		textBuf = append(textBuf, p.Data...)
		if cont {
			// The text is not complete yet: the first-request checks
			// (names, access, authentication) wait for all of it.
			c.sendLoginResp(p, false, csg, nsg, 0, nil, nil)
			continue
		}
		kvs, err := ParseText(textBuf)
		textBuf = textBuf[:0]
		if err != nil {
			c.sendLoginReject(p, statusInitError(err.Error()))
			return err
		}
		out, rest, nerr := neg.answer(kvs, csg == stageSecurity)
		if nerr != nil {
			var ne *negotiationError
			if errors.As(nerr, &ne) {
				c.sendLoginReject(p, &loginStatus{0x02, ne.detail, ne.msg})
			}
			return nerr
		}
		if first {
			first = false
			c.loginName, c.loginTarget = neg.p.InitiatorName, neg.p.TargetName
			if neg.p.InitiatorName == "" {
				c.sendLoginReject(p, statusMissingParam("InitiatorName missing"))
				return errors.New("login without InitiatorName")
			}
			switch neg.p.SessionType {
			case "Normal":
				if neg.p.TargetName == "" {
					c.sendLoginReject(p, statusMissingParam("TargetName missing"))
					return errors.New("normal session login without TargetName")
				}
				t = c.srv.target(neg.p.TargetName)
				if t == nil {
					c.sendLoginReject(p, statusNotFound("no such target"))
					return fmt.Errorf("initiator %s asked for unknown target %q", neg.p.InitiatorName, neg.p.TargetName)
				}
				if !t.allows(neg.p.InitiatorName) {
					c.sendLoginReject(p, statusNotAllowed("initiator not allowed"))
					return fmt.Errorf("initiator %s is not in the allow list of %s", neg.p.InitiatorName, t.Name)
				}
				// A leading login may be sent elsewhere before any
				// authentication (section 11.13.5); a connection joining
				// a session here stays.
				if tsih == 0 {
					if st, addr := c.redirect(neg.p.InitiatorName, t.Name, isid); st != nil {
						c.sendLoginResp(p, false, csg, 0, 0, []KV{{"TargetAddress", addr}}, st)
						return errRedirected
					}
				}
				if t.chap != nil {
					authWant = "CHAP"
					chap = &chapExchange{cfg: t.chap}
				}
				if t.Alias != "" {
					out = append(out, KV{"TargetAlias", t.Alias})
				}
			case "Discovery":
				if c.srv.cfg.DiscoveryCHAP != nil {
					authWant = "CHAP"
					chap = &chapExchange{cfg: c.srv.cfg.DiscoveryCHAP}
				}
			}
			if neg.p.SessionType == "Normal" {
				// RFC 7143 section 13.9: the tag goes with the first
				// response to a login that names a target.
				out = append(out, KV{"TargetPortalGroupTag", fmt.Sprint(c.srv.cfg.PortalGroup)})
			}
		}

		// Authentication: the keys the negotiator left to us.
		chapKeys := map[string]string{}
		for _, kv := range rest {
			if kv.Key == "AuthMethod" {
				if csg != stageSecurity {
					out = append(out, KV{"AuthMethod", "Irrelevant"})
					continue
				}
				choice := pickAuth(kv.Value, authWant, chap != nil)
				if choice == "" {
					out = append(out, KV{"AuthMethod", "Reject"})
					c.sendLoginReject(p, statusAuthFailed("no acceptable AuthMethod"))
					return fmt.Errorf("initiator %s offered AuthMethod=%s, target requires %s", neg.p.InitiatorName, kv.Value, authWant)
				}
				out = append(out, KV{"AuthMethod", choice})
				if choice == "None" {
					authDone = true
				} else if chap == nil {
					// Unreachable: pickAuth offers CHAP only with a config.
					return errors.New("CHAP chosen without config")
				}
				continue
			}
			chapKeys[kv.Key] = kv.Value
		}
		if len(chapKeys) > 0 {
			if chap == nil || csg != stageSecurity {
				c.sendLoginReject(p, statusAuthFailed("unexpected CHAP keys"))
				return errors.New("CHAP keys without CHAP negotiation")
			}
			var ticket *authTicket
			if chap.state == chapChallenged {
				// This request answers the challenge: one guess.
				if ticket, err = c.srv.auth.admit(c.ctx, neg.p.InitiatorName, c.remoteHost()); err != nil {
					c.sendLoginReject(p, statusAuthFailed("authentication failed"))
					return fmt.Errorf("CHAP response not checked: %w", err)
				}
			}
			ans, err := chap.step(chapKeys)
			if err != nil {
				c.sendLoginReject(p, statusAuthFailed("authentication failed"))
				return err
			}
			if ticket != nil {
				ticket.Succeeded()
			}
			out = append(out, ans...)
			if chap.state == chapDone {
				authDone = true
			}
		}
		if authWant == "" && csg != stageSecurity {
			authDone = true
		}

		granted := false
		if transit {
			switch {
			case csg == stageSecurity && authWant != "" && !authDone:
				// The initiator may not skip authentication.
				if chap != nil && chap.state == chapStart && len(chapKeys) == 0 && !hasKey(kvs, "AuthMethod") {
					c.sendLoginReject(p, statusAuthFailed("authentication required"))
					return fmt.Errorf("initiator %s tried to skip CHAP", neg.p.InitiatorName)
				}
			case nsg == stageOperational && csg == stageSecurity,
				nsg == stageFullFeature && csg <= stageOperational:
				granted = true
			default:
				c.sendLoginReject(p, statusInitError("invalid next stage"))
				return fmt.Errorf("invalid login transition %d->%d", csg, nsg)
			}
		}
		if csg == stageSecurity && granted {
			if authWant != "" && !authDone {
				c.sendLoginReject(p, statusAuthFailed("authentication required"))
				return errors.New("transit without authentication")
			}
			secDone = true
		}
		if csg == stageOperational && authWant != "" && !secDone {
			c.sendLoginReject(p, statusAuthFailed("authentication required"))
			return fmt.Errorf("initiator %s skipped the security stage", neg.p.InitiatorName)
		}
		if !granted || nsg != stageFullFeature {
			c.sendLoginResp(p, granted, csg, nsg, 0, out, nil)
			continue
		}

		// Transition to full feature phase.
		out = neg.finish(out)
		c.params = neg.p
		release, st := c.srv.reserveMemory(connMemory(neg.p, c.srv.cfg.Limits.QueueDepth))
		if st != nil {
			c.sendLoginReject(p, st)
			return st
		}
		// Set before the connection joins a session, where Sessions
		// may read it.
		c.since = time.Now()
		sess, st := c.srv.bindSession(c, neg.p, t, isid, tsih, cmdSN)
		if st != nil {
			release()
			c.sendLoginReject(p, st)
			return st
		}
		// The connection's context ends with the connection.
		context.AfterFunc(c.ctx, release)
		c.sess = sess
		if tsih == 0 {
			tsih = sess.tsih
		} else {
			c.params = sess.params
			c.params.HeaderDigest, c.params.DataDigest = neg.p.HeaderDigest, neg.p.DataDigest
			c.params.InitiatorRecvDSL = neg.p.InitiatorRecvDSL
		}
		c.sendLoginResp(p, true, csg, nsg, tsih, out, nil)
		return nil
	}
}

func hasKey(kvs []KV, k string) bool {
	for _, kv := range kvs {
		if kv.Key == k {
			return true
		}
	}
	return false
}

// pickAuth chooses from the initiator's AuthMethod list: CHAP when the
// target requires it, otherwise None if offered, else CHAP if configured.
func pickAuth(offered, want string, haveCHAP bool) string {
	list := strings.Split(offered, ",")
	has := func(m string) bool {
		for _, x := range list {
			if x == m {
				return true
			}
		}
		return false
	}
	if want == "CHAP" {
		if has("CHAP") {
			return "CHAP"
		}
		return ""
	}
	if has("None") {
		return "None"
	}
	if haveCHAP && has("CHAP") {
		return "CHAP"
	}
	return ""
}

func (c *conn) sendLoginResp(req *PDU, transit bool, csg, nsg int, tsih uint16, kvs []KV, st *loginStatus) {
	r := &PDU{}
	r.BHS[0] = opLoginRsp
	flags := byte(csg&3) << 2
	if transit {
		flags |= 0x80 | byte(nsg&3)
	}
	r.BHS[1] = flags
	copy(r.BHS[8:14], req.BHS[8:14])
	r.put16(14, tsih)
	r.put32(16, req.ITT())
	if st != nil {
		r.BHS[36], r.BHS[37] = st.class, st.detail
	}
	r.Data = EncodeText(kvs)
	cmdSN := req.CmdSN()
	exp, max := cmdSN, cmdSN+uint32(max(c.srv.cfg.Limits.QueueDepth, 1))-1
	if c.sess != nil {
		exp, max = c.sess.window()
	}
	r.put32(24, c.statSN)
	c.statSN++
	r.put32(28, exp)
	r.put32(32, max)
	c.writeDirect(r)
}

// sendLoginReject answers req with a failure status; serve logs it once
// the login has returned its cause.
func (c *conn) sendLoginReject(req *PDU, st *loginStatus) {
	c.rejected = st
	flags := req.Flags()
	c.sendLoginResp(req, false, int(flags>>2)&3, 0, 0, nil, st)
}
