package transport

import (
	"context"
	"sync"
)

// connDialer is the net.Conn kind's Connector. Its channels share nothing
// but the options; it tracks them so that Close ends them all, as a gnet
// Dialer's Close does.
type connDialer struct {
	opts options
	gate *dialGate

	mu       sync.Mutex
	channels map[*connChannel]struct{} // under mu
}

func newConnDialer(opts ...Option) (Connector, error) {
	return &connDialer{opts: newOptions(opts), gate: newDialGate(), channels: make(map[*connChannel]struct{})}, nil
}

func (d *connDialer) Dial(ctx context.Context, addr string, init Initializer) (Channel, error) {
	ctx, done, err := d.gate.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	// The channel is tracked from before init runs: init may close it,
	// and its onDone must find it.
	return dialConn(ctx, addr, func(ch Channel) {
		d.mu.Lock()
		d.channels[ch.(*connChannel)] = struct{}{}
		d.mu.Unlock()
		if init != nil {
			init(ch)
		}
	}, &d.opts, func(ch *connChannel) {
		d.mu.Lock()
		delete(d.channels, ch)
		d.mu.Unlock()
	})
}

func (d *connDialer) Close() error {
	if !d.gate.close() {
		return nil
	}
	// No dial adds a channel after this: each in progress has returned.
	d.mu.Lock()
	chs := make([]*connChannel, 0, len(d.channels))
	for ch := range d.channels {
		chs = append(chs, ch)
	}
	d.mu.Unlock()
	for _, ch := range chs {
		_ = ch.Close()
	}
	for _, ch := range chs {
		<-ch.done
	}
	return nil
}
