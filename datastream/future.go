package datastream

import (
	"context"
	"sync"
)

// Future is the result of an asynchronous operation. It completes once;
// Wait and Done may be used from any number of goroutines.
type Future[T any] struct {
	mu    sync.Mutex
	ready bool
	done  chan struct{} // made when first asked for: most futures are never waited on
	v     T
	err   error
	cbs   []func(T, error) // OnDone's, until ready
}

// closedChan is the Done channel of futures that completed before anyone
// asked for one.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

func failedFuture[T any](err error) *Future[T] {
	return &Future[T]{ready: true, done: closedChan, err: err}
}

// complete sets the result; later calls do nothing.
func (f *Future[T]) complete(v T, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ready {
		return
	}
	f.ready, f.v, f.err = true, v, err
	if f.done != nil {
		close(f.done)
	}
	for _, fn := range f.cbs {
		go fn(v, err)
	}
	f.cbs = nil
}

// OnDone calls fn with the result once it is ready, or at once if it is.
// fn runs once, on a goroutine of its own: futures complete on the
// connection's event loop, which a callback must not hold up, and fn may
// block or call the client. Callbacks of one future run concurrently, in
// no set order.
func (f *Future[T]) OnDone(fn func(T, error)) {
	f.mu.Lock()
	if !f.ready {
		f.cbs = append(f.cbs, fn)
		f.mu.Unlock()
		return
	}
	v, err := f.v, f.err
	f.mu.Unlock()
	go fn(v, err)
}

// Done is closed when the result is ready; Wait then returns at once.
func (f *Future[T]) Done() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done == nil {
		if f.ready {
			f.done = closedChan
		} else {
			f.done = make(chan struct{})
		}
	}
	return f.done
}

// Wait returns the result once it is ready, or ctx's error if ctx ends
// first. A ctx that ends does not cancel the operation.
func (f *Future[T]) Wait(ctx context.Context) (T, error) {
	if v, ok, err := f.result(); ok {
		return v, err
	}
	select {
	case <-f.Done():
		v, _, err := f.result()
		return v, err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

func (f *Future[T]) result() (v T, ready bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.v, f.ready, f.err
}

// failedNow returns the future's error if it has already failed. A nil
// future is a packet queued without one, which has not.
func (f *Future[T]) failedNow() error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
