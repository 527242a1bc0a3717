package pipeline

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// Errors returned by pipeline operations.
var (
	ErrDuplicateName = errors.New("pipeline: duplicate handler name")
	ErrNoSuchHandler = errors.New("pipeline: no such handler")
	ErrClosed        = errors.New("pipeline: closed")
)

// Transport carries out the outbound operations that reach the head of a
// pipeline. Package transport implements it over gnet and net.Conn.
type Transport interface {
	// Write queues msg for sending: a *buffer.Buf, whose reference the
	// transport takes over, or a []byte, which it copies. On error the
	// transport has released msg.
	Write(msg any) error
	// Flush sends what Write queued.
	Flush() error
	// Close closes the connection; ChannelInactive follows.
	Close() error
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}

// PanicError is raised through the pipeline when a handler panics while
// handling an inbound event, so that one bad message closes one connection
// rather than the process.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("pipeline: handler panicked: %v\n%s", e.Value, e.Stack)
}

// Pipeline is the chain of handler contexts of one connection.
type Pipeline struct {
	t      Transport
	logger *slog.Logger
	head   *Context
	tail   *Context

	mu       sync.Mutex // serializes changes to the chain
	names    map[string]*Context
	inactive atomic.Bool
}

// Option configures a Pipeline.
type Option func(*Pipeline)

// WithLogger sets the logger the tail uses for unhandled errors. The default
// is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(p *Pipeline) { p.logger = l } }

// New returns an empty pipeline whose head hands outbound operations to t.
func New(t Transport, opts ...Option) *Pipeline {
	p := &Pipeline{t: t, logger: slog.Default(), names: make(map[string]*Context)}
	for _, o := range opts {
		o(p)
	}
	p.head = newContext(p, "head", headHandler{p})
	p.tail = newContext(p, "tail", tailHandler{p})
	p.head.next.Store(p.tail)
	p.tail.prev.Store(p.head)
	return p
}

// Transport returns the transport under the pipeline.
func (p *Pipeline) Transport() Transport { return p.t }

// Logger returns the pipeline's logger.
func (p *Pipeline) Logger() *slog.Logger { return p.logger }

// AddFirst inserts h right after the head.
func (p *Pipeline) AddFirst(name string, h Handler) error {
	return p.insert(name, h, func() (*Context, error) { return p.head, nil })
}

// AddLast inserts h right before the tail.
func (p *Pipeline) AddLast(name string, h Handler) error {
	return p.insert(name, h, func() (*Context, error) { return p.tail.prev.Load(), nil })
}

// AddBefore inserts h right before the handler named base.
func (p *Pipeline) AddBefore(base, name string, h Handler) error {
	return p.insert(name, h, func() (*Context, error) {
		c, err := p.lookup(base)
		if err != nil {
			return nil, err
		}
		return c.prev.Load(), nil
	})
}

// AddAfter inserts h right after the handler named base.
func (p *Pipeline) AddAfter(base, name string, h Handler) error {
	return p.insert(name, h, func() (*Context, error) { return p.lookup(base) })
}

// insert links a new context after the one where returns. where runs with
// p.mu held.
func (p *Pipeline) insert(name string, h Handler, where func() (*Context, error)) error {
	if h == nil {
		return fmt.Errorf("pipeline: nil handler %q", name)
	}
	p.mu.Lock()
	if _, dup := p.names[name]; dup || name == "head" || name == "tail" {
		p.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrDuplicateName, name)
	}
	prev, err := where()
	if err != nil {
		p.mu.Unlock()
		return err
	}
	c := newContext(p, name, h)
	p.link(prev, c)
	p.names[name] = c
	p.mu.Unlock()
	if a, ok := h.(AddedHandler); ok {
		a.HandlerAdded(c)
	}
	return nil
}

func (p *Pipeline) link(prev, c *Context) {
	next := prev.next.Load()
	c.prev.Store(prev)
	c.next.Store(next)
	prev.next.Store(c)
	next.prev.Store(c)
}

// unlink leaves c's own links in place so that an event walking through c
// right now still reaches the rest of the chain.
func (p *Pipeline) unlink(c *Context) {
	prev, next := c.prev.Load(), c.next.Load()
	prev.next.Store(next)
	next.prev.Store(prev)
	delete(p.names, c.name)
}

func (p *Pipeline) lookup(name string) (*Context, error) {
	c, ok := p.names[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoSuchHandler, name)
	}
	return c, nil
}

// Remove takes the handler named name out of the pipeline and returns it.
func (p *Pipeline) Remove(name string) (Handler, error) {
	p.mu.Lock()
	c, err := p.lookup(name)
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	p.unlink(c)
	p.mu.Unlock()
	removed(c)
	return c.h, nil
}

