package raftlog

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// Peer certificates (DESIGN.md I7). Every plane between members (Raft,
// replication) and the admin API identify a peer by its certificate,
// issued by the cluster's CA (`metrolun certs`):
//
//   - the name is the Subject CN, repeated as a DNS SAN; a certificate
//     names a member when its CN is the member's name. Its other DNS SANs
//     are host names and name no member. A certificate made by hand with
//     no CN names the members in its DNS SANs;
//   - the role is the Subject OU: RoleData, RoleWitness or RoleOperator.
//     A certificate with no OU states no role: the member it names has
//     the role the cluster gives it, and it is never an operator.
//
// Names are checked, never addresses: a member's dial address may be a
// proxy.

// RoleOperator is the role of a person's or a tool's certificate: it may
// call the admin API, and connects to no inter-site plane.
const RoleOperator = "operator"

// Identity is who a certificate says its holder is.
type Identity struct {
	Name  string   // Subject CN
	Names []string // every member name the certificate proves: the CN, or the DNS SANs when it has no CN
	Role  string   // RoleData, RoleWitness, RoleOperator, or "" (none stated)
}

// Is reports whether the certificate proves name.
func (id Identity) Is(name string) bool { return name != "" && slices.Contains(id.Names, name) }

// CertIdentity reads a certificate's identity. It does not verify the
// certificate; a TLS handshake with this package's configs has.
func CertIdentity(cert *x509.Certificate) (Identity, error) {
	id := Identity{Name: cert.Subject.CommonName}
	if id.Name != "" {
		// The CN alone names the member: the DNS SANs also carry the
		// host names an operator asked for (`certs issue --host`), and
		// a host name that happens to be another member's name must
		// not make this certificate that member's.
		id.Names = []string{id.Name}
	} else {
		// A certificate made by hand with its name in the SANs only.
		id.Names = slices.Clone(cert.DNSNames)
		if len(id.Names) > 0 {
			id.Name = id.Names[0]
		}
	}
	switch ou := cert.Subject.OrganizationalUnit; len(ou) {
	case 0:
	case 1:
		switch ou[0] {
		case RoleData, RoleWitness, RoleOperator:
			id.Role = ou[0]
		default:
			return id, fmt.Errorf("certificate %q states an unknown role %q", id.Name, ou[0])
		}
	default:
		return id, fmt.Errorf("certificate %q states %d roles", id.Name, len(ou))
	}
	if len(id.Names) == 0 {
		return id, errors.New("certificate names no one")
	}
	return id, nil
}

// PeerIdentity returns the identity the other end of a TLS connection
// proved, once its handshake is done.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if !cs.HandshakeComplete {
		return Identity{}, errors.New("no TLS handshake")
	}
	if len(cs.PeerCertificates) == 0 {
		return Identity{}, errors.New("no peer certificate")
	}
	return CertIdentity(cs.PeerCertificates[0])
}

// CheckRole refuses an identity whose stated role is not one of roles.
func (id Identity) CheckRole(roles ...string) error {
	if id.Role == "" && !slices.Contains(roles, RoleOperator) {
		return nil // no stated role: the name decides
	}
	if slices.Contains(roles, id.Role) {
		return nil
	}
	role := id.Role
	if role == "" {
		role = "no role"
	}
	return fmt.Errorf("certificate %q is a %s certificate; this plane takes %v", id.Name, role, roles)
}

// ServerTLS derives a listener's config from a member's base config: it
// requires a client certificate from the CA and then runs accept on its
// identity (nil: any certificate from the CA).
func ServerTLS(base *tls.Config, accept func(Identity) error) *tls.Config {
	c := base.Clone()
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no client certificate")
		}
		id, err := CertIdentity(cs.PeerCertificates[0])
		if err != nil || accept == nil {
			return err
		}
		return accept(id)
	}
	return c
}

// ClientTLS derives a dialer's config from a member's base config: the
// server must hold a certificate from the CA that names cs.ServerName
// (set it to the member meant, per connection) and states one of roles,
// or none. The name is checked, not the address dialled, which may be a
// proxy.
func ClientTLS(base *tls.Config, roles ...string) *tls.Config {
	c := base.Clone()
	// The standard check matches ServerName against DNS SANs only and
	// would take an IP address as the name; ours accepts the CN too, so
	// the chain is verified here instead.
	c.InsecureSkipVerify = true
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no server certificate")
		}
		opts := x509.VerifyOptions{
			Roots:         base.RootCAs,
			Intermediates: x509.NewCertPool(),
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		for _, ic := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(ic)
		}
		cert := cs.PeerCertificates[0]
		if _, err := cert.Verify(opts); err != nil {
			return err
		}
		id, err := CertIdentity(cert)
		if err != nil {
			return err
		}
		if !id.Is(cs.ServerName) {
			return fmt.Errorf("server certificate %q is not member %s", id.Name, cs.ServerName)
		}
		return id.CheckRole(roles...)
	}
	return c
}
