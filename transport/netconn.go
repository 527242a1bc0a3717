package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/pipeline"
)

// tlsHandshakeTimeout bounds a server's TLS handshake, so that a client
// that connects and says nothing holds no goroutine for long.
const tlsHandshakeTimeout = 10 * time.Second

// connChannel is a Channel on a net.Conn. A reader goroutine fires the
// inbound events; a writer goroutine sends what Flush asks for.
type connChannel struct {
	id            uint64
	conn          net.Conn
	p             *pipeline.Pipeline
	opts          *options
	local, remote net.Addr
	out           *writer

	done   chan struct{}
	onDone func() // runs before done is closed; servers untrack the channel
}

func newConnChannel(conn net.Conn, opts *options) *connChannel {
	ch := &connChannel{
		id:     nextID(),
		conn:   conn,
		opts:   opts,
		local:  conn.LocalAddr(),
		remote: conn.RemoteAddr(),
		done:   make(chan struct{}),
	}
	// A failed write or a finished Close closes the connection, and the
	// reader tears down.
	ch.out = newWriter(conn, opts, func() { _ = conn.Close() })
	ch.p = pipeline.New(ch, pipeline.WithLogger(opts.logger))
	return ch
}

func (ch *connChannel) ID() uint64                   { return ch.id }
func (ch *connChannel) Pipeline() *pipeline.Pipeline { return ch.p }
func (ch *connChannel) Done() <-chan struct{}        { return ch.done }
func (ch *connChannel) LocalAddr() net.Addr          { return ch.local }
func (ch *connChannel) RemoteAddr() net.Addr         { return ch.remote }

// Write queues msg; see package doc for ownership. A file region's bytes
// count towards WithMaxOutbound like a buffer's.
func (ch *connChannel) Write(msg any) error { return ch.out.write(msg) }

// Flush starts the writer goroutine, which runs until the queue is empty.
func (ch *connChannel) Flush() error { return ch.out.flush() }

// Close sends what was written before it, giving a slow peer up to
// closeLinger to take it, and closes the connection. ChannelInactive
// follows on the reader goroutine. Closing a closed channel does nothing.
func (ch *connChannel) Close() error {
	ch.out.close()
	return nil
}

// start starts the writer and runs init and ChannelActive on the calling
// goroutine, which must then run readLoop: inbound events come from one
// goroutine. A panic in init closes the connection.
func (ch *connChannel) start(init Initializer) {
	if initialize(ch, init, ch.opts.logger) {
		ch.p.FireChannelActive()
	} else {
		_ = ch.conn.Close()
	}
}

// readLoop fires reads until the connection fails or is closed, then
// releases what is queued, fires ChannelInactive and closes done. The
// writer has ended by the time it returns.
func (ch *connChannel) readLoop() {
	in := newConnInbound(ch.conn)
	minRead := min(ch.opts.readBufferCap, netConnMaxRead)
	for {
		n, err := in.ReadOnce(ch.conn, minRead)
		if n > 0 {
			ch.p.FireChannelRead(in)
			ch.p.FireChannelReadComplete()
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				ch.opts.logger.Debug("transport: connection closed", "channel", ch.id, "remote", ch.remote, "err", err)
			}
			break
		}
	}

	ch.out.end()
	ch.p.FireChannelInactive()
	if ch.onDone != nil {
		ch.onDone()
	}
	close(ch.done)
}

// connInbound is the net.Conn transport's Inbound: a buffer.Queue, which
// reads into a decoder's target while empty, that on plain TCP also tells
// how many bytes wait in the socket (buffer.Backlog).
type connInbound struct {
	buffer.Queue
	raw syscall.RawConn // nil unless plain TCP
	// backlogFn and backlog are made once so that asking allocates
	// nothing: RawConn.Control takes a func.
	backlogFn func(fd uintptr)
	backlog   int
}

func newConnInbound(conn net.Conn) *connInbound {
	in := new(connInbound)
	if tc, ok := conn.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			in.raw = raw
			in.backlogFn = func(fd uintptr) { in.backlog = socketBacklog(int(fd)) }
		}
	}
	return in
}

