package transport

import (
	"context"
	"sync"
)

// connDialer is the net.Conn kind's Connector. Its channels share nothing
// but the options; it tracks them so that Close ends them all, as a gnet
// Dialer's Close does.
type connDialer struct {
	opts   options
	ctx    context.Context // done on Close; cancels dials in progress
	cancel context.CancelFunc

	mu       sync.Mutex
	closed   bool
	dials    sync.WaitGroup
	channels map[*connChannel]struct{}
}

func newConnDialer(opts ...Option) (Connector, error) {
	d := &connDialer{opts: newOptions(opts), channels: make(map[*connChannel]struct{})}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

func (d *connDialer) Dial(ctx context.Context, addr string, init Initializer) (Channel, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, ErrClosed
	}
	d.dials.Add(1)
	d.mu.Unlock()
	defer d.dials.Done()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(d.ctx, cancel)()
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
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	// No dial adds a channel after this: each in progress has returned.
	d.dials.Wait()
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
