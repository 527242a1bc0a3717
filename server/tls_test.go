package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/testcert"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// mtls returns a groupOpts tweak that gives each peer its own certificate
// from ca, requires client certificates from ca on its listener, and
// presents its certificate to the peers it dials.
func mtls(t testing.TB, ca *testcert.CA, also func(*server.Config)) func(*server.Config) {
	return func(cfg *server.Config) {
		cert := ca.Peer(t, cfg.ID)
		cfg.Transport = transport.NetConn
		cfg.TLS = ca.ServerConfig(cert)
		cfg.PeerTLS = ca.ClientConfig(cert)
		if also != nil {
			also(cfg)
		}
	}
}

func isPeer(cert *x509.Certificate) bool { return testcert.HasOU(cert, testcert.PeerOU) }

// streamOnce writes data as one stream and waits for its commit.
func streamOnce(ctx context.Context, c *datastream.Client, name string, data []byte) (*datastream.Output, error) {
	out, err := c.Stream(ctx, []byte(name))
	if err != nil {
		return nil, err
	}
	if _, err := out.Writer(ctx).Write(data); err != nil {
		return out, err
	}
	_, err = out.Close(ctx).Wait(ctx)
	return out, err
}

// TestMutualTLS runs a group whose peers and client all authenticate with
// certificates from one authority: the stream reaches every peer. Clients
// without a certificate, or with one from another authority, cannot open
// a stream, and the group goes on serving the good client.
func TestMutualTLS(t *testing.T) {
	buffertest.Check(t)
	ca, other := testcert.NewCA(t, "group-ca"), testcert.NewCA(t, "other-ca")
	g := startGroup(t, 3, groupOpts{tweak: mtls(t, ca, func(cfg *server.Config) { cfg.AuthorizePeer = isPeer })})
	good := g.client(t, datastream.WithTLS(ca.ClientConfig(ca.Client(t, "good-client"))))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	check := func(name string, data []byte) {
		t.Helper()
		out, err := streamOnce(ctx, good, name, data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for p := range g.servers {
			if got, ok := g.memory(p).Sum(key(good, out)); !ok || got != sum(data) {
				t.Errorf("%s on %s: committed=%v, checksum match=%v", name, g.peers[p].ID, ok, got == sum(data))
			}
		}
	}
	check("before", randomBytes(1, 3<<20+5))

	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"no certificate", ca.ClientConfig()},
		{"certificate of another CA", ca.ClientConfig(other.Client(t, "stranger"))},
		{"does not trust the peers", other.ClientConfig(other.Client(t, "lost"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := g.client(t, datastream.WithTLS(tc.cfg), datastream.WithDialTimeout(5*time.Second))
			out, err := c.Stream(ctx, []byte("refused"))
			if err == nil {
				// TLS 1.3 lets a client finish its handshake before the
				// server has looked at its certificate: the header goes
				// out and the connection ends instead of its reply.
				_, err = out.HeaderFuture().Wait(ctx)
			}
			t.Logf("refused: %v", err)
			switch {
			case err == nil:
				t.Fatal("stream opened")
			case errors.Is(err, datastream.ErrConnectionLost), strings.Contains(err.Error(), "tls: "):
			default:
				t.Errorf("stream failed with %v, want a lost connection or a TLS error", err)
			}
		})
	}

	check("after", randomBytes(2, 1<<20+3))
}

// A connection that opens with a PING may carry every client's streams, so
// with AuthorizePeer only a peer certificate may send it. Without
// AuthorizePeer any certificate the listener accepts may: the limitation
// docs/security.md describes.
func TestAuthorizePeer(t *testing.T) {
	ca := testcert.NewCA(t, "group-ca")
	tests := []struct {
		name      string
		authorize bool
		cert      tls.Certificate
		wantPong  bool
	}{
		{"peer certificate", true, ca.Peer(t, "z-peer"), true},
		{"client certificate", true, ca.Client(t, "client"), false},
		{"client certificate without AuthorizePeer", false, ca.Client(t, "client"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			tweak := mtls(t, ca, nil)
			if tc.authorize {
				tweak = mtls(t, ca, func(cfg *server.Config) { cfg.AuthorizePeer = isPeer })
			}
			g := startGroup(t, 2, groupOpts{tweak: tweak})
			c, err := tls.Dial("tcp", g.peers[0].StreamAddr, ca.ClientConfig(tc.cert))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := &raw{t: t, c: c, client: []byte("raw-client-0001!")}
			r.sendFrame(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}, nil)
			if tc.wantPong {
				if h, _ := r.reply(); !h.GetSuccess() || h.GetPacketHeader().GetType() != pb.DataStreamPacketHeader_PING {
					t.Fatalf("reply to PING = %v", h)
				}
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := io.ReadFull(c, make([]byte, 4))
			t.Logf("refused PING: %v", err)
			if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("PING from a client certificate: read %d bytes, err %v; want the connection closed", n, err)
			}
		})
	}
}

func TestTLSConfigErrors(t *testing.T) {
	ca := testcert.NewCA(t, "ca")
	cert := ca.Peer(t, "a-peer")
	tests := []struct {
		name    string
		tweak   func(*server.Config)
		wantErr error // nil: any error
	}{
		{"TLS on gnet", func(c *server.Config) { c.TLS, c.PeerTLS = ca.ServerConfig(cert), ca.ClientConfig(cert) }, server.ErrTLSNeedsNetConn},
		{"AuthorizePeer on gnet", func(c *server.Config) { c.AuthorizePeer = isPeer }, server.ErrTLSNeedsNetConn},
		{"TLS without PeerTLS", func(c *server.Config) {
			c.Transport, c.TLS = transport.NetConn, ca.ServerConfig(cert)
		}, nil},
		{"PeerTLS without TLS", func(c *server.Config) {
			c.Transport, c.PeerTLS = transport.NetConn, ca.ClientConfig(cert)
		}, nil},
		{"AuthorizePeer without TLS", func(c *server.Config) {
			c.Transport, c.AuthorizePeer = transport.NetConn, isPeer
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := server.Config{
				ID:           "a-peer",
				Peers:        []group.Member{{ID: "a-peer"}, {ID: "b-peer", StreamAddr: "127.0.0.1:1"}},
				StateMachine: statemachine.NewMemoryHashing(),
				Logger:       quietLogger(),
			}
			tc.tweak(&cfg)
			s, err := server.Listen(context.Background(), cfg)
			if err == nil {
				_ = s.Shutdown(context.Background())
				t.Fatal("Listen succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Listen: %v, want %v", err, tc.wantErr)
			}
		})
	}
}
