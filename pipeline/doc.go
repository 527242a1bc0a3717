// Package pipeline is a Netty-style chain of named handler stages for one
// connection.
//
// Inbound events (active, read, read complete, inactive, error, user event)
// enter at the head and travel towards the tail; outbound operations (write,
// flush, close) enter at the tail, or at any Context, and travel towards the
// head, where the Transport carries them out. A handler implements only the
// one-method interfaces for the events it cares about (ReadHandler,
// WriteHandler, ...); the pipeline passes every other event straight on.
// Func adapters (ReadFunc, WriteFunc, ...) and the generic Inbound and
// Outbound adapters make small stages one-liners.
//
// Threading: inbound events for a pipeline are fired from one goroutine at a
// time, the connection's event loop, so inbound handlers need no locks for
// per-connection state. Outbound operations may be started from any
// goroutine (a state-machine executor replying, a forwarder writing to a
// successor) and run on the caller's goroutine, so a WriteHandler must be
// safe for concurrent use. The chain itself may be changed at any time with
// AddFirst, AddLast, AddBefore, AddAfter, Remove and Replace; an event that
// is already past a changed link is not affected.
//
// Ownership: a message that carries pooled memory (anything with a Release
// method, such as *buffer.Buf) belongs to the stage that holds it. Passing it
// on with FireChannelRead or Write hands the reference on; a stage that
// consumes a message releases it. A read that reaches the tail unhandled is
// released there, and a write that fails is released by whoever failed it.
package pipeline
