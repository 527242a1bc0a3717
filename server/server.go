// Package server runs one DataStream peer: a transport listener whose
// connections carry the handler stages, connections to the other peers of
// the group for forwarding, and the tick that sweeps timeouts.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
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

	MaxFrame      int           // default dscodec.DefaultMaxPacketFrame
	MaxHeader     int           // default dscodec.DefaultMaxPacketHeader
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

// Server is one running peer.
type Server struct {
	cfg     Config
	streams *handler.Streams
	ln      transport.Server
	dialer  transport.Connector
	log     *slog.Logger

	ctx    context.Context // cancelled by Shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// partials bounds the incomplete frames of upstream connections;
	// frames holds their decoders, for the sweep to find stalls.
	partials *codec.PartialBudget
	fmu      sync.Mutex
	frames   map[transport.Channel]*codec.FrameDecoder

	mu    sync.Mutex
	addrs map[string]string
	conns map[string]transport.Channel
	loops map[string]context.CancelFunc // stops each peer's connect loop
	up    chan struct{}                 // closed and replaced whenever a peer connects or the peers change
}

// Listen starts a peer: it binds the listener, starts connecting to the
// other peers in the background and returns. Use WaitPeers to wait until
// every peer is reachable.
func Listen(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.ID == "" || cfg.StateMachine == nil {
		return nil, errors.New("server: Config needs ID and StateMachine")
	}
	var ids []string
	addrs := make(map[string]string)
	for _, p := range cfg.Peers {
		ids = append(ids, p.ID)
		addrs[p.ID] = p.Addr
	}
	if _, ok := addrs[cfg.ID]; !ok {
		return nil, fmt.Errorf("server: peer list does not include this server %q", cfg.ID)
	}
	if err := checkTLS(&cfg, len(addrs) > 1); err != nil {
		return nil, err
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = dscodec.DefaultMaxPacketFrame
	}
	if cfg.RedialInterval <= 0 {
		cfg.RedialInterval = time.Second
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 3 * time.Second
	}
	switch {
	case cfg.MaxPartialBytes <= 0:
		cfg.MaxPartialBytes = max(DefaultMaxPartialBytes, int64(cfg.MaxFrame))
	case cfg.MaxPartialBytes < int64(cfg.MaxFrame):
		return nil, fmt.Errorf("server: MaxPartialBytes %d is less than MaxFrame %d", cfg.MaxPartialBytes, cfg.MaxFrame)
	}
	if cfg.ReadStallTimeout <= 0 {
		cfg.ReadStallTimeout = DefaultReadStallTimeout
	}
	if cfg.KeepaliveInterval <= 0 {
		cfg.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{
		cfg:   cfg,
		log:   cfg.Logger.With("peer", cfg.ID),
		addrs: addrs,
		conns: make(map[string]transport.Channel),
		loops: make(map[string]context.CancelFunc),
		up:    make(chan struct{}),

		partials: codec.NewPartialBudget(cfg.MaxPartialBytes),
		frames:   make(map[transport.Channel]*codec.FrameDecoder),
	}
	s.streams = handler.NewStreams(handler.Config{
		GroupID:         cfg.GroupID,
		ID:              cfg.ID,
		Peers:           ids,
		Dial:            s.successor,
		StateMachine:    cfg.StateMachine,
		InlineWrites:    cfg.InlineWrites,
		VerifyEveryPeer: cfg.VerifyEveryPeer,
		WriteQuorum:     cfg.WriteQuorum,
		Committer:       cfg.Committer,
		ReplyTimeout:    cfg.ReplyTimeout,
		CommitTimeout:   cfg.CommitTimeout,
		LinkTimeout:     cfg.LinkTimeout,
		IdleTimeout:     cfg.IdleTimeout,
		MaxHeader:       cfg.MaxHeader,

		MaxStreams:        cfg.MaxStreams,
		MaxStreamsPerConn: cfg.MaxStreamsPerConn,
		MaxConnBytes:      cfg.MaxConnBytes,
		Events:            cfg.Events,
		Logger:            s.log,
	})
	hc := s.streams.Config()
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = min(time.Second, hc.ReplyTimeout/10, hc.IdleTimeout/10, cfg.ReadStallTimeout/10)
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = hc.ReplyTimeout
	}
	s.cfg.SweepInterval, s.cfg.KeepaliveTimeout = cfg.SweepInterval, cfg.KeepaliveTimeout
	opts := append([]transport.Option{transport.WithLogger(s.log)}, cfg.TransportOptions...)
	if cfg.TLS != nil {
		opts = append(opts, transport.WithTLS(cfg.TLS))
	}
	// A successor connection queues what every client forwards through
	// this peer; each client bounds its own bytes in flight, so this bound
	// is a safety net sized for several of them (issue: server-side
	// back-pressure per connection).
	peerOpts := append([]transport.Option{transport.WithLogger(s.log), transport.WithMaxOutbound(DefaultPeerOutbound)}, cfg.TransportOptions...)
	if cfg.PeerTLS != nil {
		peerOpts = append(peerOpts, transport.WithTLS(cfg.PeerTLS))
	}
	d, err := cfg.Transport.NewConnector(peerOpts...)
	if err != nil {
		return nil, err
	}
	s.dialer = d
	ln, err := cfg.Transport.Listen(ctx, cfg.Addr, s.initUpstream, opts...)
	if err != nil {
		_ = s.dialer.Close()
		return nil, fmt.Errorf("server %s: %w", cfg.ID, err)
	}
	s.ln = ln
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.sweep()
	s.mu.Lock()
	for id := range addrs {
		s.startConnect(id)
	}
	s.mu.Unlock()
	return s, nil
}

