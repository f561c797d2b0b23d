package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/metrolun/metrolun/conf"
)

// ExtraSite is a data site written for a running demo cluster, to be
// added with `metrolun member add`.
type ExtraSite struct {
	Name   string
	Config string // DIR/NAME/metrolun.hcl
	ISCSI  string // its LUN URL, iscsi://HOST:PORT/IQN/0
	Admin  string // its admin endpoint, host:port
	Image  string // its backing file
}

// WriteExtraSite writes the config of one more data site for the demo d:
// NAME on host (127.0.0.4 for a demo of two sites and a witness), with
// Raft, replication and admin on basePort, basePort+1 and basePort+2 (the
// demo's --cluster-port; ClusterBasePort(4) finds one free on .1 to .4),
// iSCSI on a free port of host, the next portal group, and the demo's LUN
// (same target, same size). Its cluster block lists the demo's members and
// itself, and sets join = true: it waits to be added. The file is read
// back with conf.Load, so a config that does not validate is an error.
func WriteExtraSite(d *Demo, name, host string, basePort int) (ExtraSite, error) {
	var first string
	for _, m := range d.File.DataMembers() {
		first = m.Name
		break
	}
	base, err := conf.Load(filepath.Join(d.Dir, first, "metrolun.hcl"))
	if err != nil {
		return ExtraSite{}, err
	}
	if base.Cluster == nil || len(base.Targets) != 1 || len(base.Targets[0].LUNs) != 1 {
		return ExtraSite{}, fmt.Errorf("%s: not a cluster member with one target and one LUN", first)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return ExtraSite{}, fmt.Errorf("a free iSCSI port on %s: %w", host, err)
	}
	iscsiPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	addr := func(port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }
	pg := 0
	for _, m := range base.Cluster.Members {
		pg = max(pg, m.PortalGroup)
	}
	self := conf.Member{Name: name, Role: conf.RoleData, Raft: addr(basePort), Replication: addr(basePort + 1),
		Admin: addr(basePort + 2), ISCSI: []string{addr(iscsiPort)}, PortalGroup: pg + 1}
	dataDir := filepath.Join(d.Dir, name)
	t, lun := base.Targets[0], base.Targets[0].LUNs[0]
	es := ExtraSite{
		Name: name, Config: filepath.Join(dataDir, "metrolun.hcl"), Admin: self.Admin,
		ISCSI: fmt.Sprintf("iscsi://%s/%s/%d", addr(iscsiPort), t.Name, lun.ID), Image: filepath.Join(dataDir, "lun0.img"),
	}

	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "# an extra site for the demo in %s, written by integration.WriteExtraSite\n", d.Dir)
	fmt.Fprintf(&b, "name = %s\nrole = \"data\"\ndata_dir = %s\nlog_level = %s\n\n", q(name), q(dataDir), q(base.LogLevel))
	fmt.Fprintf(&b, "iscsi {\n  listen = [%s]\n}\n\n", q(addr(iscsiPort)))
	cl := base.Cluster
	fmt.Fprintf(&b, "cluster {\n  # Wait for `metrolun member add %s`: do not start a cluster of its own.\n  join = true\n", name)
	fmt.Fprintf(&b, "  lease = %s\n  election_timeout = %s\n  replica_timeout = %s\n",
		q(cl.Lease.String()), q(cl.ElectionTimeout.String()), q(cl.ReplicaTimeout.String()))
	if cl.AdminTokenFile != "" {
		fmt.Fprintf(&b, "  admin_token_file = %s\n", q(cl.AdminTokenFile))
	}
	if cl.TLS != nil {
		// Its own certificate, from the demo's CA.
		if err := issueCert(context.Background(), d.bin, filepath.Dir(cl.TLS.CA), name, conf.RoleData); err != nil {
			return ExtraSite{}, err
		}
		own := *cl
		pki := filepath.Dir(cl.TLS.CA)
		own.TLS = &conf.TLS{CA: cl.TLS.CA, Cert: filepath.Join(pki, name+".pem"), Key: filepath.Join(pki, name+"-key.pem")}
		b.WriteString(tlsBlock(&own))
	} else {
		b.WriteString(tlsBlock(cl))
	}
	for _, m := range append(append([]conf.Member(nil), cl.Members...), self) {
		fmt.Fprintf(&b, "\n  member %s {\n    role = %s\n    raft = %s\n", q(m.Name), q(m.Role), q(m.Raft))
		if m.Admin != "" {
			fmt.Fprintf(&b, "    admin = %s\n", q(m.Admin))
		}
		if m.Role == conf.RoleData {
			var ps []string
			for _, p := range m.ISCSI {
				ps = append(ps, q(p))
			}
			fmt.Fprintf(&b, "    replication = %s\n    iscsi = [%s]\n    portal_group = %d\n", q(m.Replication), strings.Join(ps, ", "), m.PortalGroup)
		}
		b.WriteString("  }\n")
	}
	b.WriteString("}\n")
	fmt.Fprintf(&b, "\ntarget %s {\n  lun \"%d\" {\n    path = %s\n    size = %d\n    block_size = %d\n  }\n}\n",
		q(t.Name), lun.ID, q(es.Image), lun.Size, lun.BlockSize)

	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return ExtraSite{}, err
	}
	if err := os.WriteFile(es.Config, []byte(b.String()), 0o644); err != nil {
		return ExtraSite{}, err
	}
	if _, err := conf.Load(es.Config); err != nil {
		return ExtraSite{}, fmt.Errorf("the extra site's config: %w", err)
	}
	return es, nil
}

// tlsBlock renders how a cluster block's members talk: its tls block, or
// plaintext = true.
func tlsBlock(cl *conf.Cluster) string {
	q := strconv.Quote
	if t := cl.TLS; t != nil {
		return fmt.Sprintf("\n  tls {\n    ca = %s\n    cert = %s\n    key = %s\n  }\n", q(t.CA), q(t.Cert), q(t.Key))
	}
	if cl.Plaintext {
		return "  plaintext = true\n"
	}
	return ""
}

// IssueCerts makes the PKI the configs' tls blocks name (the layout of
// conf.DemoCertFiles under dir): the CA and a certificate per member,
// with `metrolun certs`, as an operator would.
func IssueCerts(ctx context.Context, bin, dir string, configs []*conf.Config) error {
	ca, _, _ := conf.DemoCertFiles(dir, "")
	pki := filepath.Dir(ca)
	if out, err := exec.CommandContext(ctx, bin, "certs", "init", "--dir", pki).CombinedOutput(); err != nil {
		return fmt.Errorf("metrolun certs init: %v: %s", err, out)
	}
	for _, c := range configs {
		if err := issueCert(ctx, bin, pki, c.Name, c.Role); err != nil {
			return err
		}
	}
	return nil
}

// issueCert runs `metrolun certs issue NAME --role ROLE --dir PKI`.
func issueCert(ctx context.Context, bin, pki, name, role string) error {
	out, err := exec.CommandContext(ctx, bin, "certs", "issue", name, "--role", role, "--dir", pki).CombinedOutput()
	if err != nil {
		return fmt.Errorf("metrolun certs issue %s: %v: %s", name, err, out)
	}
	return nil
}
