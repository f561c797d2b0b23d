package mirrorfloor

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
	"time"
)

// ServerName is the name in the echo's certificate.
const ServerName = "metrolun-mirror-floor"

// ServerTLS makes a self-signed certificate for the echo, writes it (the
// certificate alone, PEM) to certPath for the client to pin, and returns
// the echo's TLS config. TLS 1.3 with crypto/tls's default cipher choice,
// as the replication link (cmd/metrolun/cluster.go); the link also
// checks a client certificate, which costs only at the handshake.
func ServerTLS(certPath string) (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: ServerName},
		DNSNames:     []string{ServerName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// ClientTLS trusts the echo's certificate in certPath and nothing else.
func ClientTLS(certPath string) (*tls.Config, error) {
	b, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", certPath)
	}
	return &tls.Config{RootCAs: pool, ServerName: ServerName, MinVersion: tls.VersionTLS13}, nil
}

// Dial connects to an echo at addr, over TLS when tc is not nil, and
// completes the handshake.
func Dial(addr string, tc *tls.Config, o Options) (*Client, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc != nil {
		tconn := tls.Client(conn, tc)
		tconn.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tconn.Handshake(); err != nil {
			conn.Close()
			return nil, fmt.Errorf("mirror floor: TLS handshake with %s: %w", addr, err)
		}
		tconn.SetDeadline(time.Time{})
		conn = tconn
	}
	return NewClient(conn, o), nil
}

// ServeListener serves every connection ln accepts (Serve, each on its
// own goroutine) until ln fails; tc, when not nil, wraps them in TLS.
// logf hears of connections that end with an error.
func ServeListener(ln net.Listener, tc *tls.Config, st Store, logf func(string, ...any)) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if tc != nil {
			conn = tls.Server(conn, tc)
		}
		go func() {
			if err := Serve(conn, st); err != nil {
				logf("mirror floor echo: %s: %v", conn.RemoteAddr(), err)
			}
		}()
	}
}
