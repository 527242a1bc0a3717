package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"time"

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
	// PeerTLS or AuthorizePeer and the gnet transport, which has no TLS.
	ErrTLSNeedsNetConn = errors.New("server: TLS needs the netconn transport")
)

// StageAuthorizePeer names the stage that Config.AuthorizePeer adds to
// client and predecessor connections, right before handler.StageRouter.
const StageAuthorizePeer = "authorize-peer"

// DefaultPeerOutbound bounds the bytes queued on a connection to a
// successor.
const DefaultPeerOutbound = 512 << 20

// Defaults of Config fields.
const (
	// DefaultMaxPartialBytes is 16 frames of 16 MiB.
	DefaultMaxPartialBytes = 256 << 20
	// DefaultReadStallTimeout is how long an incomplete frame may wait for
	// its next bytes.
	DefaultReadStallTimeout = 30 * time.Second
	// DefaultKeepaliveInterval is how long a successor connection goes
	// without an answered PING.
	DefaultKeepaliveInterval = 5 * time.Second
)

// Peer is a member of the group.
type Peer struct {
	ID   string
	Addr string // DataStream address; may be empty for this server itself
}

// Config configures a Server. ID, Peers and StateMachine are required.
type Config struct {
	// GroupID, if set, refuses header requests naming another group with
	// GROUP_MISMATCH.
	GroupID []byte
	ID      string
	Addr    string // listen address; default "127.0.0.1:0"
	Peers   []Peer // every member, this one included

	StateMachine statemachine.StateMachine
	// InlineWrites writes data on the event loop when a stream's executor
	// is idle; only for a state machine whose Write never blocks. See
	// handler.Config.
	InlineWrites bool
	// VerifyEveryPeer checks each packet's CRC32C on every peer, not only
	// on the leaves of its routing tree; see handler.Config.
	VerifyEveryPeer bool
	// WriteQuorum is how many peers must hold a stream for it to commit;
	// see handler.Config. 0 is a majority, handler.QuorumAll every peer.
	WriteQuorum int
	// Committer commits closed streams; nil runs standalone (see
	// handler.Config). It can also be set later with SetCommitter.
	Committer statemachine.Committer

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
	// defaults to the host of each peer's address. Both need Transport
	// transport.NetConn (else ErrTLSNeedsNetConn), and one needs the other
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

	MaxFrame      int           // default codec.DefaultMaxPacketFrame
	MaxHeader     int           // default codec.DefaultMaxPacketHeader
	ReplyTimeout  time.Duration // default handler.DefaultReplyTimeout
	CommitTimeout time.Duration // default handler.DefaultCommitTimeout
	LinkTimeout   time.Duration // default handler.DefaultLinkTimeout
	IdleTimeout   time.Duration // default handler.DefaultIdleTimeout
	// Limits; see handler.Config. Zero means the handler's default.
	MaxStreams        int
	MaxStreamsPerConn int
	MaxConnBytes      int64
	// SweepInterval is the tick on which timeouts are checked; default
	// one second, or a tenth of the reply timeout if that is shorter.
	SweepInterval time.Duration
	// RedialInterval is the longest wait between attempts to reconnect to
	// a peer; default one second.
	RedialInterval time.Duration
	// HandshakeTimeout bounds connecting to a peer and its answer to the
	// first PING; default three seconds.
	HandshakeTimeout time.Duration
	// MaxPartialBytes bounds the bytes that client and predecessor
	// connections hold, all together, in frames that have not fully
	// arrived (see codec.PartialBudget); a connection whose frame would
	// take them past it is closed, and the others go on. Default
	// DefaultMaxPartialBytes, or MaxFrame if that is more; a value below
	// MaxFrame is refused, since the largest frames could never arrive.
	MaxPartialBytes int64
	// ReadStallTimeout closes a connection whose incomplete frame gets no
	// bytes this long, releasing what it holds; default
	// DefaultReadStallTimeout. It is checked on the sweep tick.
	ReadStallTimeout time.Duration
	// KeepaliveInterval is how long a connection to a successor goes
	// without an answered PING before it is sent one; default
	// DefaultKeepaliveInterval. KeepaliveTimeout bounds the wait for the
	// answer, after which the connection is closed and redialed; default
	// the reply timeout, since a PING may queue behind forwarded packets
	// that have that long to be answered. A successor that went silent
	// without a reset (a partition) is so reported down within
	// KeepaliveInterval + KeepaliveTimeout.
	KeepaliveInterval time.Duration
	KeepaliveTimeout  time.Duration

	// Pipeline, if set, is called for every client or predecessor
	// connection after the server stages are installed (see the
	// handler.Stage names, and StageAuthorizePeer), on the connection's
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
	case cfg.Transport != transport.NetConn:
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
