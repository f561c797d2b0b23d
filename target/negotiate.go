package target

import (
	"strconv"
	"strings"
)

// Limits are the operational values the target offers; negotiation never
// yields anything beyond them. They come from the config.
type Limits struct {
	MaxRecvDataSegmentLength int // what this target accepts per PDU
	MaxBurstLength           int
	FirstBurstLength         int
	MaxOutstandingR2T        int
	ImmediateData            bool
	InitialR2T               bool
	HeaderDigest             []string // offered, e.g. {"None","CRC32C"}
	DataDigest               []string
	QueueDepth               int // CmdSN window per session
}

// DefaultLimits are sane values for a LAN target.
func DefaultLimits() Limits {
	return Limits{
		MaxRecvDataSegmentLength: 256 * 1024,
		MaxBurstLength:           1024 * 1024,
		FirstBurstLength:         256 * 1024,
		MaxOutstandingR2T:        1,
		ImmediateData:            true,
		InitialR2T:               false,
		HeaderDigest:             []string{"None", "CRC32C"},
		DataDigest:               []string{"None", "CRC32C"},
		QueueDepth:               128,
	}
}

// Params are the values in force for a session and connection after
// negotiation. Zero values are never used: newParams fills the RFC 7143
// defaults (section 13).
type Params struct {
	HeaderDigest        bool
	DataDigest          bool
	MaxConnections      int
	InitialR2T          bool
	ImmediateData       bool
	InitiatorRecvDSL    int // the initiator's MaxRecvDataSegmentLength: bounds what we send
	TargetRecvDSL       int // ours: bounds what we accept
	MaxBurstLength      int
	FirstBurstLength    int
	DefaultTime2Wait    int
	DefaultTime2Retain  int
	MaxOutstandingR2T   int
	DataPDUInOrder      bool
	DataSequenceInOrder bool
	ErrorRecoveryLevel  int

	SessionType    string // "Normal" or "Discovery"
	InitiatorName  string
	InitiatorAlias string
	TargetName     string
}

func newParams(l Limits) Params {
	return Params{
		MaxConnections:      1,
		InitialR2T:          true,
		ImmediateData:       true,
		InitiatorRecvDSL:    8192,
		TargetRecvDSL:       l.MaxRecvDataSegmentLength,
		MaxBurstLength:      262144,
		FirstBurstLength:    65536,
		DefaultTime2Wait:    2,
		DefaultTime2Retain:  20,
		MaxOutstandingR2T:   1,
		DataPDUInOrder:      true,
		DataSequenceInOrder: true,
		SessionType:         "Normal",
	}
}

type keyKind int

const (
	kindDeclare keyKind = iota // declarative: no answer needed
	kindList                   // answer is the first offered value we accept
	kindAnd                    // Boolean, result is the AND of both sides
	kindOr                     // Boolean, result is the OR of both sides
	kindMin                    // numerical, result is the smaller
	kindMax                    // numerical, result is the larger
)

type keyDef struct {
	kind     keyKind
	min, max uint64
	security bool // only in the security stage
	leading  bool // only on the leading connection, in the first login
}

// keyDefs is RFC 7143 section 13 plus iSCSIProtocolLevel (RFC 7144). A key
// that is not here is answered NotUnderstood.
var keyDefs = map[string]keyDef{
	"AuthMethod":               {kind: kindList, security: true},
	"HeaderDigest":             {kind: kindList},
	"DataDigest":               {kind: kindList},
	"MaxConnections":           {kind: kindMin, min: 1, max: 65535, leading: true},
	"SendTargets":              {kind: kindDeclare},
	"TargetName":               {kind: kindDeclare},
	"InitiatorName":            {kind: kindDeclare},
	"TargetAlias":              {kind: kindDeclare},
	"InitiatorAlias":           {kind: kindDeclare},
	"TargetAddress":            {kind: kindDeclare},
	"TargetPortalGroupTag":     {kind: kindDeclare},
	"InitialR2T":               {kind: kindOr, leading: true},
	"ImmediateData":            {kind: kindAnd, leading: true},
	"MaxRecvDataSegmentLength": {kind: kindDeclare, min: 512, max: 1<<24 - 1},
	"MaxBurstLength":           {kind: kindMin, min: 512, max: 1<<24 - 1, leading: true},
	"FirstBurstLength":         {kind: kindMin, min: 512, max: 1<<24 - 1, leading: true},
	"DefaultTime2Wait":         {kind: kindMax, min: 0, max: 3600, leading: true},
	"DefaultTime2Retain":       {kind: kindMin, min: 0, max: 3600, leading: true},
	"MaxOutstandingR2T":        {kind: kindMin, min: 1, max: 65535, leading: true},
	"DataPDUInOrder":           {kind: kindOr, leading: true},
	"DataSequenceInOrder":      {kind: kindOr, leading: true},
	"ErrorRecoveryLevel":       {kind: kindMin, min: 0, max: 2, leading: true},
	"SessionType":              {kind: kindDeclare, leading: true},
	"IFMarker":                 {kind: kindAnd},
	"OFMarker":                 {kind: kindAnd},
	"OFMarkInt":                {kind: kindDeclare},
	"IFMarkInt":                {kind: kindDeclare},
	"iSCSIProtocolLevel":       {kind: kindMin, min: 0, max: 31, leading: true},
	"TaskReporting":            {kind: kindList, leading: true},
}