// startConnect starts the loop that keeps a connection to peer id up.
// Call with mu held.
func (s *Server) startConnect(id string) {
	if id == s.cfg.ID || s.loops[id] != nil || s.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	s.loops[id] = cancel
	s.wg.Add(1)
	go s.connect(ctx, id)
}

// SetPeers replaces the group's members, for a group whose membership
// changed: the server connects to the new ones, closes its connection to
// those no longer listed (failing the streams forwarded over it) and
// checks the routing of new streams against the new list. This server's
// own entry may be missing (it was removed): it then refuses every new
// stream, since no routing table can name it.
func (s *Server) SetPeers(peers []Peer) {
	ids := make([]string, 0, len(peers))
	next := make(map[string]string, len(peers))
	for _, p := range peers {
		ids = append(ids, p.ID)
		next[p.ID] = p.Addr
	}
	s.mu.Lock()
	var drop []transport.Channel
	for id := range s.addrs {
		if _, ok := next[id]; ok || id == s.cfg.ID {
			continue
		}
		if stop := s.loops[id]; stop != nil {
			stop()
			delete(s.loops, id)
		}
		if c := s.conns[id]; c != nil {
			drop = append(drop, c)
			delete(s.conns, id)
		}
		delete(s.addrs, id)
	}
	if _, ok := next[s.cfg.ID]; !ok {
		delete(s.addrs, s.cfg.ID)
	}
	for id, addr := range next {
		s.addrs[id] = addr
		s.startConnect(id)
	}
	close(s.up) // WaitPeers looks again
	s.up = make(chan struct{})
	s.mu.Unlock()
	s.streams.SetPeers(ids)
	for _, c := range drop {
		_ = c.Close()
	}
	s.log.Info("server: peers changed", "peers", ids)
}

// PartialBytes returns the bytes that client and predecessor connections
// hold of MaxPartialBytes.
func (s *Server) PartialBytes() int64 { return s.partials.Held() }

// PeerConnected reports whether the server has a live connection to peer
// id, one that answered its last PING within KeepaliveTimeout.
func (s *Server) PeerConnected(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[id] != nil
}

// ID returns the server's peer id.
func (s *Server) ID() string { return s.cfg.ID }

// Addr returns the DataStream listen address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Streams returns the stream table; it is the statemachine.Linker the
// commit path calls on this peer.
func (s *Server) Streams() *handler.Streams { return s.streams }

// SetCommitter sets the committer, for wiring a Raft node that needs the
// server's Linker before it can be built. Set it before streams close.
func (s *Server) SetCommitter(c statemachine.Committer) { s.streams.SetCommitter(c) }