// Replace puts h, under newName, where the handler named old was, and
// returns the old handler.
func (p *Pipeline) Replace(old, newName string, h Handler) (Handler, error) {
	if h == nil {
		return nil, fmt.Errorf("pipeline: nil handler %q", newName)
	}
	p.mu.Lock()
	oc, err := p.lookup(old)
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	if _, dup := p.names[newName]; dup && newName != old {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrDuplicateName, newName)
	}
	c := newContext(p, newName, h)
	prev := oc.prev.Load()
	p.unlink(oc)
	p.link(prev, c)
	p.names[newName] = c
	p.mu.Unlock()
	removed(oc)
	if a, ok := h.(AddedHandler); ok {
		a.HandlerAdded(c)
	}
	return oc.h, nil
}

func removed(c *Context) {
	if r, ok := c.h.(RemovedHandler); ok {
		r.HandlerRemoved(c)
	}
}

// Get returns the handler named name, or nil.
func (p *Pipeline) Get(name string) Handler {
	if c := p.Context(name); c != nil {
		return c.h
	}
	return nil
}

// Context returns the context of the handler named name, or nil.
func (p *Pipeline) Context(name string) *Context {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.names[name]
}

// Names lists the handler names from head to tail.
func (p *Pipeline) Names() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var names []string
	for c := p.head.next.Load(); c != p.tail; c = c.next.Load() {
		names = append(names, c.name)
	}
	return names
}

// FireChannelActive starts the active event at the head. Transports call it.
func (p *Pipeline) FireChannelActive() {
	defer p.recoverPanic()
	p.head.FireChannelActive()
}

// FireChannelRead starts a read at the head. Transports call it.
func (p *Pipeline) FireChannelRead(msg any) {
	defer p.recoverPanic()
	p.head.FireChannelRead(msg)
}

// FireChannelReadComplete starts the read-complete event at the head.
func (p *Pipeline) FireChannelReadComplete() {
	defer p.recoverPanic()
	p.head.FireChannelReadComplete()
}

// FireError starts an error at the head.
func (p *Pipeline) FireError(err error) {
	defer p.recoverPanic()
	p.head.FireError(err)
}

// FireUserEvent starts a user event at the head.
func (p *Pipeline) FireUserEvent(evt any) {
	defer p.recoverPanic()
	p.head.FireUserEvent(evt)
}

// FireChannelInactive starts the inactive event at the head, then removes
// every handler so that each is told, once, with HandlerRemoved. Later calls
// do nothing.
func (p *Pipeline) FireChannelInactive() {
	if !p.inactive.CompareAndSwap(false, true) {
		return
	}
	func() {
		defer p.recoverPanic()
		p.head.FireChannelInactive()
	}()
	for _, name := range p.Names() {
		func() {
			defer p.recoverPanic()
			_, _ = p.Remove(name)
		}()
	}
}

// Write starts a write at the tail. It is safe to call from any goroutine.
func (p *Pipeline) Write(msg any) error { return p.tail.Write(msg) }

// Flush starts a flush at the tail.
func (p *Pipeline) Flush() error { return p.tail.Flush() }

// WriteAndFlush writes msg and flushes, starting at the tail.
func (p *Pipeline) WriteAndFlush(msg any) error { return p.tail.WriteAndFlush(msg) }

// Close starts a close at the tail.
func (p *Pipeline) Close() error { return p.tail.Close() }

// recoverPanic turns a handler's panic into an error that travels the
// pipeline; a panic while handling that error closes the connection.
func (p *Pipeline) recoverPanic() {
	r := recover()
	if r == nil {
		return
	}
	err := &PanicError{Value: r, Stack: debug.Stack()}
	defer func() {
		if r2 := recover(); r2 != nil {
			p.logger.Error("pipeline: handler panicked while handling a panic", "panic", r2, "first", err)
			_ = p.t.Close()
		}
	}()
	p.head.FireError(err)
}

// headHandler hands outbound operations to the transport.
type headHandler struct{ p *Pipeline }

func (h headHandler) Write(_ *Context, msg any) error { return h.p.t.Write(msg) }
func (h headHandler) Flush(*Context) error            { return h.p.t.Flush() }
func (h headHandler) Close(*Context) error            { return h.p.t.Close() }

// tailHandler ends inbound events that no stage took.
type tailHandler struct{ p *Pipeline }

func (h tailHandler) ChannelRead(_ *Context, msg any) {
	h.p.logger.Debug("pipeline: discarded inbound message that reached the tail", "type", fmt.Sprintf("%T", msg))
	Release(msg)
}

func (h tailHandler) ErrorCaught(_ *Context, err error) {
	h.p.logger.Warn("pipeline: unhandled error, closing connection", "remote", addr(h.p.t.RemoteAddr()), "err", err)
	_ = h.p.t.Close()
}

func (h tailHandler) UserEvent(_ *Context, evt any) { Release(evt) }

func addr(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
