package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// clientTimeout bounds one short libiscsi client command (login, one
// command, logout).
const clientTimeout = 20 * time.Second

// Capacity is what READ CAPACITY (16) reports, via iscsi-readcapacity16.
type Capacity struct {
	BlockSize int
	Bytes     int64
	// LBPME is set when the LUN is thin provisioned (SBC-3 5.16.2).
	LBPME bool
	Raw   string
}

// ReadCapacity runs iscsi-readcapacity16 against url.
func ReadCapacity(ctx context.Context, url string) (Capacity, error) {
	res, err := RunTool(ctx, clientTimeout, nil, "iscsi-readcapacity16", url)
	if err != nil {
		return Capacity{}, err
	}
	return parseReadCapacity(res.Stdout)
}

// parseReadCapacity reads libiscsi 1.19's iscsi-readcapacity16 output:
//
//	RETURNED LOGICAL BLOCK ADDRESS:2097151
//	LOGICAL BLOCK LENGTH IN BYTES:512
//	LBPME:1 LBPRZ:1
//	Total size:1073741824
func parseReadCapacity(out string) (Capacity, error) {
	c := Capacity{Raw: out}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "LOGICAL BLOCK LENGTH IN BYTES:"):
			c.BlockSize, _ = strconv.Atoi(strings.TrimPrefix(line, "LOGICAL BLOCK LENGTH IN BYTES:"))
		case strings.HasPrefix(line, "Total size:"):
			c.Bytes, _ = strconv.ParseInt(strings.TrimPrefix(line, "Total size:"), 10, 64)
		case strings.HasPrefix(line, "LBPME:"):
			c.LBPME = strings.HasPrefix(line, "LBPME:1")
		}
	}
	if c.BlockSize <= 0 || c.Bytes <= 0 {
		return c, fmt.Errorf("iscsi-readcapacity16 output has no block length or total size: %q", out)
	}
	return c, nil
}

// Inquiry runs iscsi-inq (standard INQUIRY data) against url and returns
// its "Key:Value" lines as a map (keys as iscsi-inq prints them, e.g.
// "Vendor", "Product", "Peripheral Device Type") and the raw output.
func Inquiry(ctx context.Context, url string) (map[string]string, string, error) {
	res, err := RunTool(ctx, clientTimeout, nil, "iscsi-inq", url)
	if err != nil {
		return nil, res.Stdout, err
	}
	fields := map[string]string{}
	for _, line := range strings.Split(res.Stdout, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if _, dup := fields[k]; !dup {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields, res.Stdout, nil
}
