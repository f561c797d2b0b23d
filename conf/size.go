package conf

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
)

// sizeUnits maps a unit, lower-cased, to its multiplier. The one-letter
// forms are binary because that is what dd, qemu-img and truncate mean by
// them; only the explicit "KB" family is decimal.
var sizeUnits = map[string]int64{
	"":    1,
	"b":   1,
	"k":   1 << 10,
	"kib": 1 << 10,
	"kb":  1e3,
	"m":   1 << 20,
	"mib": 1 << 20,
	"mb":  1e6,
	"g":   1 << 30,
	"gib": 1 << 30,
	"gb":  1e9,
	"t":   1 << 40,
	"tib": 1 << 40,
	"tb":  1e12,
}

// maxSizeLen bounds the input so that a hostile string cannot make the
// exact arithmetic below expensive.
const maxSizeLen = 64

var errSizeSyntax = errors.New("expected a number of bytes, optionally followed by a unit: B, K, KiB, KB, M, MiB, MB, G, GiB, GB, T, TiB or TB")

// ParseSize parses a byte count: a plain number of bytes ("1073741824") or a
// number and a unit ("1GiB", "512 MiB", "1.5G", "100GB"). K, M, G and T and
// KiB, MiB, GiB and TiB are powers of 1024; KB, MB, GB and TB are powers of
// 1000; B is bytes. Units are case-insensitive. A fraction is accepted when
// the result is a whole number of bytes. The result is never negative.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty size: %w", errSizeSyntax)
	}
	if len(t) > maxSizeLen {
		return 0, fmt.Errorf("size is longer than %d characters", maxSizeLen)
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	if !validDecimal(num) {
		return 0, fmt.Errorf("invalid size %q: %w", s, errSizeSyntax)
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q: %w", s, t[i:], errSizeSyntax)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("invalid size %q: %w", s, errSizeSyntax)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if !r.IsInt() {
		return 0, fmt.Errorf("invalid size %q: not a whole number of bytes", s)
	}
	n := r.Num()
	if !n.IsInt64() {
		return 0, fmt.Errorf("invalid size %q: larger than %d bytes", s, int64(math.MaxInt64))
	}
	return n.Int64(), nil
}

// validDecimal reports whether s is digits with at most one inner point:
// "1", "1.5"; not "", ".5", "1." or "1.2.3".
func validDecimal(s string) bool {
	whole, frac, hasPoint := strings.Cut(s, ".")
	if whole == "" || strings.Contains(frac, ".") {
		return false
	}
	if hasPoint && frac == "" {
		return false
	}
	return true
}

// FormatSize renders n bytes in the largest binary unit that divides it
// exactly, the inverse of ParseSize for use in messages: 1073741824 gives
// "1GiB", 1000 gives "1000B".
func FormatSize(n int64) string {
	units := []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if n != 0 && n%u.mult == 0 {
			return fmt.Sprintf("%d%s", n/u.mult, u.name)
		}
	}
	return fmt.Sprintf("%dB", n)
}