// SetPeerAddr sets or changes the address of peer id, for groups whose
// members learn each other's ports after binding to port 0.
func (s *Server) SetPeerAddr(id, addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addrs[id] = addr
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

func (s *Server) initUpstream(ch transport.Channel) {
	if ev := s.cfg.Events; ev != nil {
		// Its ConnDown comes from the router's ChannelInactive.
		ev.Conn(handler.ConnEvent{Kind: handler.ConnUp})
	}
	err := handler.Install(ch.Pipeline(), s.streams, s.cfg.MaxFrame)
	if d, ok := ch.Pipeline().Get(handler.StageFrame).(*codec.FrameDecoder); ok {
		d.SetBudget(s.partials)
		s.fmu.Lock()
		s.frames[ch] = d
		s.fmu.Unlock()
	}
	if err == nil && s.cfg.AuthorizePeer != nil {
		err = ch.Pipeline().AddBefore(handler.StageRouter, StageAuthorizePeer, &peerGate{s: s})
	}
	if err == nil && s.cfg.Pipeline != nil {
		err = s.cfg.Pipeline(ch.Pipeline())
	}
	if err != nil {
		s.log.Error("server: cannot set up connection", "err", err)
		_ = ch.Close()
	}
}

// peerGate asks Config.AuthorizePeer about a connection that opens with a
// PING. The router decides on the first packet whether a connection is a
// peer's, so the gate steps out of the pipeline after that packet.
type peerGate struct {
	s       *Server
	refused bool
}

// ChannelRead implements pipeline.ReadHandler.
func (g *peerGate) ChannelRead(ctx *pipeline.Context, msg any) {
	if g.refused {
		// Packets already read when the connection was refused.
		pipeline.Release(msg)
		return
	}
	p, ok := msg.(*handler.Packet)
	if !ok {
		ctx.FireChannelRead(msg)
		return
	}
	if p.Header.GetType() == pb.DataStreamPacketHeader_PING && !g.authorized(ctx.Pipeline().Transport()) {
		g.refused = true
		p.Release()
		// Closed without a reply: any answer to a PING counts as a pong
		// to the dialing peer.
		_ = ctx.Close()
		return
	}
	_, _ = ctx.Pipeline().Remove(ctx.Name())
	ctx.FireChannelRead(p)
}

func (g *peerGate) authorized(t pipeline.Transport) bool {
	st, ok := transport.TLSConnectionState(t)
	if !ok || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		g.s.log.Warn("server: refused a peer connection without a verified certificate", "remote", t.RemoteAddr())
		return false
	}
	cert := st.VerifiedChains[0][0]
	if !g.s.cfg.AuthorizePeer(cert) {
		g.s.log.Warn("server: refused a peer connection: AuthorizePeer said no", "remote", t.RemoteAddr(), "subject", cert.Subject.String())
		return false
	}
	return true
}

// successor is the handler.PeerDialer: the live connection to id, or an
// error at once.
func (s *Server) successor(id string) (handler.Successor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.conns[id]; c != nil {
		return c.Pipeline(), nil
	}
	return nil, fmt.Errorf("%w: %s", ErrPeerUnavailable, id)
}

// WaitPeers blocks until this server has a live connection to every other
// peer, or ctx is done.
func (s *Server) WaitPeers(ctx context.Context) error {
	for {
		s.mu.Lock()
		missing := ""
		for id := range s.addrs {
			if id != s.cfg.ID && s.conns[id] == nil {
				missing = id
				break
			}
		}
		up := s.up
		s.mu.Unlock()
		if missing == "" {
			return nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return fmt.Errorf("server %s: waiting for peer %s: %w", s.cfg.ID, missing, ctx.Err())
		}
	}
}

// connect keeps a connection to peer id up until ctx is done (Shutdown, or
// the peer left the group), redialing with a capped exponential backoff.
func (s *Server) connect(ctx context.Context, id string) {
	defer s.wg.Done()
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		s.mu.Lock()
		addr := s.addrs[id]
		s.mu.Unlock()
		var (
			ch    transport.Channel
			pongs <-chan struct{}
			err   error
		)
		if addr == "" {
			err = errors.New("address unknown")
		} else {
			ch, pongs, err = s.dial(ctx, addr, id)
		}
		if err == nil {
			s.log.Debug("server: connected to peer", "to", id, "local", ch.LocalAddr(), "remote", ch.RemoteAddr())
			backoff = 10 * time.Millisecond
			s.mu.Lock()
			if ctx.Err() != nil { // left the group while dialing
				s.mu.Unlock()
				_ = ch.Close()
				<-ch.Done()
				return
			}
			s.conns[id] = ch
			close(s.up)
			s.up = make(chan struct{})
			s.mu.Unlock()
			if ev := s.cfg.Events; ev != nil {
				ev.Conn(handler.ConnEvent{Kind: handler.ConnUp, Peer: id})
			}
			s.keepalive(ctx, id, ch, pongs)
			s.untrack(id, ch)
			<-ch.Done()
			if ev := s.cfg.Events; ev != nil {
				ev.Conn(handler.ConnEvent{Kind: handler.ConnDown, Peer: id})
			}
			continue
		}
		s.log.Debug("server: peer not reachable yet", "to", id, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(2*backoff, s.cfg.RedialInterval)
	}
}

