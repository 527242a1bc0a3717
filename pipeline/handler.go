package pipeline

// Handler is any value implementing one or more of the event interfaces
// below. The pipeline looks them up once, when the handler is added.
type Handler any

// ActiveHandler is told that the connection is established.
type ActiveHandler interface {
	ChannelActive(ctx *Context)
}

// ReadHandler receives inbound messages.
type ReadHandler interface {
	ChannelRead(ctx *Context, msg any)
}

// ReadCompleteHandler is told that the transport has delivered everything it
// read in one go, a natural point to flush batched writes.
type ReadCompleteHandler interface {
	ChannelReadComplete(ctx *Context)
}

// InactiveHandler is told that the connection is closed. It is fired once.
type InactiveHandler interface {
	ChannelInactive(ctx *Context)
}

// ErrorHandler receives errors raised by earlier stages.
type ErrorHandler interface {
	ErrorCaught(ctx *Context, err error)
}

// EventHandler receives user-defined events, such as idle timeouts.
type EventHandler interface {
	UserEvent(ctx *Context, evt any)
}

// WriteHandler intercepts outbound messages. It may be called from any
// goroutine and must be safe for concurrent use.
type WriteHandler interface {
	Write(ctx *Context, msg any) error
}

// FlushHandler intercepts outbound flushes.
type FlushHandler interface {
	Flush(ctx *Context) error
}

// CloseHandler intercepts a request to close the connection.
type CloseHandler interface {
	Close(ctx *Context) error
}

// AddedHandler is told when its handler joins a pipeline.
type AddedHandler interface {
	HandlerAdded(ctx *Context)
}

// RemovedHandler is told when its handler leaves a pipeline, by Remove,
// Replace or the connection's end, so it can release what it holds.
type RemovedHandler interface {
	HandlerRemoved(ctx *Context)
}

// ReadFunc adapts a function to a ReadHandler.
type ReadFunc func(ctx *Context, msg any)

// ChannelRead calls f(ctx, msg).
func (f ReadFunc) ChannelRead(ctx *Context, msg any) { f(ctx, msg) }

// WriteFunc adapts a function to a WriteHandler.
type WriteFunc func(ctx *Context, msg any) error

// Write calls f(ctx, msg).
func (f WriteFunc) Write(ctx *Context, msg any) error { return f(ctx, msg) }

// ActiveFunc adapts a function to an ActiveHandler.
type ActiveFunc func(ctx *Context)

// ChannelActive calls f(ctx).
func (f ActiveFunc) ChannelActive(ctx *Context) { f(ctx) }

// InactiveFunc adapts a function to an InactiveHandler.
type InactiveFunc func(ctx *Context)

// ChannelInactive calls f(ctx).
func (f InactiveFunc) ChannelInactive(ctx *Context) { f(ctx) }

// ErrorFunc adapts a function to an ErrorHandler.
type ErrorFunc func(ctx *Context, err error)

// ErrorCaught calls f(ctx, err).
func (f ErrorFunc) ErrorCaught(ctx *Context, err error) { f(ctx, err) }

// EventFunc adapts a function to an EventHandler.
type EventFunc func(ctx *Context, evt any)

// UserEvent calls f(ctx, evt).
func (f EventFunc) UserEvent(ctx *Context, evt any) { f(ctx, evt) }

// Inbound returns a ReadHandler that calls fn for messages of type T and
// passes every other message on untouched.
func Inbound[T any](fn func(ctx *Context, msg T)) ReadHandler {
	return ReadFunc(func(ctx *Context, msg any) {
		if m, ok := msg.(T); ok {
			fn(ctx, m)
			return
		}
		ctx.FireChannelRead(msg)
	})
}

// Outbound returns a WriteHandler that calls fn for messages of type T and
// passes every other message on untouched.
func Outbound[T any](fn func(ctx *Context, msg T) error) WriteHandler {
	return WriteFunc(func(ctx *Context, msg any) error {
		if m, ok := msg.(T); ok {
			return fn(ctx, m)
		}
		return ctx.Write(msg)
	})
}

// Release drops the reference held by msg if it carries pooled memory, and
// does nothing otherwise. Stages that consume or drop a message call it.
func Release(msg any) {
	if r, ok := msg.(interface{ Release() }); ok {
		r.Release()
	}
}
