package admin

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/metrolun/metrolun/conf"
)

// TokenFileEnv names the admin token's file for the commands when no flag
// does.
const TokenFileEnv = "METROLUN_ADMIN_TOKEN_FILE"

// Credential says where a caller's credential is.
type Credential struct {
	// TokenFile is the token's file (--token-file, $METROLUN_ADMIN_TOKEN_FILE).
	TokenFile string
	// Dir is a demo's directory: DIR/admin.token, DIR/pki/ca.pem.
	Dir string
	// Cluster is the cluster block of the config the cluster is found
	// with: its admin_token_file, and its tls block's CA (and this
	// member's certificate, which may read status).
	Cluster *conf.Cluster
	// Config names that config's file in messages.
	Config string
	// Cert and Key are a client certificate to present (--cert, --key):
	// an operator's (OU operator) may change the cluster without a token.
	// CA verifies the members' (--ca); default: the config's or the
	// demo's.
	Cert, Key, CA string
}

// NewClient finds the credential: the token from TokenFile, else
// DIR/admin.token, else the config's admin_token_file; over TLS when the
// cluster has a tls block (or DIR/pki/ca.pem exists), verifying the
// members against its CA. It is an error to find none, unless the config
// says admin_insecure.
func NewClient(c Credential) (*Client, error) {
	client := &Client{}
	tokenFile, from := c.TokenFile, "--token-file or $"+TokenFileEnv
	if tokenFile == "" && c.Dir != "" {
		if p := filepath.Join(c.Dir, conf.AdminTokenFileName); exists(p) {
			tokenFile, from = p, "--dir"
		}
	}
	if tokenFile == "" && c.Cluster != nil && c.Cluster.AdminTokenFile != "" {
		// A member's file may hold only the token's verifier: then the
		// member's certificate is this caller's credential (below).
		if _, secret, err := LoadToken(c.Cluster.AdminTokenFile); err != nil || secret != "" {
			tokenFile, from = c.Cluster.AdminTokenFile, c.Config+"'s admin_token_file"
		}
	}
	if tokenFile != "" {
		tok, err := ReadTokenFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("%w (from %s)", err, from)
		}
		client.Token = tok
	}
	ca := ""
	var own *conf.TLS
	if c.Cluster != nil && c.Cluster.TLS != nil {
		own = c.Cluster.TLS
		ca = own.CA
	} else if p := filepath.Join(c.Dir, "pki", "ca.pem"); c.Dir != "" && exists(p) {
		ca = p
	}
	if c.CA != "" {
		ca = c.CA
	}
	if (c.Cert == "") != (c.Key == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if c.Cert != "" && ca == "" {
		return nil, errors.New("--cert needs the CA that signed the members' certificates: --ca FILE, or a --config with a tls block")
	}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("the admin endpoints' CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", ca)
		}
		client.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
		if c.Cert != "" {
			cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
			if err != nil {
				return nil, fmt.Errorf("--cert/--key: %w", err)
			}
			client.TLS.Certificates = []tls.Certificate{cert}
		} else if own != nil {
			// The member's own certificate, where this user may read
			// it, is enough to read status (changes need the token).
			if cert, err := tls.LoadX509KeyPair(own.Cert, own.Key); err == nil {
				client.TLS.Certificates = []tls.Certificate{cert}
			}
		}
	}
	if client.Token == "" && (client.TLS == nil || len(client.TLS.Certificates) == 0) && (c.Cluster == nil || !c.Cluster.AdminInsecure) {
		return nil, errors.New("no admin credential: give --token-file FILE, set $" + TokenFileEnv + ", use --dir DIR of a demo (DIR/" +
			conf.AdminTokenFileName + "), --cert/--key of an operator's certificate, or --config FILE whose cluster block sets admin_token_file")
	}
	return client, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Endpoints are the admin endpoints of a config's members.
func Endpoints(ms []conf.Member) []Endpoint {
	out := make([]Endpoint, len(ms))
	for i, m := range ms {
		out[i] = Endpoint{Name: m.Name, Role: m.Role, Admin: m.Admin}
	}
	return out
}
