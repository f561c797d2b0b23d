package integration

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/metrolun/metrolun/cmd/admin"
	"github.com/metrolun/metrolun/conf"
)

// ClusterBasePort finds a base port p such that p, p+1 and p+2 are free
// on 127.0.0.1 .. 127.0.0.(hosts): the demo gives every member its Raft,
// replication and admin ports from one base.
func ClusterBasePort(hosts int) (int, error) {
	var addrs []string
	for h := 1; h <= hosts; h++ {
		addrs = append(addrs, "127.0.0."+strconv.Itoa(h))
	}
	return FreeBasePort(addrs, 3)
}

// FreeBasePort finds a port p such that p .. p+n-1 are free on every
// address in addrs (all in 127.0.0.0/8).
func FreeBasePort(addrs []string, n int) (int, error) {
	for attempt := 0; attempt < 200; attempt++ {
		base := 20000 + rand.IntN(40000)
		ok := true
		var held []net.Listener
		for _, h := range addrs {
			if !ok {
				break
			}
			for p := base; p < base+n; p++ {
				l, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(p)))
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
	return 0, fmt.Errorf("no %d free ports in a row on %v", n, addrs)
}

// MemberStatus is one member in `metrolun status --json`: package
// admin's contract.
type MemberStatus = admin.MemberReport

// DemoClient returns a client with the credential of the cluster in dir
// (a demo's, or the torture harness's: DIR/admin.token, DIR/pki/ca.pem
// or the members' tls block) and the admin endpoints its member configs
// list.
func DemoClient(dir string) (*admin.Client, []admin.Endpoint, error) {
	found, _ := filepath.Glob(filepath.Join(dir, "*", "metrolun.hcl"))
	slices.Sort(found)
	for _, p := range found {
		c, err := conf.Load(p)
		if err != nil || c.Cluster == nil {
			continue
		}
		client, err := admin.NewClient(admin.Credential{Dir: dir, Cluster: c.Cluster, Config: p})
		if err != nil {
			return nil, nil, err
		}
		return client, admin.Endpoints(c.Cluster.Members), nil
	}
	return nil, nil, fmt.Errorf("%s holds no cluster member config", dir)
}

// WriteAdminToken writes a new random admin token to path (mode 0600),
// as `metrolun demo` does, and returns it.
func WriteAdminToken(path string) (string, error) {
	b := make([]byte, 32)
	if _, err := crand.Read(b); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(b)
	os.Remove(path)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", err
	}
	return tok, nil
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
func Writer(ms []MemberStatus) string { return admin.SiteWriter(ms) }
