// Package smtest lets a test change what a stream's data channel does on
// a peer (hold its writes, count them, fail its close) while a
// statemachine.Memory keeps and links the data as usual.
package smtest

import (
	"context"

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
