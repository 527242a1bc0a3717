package transport

import (
	"context"
	"sync"
)

// dialGate is what a Connector's Dial and Close share: Close refuses new
// dials, cancels those in progress and waits until each has returned, so
// that no dial adds a channel after Close has taken stock of them.
type dialGate struct {
	ctx    context.Context // done on close
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool // under mu
	dials  sync.WaitGroup
}

func newDialGate() *dialGate {
	g := new(dialGate)
	g.ctx, g.cancel = context.WithCancel(context.Background())
	return g
}

// enter admits one dial, or fails with ErrClosed. The dial uses the
// context it returns, which the gate's close cancels too, and calls done
// when it returns.
func (g *dialGate) enter(ctx context.Context) (_ context.Context, done func(), _ error) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, nil, ErrClosed
	}
	g.dials.Add(1)
	g.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(g.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
		g.dials.Done()
	}, nil
}

// close closes the gate, cancels the dials in progress and waits for them.
// It reports false if the gate was closed already.
func (g *dialGate) close() bool {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return false
	}
	g.closed = true
	g.mu.Unlock()
	g.cancel()
	g.dials.Wait()
	return true
}
