package pipeline

import "sync/atomic"

// Context is a handler's place in a pipeline. Its Fire methods pass an
// inbound event to the next stage towards the tail; Write, Flush and Close
// pass an outbound operation to the next stage towards the head.
type Context struct {
	p    *Pipeline
	name string
	h    Handler

	// Links are atomic so that outbound operations started on other
	// goroutines can walk the chain while the event loop changes it.
	next, prev atomic.Pointer[Context]

	active       ActiveHandler
	read         ReadHandler
	readComplete ReadCompleteHandler
	inactive     InactiveHandler
	caught       ErrorHandler
	event        EventHandler
	write        WriteHandler
	flush        FlushHandler
	close        CloseHandler
}

func newContext(p *Pipeline, name string, h Handler) *Context {
	c := &Context{p: p, name: name, h: h}
	c.active, _ = h.(ActiveHandler)
	c.read, _ = h.(ReadHandler)
	c.readComplete, _ = h.(ReadCompleteHandler)
	c.inactive, _ = h.(InactiveHandler)
	c.caught, _ = h.(ErrorHandler)
	c.event, _ = h.(EventHandler)
	c.write, _ = h.(WriteHandler)
	c.flush, _ = h.(FlushHandler)
	c.close, _ = h.(CloseHandler)
	return c
}

// Name returns the name the handler was added under.
func (c *Context) Name() string { return c.name }

// Handler returns the handler at this place.
func (c *Context) Handler() Handler { return c.h }

// Pipeline returns the pipeline the context belongs to.
func (c *Context) Pipeline() *Pipeline { return c.p }

// FireChannelActive passes the active event to the next stage.
func (c *Context) FireChannelActive() {
	for n := c.next.Load(); n != nil; n = n.next.Load() {
		if n.active != nil {
			n.active.ChannelActive(n)
			return
		}
	}
}

// FireChannelRead passes msg, and the reference it may carry, to the next
// stage.
func (c *Context) FireChannelRead(msg any) {
	for n := c.next.Load(); n != nil; n = n.next.Load() {
		if n.read != nil {
			n.read.ChannelRead(n, msg)
			return
		}
	}
}

// FireChannelReadComplete passes the read-complete event to the next stage.
func (c *Context) FireChannelReadComplete() {
	for n := c.next.Load(); n != nil; n = n.next.Load() {
		if n.readComplete != nil {
			n.readComplete.ChannelReadComplete(n)
			return
		}
	}
}

// FireChannelInactive passes the inactive event to the next stage.
func (c *Context) FireChannelInactive() {
	for n := c.next.Load(); n != nil; n = n.next.Load() {
		if n.inactive != nil {
			n.inactive.ChannelInactive(n)
			return
		}
	}
}

// FireError passes err to the next stage that handles errors. An error no
// stage takes reaches the tail, which logs it and closes the connection.
func (c *Context) FireError(err error) {
	for n := c.next.Load(); n != nil; n = n.next.Load() {
		if n.caught != nil {
			n.caught.ErrorCaught(n, err)
			return
		}
	}
}

// FireUserEvent passes a user-defined event to the next stage.
func (c *Context) FireUserEvent(evt any) {
	for n := c.next.Load(); n != nil; n = n.next.Load() {
		if n.event != nil {
			n.event.UserEvent(n, evt)
			return
		}
	}
}

// Write passes msg, and the reference it may carry, to the next outbound
// stage towards the head. It is safe to call from any goroutine.
func (c *Context) Write(msg any) error {
	for n := c.prev.Load(); n != nil; n = n.prev.Load() {
		if n.write != nil {
			return n.write.Write(n, msg)
		}
	}
	Release(msg)
	return ErrClosed
}

// Flush asks the stages towards the head to send what they have queued.
func (c *Context) Flush() error {
	for n := c.prev.Load(); n != nil; n = n.prev.Load() {
		if n.flush != nil {
			return n.flush.Flush(n)
		}
	}
	return ErrClosed
}

// WriteAndFlush writes msg and flushes.
func (c *Context) WriteAndFlush(msg any) error {
	if err := c.Write(msg); err != nil {
		return err
	}
	return c.Flush()
}

// Close asks the stages towards the head to close the connection.
func (c *Context) Close() error {
	for n := c.prev.Load(); n != nil; n = n.prev.Load() {
		if n.close != nil {
			return n.close.Close(n)
		}
	}
	return ErrClosed
}