// negotiator answers the initiator's keys during login. It is pure: it
// turns offered pairs into answers and updates Params; the login state
// machine decides about stages and authentication.
type negotiator struct {
	limits    Limits
	p         Params
	seen      map[string]bool
	leading   bool // first connection of a new session
	sentMRDSL bool
}

func newNegotiator(l Limits, leading bool) *negotiator {
	return &negotiator{limits: l, p: newParams(l), seen: map[string]bool{}, leading: leading}
}

// negotiationError is a reason to fail the login with an initiator error.
type negotiationError struct {
	detail byte // status detail in class 2
	msg    string
}

func (e *negotiationError) Error() string { return e.msg }

// answer handles the operational and declarative keys of one request. Keys
// the login state machine owns (AuthMethod and CHAP_*) are left to it and
// returned in rest.
func (n *negotiator) answer(in []KV, security bool) (out []KV, rest []KV, err error) {
	for _, kv := range in {
		k, v := kv.Key, kv.Value
		if strings.HasPrefix(k, "CHAP_") || k == "AuthMethod" {
			rest = append(rest, kv)
			continue
		}
		switch v {
		case "NotUnderstood", "Irrelevant", "Reject":
			// An answer to a key we offered; nothing to negotiate.
			continue
		}
		def, known := keyDefs[k]
		if !known {
			out = append(out, KV{k, "NotUnderstood"})
			continue
		}
		if def.leading && !n.leading {
			out = append(out, KV{k, "Irrelevant"})
			continue
		}
		if n.seen[k] && k != "SendTargets" {
			// Offering a key twice in one login is an initiator error
			// (RFC 7143 section 6.2).
			return nil, nil, &negotiationError{0x00, "key " + k + " negotiated twice"}
		}
		n.seen[k] = true
		switch k {
		case "InitiatorName":
			n.p.InitiatorName = v
		case "InitiatorAlias":
			n.p.InitiatorAlias = v
		case "TargetName":
			n.p.TargetName = v
		case "SessionType":
			if v != "Normal" && v != "Discovery" {
				return nil, nil, &negotiationError{0x09, "SessionType " + v + " not supported"}
			}
			n.p.SessionType = v
		case "SendTargets", "TargetAlias", "TargetAddress", "TargetPortalGroupTag":
			// Only a target declares these; an initiator sending them
			// in login gets them ignored.
		case "MaxRecvDataSegmentLength":
			x, perr := parseNumber(v)
			if perr != nil || x < def.min || x > def.max {
				out = append(out, KV{k, "Reject"})
				continue
			}
			n.p.InitiatorRecvDSL = int(x)
		case "OFMarkInt", "IFMarkInt":
			// Markers are obsolete (RFC 7143 section 13.25); we never use them.
			out = append(out, KV{k, "Irrelevant"})
		case "HeaderDigest", "DataDigest":
			ours := n.limits.HeaderDigest
			if k == "DataDigest" {
				ours = n.limits.DataDigest
			}
			pick := pickList(v, ours)
			if pick == "" {
				out = append(out, KV{k, "Reject"})
				continue
			}
			if k == "HeaderDigest" {
				n.p.HeaderDigest = pick == "CRC32C"
			} else {
				n.p.DataDigest = pick == "CRC32C"
			}
			out = append(out, KV{k, pick})
		case "TaskReporting":
			out = append(out, KV{k, "RFC3720"})
		default:
			switch def.kind {
			case kindAnd, kindOr:
				var theirs bool
				switch v {
				case "Yes":
					theirs = true
				case "No":
				default:
					out = append(out, KV{k, "Reject"})
					continue
				}
				res := n.boolean(k, theirs, def.kind)
				out = append(out, KV{k, yesNo(res)})
			case kindMin, kindMax:
				x, perr := parseNumber(v)
				if perr != nil || x < def.min || x > def.max {
					out = append(out, KV{k, "Reject"})
					continue
				}
				res := n.numeric(k, int(x), def.kind)
				out = append(out, KV{k, strconv.Itoa(res)})
			}
		}
	}
	return out, rest, nil
}