// keepalive returns when the connection to peer id has ended or must: when
// ctx is done (Shutdown, or the peer left), or when a PING sent after KeepaliveInterval without one has no
// answer within KeepaliveTimeout. A partitioned link resets nothing, and
// its connection would otherwise look live until a stream failed on it;
// the connection is then taken out of use at once and closed, and connect
// redials in the background, so that the next stream finds a live one.
// pongs receives every answer to a PING.
func (s *Server) keepalive(ctx context.Context, id string, ch transport.Channel, pongs <-chan struct{}) {
	idle := time.NewTimer(s.cfg.KeepaliveInterval)
	defer idle.Stop()
	answer := time.NewTimer(s.cfg.KeepaliveTimeout)
	answer.Stop()
	for {
		select {
		case <-idle.C:
		case <-ch.Done():
			return
		case <-ctx.Done():
			_ = ch.Close()
			return
		}
		select {
		case <-pongs: // a late answer to the handshake's PING
		default:
		}
		if err := handler.Ping(ch); err != nil {
			s.log.Warn("server: cannot ping peer; reconnecting", "to", id, "err", err)
			s.untrack(id, ch)
			_ = ch.Close()
			return
		}
		answer.Reset(s.cfg.KeepaliveTimeout)
		select {
		case <-pongs:
			answer.Stop()
			idle.Reset(s.cfg.KeepaliveInterval)
		case <-answer.C:
			s.log.Warn("server: peer did not answer a keepalive ping; reconnecting", "to", id, "timeout", s.cfg.KeepaliveTimeout)
			s.untrack(id, ch)
			_ = ch.Close()
			return
		case <-ch.Done():
			return
		case <-ctx.Done():
			_ = ch.Close()
			return
		}
	}
}

// untrack takes ch out of use as the connection to peer id.
func (s *Server) untrack(id string, ch transport.Channel) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[id] == ch {
		delete(s.conns, id)
	}
}

// dial connects to peer id and returns once the peer has answered a PING,
// so that a socket accepted by a server on its way down never counts as a
// live successor. pongs receives the answers to later PINGs.
func (s *Server) dial(ctx context.Context, addr, id string) (_ transport.Channel, pongs <-chan struct{}, _ error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	var replies *handler.SuccessorReplies
	answers := make(chan struct{}, 1)
	init := func(ch transport.Channel) {
		var err error
		if replies, err = handler.InstallSuccessor(ch.Pipeline(), s.streams, id, s.cfg.MaxFrame); err != nil {
			s.log.Error("server: cannot set up peer connection", "err", err)
			_ = ch.Close()
			return
		}
		replies.OnPong = func() {
			select {
			case answers <- struct{}{}:
			default:
			}
		}
	}
	ch, err := s.dialer.Dial(ctx, addr, init)
	if err != nil {
		return nil, nil, err
	}
	if err := handler.Ping(ch); err != nil {
		_ = ch.Close()
		return nil, nil, err
	}
	select {
	case <-replies.Pong:
		return ch, answers, nil
	case <-ch.Done():
		return nil, nil, fmt.Errorf("connection to %s closed before it answered a ping", addr)
	case <-ctx.Done():
		_ = ch.Close()
		<-ch.Done()
		return nil, nil, fmt.Errorf("%s did not answer a ping: %w", addr, ctx.Err())
	}
}

func (s *Server) sweep() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			s.streams.Sweep(now)
			s.sweepFrames(now)
		case <-s.ctx.Done():
			return
		}
	}
}

// sweepFrames gives back the budget that upstream connections hold beyond
// their incomplete frames' needs, and closes those whose frame stalled.
func (s *Server) sweepFrames(now time.Time) {
	var stalled []transport.Channel
	s.fmu.Lock()
	for ch, d := range s.frames {
		select {
		case <-ch.Done():
			delete(s.frames, ch)
			continue
		default:
		}
		if d.Sweep(now, s.cfg.ReadStallTimeout) {
			stalled = append(stalled, ch)
		}
	}
	s.fmu.Unlock()
	for _, ch := range stalled {
		s.log.Warn("server: closing a connection whose incomplete frame got no bytes", "remote", ch.RemoteAddr(), "for", s.cfg.ReadStallTimeout)
		_ = ch.Close()
	}
}

// Shutdown stops accepting, closes every connection, fails the open
// streams, and waits for every goroutine of the server to end or ctx to be
// done.
func (s *Server) Shutdown(ctx context.Context) error {
	// Upstream connections close first: a stream's client must see its
	// primary go away, not a failure the primary blames on a successor
	// connection that the connect loops, stopped by cancel, close at the
	// same time (the writer goroutines send such a reply at once).
	errs := []error{s.ln.Shutdown(ctx)}
	s.mu.Lock() // no connect loop starts after this (startConnect)
	s.cancel()
	s.mu.Unlock()
	s.wg.Wait()
	errs = append(errs, s.dialer.Close())
	errs = append(errs, s.streams.Shutdown(ctx))
	return errors.Join(errs...)
}
