// Package testcert makes certificate authorities and certificates in
// memory, for tests of TLS and mutual TLS over loopback.
//
// Every certificate is for 127.0.0.1, ::1 and localhost, is valid from an
// hour ago for a day, and has an ECDSA P-256 key, which is quick to make.
// Peer certificates carry OrganizationalUnit PeerOU and serve both sides of
// a connection (a peer listens and dials); client certificates carry
// ClientOU and serve the client side only.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// Organizational units that tell peer certificates from client ones.
const (
	PeerOU   = "pipestream-peer"
	ClientOU = "pipestream-client"
)

// CA is a certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// Pool holds Cert alone: the RootCAs of a client, the ClientCAs of a
	// server.
	Pool *x509.CertPool
}

var serial atomic.Int64

// NewCA makes a self-signed certificate authority named name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	cert := create(t, tmpl, tmpl, &key.PublicKey, key)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, Key: key, Pool: pool}
}

// Peer issues a certificate for a peer named name, good for both the
// server and the client side of a connection.
func (ca *CA) Peer(t testing.TB, name string) tls.Certificate {
	t.Helper()
	return ca.issue(t, name, PeerOU, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
}

// Client issues a certificate for a client named name, good for the client
// side only.
func (ca *CA) Client(t testing.TB, name string) tls.Certificate {
	t.Helper()
	return ca.issue(t, name, ClientOU, x509.ExtKeyUsageClientAuth)
}

func (ca *CA) issue(t testing.TB, name, ou string, usage ...x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{ou}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	cert := create(t, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// ServerConfig is the listening side of mutual TLS: it presents cert and
// requires a client certificate that chains to ca.
func (ca *CA) ServerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool,
		MinVersion:   tls.VersionTLS13,
	}
}

// ClientConfig is the dialing side: it trusts servers whose certificate
// chains to ca and presents certs, if any.
func (ca *CA) ClientConfig(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: slices.Clone(certs),
		RootCAs:      ca.Pool,
		MinVersion:   tls.VersionTLS13,
	}
}

// HasOU reports whether cert's subject names the organizational unit ou;
// with PeerOU it is a server.Config.AuthorizePeer.
func HasOU(cert *x509.Certificate, ou string) bool {
	return cert != nil && slices.Contains(cert.Subject.OrganizationalUnit, ou)
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testcert: %v", err)
	}
	return key
}

func create(t testing.TB, tmpl, parent *x509.Certificate, pub, signer any) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatalf("testcert: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testcert: %v", err)
	}
	return cert
}