// Backlog implements buffer.Backlog; it is 0 on TLS, whose records the
// socket's count would overstate.
func (in *connInbound) Backlog() int {
	if in.raw == nil {
		return 0
	}
	in.backlog = 0
	if in.raw.Control(in.backlogFn) != nil {
		return 0
	}
	return in.backlog
}

// TLSConnectionState returns the TLS state of t's connection, after the
// handshake: the peer's verified certificates are in it, for a server that
// decides what a connection may do by who holds it. ok is false unless t
// is a channel of the net.Conn transport speaking TLS. A handler passes
// ctx.Pipeline().Transport().
func TLSConnectionState(t pipeline.Transport) (state tls.ConnectionState, ok bool) {
	ch, ok := t.(*connChannel)
	if !ok {
		return tls.ConnectionState{}, false
	}
	tc, ok := ch.conn.(*tls.Conn)
	if !ok {
		return tls.ConnectionState{}, false
	}
	return tc.ConnectionState(), true
}

// DialConn connects to addr ("host:port" or "tcp://host:port") over
// net.Conn, with TLS when WithTLS is given, and returns once init has run
// and ChannelActive has been fired.
func DialConn(ctx context.Context, addr string, init Initializer, opts ...Option) (Channel, error) {
	o := newOptions(opts)
	return dialConn(ctx, addr, init, &o, nil)
}

// dialConn is DialConn with options already made; onDone, if not nil, is
// the channel's (see connChannel).
func dialConn(ctx context.Context, addr string, init Initializer, o *options, onDone func(*connChannel)) (Channel, error) {
	network, hostport, err := splitAddr(addr)
	if err != nil {
		return nil, err
	}
	var conn net.Conn
	if o.tls != nil {
		d := tls.Dialer{Config: o.tls}
		conn, err = d.DialContext(ctx, network, hostport)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, hostport)
	}
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	ch := newConnChannel(conn, o)
	if onDone != nil {
		ch.onDone = func() { onDone(ch) }
	}
	ch.start(init)
	go ch.readLoop()
	return ch, nil
}

// connServer is a Server over net.Listener.
type connServer struct {
	ln   net.Listener
	opts options
	init Initializer
	ctx  context.Context // done on Shutdown; bounds TLS handshakes
	stop context.CancelFunc
	wg   sync.WaitGroup // accept loop and connection goroutines

	mu       sync.Mutex
	closed   bool
	channels map[*connChannel]struct{}
}

// ListenConn starts a net.Conn server on addr ("host:port" or
// "tcp://host:port"; port 0 picks a free port), with TLS when WithTLS is
// given. Each connection gets a reader goroutine, and a writer goroutine
// while it has bytes to send; init runs on the reader, after the TLS handshake, which must finish within ten
// seconds.
func ListenConn(ctx context.Context, addr string, init Initializer, opts ...Option) (Server, error) {
	network, hostport, err := splitAddr(addr)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, network, hostport)
	if err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	s := &connServer{ln: ln, opts: newOptions(opts), init: init, channels: make(map[*connChannel]struct{})}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *connServer) Addr() net.Addr { return s.ln.Addr() }

func (s *connServer) acceptLoop() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does, rather than spin or give up.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.opts.logger.Warn("transport: accept failed; retrying", "err", err, "in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		s.wg.Add(1)
		go s.serve(conn)
	}
}

func (s *connServer) serve(conn net.Conn) {
	defer s.wg.Done()
	if s.opts.tls != nil {
		tc := tls.Server(conn, s.opts.tls)
		ctx, cancel := context.WithTimeout(s.ctx, tlsHandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.opts.logger.Debug("transport: TLS handshake failed", "remote", conn.RemoteAddr(), "err", err)
			_ = conn.Close()
			return
		}
		conn = tc
	}
	ch := newConnChannel(conn, &s.opts)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = conn.Close()
		return
	}
	s.channels[ch] = struct{}{}
	s.mu.Unlock()
	ch.onDone = func() {
		s.mu.Lock()
		delete(s.channels, ch)
		s.mu.Unlock()
	}
	ch.start(s.init)
	ch.readLoop()
}

// Shutdown stops accepting, closes every channel and waits for their
// goroutines.
func (s *connServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.stop()
		_ = s.ln.Close()
		for ch := range s.channels {
			_ = ch.Close()
		}
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
