package transport_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/internal/testcert"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

// With mutual TLS both ends see the other's verified certificate; without
// TLS there is no state to see.
func TestTLSConnectionState(t *testing.T) {
	buffertest.Check(t)
	ca := testcert.NewCA(t, "ca")
	type seen struct {
		cn string
		ok bool
	}
	peerCN := func(ch transport.Channel) seen {
		st, ok := transport.TLSConnectionState(ch)
		if !ok || len(st.PeerCertificates) == 0 {
			return seen{ok: ok}
		}
		return seen{st.PeerCertificates[0].Subject.CommonName, ok}
	}
	tests := []struct {
		name                   string
		kind                   transport.Kind
		server, client         *tls.Config
		wantServer, wantClient seen
	}{
		{"mutual TLS", transport.NetConn, ca.ServerConfig(ca.Peer(t, "the-server")), ca.ClientConfig(ca.Client(t, "the-client")),
			seen{"the-client", true}, seen{"the-server", true}},
		{"netconn", transport.NetConn, nil, nil, seen{}, seen{}},
		{"gnet", transport.Gnet, nil, nil, seen{}, seen{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var sopts, copts []transport.Option
			if tc.server != nil {
				sopts = append(sopts, transport.WithTLS(tc.server))
				copts = append(copts, transport.WithTLS(tc.client))
			}
			onServer := make(chan seen, 1)
			s := listen(t, tc.kind, func(ch transport.Channel) { onServer <- peerCN(ch) }, sopts...)
			ch := dial(t, dialerFor(t, tc.kind, copts...), s.Addr().String(), nil)
			if got := recv(t, onServer, "the server's channel"); got != tc.wantServer {
				t.Errorf("server sees %+v, want %+v", got, tc.wantServer)
			}
			if got := peerCN(ch); got != tc.wantClient {
				t.Errorf("client sees %+v, want %+v", got, tc.wantClient)
			}
		})
	}
}

// A client without a certificate, or with one from another authority, is
// refused; the server goes on serving a client with a good one.
func TestMutualTLSRefusesStrangers(t *testing.T) {
	buffertest.Check(t)
	ca, other := testcert.NewCA(t, "ca"), testcert.NewCA(t, "other")
	s := listen(t, transport.NetConn, echoServer(5), transport.WithTLS(ca.ServerConfig(ca.Peer(t, "server"))))
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"no certificate", ca.ClientConfig()},
		{"certificate of another CA", ca.ClientConfig(other.Client(t, "stranger"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan string, 1)
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			// TLS 1.3 lets the client finish its handshake before the
			// server refuses it, so the dial may succeed; the
			// connection then ends without an echo.
			ch, err := transport.DialConn(ctx, s.Addr().String(), collect(5, got), quiet, transport.WithTLS(tc.cfg))
			if err != nil {
				return
			}
			_ = ch.Write([]byte("hello"))
			_ = ch.Flush()
			waitFor(t, ch.Done(), "the refused connection to end")
			select {
			case m := <-got:
				t.Errorf("refused client got an echo %q", m)
			default:
			}
		})
	}
	got := make(chan string, 1)
	ch := dial(t, dialerFor(t, transport.NetConn, transport.WithTLS(ca.ClientConfig(ca.Client(t, "friend")))), s.Addr().String(), collect(5, got))
	_ = ch.Write([]byte("hello"))
	_ = ch.Flush()
	if m := recv(t, got, "echo to the good client"); m != "hello" {
		t.Errorf("echo %q", m)
	}
}

// Over TLS, batches are gathered into few records; messages both smaller
// and larger than the gathering buffer arrive intact.
func TestTLS(t *testing.T) {
	buffertest.Check(t)
	server, client := tlsConfigs(t)
	s := listen(t, transport.NetConn, func(ch transport.Channel) {
		addFraming(t, ch.Pipeline())
		_ = ch.Pipeline().AddLast("echo", echo{})
	}, transport.WithTLS(server))
	got := make(chan string, 8)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	ch, err := transport.DialConn(ctx, s.Addr().String(), func(ch transport.Channel) {
		addFraming(t, ch.Pipeline())
		_ = ch.Pipeline().AddLast("collect", pipeline.Inbound(func(_ *pipeline.Context, b *buffer.Buf) {
			got <- string(b.Bytes())
			b.Release()
		}))
	}, quiet, transport.WithTLS(client))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ch.Close(); <-ch.Done() }()

	var sent []string
	for i, size := range []int{1, 100, 5000, 100 << 10, 3} {
		m := strings.Repeat(string(rune('a'+i)), size)
		sent = append(sent, m)
		if err := ch.Pipeline().Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Pipeline().Flush(); err != nil {
		t.Fatal(err)
	}
	for i, want := range sent {
		if m := recv(t, got, "echo over TLS"); m != want {
			t.Fatalf("echo %d: %d bytes, want %d", i, len(m), len(want))
		}
	}
}

// tlsConfigs makes a self-signed certificate for 127.0.0.1.
func tlsConfigs(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	client = &tls.Config{RootCAs: pool}
	return server, client
}
