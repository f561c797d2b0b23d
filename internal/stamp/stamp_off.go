//go:build !stamp

package stamp

// On reports whether stamps are recorded (the build tag "stamp").
const On = false

// Begin opens a record of kind k (the previous one, if not ended, is
// dropped).
func Begin(k Kind) {}

// Mark stamps stage in the open record of kind k, if any.
func Mark(k Kind, stage string) {}

// MarkAll stamps stage in every open record.
func MarkAll(stage string) {}

// End closes the record of kind k.
func End(k Kind) {}

// Count counts an event; each report gives the counts per operation of
// its kind since the last report of any kind.
func Count(name string) {}
