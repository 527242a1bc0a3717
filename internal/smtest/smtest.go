// Package smtest lets a test change what a stream's data channel does on
// a peer (hold its writes at a gate, count them, fail its close) while a
// statemachine.Memory keeps and links the data as usual: to fail, abort
// or shut down a stream while one of its writes is still in flight, or to
// keep it closing.
package smtest

import (
	"context"
	"sync"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// Wrapper is a Memory whose data channels go through Wrap as they are
// opened. Link gives the Memory back the channel it opened, the only kind
// it can link.
type Wrapper struct {
	*statemachine.Memory
	// Wrap returns the channel a stream writes to in place of ch. What it
	// returns embeds a Channel holding ch.
	Wrap func(ch statemachine.DataChannel) statemachine.DataChannel
}

// OpenStream opens the stream on the Memory and wraps its channel.
func (w *Wrapper) OpenStream(ctx context.Context, k statemachine.StreamKey, req *pb.RaftClientRequest) (statemachine.DataChannel, error) {
	ch, err := w.Memory.OpenStream(ctx, k, req)
	if err != nil {
		return nil, err
	}
	return w.Wrap(ch), nil
}

// Link links the entry on the Memory, with the channel Wrap was given.
func (w *Wrapper) Link(ctx context.Context, e statemachine.Entry, ch statemachine.DataChannel) error {
	if c, ok := ch.(unwrapper); ok {
		ch = c.Unwrap()
	}
	return w.Memory.Link(ctx, e, ch)
}

type unwrapper interface {
	Unwrap() statemachine.DataChannel
}

// Channel passes every call to the channel it holds. A test's channel
// embeds it and overrides the calls it changes.
type Channel struct{ statemachine.DataChannel }

// Unwrap returns the channel c holds.
func (c Channel) Unwrap() statemachine.DataChannel { return c.DataChannel }

// Gate holds data writes until it is opened.
type Gate struct {
	open    chan struct{}
	once    sync.Once
	entered chan struct{}
}

// NewGate returns a shut gate that keeps up to n unread signals on
// Entered.
func NewGate(n int) *Gate {
	return &Gate{open: make(chan struct{}), entered: make(chan struct{}, n)}
}

// Open lets every held and later write through. It may be called more
// than once, so that a test can open the gate and its cleanup too.
func (g *Gate) Open() { g.once.Do(func() { close(g.open) }) }

// Entered receives once for each write that reached the gate, while fewer
// than n signals wait unread; nobody need read them.
func (g *Gate) Entered() <-chan struct{} { return g.entered }

// Hold returns m with each of its data writes held at g.
func (g *Gate) Hold(m *statemachine.Memory) *Wrapper {
	return &Wrapper{Memory: m, Wrap: func(ch statemachine.DataChannel) statemachine.DataChannel {
		return gatedChannel{Channel{ch}, g}
	}}
}

type gatedChannel struct {
	Channel
	g *Gate
}

func (c gatedChannel) Write(p []byte) (int, error) {
	select {
	case c.g.entered <- struct{}{}:
	default:
	}
	<-c.g.open
	return c.Channel.Write(p)
}
