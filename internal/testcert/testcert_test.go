package testcert_test

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/pipestream/pipestream/internal/leaktest"
	"github.com/pipestream/pipestream/internal/testcert"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

// handshake runs both sides of a TLS handshake over an in-memory pipe and
// returns the server's error and the client's.
func handshake(server, client *tls.Config) (serr, cerr error) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	go func() {
		s := tls.Server(a, server)
		err := s.Handshake()
		if err == nil {
			// A TLS 1.3 client finishes its handshake before the server
			// has checked its certificate: the client reads this byte,
			// or the server's refusal.
			_, err = s.Write([]byte{1})
		}
		_ = s.Close()
		done <- err
	}()
	c := tls.Client(b, client)
	cerr = c.Handshake()
	if cerr == nil {
		_, cerr = c.Read(make([]byte, 1))
	}
	_ = b.Close()
	return <-done, cerr
}

func TestMutualTLS(t *testing.T) {
	ca, other := testcert.NewCA(t, "ca"), testcert.NewCA(t, "other")
	server := ca.ServerConfig(ca.Peer(t, "p1"))
	server.ServerName = "127.0.0.1"
	tests := []struct {
		name   string
		client *tls.Config
		ok     bool
	}{
		{"peer certificate", ca.ClientConfig(ca.Peer(t, "p2")), true},
		{"client certificate", ca.ClientConfig(ca.Client(t, "c1")), true},
		{"no certificate", ca.ClientConfig(), false},
		{"certificate of another CA", ca.ClientConfig(other.Client(t, "c2")), false},
		{"server of another CA", other.ClientConfig(other.Client(t, "c3")), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.client.ServerName = "127.0.0.1"
			serr, cerr := handshake(server, tc.client)
			if ok := serr == nil && cerr == nil; ok != tc.ok {
				t.Errorf("server: %v, client: %v; want success %v", serr, cerr, tc.ok)
			}
		})
	}
}

func TestOU(t *testing.T) {
	ca := testcert.NewCA(t, "ca")
	peer, client := ca.Peer(t, "p"), ca.Client(t, "c")
	if !testcert.HasOU(peer.Leaf, testcert.PeerOU) || testcert.HasOU(client.Leaf, testcert.PeerOU) {
		t.Error("only the peer certificate should carry PeerOU")
	}
	if !testcert.HasOU(client.Leaf, testcert.ClientOU) || testcert.HasOU(nil, testcert.ClientOU) {
		t.Error("only the client certificate should carry ClientOU")
	}
}
