package peer_test

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
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/testcert"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/transport"
)

// tlsDir holds, in files, a CA, a peer certificate for s1 and s2, a
// client certificate, and a peer certificate of another CA.
type tlsDir struct {
	dir string
	ca  *testcert.CA
}

func newTLSDir(t *testing.T) *tlsDir {
	t.Helper()
	d := &tlsDir{dir: t.TempDir(), ca: testcert.NewCA(t, "group")}
	writePEM(t, filepath.Join(d.dir, "ca.crt"), "CERTIFICATE", d.ca.Cert.Raw)
	for _, id := range []string{"s1", "s2"} {
		writeKeyPair(t, d.dir, id, d.ca.Peer(t, id))
	}
	writeKeyPair(t, d.dir, "client", d.ca.Client(t, "app"))
	writeKeyPair(t, d.dir, "stranger", testcert.NewCA(t, "other").Peer(t, "s1"))
	return d
}

func writeKeyPair(t *testing.T, dir, name string, cert tls.Certificate) {
	t.Helper()
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".crt"), "CERTIFICATE", cert.Certificate[0])
	writePEM(t, filepath.Join(dir, name+".key"), "PRIVATE KEY", key)
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// file writes a group file of s1 and s2 into d with head before the
// peers and s1's and s2's extra keys, and returns its path.
func (d *tlsDir) file(t *testing.T, head, s1, s2 string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(head + "\n")
	for i, extra := range []string{s1, s2} {
		fmt.Fprintf(&b, "[[peers]]\nid = \"s%d\"\nstream_addr = \"127.0.0.1:%d\"\nraft_addr = \"127.0.0.1:%d\"\ncommit_addr = \"127.0.0.1:%d\"\n%s\n",
			i+1, 7001+i, 7101+i, 7201+i, extra)
	}
	path := filepath.Join(d.dir, "group.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const (
	tlsHead  = "[tls]\nca_file = \"ca.crt\"\n[tls.client]\ncert_file = \"client.crt\"\nkey_file = \"client.key\""
	s1Keys   = "cert_file = \"s1.crt\"\nkey_file = \"s1.key\""
	s2Keys   = "cert_file = \"s2.crt\"\nkey_file = \"s2.key\""
	noClient = "[tls]\nca_file = \"ca.crt\""
)

// A group file with [tls] gives each peer mutual TLS with its own
// certificate, relative to the file, implies netconn, and tells peer
// certificates from client ones; a client gets the CA and its certificate.
func TestLoadConfigTLS(t *testing.T) {
	d := newTLSDir(t)
	path := d.file(t, tlsHead, s1Keys, s2Keys)
	cfg, err := peer.LoadConfig(path, "s2")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Transport != transport.NetConn {
		t.Errorf("Transport = %v, want netconn, which [tls] implies", cfg.Transport)
	}
	if cfg.TLS == nil || cfg.PeerTLS == nil || cfg.AuthorizePeer == nil {
		t.Fatalf("TLS %v, PeerTLS %v, AuthorizePeer set %v: want all three", cfg.TLS, cfg.PeerTLS, cfg.AuthorizePeer != nil)
	}
	if cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert || cfg.TLS.MinVersion != tls.VersionTLS13 {
		t.Errorf("listening side: ClientAuth %v, MinVersion %x; want mutual TLS 1.3", cfg.TLS.ClientAuth, cfg.TLS.MinVersion)
	}
	if got := cfg.TLS.Certificates[0].Leaf.Subject.CommonName; got != "s2" {
		t.Errorf("s2 presents the certificate of %q", got)
	}
	if _, err := cfg.TLS.Certificates[0].Leaf.Verify(x509.VerifyOptions{Roots: cfg.PeerTLS.RootCAs}); err != nil {
		t.Errorf("PeerTLS.RootCAs does not verify the peer's certificate: %v", err)
	}
	if !cfg.AuthorizePeer(d.ca.Peer(t, "s3").Leaf) || cfg.AuthorizePeer(d.ca.Client(t, "app").Leaf) {
		t.Error("AuthorizePeer does not tell a peer certificate from a client's")
	}

	cc, err := peer.LoadClientConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cc.TLS == nil || len(cc.TLS.Certificates) != 1 || cc.TLS.Certificates[0].Leaf.Subject.CommonName != "app" || cc.Transport != transport.NetConn || len(cc.Peers) != 2 {
		t.Fatalf("client config %+v", cc)
	}
	if _, err := cfg.TLS.Certificates[0].Leaf.Verify(x509.VerifyOptions{Roots: cc.TLS.RootCAs}); err != nil {
		t.Errorf("the client's RootCAs do not verify the peers: %v", err)
	}

	// Without [tls.client] a client presents nothing; without [tls], no TLS.
	cc, err = peer.LoadClientConfig(d.file(t, noClient, s1Keys, s2Keys))
	if err != nil || cc.TLS == nil || len(cc.TLS.Certificates) != 0 {
		t.Errorf("[tls] without [tls.client]: %+v, %v", cc.TLS, err)
	}
	cc, err = peer.LoadClientConfig(d.file(t, "", "", ""))
	if err != nil || cc.TLS != nil || cc.Transport != transport.Gnet {
		t.Errorf("no [tls]: %+v, %v", cc, err)
	}
	// A client needs no peer's key: s1's may be unreadable.
	if err := os.Remove(filepath.Join(d.dir, "s1.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.LoadClientConfig(d.file(t, tlsHead, s1Keys, s2Keys)); err != nil {
		t.Errorf("a client reading a group file whose peer keys it lacks: %v", err)
	}
}

func TestLoadConfigTLSRejects(t *testing.T) {
	d := newTLSDir(t)
	writePEM(t, filepath.Join(d.dir, "garbage.crt"), "NOTHING", []byte("x"))
	// A certificate for another host than the peer's addresses.
	other := d.ca.Peer(t, "far")
	other.Leaf.IPAddresses, other.Leaf.DNSNames = nil, []string{"far.example"}
	writeKeyPair(t, d.dir, "far", reissue(t, d.ca, other.Leaf))
	for _, tc := range []struct {
		name, head, s1, s2 string
		client             bool // LoadClientConfig, not LoadConfig of s1
		want               string
	}{
		{"gnet", "transport = \"gnet\"\n" + tlsHead, s1Keys, s2Keys, false, `transport "gnet" has no TLS`},
		{"no ca_file", "[tls]\n[tls.client]\ncert_file = \"client.crt\"\nkey_file = \"client.key\"", s1Keys, s2Keys, false, "[tls] needs ca_file"},
		{"peer without cert", tlsHead, s1Keys, "", false, `peer "s2" needs cert_file and key_file`},
		{"cert without [tls]", "", s1Keys, "", false, `peer "s1" has cert_file or key_file but the file has no [tls]`},
		{"half a client", "[tls]\nca_file = \"ca.crt\"\n[tls.client]\ncert_file = \"client.crt\"", s1Keys, s2Keys, true, "[tls.client] needs both cert_file and key_file"},
		{"unknown key", tlsHead + "\ncrl_file = \"x\"", s1Keys, s2Keys, false, "unknown keys tls.client.crl_file"},
		{"missing ca", "[tls]\nca_file = \"nope.crt\"", s1Keys, s2Keys, false, "[tls] ca_file: open " + filepath.Join(d.dir, "nope.crt")},
		{"not a ca", "[tls]\nca_file = \"garbage.crt\"", s1Keys, s2Keys, true, "holds no PEM certificate"},
		{"missing key", tlsHead, "cert_file = \"s1.crt\"\nkey_file = \"none.key\"", s2Keys, false, "none.key: no such file"},
		{"key of another cert", tlsHead, "cert_file = \"s1.crt\"\nkey_file = \"s2.key\"", s2Keys, false, "private key does not match public key"},
		{"client key of another cert", "[tls]\nca_file = \"ca.crt\"\n[tls.client]\ncert_file = \"client.crt\"\nkey_file = \"s1.key\"", s1Keys, s2Keys, true, "[tls.client]: cert_file"},
		{"other CA", tlsHead, "cert_file = \"stranger.crt\"\nkey_file = \"stranger.key\"", s2Keys, false, "does not verify against ca_file"},
		{"client cert as peer", tlsHead, "cert_file = \"client.crt\"\nkey_file = \"client.key\"", s2Keys, false, "does not verify against ca_file " + filepath.Join(d.dir, "ca.crt") + " for both sides"},
		{"wrong host", tlsHead, "cert_file = \"far.crt\"\nkey_file = \"far.key\"", s2Keys, false, "does not name the host of 127.0.0.1:7001"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := d.file(t, tc.head, tc.s1, tc.s2)
			var err error
			if tc.client {
				_, err = peer.LoadClientConfig(path)
			} else {
				_, err = peer.LoadConfig(path, "s1")
			}
			if !errors.Is(err, peer.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrConfig saying %q", err, tc.want)
			}
		})
	}
}

// A peer certificate without PeerOU is refused, though it verifies.
func TestLoadConfigTLSNeedsPeerOU(t *testing.T) {
	d := newTLSDir(t)
	c := d.ca.Peer(t, "s1")
	c.Leaf.Subject = pkix.Name{CommonName: "s1", OrganizationalUnit: []string{"ops"}}
	writeKeyPair(t, d.dir, "s1", reissue(t, d.ca, c.Leaf))
	_, err := peer.LoadConfig(d.file(t, tlsHead, s1Keys, s2Keys), "s1")
	if !errors.Is(err, peer.ErrConfig) || !strings.Contains(err.Error(), `no organizational unit "pipestream-peer"`) {
		t.Fatalf("got %v", err)
	}
}

// reissue signs a certificate like tmpl, with a new key, by ca.
func reissue(t *testing.T, ca *testcert.CA, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.RawSubject = nil // or Subject is ignored
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
