package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/raftlog"
)

// The cluster's PKI (docs/security.md): a CA made for the cluster and a
// certificate per member and per operator, each naming its holder (CN and
// a DNS SAN) and its role (Subject OU; raftlog/peercert.go reads it). In
// the directory:
//
//	ca.pem, ca-key.pem        the CA (keep ca-key.pem offline once issued)
//	NAME.pem, NAME-key.pem    one holder's certificate and key
//
// Keys are ECDSA P-256 and written 0600; nothing is ever overwritten.
const (
	caFile    = "ca.pem"
	caKeyFile = "ca-key.pem"

	defaultCADays   = 3650
	defaultCertDays = 730
)

func certPaths(dir, name string) (cert, key string) {
	return filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
}

func certsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make the cluster's CA and its members' and operators' certificates",
		Long: `certs makes the PKI that authenticates every plane between members
(Raft, replication) and the admin API. "certs init" makes the cluster CA in
DIR; "certs issue NAME --role ROLE" makes NAME's certificate and key, signed
by it. A member's config then names DIR/ca.pem, DIR/NAME.pem and
DIR/NAME-key.pem in its cluster { tls { ... } } block.`,
	}
	var dir string
	var days int
	initCmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Make the cluster CA (DIR/ca.pem, DIR/ca-key.pem)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := pkiInit(dir, days); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA written to %s and %s\n", filepath.Join(dir, caFile), filepath.Join(dir, caKeyFile))
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "directory for the CA's files (required)")
	initCmd.Flags().IntVar(&days, "days", defaultCADays, "days the CA is valid")
	var role string
	var hosts []string
	var idays int
	var idir string
	issueCmd := &cobra.Command{
		Use:   "issue NAME --role data|witness|operator --dir DIR",
		Short: "Make NAME's certificate and key, signed by the CA in DIR",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pkiIssue(idir, args[0], role, hosts, idays); err != nil {
				return err
			}
			c, k := certPaths(idir, args[0])
			fmt.Fprintf(cmd.OutOrStdout(), "%s certificate for %s written to %s and %s\n", role, args[0], c, k)
			return nil
		},
	}
	f := issueCmd.Flags()
	f.StringVar(&idir, "dir", "", "directory holding the CA; the certificate goes there too (required)")
	f.StringVar(&role, "role", "", "data, witness or operator (required)")
	f.StringSliceVar(&hosts, "host", nil, "another DNS name or IP address to put in the certificate (for the admin API's HTTPS)")
	f.IntVar(&idays, "days", defaultCertDays, "days the certificate is valid")
	cmd.AddCommand(initCmd, issueCmd)
	return cmd
}

// pkiInit makes a new CA in dir.
func pkiInit(dir string, days int) error {
	if dir == "" {
		return errors.New("--dir DIR is required")
	}
	if days < 1 {
		return fmt.Errorf("--days %d: want at least 1", days)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "metrolun cluster CA " + serial.Text(16)[:8], Organization: []string{"metrolun"}},
		NotBefore:             now.Add(-time.Hour), // clocks between sites differ a little
		NotAfter:              now.AddDate(0, 0, days),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true, // it signs holders only, never another CA
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return writePair(filepath.Join(dir, caFile), filepath.Join(dir, caKeyFile), der, key)
}

// pkiIssue makes name's certificate for role, signed by the CA in dir.
func pkiIssue(dir, name, role string, hosts []string, days int) error {
	if dir == "" {
		return errors.New("--dir DIR is required")
	}
	switch role {
	case raftlog.RoleData, raftlog.RoleWitness:
		if err := conf.CheckMemberName(name); err != nil {
			return fmt.Errorf("member name %w", err)
		}
	case raftlog.RoleOperator:
		// Any DNS-label name, so that it fits a DNS SAN.
		if err := conf.CheckMemberName(name); err != nil {
			return fmt.Errorf("operator name %w", err)
		}
	default:
		return fmt.Errorf("--role %q: want data, witness or operator", role)
	}
	if name == "ca" || name == "ca-key" {
		return fmt.Errorf("%q is the CA's file name", name)
	}
	if days < 1 {
		return fmt.Errorf("--days %d: want at least 1", days)
	}
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, caFile), filepath.Join(dir, caKeyFile))
	if err != nil {
		return fmt.Errorf("the CA (metrolun certs init --dir %s): %w", dir, err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{role}, Organization: []string{"metrolun"}},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(0, 0, days),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// A member both dials and accepts; an operator only dials.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if role == raftlog.RoleOperator {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if caCert.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = caCert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return err
	}
	c, k := certPaths(dir, name)
	return writePair(c, k, der, key)
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// writePair writes a certificate (0644) and its key (0600), refusing to
// replace either: a rotation issues under a new name or after the old
// files were moved away on purpose.
func writePair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists; move it away first to replace it", p)
		}
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

// writeNew creates path with mode (never following or replacing an
// existing file) and syncs it.
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
