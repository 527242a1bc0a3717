// Package smtest provides state machines for this module's tests that must
// stop a stream's data at a chosen point: to fail, abort or shut down a
// stream while one of its writes is still in flight, or to keep it closing.
package smtest

import (
	"context"
	"sync"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// Wrapping is a Memory whose data channels are wrapped by Wrap as they
// open. Link hands Memory back its own channel, since Memory links only
// the channels it made.
type Wrapping struct {
	*statemachine.Memory
	Wrap func(statemachine.DataChannel) Channel
}

// Channel wraps one of Memory's data channels.
type Channel interface {
	statemachine.DataChannel
	// Unwrap returns the channel it wraps.
	Unwrap() statemachine.DataChannel
}

// OpenStream opens the stream on Memory and wraps its channel.
func (m Wrapping) OpenStream(ctx context.Context, k statemachine.StreamKey, req *pb.RaftClientRequest) (statemachine.DataChannel, error) {
	ch, err := m.Memory.OpenStream(ctx, k, req)
	if err != nil {
		return nil, err
	}
	return m.Wrap(ch), nil
}

// Link links e on Memory with the channel ch wraps.
func (m Wrapping) Link(ctx context.Context, e statemachine.Entry, ch statemachine.DataChannel) error {
	if w, ok := ch.(Channel); ok {
		ch = w.Unwrap()
	}
	return m.Memory.Link(ctx, e, ch)
}

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
func (g *Gate) Hold(m *statemachine.Memory) Wrapping {
	return Wrapping{m, func(ch statemachine.DataChannel) Channel { return gatedChannel{ch, g} }}
}

type gatedChannel struct {
	statemachine.DataChannel
	g *Gate
}

func (c gatedChannel) Write(p []byte) (int, error) {
	select {
	case c.g.entered <- struct{}{}:
	default:
	}
	<-c.g.open
	return c.DataChannel.Write(p)
}

func (c gatedChannel) Unwrap() statemachine.DataChannel { return c.DataChannel }
