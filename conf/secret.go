package conf

import (
	"fmt"
	"io"
)

// Secret is a CHAP secret. It never prints: every fmt verb, String,
// GoString and text marshalling (and so JSON and hclog) give "<redacted>".
// The bytes are string(s).
type Secret string

const redacted = "<redacted>"

func (s Secret) String() string { return redacted }

// GoString keeps %#v output valid Go without revealing the value.
func (s Secret) GoString() string { return `conf.Secret("` + redacted + `")` }

// Format covers the verbs that would otherwise bypass String, such as %x
// and %d.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, s.GoString())
		return
	}
	io.WriteString(f, redacted)
}

// MarshalText makes encoders (encoding/json, hclog's JSON output) redact
// the value too.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
