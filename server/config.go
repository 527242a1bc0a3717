package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"

	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

var (
	// ErrPeerUnavailable is returned for a stream whose successor has no
	// live connection at the time its header arrives.
	ErrPeerUnavailable = errors.New("server: peer unavailable")
	// ErrTLSNeedsNetConn is returned by Listen for a Config with TLS,
	// PeerTLS or AuthorizePeer and a transport kind without TLS (see
	// transport.Kind.Caps), such as gnet.
	ErrTLSNeedsNetConn = errors.New("server: TLS needs the netconn transport")
)

// StagePeerGate names the stage the server puts on client and predecessor
// connections, right before handler.StageRouter. It meets a connection's
// first packet and then steps out of the pipeline: a connection that opens
// with a PING is a peer's, which Config.AuthorizePeer, if set, must
// approve, and which shows that peer running, so the server redials at
// once the peers it has lost instead of waiting out its backoff.
const StagePeerGate = "peer-gate"

// StageAuthorizePeer is the stage's former name.
//
// Deprecated: Use StagePeerGate; the stage is there with or without
// Config.AuthorizePeer.
const StageAuthorizePeer = StagePeerGate

// DefaultPeerOutbound bounds the bytes queued on a connection to a
// successor.
const DefaultPeerOutbound = 512 << 20

// Config configures a Server. ID, Peers and StateMachine are required.
// The settings are in the embedded handler.Policy, handler.Limits and
// handler.Timeouts, which declare each one and its default; zero fields
// take the defaults.
type Config struct {
	ID   string
	Addr string // listen address; default "127.0.0.1:0"
	// Peers lists every member, this one included, by ID and StreamAddr;
	// this server's own StreamAddr may be empty.
	Peers []group.Member

	StateMachine statemachine.StateMachine
	// Committer commits closed streams; nil runs standalone (see
	// handler.Config). It can also be set later with SetCommitter.
	Committer statemachine.Committer

	handler.Policy
	handler.Limits
	handler.Timeouts

	// Transport picks gnet (default) or net.Conn; TransportOptions go to
	// both the listener and the connections to peers. TLS is set with the
	// fields below rather than transport.WithTLS, because the two sides
	// need different configurations.
	Transport        transport.Kind
	TransportOptions []transport.Option

	// TLS, if set, makes the listener speak TLS, to clients and to the
	// other peers alike: Certificates, and for mutual TLS ClientAuth
	// tls.RequireAndVerifyClientCert with ClientCAs. PeerTLS is the
	// dialing side, for the connections to the other peers: RootCAs, and
	// for mutual TLS this peer's certificate in Certificates; ServerName
	// defaults to the host of each peer's address. Both need a Transport
	// with TLS, transport.NetConn (else ErrTLSNeedsNetConn), and one needs the other
	// when the group has other peers. See docs/security.md.
	TLS     *tls.Config
	PeerTLS *tls.Config
	// AuthorizePeer, if set, decides which connections may act as a peer.
	// A connection that opens with a PING becomes a predecessor, which may
	// carry the streams of every client; without AuthorizePeer any
	// connection may, including one holding a valid client certificate.
	// AuthorizePeer is called with the leaf of the connection's verified
	// certificate chain when such a connection sends its PING; if it
	// returns false, or there is no verified certificate, the connection
	// is closed. A connection that opens with a stream is a client's
	// connection and is not asked about. It needs TLS, and TLS.ClientAuth
	// set to verify client certificates.
	AuthorizePeer func(cert *x509.Certificate) bool

	// Pipeline, if set, is called for every client or predecessor
	// connection after the server stages are installed (see the
	// handler.Stage names, and StagePeerGate), on the connection's
	// event loop (its reader goroutine, for net.Conn) before its
	// first read. It may add, wrap or replace stages; an error closes the
	// connection. Connections to successors are not passed to it.
	Pipeline func(p *pipeline.Pipeline) error

	// Events, if set, observes streams, packets and connections; see
	// handler.Events.
	Events handler.Events

	Logger *slog.Logger
}

// checkTLS refuses TLS settings that cannot work; others is whether the
// group has peers besides this one.
func checkTLS(cfg *Config, others bool) error {
	if cfg.TLS == nil && cfg.PeerTLS == nil && cfg.AuthorizePeer == nil {
		return nil
	}
	switch {
	case !cfg.Transport.Caps().TLS:
		return ErrTLSNeedsNetConn
	case cfg.AuthorizePeer != nil && cfg.TLS == nil:
		return errors.New("server: AuthorizePeer needs TLS")
	case others && (cfg.TLS == nil || cfg.PeerTLS == nil):
		// The peers dial the listener the clients use: if one side
		// speaks TLS, both must.
		return errors.New("server: TLS and PeerTLS must be set together")
	}
	return nil
}
