package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"time"
)

// ClusterBasePort finds a base port p such that p, p+1 and p+2 are free
// on 127.0.0.1 .. 127.0.0.(hosts): the demo gives every member its Raft,
// replication and admin ports from one base.
func ClusterBasePort(hosts int) (int, error) {
	for attempt := 0; attempt < 200; attempt++ {
		base := 20000 + rand.IntN(40000)
		ok := true
		var held []net.Listener
		for h := 1; h <= hosts && ok; h++ {
			for p := base; p < base+3; p++ {
				l, err := net.Listen("tcp", net.JoinHostPort("127.0.0."+strconv.Itoa(h), strconv.Itoa(p)))
				if err != nil {
					ok = false
					break
				}
				held = append(held, l)
			}
		}
		for _, l := range held {
			l.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no free cluster base port on 127.0.0.1..%d", hosts)
}

// MemberStatus is the part of `metrolun status --json` tests read.
type MemberStatus struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	Reachable bool   `json:"reachable"`
	Status    *struct {
		Raft struct {
			State  string   `json:"state"`
			Term   uint64   `json:"term"`
			Writer string   `json:"writer"`
			Epoch  uint64   `json:"epoch"`
			InSync []string `json:"in_sync"`
			// MemberInfo is every member's addresses as the cluster
			// knows them.
			MemberInfo []struct {
				Name        string `json:"name"`
				Role        string `json:"role"`
				Raft        string `json:"raft"`
				Replication string `json:"replication"`
			} `json:"member_info"`
		} `json:"raft"`
		Site *struct {
			Role  string `json:"role"`
			Peers []struct {
				Name         string  `json:"name"`
				State        string  `json:"state"`
				DirtyRegions int     `json:"dirty_regions"`
				ResyncDone   int     `json:"resync_done"`
				ResyncTotal  int     `json:"resync_total"`
				ResyncPct    float64 `json:"resync_percent"`
			} `json:"peers"`
		} `json:"site"`
	} `json:"status"`
}

// ClusterStatus runs `metrolun status --json --dir DIR`.
func ClusterStatus(ctx context.Context, bin, dir string) ([]MemberStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "status", "--json", "--dir", dir).Output()
	if err != nil {
		return nil, fmt.Errorf("metrolun status: %w", err)
	}
	var ms []MemberStatus
	if err := json.Unmarshal(out, &ms); err != nil {
		return nil, fmt.Errorf("metrolun status --json: %w", err)
	}
	return ms, nil
}

// Writer returns the site that reports itself writer, if any.
func Writer(ms []MemberStatus) string {
	for _, m := range ms {
		if m.Status != nil && m.Status.Site != nil && m.Status.Site.Role == "writer" {
			return m.Name
		}
	}
	return ""
}
