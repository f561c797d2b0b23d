package drill

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/integration/checker"
	"github.com/metrolun/metrolun/integration/initiator"
)

// readBack reads the whole scratch region at every data site and
// compares, chunk by chunk.
func (d *drill) readBack(ctx context.Context) ReadBack {
	var r ReadBack
	d.progress("reading the scratch region back at %s", strings.Join(d.sites, ", "))
	sess := map[string]*initiator.Session{}
	defer func() {
		for _, s := range sess {
			s.Close()
		}
	}()
	for _, site := range d.sites {
		s, err := d.dial(ctx, site, d.o.Initiator+"-read")
		if err != nil {
			r.Err = err.Error()
			return r
		}
		s.SetBlockSize(d.lun, d.bs)
		sess[site] = s
	}
	r.Sites = d.sites
	h := sha256.New()
	const chunk = 256 << 10
	first := d.sites[0]
	for off := int64(0); off < d.scratchLen; off += chunk {
		n := min(chunk, d.scratchLen-off)
		lba := uint64((d.scratchOff + off) / int64(d.bs))
		var ref []byte
		for _, site := range d.sites {
			c, cancel := context.WithTimeout(ctx, d.opTime)
			b, err := sess[site].ReadBlocks(c, d.lun, lba, uint32(n/int64(d.bs)))
			cancel()
			if err != nil {
				r.Err = fmt.Sprintf("read at %s, byte %d: %v", site, d.scratchOff+off, err)
				return r
			}
			if ref == nil {
				ref = b
				h.Write(b)
				continue
			}
			if r.Differ == "" {
				if i := firstDiffAt(ref, b); i >= 0 {
					r.Differ = fmt.Sprintf("%s and %s differ at byte %d", first, site, d.scratchOff+off+int64(i))
				}
			}
		}
		for i := int64(0); i < n; i += int64(d.bs) {
			blk := uint64(d.scratchOff+off+i) / uint64(d.bs)
			if blk >= uint64(d.scratchOff/int64(d.bs))+uint64(d.o.Blocks) {
				break
			}
			if _, bad := checker.ReadValue(blk, ref[i:i+int64(d.bs)]); bad {
				r.Corrupt = append(r.Corrupt, blk)
			}
		}
	}
	r.SHA256 = hex.EncodeToString(h.Sum(nil))[:16]
	return r
}

func firstDiffAt(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// verify runs the online verify at the writer (/v1/verify).
func (d *drill) verify(ctx context.Context) Verify {
	var r Verify
	v := d.view(ctx)
	w := v.siteWriter()
	i := slices.IndexFunc(d.o.Endpoints, func(ep admin.Endpoint) bool { return ep.Name == w })
	if w == "" || i < 0 || d.o.Endpoints[i].Admin == "" {
		r.Err = "no reachable writer to run it"
		return r
	}
	d.progress("online verify at %s", w)
	rep, err := d.o.Client.Verify(ctx, d.o.Endpoints[i])
	if err != nil {
		r.Err = err.Error()
	}
	r.Done, r.Total, r.Region, r.Replicas, r.Differ = rep.Done, rep.Total, rep.Region, rep.Replicas, rep.Differ
	return r
}
