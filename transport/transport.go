// Package transport runs pipelines over network connections.
//
// A Channel is one connection together with its pipeline. A server calls an
// Initializer for every accepted connection to add its handlers, then fires
// ChannelActive; inbound bytes arrive at the head of the pipeline as a
// buffer.Inbound for a frame decoder to consume, followed by
// ChannelReadComplete; when the connection ends, ChannelInactive is fired
// exactly once and Done is closed.
//
// Two implementations sit behind the same Channel and Server interfaces:
//
//   - Listen, Dial and Dialer read on gnet v2 event loops, which run the
//     handlers: many connections per loop, and the bytes of a large frame
//     read from the socket straight into the frame's buffer. Each
//     connection sends from a writer goroutine of its own, on a duplicate
//     of the socket, without copying. This is the fast path; it needs a
//     Unix system.
//   - ListenConn and DialConn use net.Conn with two goroutines per
//     connection, a reader and the same writer. They are the baseline and
//     the only one with TLS (WithTLS).
//
// Kind picks one of the two by value, for callers configured at run time:
// ParseKind reads its name, Caps says what it can do (TLS, sendfile) and
// NewConnector dials with any kind. The kinds and what they can do are
// listed in one place, the registry in kind.go.
//
// Writing: Write, Flush and Close may be called from any goroutine. Write
// queues a message (a *buffer.Buf, whose reference the transport takes over
// and releases once the bytes are handed to the socket or on error; a
// []byte, which it copies; or a *FileRegion, sent with sendfile(2) where
// the connection allows); Flush makes sure everything written before it is
// sent, without waiting for the socket. Bytes may leave before a Flush. The
// bytes queued on a connection and not yet taken by the kernel are bounded
// by WithMaxOutbound: a Write past the bound fails with ErrOutboundFull.
// That bound is a safety net; flow control belongs to the protocol above.
//
// Write, Flush and Close on a Channel act at the transport, below every
// handler. To pass through the pipeline's outbound stages (an encoder, say)
// write through Pipeline() or a handler's Context instead.
package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/pipeline"
)

// Errors returned by channels.
var (
	// ErrClosed is returned by operations on a closed channel, server or
	// dialer. It matches net.ErrClosed with errors.Is.
	ErrClosed = fmt.Errorf("transport: %w", net.ErrClosed)
	// ErrOutboundFull is returned by a Write that would put more than the
	// WithMaxOutbound bound of bytes in the connection's outbound queue.
	ErrOutboundFull = errors.New("transport: outbound queue full")
)

// Channel is one connection and its pipeline.
type Channel interface {
	// Write, Flush, Close and the addresses act on the connection itself,
	// below every handler of the pipeline.
	pipeline.Transport
	// ID identifies the channel within the process; IDs are not reused.
	ID() uint64
	// Pipeline returns the channel's pipeline.
	Pipeline() *pipeline.Pipeline
	// Done is closed after ChannelInactive has been fired and every
	// queued buffer has been released.
	Done() <-chan struct{}
}

// Initializer prepares a new channel's pipeline, typically by adding
// handlers to ch.Pipeline(). It is called once per connection, before
// ChannelActive, on the goroutine that will fire the channel's inbound
// events. A panic in it closes the connection.
type Initializer func(ch Channel)

// Server accepts connections until it is shut down.
type Server interface {
	// Addr returns the address the server listens on, with the port the
	// system chose when the requested one was 0.
	Addr() net.Addr
	// Shutdown stops accepting, closes every connection (each channel
	// fires ChannelInactive) and waits until the server's goroutines have
	// ended or ctx is done. It returns ctx.Err() in the latter case.
	Shutdown(ctx context.Context) error
}

var lastID atomic.Uint64

func nextID() uint64 { return lastID.Add(1) }

// splitAddr accepts "host:port" or "tcp://host:port" (also tcp4, tcp6) and
// returns the network and the host:port.
func splitAddr(addr string) (network, hostport string, err error) {
	network, hostport, found := strings.Cut(addr, "://")
	if !found {
		return "tcp", addr, nil
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
		return network, hostport, nil
	}
	return "", "", fmt.Errorf("transport: unsupported network %q in %q", network, addr)
}

// toBuf turns a written message into a buffer holding one reference.
func toBuf(msg any) (*buffer.Buf, error) {
	switch m := msg.(type) {
	case *buffer.Buf:
		return m, nil
	case []byte:
		return buffer.Copy(m), nil
	case *FileRegion:
		return readRegion(m)
	}
	pipeline.Release(msg)
	return nil, fmt.Errorf("transport: cannot write a %T; encode it to a *buffer.Buf or []byte first", msg)
}

// initialize runs init and reports whether it returned normally.
func initialize(ch Channel, init Initializer, logger *slog.Logger) (ok bool) {
	if init == nil {
		return true
	}
	defer func() {
		if r := recover(); r != nil {
			logger.Error("transport: initializer panicked, closing connection", "channel", ch.ID(), "panic", r)
		}
	}()
	init(ch)
	return true
}
