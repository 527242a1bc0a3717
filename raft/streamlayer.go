package raft

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
)

// streamLayer is hashicorp/raft's TCP stream layer plus what Shutdown needs
// to leave no goroutine behind: NetworkTransport.Close only closes the
// listener, so a connection handler blocked reading an inbound connection
// would live until the remote end hung up. streamLayer remembers every
// connection, closes them all in Close, and lets wait block until the
// transport's handlers have closed the inbound ones, which they do on exit.
// With TLS configs it speaks TLS both ways.
type streamLayer struct {
	ln             *net.TCPListener
	server, client *tls.Config // nil for plain TCP

	mu      sync.Mutex
	closed  bool
	conns   map[*trackedConn]struct{}
	inbound sync.WaitGroup // inbound connections the transport has not closed yet
}

var _ hraft.StreamLayer = (*streamLayer)(nil)

func listenStream(addr string, server, client *tls.Config) (*streamLayer, error) {
	ln, err := listenTCP(addr)
	if err != nil {
		return nil, err
	}
	return &streamLayer{ln: ln, server: server, client: client, conns: make(map[*trackedConn]struct{})}, nil
}

// listenTCP binds addr, refusing wildcard addresses: the bound address is
// advertised to the other peers as is.
func listenTCP(addr string) (*net.TCPListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("raft: listen: %w", err)
	}
	tl := ln.(*net.TCPListener)
	if a := tl.Addr().(*net.TCPAddr); a.IP == nil || a.IP.IsUnspecified() {
		tl.Close()
		return nil, fmt.Errorf("%w: %s is not an address other peers can dial", ErrConfig, addr)
	}
	return tl, nil
}

func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	if s.server == nil {
		return s.track(c, c, true)
	}
	return s.track(&lazyTLSConn{Conn: tls.Server(c, s.server)}, c, true)
}

func (s *streamLayer) Dial(addr hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := dial(context.Background(), string(addr), timeout, s.client)
	if err != nil {
		return nil, err
	}
	return s.track(c, netConn(c), false)
}

// track remembers c, whose TCP connection is raw.
func (s *streamLayer) track(c, raw net.Conn, inbound bool) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		raw.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, raw: raw, s: s, inbound: inbound}
	s.conns[tc] = struct{}{}
	if inbound {
		s.inbound.Add(1)
	}
	return tc, nil
}

// Close stops accepting and closes every connection, which unblocks the
// transport's readers. Their own Close calls still follow.
func (s *streamLayer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.raw.Close()
	}
	return err
}

// wait blocks until the transport has closed every inbound connection, that
// is until its connection handlers have returned. Call it after Close.
func (s *streamLayer) wait() { s.inbound.Wait() }

func (s *streamLayer) Addr() net.Addr { return s.ln.Addr() }

// trackedConn removes itself from its streamLayer when closed.
type trackedConn struct {
	net.Conn
	raw     net.Conn // the TCP connection under Conn
	s       *streamLayer
	inbound bool
	once    sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		if c.inbound {
			c.s.inbound.Done()
		}
	})
	return err
}
