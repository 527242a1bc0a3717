package raft

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// handshakeTimeout bounds the TLS handshake of an accepted connection, so
// that a peer that connects and says nothing holds no goroutine for long.
const handshakeTimeout = 10 * time.Second

// dial connects to addr within timeout, over TLS with cfg unless it is
// nil. The TLS handshake is part of the dial, so a peer that does not
// trust us, or that we do not trust, fails here.
func dial(ctx context.Context, addr string, timeout time.Duration, cfg *tls.Config) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if cfg == nil {
		return d.DialContext(ctx, "tcp", addr)
	}
	return (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", addr)
}

// netConn returns the TCP connection under c, which closing ends at once:
// closing a TLS connection first tries to tell the remote end.
func netConn(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}

// lazyTLSConn is an accepted TLS connection whose handshake runs at its
// first Read or Write, bounded by handshakeTimeout, on the goroutine that
// serves it: the stream layer's Accept must not wait on a remote end, and
// hashicorp/raft reads inbound connections without deadlines.
type lazyTLSConn struct {
	*tls.Conn
	once sync.Once
	err  error
}

func (c *lazyTLSConn) handshake() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
		defer cancel()
		c.err = c.HandshakeContext(ctx)
	})
	return c.err
}

func (c *lazyTLSConn) Read(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *lazyTLSConn) Write(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}
