package transport

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"sync"

	"github.com/panjf2000/gnet/v2"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/pipeline"
)

const (
	// maxIov is how many buffers go into one writev: the kernel's IOV_MAX.
	maxIov = 1024
	// drainBudget bounds the bytes one drain hands to gnet before it yields
	// the event loop to the other connections and continues in a new task.
	drainBudget = 4 << 20
)

// gnetChannel is a Channel on a gnet connection.
//
// Outbound bytes wait in q until the event loop drains them with Writev.
// Flush from another goroutine schedules one drain task on the loop unless
// one is pending; Flush from a handler running on the loop only marks the
// queue, and the loop drains it when the handler returns, so that the
// replies to everything one read delivered leave in one writev.
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

	// Owned by the event loop.
	conn  gnet.Conn
	in    gnetInbound
	batch []*buffer.Buf
	iov   [][]byte

	mu         sync.Mutex
	q          []*buffer.Buf
	queued     int  // bytes in q
	backlog    int  // bytes gnet buffers, as last seen on the loop
	scheduled  bool // a drain task is queued on the loop
	inCallback bool // the loop is in an event of this channel and drains after it
	flushReq   bool // a Flush came during the callback
	closing    bool // Close was called; the close task is queued
	closed     bool // OnClose has run
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
func (ch *gnetChannel) Write(msg any) error {
	b, err := toBuf(msg)
	if err != nil {
		return err
	}
	n := b.Len()
	ch.mu.Lock()
	if ch.closed || ch.closing {
		ch.mu.Unlock()
		b.Release()
		return ErrClosed
	}
	if ch.queued+ch.backlog+n > ch.opts.maxOutbound {
		ch.mu.Unlock()
		b.Release()
		return ErrOutboundFull
	}
	ch.q = append(ch.q, b)
	ch.queued += n
	ch.mu.Unlock()
	return nil
}

// Flush makes the event loop send everything written so far.
func (ch *gnetChannel) Flush() error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.closed || ch.closing {
		return ErrClosed
	}
	switch {
	case len(ch.q) == 0 || ch.scheduled:
	case ch.inCallback:
		ch.flushReq = true
	default:
		// Execute is called with mu held so that OnClose, which takes mu,
		// cannot let the loop exit and close its poller while the task is
		// being queued.
		if err := ch.loop.Execute(context.Background(), (*drainTask)(ch)); err != nil {
			return ErrClosed
		}
		ch.scheduled = true
	}
	return nil
}

// Close sends what was written before it, best effort, and closes the
// connection. ChannelInactive follows on the event loop. Closing a closed
// channel does nothing.
func (ch *gnetChannel) Close() error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.closed || ch.closing {
		return nil
	}
	// A failed Execute means the engine is stopping, and it closes every
	// connection itself.
	if ch.loop.Execute(context.Background(), (*closeTask)(ch)) == nil {
		ch.closing = true
	}
	return nil
}

// drainTask and closeTask are the channel under other method sets: each
// is a gnet.Runnable made without allocating.
type (
	drainTask gnetChannel
	closeTask gnetChannel
)

func (t *drainTask) Run(context.Context) error {
	ch := (*gnetChannel)(t)
	ch.mu.Lock()
	ch.scheduled = false
	ch.mu.Unlock()
	ch.drain(drainBudget)
	return nil
}

func (t *closeTask) Run(context.Context) error {
	ch := (*gnetChannel)(t)
	ch.drain(math.MaxInt)
	ch.mu.Lock()
	closed := ch.closed
	ch.mu.Unlock()
	if !closed {
		_ = ch.loop.Close(ch.conn) // OnClose runs inside
	}
	return nil
}

// drain hands queued buffers to gnet, which sends them or copies what the
// socket will not take into its own buffer, so each buffer is released as
// soon as Writev returns. It runs on the event loop and stops after budget
// bytes, continuing in a new task. A Writev error closes the connection
// inside the call (OnClose runs), which is why no lock is held across it.
func (ch *gnetChannel) drain(budget int) {
	for budget > 0 {
		ch.mu.Lock()
		if ch.closed || len(ch.q) == 0 {
			ch.mu.Unlock()
			return
		}
		if len(ch.q) <= maxIov {
			ch.batch, ch.q = ch.q, ch.batch[:0]
		} else {
			ch.batch = append(ch.batch[:0], ch.q[:maxIov]...)
			rest := copy(ch.q, ch.q[maxIov:])
			clear(ch.q[rest:])
			ch.q = ch.q[:rest]
		}
		n := 0
		for _, b := range ch.batch {
			n += b.Len()
		}
		ch.queued -= n
		ch.backlog += n
		ch.mu.Unlock()

		for _, b := range ch.batch {
			if b.Len() > 0 {
				ch.iov = append(ch.iov, b.Bytes())
			}
		}
		_, err := ch.conn.Writev(ch.iov)
		clear(ch.iov)
		ch.iov = ch.iov[:0]
		for _, b := range ch.batch {
			b.Release()
		}
		clear(ch.batch)
		ch.batch = ch.batch[:0]
		if err != nil {
			return
		}
		budget -= n

		ch.mu.Lock()
		if !ch.closed {
			ch.backlog = ch.conn.OutboundBuffered()
		}
		ch.mu.Unlock()
	}

	ch.mu.Lock()
	defer ch.mu.Unlock()
	if len(ch.q) > 0 && !ch.scheduled && !ch.closed {
		if ch.loop.Execute(context.Background(), (*drainTask)(ch)) == nil {
			ch.scheduled = true
		}
	}
}

// beginCallback and endCallback bracket every gnet event of the channel
// that may run handlers.
func (ch *gnetChannel) beginCallback() {
	ch.mu.Lock()
	ch.inCallback = true
	ch.mu.Unlock()
}

func (ch *gnetChannel) endCallback() {
	ch.mu.Lock()
	ch.inCallback = false
	flush := ch.flushReq
	ch.flushReq = false
	if !ch.closed {
		ch.backlog = ch.conn.OutboundBuffered()
	}
	ch.mu.Unlock()
	if flush {
		ch.drain(drainBudget)
	}
}

// opened runs in OnOpen.
func (ch *gnetChannel) opened(c gnet.Conn) gnet.Action {
	ch.conn, ch.loop = c, c.EventLoop()
	ch.local, ch.remote = c.LocalAddr(), c.RemoteAddr()
	ch.in.c = c
	ch.beginCallback()
	ok := initialize(ch, ch.init, ch.opts.logger)
	if ok {
		ch.p.FireChannelActive()
	}
	ch.endCallback()
	if !ok {
		return gnet.Close
	}
	return gnet.None
}

// traffic runs in OnTraffic.
func (ch *gnetChannel) traffic() {
	ch.beginCallback()
	if ch.in.c.InboundBuffered() > 0 {
		ch.p.FireChannelRead(&ch.in)
	}
	ch.p.FireChannelReadComplete()
	ch.endCallback()
}

// closed runs in OnClose.
func (ch *gnetChannel) closedByGnet(err error) {
	ch.mu.Lock()
	ch.closed = true
	q := ch.q
	ch.q, ch.queued, ch.backlog = nil, 0, 0
	ch.mu.Unlock()
	for _, b := range q {
		b.Release()
	}
	if err != nil && !errors.Is(err, io.EOF) {
		ch.opts.logger.Debug("transport: connection closed", "channel", ch.id, "remote", ch.remote, "err", err)
	}
	ch.p.FireChannelInactive()
	ch.conn, ch.in.c = nil, nil
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
// first.
type gnetInbound struct{ c gnet.Conn }

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
