package peer_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/testcert"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/transport"
)

// TestMutualTLS runs a whole group with mutual TLS on every port: a client
// with a client certificate commits a stream, and one without a certificate
// is refused.
func TestMutualTLS(t *testing.T) {
	buffertest.Check(t)
	ca := testcert.NewCA(t, "group")
	isPeer := func(c *x509.Certificate) bool { return testcert.HasOU(c, testcert.PeerOU) }
	g := startGroup(t, groupOpts{kind: transport.NetConn, edit: func(i int, cfg *peer.Config) {
		cert := ca.Peer(t, cfg.ID)
		cfg.TLS, cfg.PeerTLS, cfg.AuthorizePeer = ca.ServerConfig(cert), ca.ClientConfig(cert), isPeer
	}})

	c := g.client(datastream.WithTLS(ca.ClientConfig(ca.Client(t, "app"))))
	rep, err := putFile(g, c, g.members[0].ID, "secret", randomBytes(7, 100<<10))
	if err != nil || !rep.GetSuccess() || rep.GetLogIndex() == 0 {
		t.Fatalf("put over mutual TLS: %v, %v", rep, err)
	}

	// A client certificate of the same CA opens no Raft connection.
	for _, addr := range []string{g.members[1].RaftAddr, g.members[1].CommitAddr} {
		conn, err := tls.Dial("tcp", addr, ca.ClientConfig(ca.Client(t, "app")))
		if err == nil {
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1)) // TLS 1.3 reports the refusal here
			conn.Close()
		}
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s accepted a client certificate (err %v)", addr, err)
		}
	}

	stranger := g.client(datastream.WithTLS(ca.ClientConfig()))
	if _, err := putFile(g, stranger, g.members[0].ID, "nope", []byte("x")); !errors.Is(err, datastream.ErrConnectionLost) {
		t.Fatalf("a client without a certificate: %v, want ErrConnectionLost", err)
	}
}