// boolean applies the result function and records the value.
func (n *negotiator) boolean(k string, theirs bool, kind keyKind) bool {
	var ours bool
	switch k {
	case "InitialR2T":
		ours = n.limits.InitialR2T
	case "ImmediateData":
		ours = n.limits.ImmediateData
	case "DataPDUInOrder", "DataSequenceInOrder":
		ours = true
	case "IFMarker", "OFMarker":
		ours = false
	}
	res := ours && theirs
	if kind == kindOr {
		res = ours || theirs
	}
	switch k {
	case "InitialR2T":
		n.p.InitialR2T = res
	case "ImmediateData":
		n.p.ImmediateData = res
	case "DataPDUInOrder":
		n.p.DataPDUInOrder = res
	case "DataSequenceInOrder":
		n.p.DataSequenceInOrder = res
	}
	return res
}

func (n *negotiator) numeric(k string, theirs int, kind keyKind) int {
	var ours int
	switch k {
	case "MaxConnections":
		ours = 1
	case "MaxBurstLength":
		ours = n.limits.MaxBurstLength
	case "FirstBurstLength":
		ours = n.limits.FirstBurstLength
	case "DefaultTime2Wait":
		ours = 2
	case "DefaultTime2Retain":
		ours = 20
	case "MaxOutstandingR2T":
		ours = n.limits.MaxOutstandingR2T
	case "ErrorRecoveryLevel":
		ours = 0
	case "iSCSIProtocolLevel":
		ours = 1
	}
	res := min(ours, theirs)
	if kind == kindMax {
		res = max(ours, theirs)
	}
	switch k {
	case "MaxConnections":
		n.p.MaxConnections = res
	case "MaxBurstLength":
		n.p.MaxBurstLength = res
	case "FirstBurstLength":
		n.p.FirstBurstLength = res
	case "DefaultTime2Wait":
		n.p.DefaultTime2Wait = res
	case "DefaultTime2Retain":
		n.p.DefaultTime2Retain = res
	case "MaxOutstandingR2T":
		n.p.MaxOutstandingR2T = res
	case "ErrorRecoveryLevel":
		n.p.ErrorRecoveryLevel = res
	}
	return res
}

// finish runs when the operational stage ends: it declares our receive
// limit if not yet done and enforces FirstBurstLength <= MaxBurstLength
// (RFC 7143 section 13.14).
func (n *negotiator) finish(out []KV) []KV {
	if !n.sentMRDSL {
		out = append(out, KV{"MaxRecvDataSegmentLength", strconv.Itoa(n.limits.MaxRecvDataSegmentLength)})
		n.sentMRDSL = true
	}
	// Keys the initiator left at their RFC defaults may exceed what we
	// offer; the defaults are proposals we have to answer by declaring ours.
	if n.leading && n.p.SessionType == "Normal" {
		if !n.seen["MaxBurstLength"] && n.limits.MaxBurstLength < n.p.MaxBurstLength {
			n.p.MaxBurstLength = n.limits.MaxBurstLength
			out = append(out, KV{"MaxBurstLength", strconv.Itoa(n.p.MaxBurstLength)})
		}
		if !n.seen["FirstBurstLength"] && n.limits.FirstBurstLength < n.p.FirstBurstLength {
			n.p.FirstBurstLength = n.limits.FirstBurstLength
			out = append(out, KV{"FirstBurstLength", strconv.Itoa(n.p.FirstBurstLength)})
		}
		if !n.seen["ImmediateData"] && !n.limits.ImmediateData {
			n.p.ImmediateData = false
			out = append(out, KV{"ImmediateData", "No"})
		}
	}
	if n.p.FirstBurstLength > n.p.MaxBurstLength {
		n.p.FirstBurstLength = n.p.MaxBurstLength
	}
	return out
}

// pickList returns the first of the initiator's comma-separated values that
// we accept, or "".
func pickList(offered string, ours []string) string {
	for _, o := range strings.Split(offered, ",") {
		for _, x := range ours {
			if o == x {
				return o
			}
		}
	}
	return ""
}
