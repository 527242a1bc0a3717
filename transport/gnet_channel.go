package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/panjf2000/gnet/v2"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/pipeline"
)

// gnetChannel is a Channel on a gnet connection.
//
// gnet's event loop reads the socket and runs the pipeline's inbound
// events; a writer goroutine sends the outbound bytes on a duplicate of the
// socket through the runtime's poller. gnet's own write path copies every
// byte the socket does not take at once into a buffer of its own, which
// under a steady stream was a third of all copying and held memory that
// grew with the transfer; and a write from another goroutine costs a task
// on the loop. The writer sends from the pooled buffers themselves and
// waits for the socket with its queue bounded by WithMaxOutbound; it runs
// only while there is something to send, so an idle gnet connection holds
// no goroutine.
type gnetChannel struct {
	id   uint64
	p    *pipeline.Pipeline
	opts *options
	init Initializer
	done chan struct{}
	// onDone, when set, runs on its own goroutine after ChannelInactive and
	// before done is closed; package-level Dial stops its engine there.
	onDone func()

	// Set in OnOpen, before any other goroutine can see the channel open.
	loop          gnet.EventLoop
	local, remote net.Addr
	out           *writer // on a duplicate of the socket; nil if OnOpen failed, and then openErr says why
	openErr       error

	// Owned by the event loop.
	conn gnet.Conn
	in   gnetInbound
}

func newGnetChannel(opts *options, init Initializer) *gnetChannel {
	ch := &gnetChannel{id: nextID(), opts: opts, init: init, done: make(chan struct{})}
	ch.p = pipeline.New(ch, pipeline.WithLogger(opts.logger))
	return ch
}

func (ch *gnetChannel) ID() uint64                   { return ch.id }
func (ch *gnetChannel) Pipeline() *pipeline.Pipeline { return ch.p }
func (ch *gnetChannel) Done() <-chan struct{}        { return ch.done }
func (ch *gnetChannel) LocalAddr() net.Addr          { return ch.local }
func (ch *gnetChannel) RemoteAddr() net.Addr         { return ch.remote }

// Write queues msg; see package doc for ownership.
func (ch *gnetChannel) Write(msg any) error { return ch.out.write(msg) }

// Flush starts the writer goroutine, which runs until the queue is empty.
func (ch *gnetChannel) Flush() error { return ch.out.flush() }

// Close sends what was written before it, giving a slow peer up to
// closeLinger to take it, and closes the connection. ChannelInactive
// follows on the event loop. Closing a closed channel does nothing.
func (ch *gnetChannel) Close() error {
	ch.out.close()
	return nil
}

// closeTask is the channel as a gnet.Runnable, made without allocating: the
// writer queues it on the loop to close the connection there.
type closeTask gnetChannel

func (t *closeTask) Run(context.Context) error {
	ch := (*gnetChannel)(t)
	if ch.conn != nil { // nil once OnClose has run
		_ = ch.loop.Close(ch.conn) // OnClose runs inside
	}
	return nil
}

// teardown runs on the writer goroutine when a write failed or Close's
// bytes are out.
func (ch *gnetChannel) teardown() {
	// A failed Execute means the engine is stopping, and it closes every
	// connection itself.
	_ = ch.loop.Execute(context.Background(), (*closeTask)(ch))
}

// opened runs in OnOpen.
func (ch *gnetChannel) opened(c gnet.Conn) gnet.Action {
	ch.conn, ch.loop = c, c.EventLoop()
	ch.local, ch.remote = c.LocalAddr(), c.RemoteAddr()
	ch.in.c, ch.in.fd = c, c.Fd()
	dup, err := dupConn(c)
	if err != nil {
		ch.openErr = err
		ch.opts.logger.Warn("transport: closing a connection the writer cannot use", "channel", ch.id, "remote", ch.remote, "err", err)
		return gnet.Close
	}
	ch.out = newWriter(dup, ch.opts, ch.teardown)
	if !initialize(ch, ch.init, ch.opts.logger) {
		return gnet.Close
	}
	ch.p.FireChannelActive()
	return gnet.None
}

