package datastream

import (
	"crypto/tls"
	"slices"

	"github.com/pipestream/pipestream/transport"
)

// WithTLS makes the client connect over TLS with cfg, on the net.Conn
// transport, the one with TLS. cfg.RootCAs holds the authority the peers'
// certificates chain to; for mutual TLS, cfg.Certificates holds the
// client's certificate. ServerName defaults to the host of each peer's
// address, so certificates for IP addresses work as they are. WithTLS
// keeps the transport options of a WithTransport before it; a
// WithTransport after it replaces them, TLS included.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) {
		o.kind = transport.NetConn
		o.topts = append(slices.Clip(o.topts), transport.WithTLS(cfg))
	}
}
