// Package server runs one DataStream peer: a transport listener whose
// connections carry the handler stages, connections to the other peers of
// the group for forwarding, and the tick that sweeps timeouts.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

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
	// redial is closed and replaced whenever a peer connects to this
	// server (it is running) or a peer's address changes, so that the
	// connect loops waiting out a backoff dial at once (see connect).
	redial      chan struct{}
	firstRedial time.Duration // see redialFrom; the tests change it
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
		addrs[p.ID] = p.StreamAddr
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
	if err := cfg.Limits.Check(); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	cfg.Limits = cfg.Limits.WithDefaults()
	cfg.Timeouts = cfg.Timeouts.WithDefaults()
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

		redial:      make(chan struct{}),
		firstRedial: 10 * time.Millisecond,

		partials: codec.NewPartialBudget(cfg.MaxPartialBytes),
		frames:   make(map[transport.Channel]*codec.FrameDecoder),
	}
	s.streams = handler.NewStreams(handler.Config{
		ID:           cfg.ID,
		Peers:        ids,
		Dial:         s.successor,
		StateMachine: cfg.StateMachine,
		Committer:    cfg.Committer,
		Events:       cfg.Events,
		Logger:       s.log,
		Policy:       cfg.Policy,
		Limits:       cfg.Limits,
		Timeouts:     cfg.Timeouts,
	})
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

// PartialBytes returns the bytes that client and predecessor connections
// hold of MaxPartialBytes.
func (s *Server) PartialBytes() int64 { return s.partials.Held() }

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