// dupConn returns a net.Conn on a duplicate of c's socket. Closing it does
// not close c's descriptor, and the socket ends when both are closed.
func dupConn(c gnet.Conn) (net.Conn, error) {
	fd, err := c.Dup()
	if err != nil {
		return nil, fmt.Errorf("transport: duplicating the socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "gnet-conn")
	defer f.Close() // FileConn has its own duplicate
	conn, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("transport: duplicating the socket: %w", err)
	}
	return conn, nil
}

// maxDirectReads bounds the reads of one traffic event into a decoder's
// target, so that a connection whose peer keeps sending cannot keep the
// event loop from the others.
const maxDirectReads = 16

// traffic runs in OnTraffic.
//
// gnet has read what the socket held into its own buffer, and a decoder
// copies it out. A decoder assembling a large frame then names the frame's
// missing tail as its target (buffer.DirectReader), and while gnet holds
// nothing more, the rest is read from the socket straight into the frame:
// one copy, by the kernel, as the net.Conn transport does.
func (ch *gnetChannel) traffic() {
	if ch.in.c.InboundBuffered() > 0 {
		ch.p.FireChannelRead(&ch.in)
	}
	for range maxDirectReads {
		// A handler may have closed the connection (ch.in.c is nil once
		// OnClose has run) or written back, and gnet may hold bytes
		// again, which come before the socket's.
		if ch.in.c == nil || ch.in.c.InboundBuffered() > 0 {
			break
		}
		n, ok, _ := ch.in.ReadDirect(socketReader(ch.in.fd))
		if !ok || n == 0 {
			// Nothing more to read now, an error or the end of the
			// stream: gnet's next read sees the same and acts on it.
			break
		}
		ch.p.FireChannelRead(&ch.in)
	}
	ch.p.FireChannelReadComplete()
}

// closedByGnet runs in OnClose.
func (ch *gnetChannel) closedByGnet(err error) {
	if err != nil && !errors.Is(err, io.EOF) {
		ch.opts.logger.Debug("transport: connection closed", "channel", ch.id, "remote", ch.remote, "err", err)
	}
	ch.conn, ch.in.c = nil, nil
	if ch.out == nil { // OnOpen failed before the writer existed
		ch.p.FireChannelInactive()
		ch.finish()
		return
	}
	ch.out.end()
	ch.p.FireChannelInactive()
	ch.finish()
}

// finish closes done, after onDone if there is one, which must not run on
// the event loop.
func (ch *gnetChannel) finish() {
	if ch.onDone != nil {
		go func() {
			ch.onDone()
			close(ch.done)
		}()
		return
	}
	close(ch.done)
}

// gnetInbound is the buffer.Inbound view of a gnet connection's unread
// bytes. Partial frames a decoder leaves stay in gnet's buffer. It is also
// an io.Reader that consumes what it reads, which lets a decoder copy a
// frame that wraps gnet's ring buffer once instead of joining it for Peek
// first; and a buffer.DirectReader, whose target traffic reads into.
type gnetInbound struct {
	c  gnet.Conn
	fd int // c's socket, which traffic and Backlog read directly
	buffer.Target
}

var (
	_ buffer.DirectReader = (*gnetInbound)(nil)
	_ buffer.Backlog      = (*gnetInbound)(nil)
)

// Backlog returns the bytes waiting in the socket, which gnet has not read.
func (in *gnetInbound) Backlog() int { return socketBacklog(in.fd) }

func (in *gnetInbound) Read(p []byte) (int, error) { return in.c.Read(p) }

func (in *gnetInbound) Buffered() int { return in.c.InboundBuffered() }

func (in *gnetInbound) Peek(n int) ([]byte, error) {
	switch {
	case n < 0:
		return nil, errors.New("transport: negative Peek")
	case n == 0: // gnet reads 0 as "everything"
		return nil, nil
	}
	return in.c.Peek(n)
}

func (in *gnetInbound) Discard(n int) (int, error) {
	switch {
	case n < 0:
		return 0, errors.New("transport: negative Discard")
	case n == 0: // gnet reads 0 as "everything"
		return 0, nil
	}
	return in.c.Discard(n)
}

// gnetEvents is the gnet.EventHandler of servers and dialers.
type gnetEvents struct {
	gnet.BuiltinEventEngine
	opts *options
	init Initializer // for accepted connections; dialed ones carry theirs
}

func (e *gnetEvents) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	ch, _ := c.Context().(*gnetChannel)
	if ch == nil {
		ch = newGnetChannel(e.opts, e.init)
		c.SetContext(ch)
	}
	return nil, ch.opened(c)
}

func (e *gnetEvents) OnTraffic(c gnet.Conn) gnet.Action {
	if ch, ok := c.Context().(*gnetChannel); ok {
		ch.traffic()
	}
	return gnet.None
}

func (e *gnetEvents) OnClose(c gnet.Conn, err error) gnet.Action {
	if ch, ok := c.Context().(*gnetChannel); ok {
		ch.closedByGnet(err)
	}
	return gnet.None
}
