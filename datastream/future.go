package datastream

import (
	"context"
	"sync"
)

// Future is the result of an asynchronous operation. It completes once;
// Wait and Done may be used from any number of goroutines.
type Future[T any] struct {
	once sync.Once
	done chan struct{}
	v    T
	err  error
}

func newFuture[T any]() *Future[T] {
	f := new(Future[T])
	f.init()
	return f
}

// init prepares a Future embedded in a larger struct, which saves an
// allocation per packet.
func (f *Future[T]) init() { f.done = make(chan struct{}) }

func failedFuture[T any](err error) *Future[T] {
	f := newFuture[T]()
	f.complete(*new(T), err)
	return f
}

// complete sets the result; later calls do nothing.
func (f *Future[T]) complete(v T, err error) {
	f.once.Do(func() {
		f.v, f.err = v, err
		close(f.done)
	})
}

// Done is closed when the result is ready; Wait then returns at once.
func (f *Future[T]) Done() <-chan struct{} { return f.done }

// Wait returns the result once it is ready, or ctx's error if ctx ends
// first. A ctx that ends does not cancel the operation.
func (f *Future[T]) Wait(ctx context.Context) (T, error) {
	select {
	case <-f.done:
		return f.v, f.err
	default:
	}
	select {
	case <-f.done:
		return f.v, f.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// failedNow returns the future's error if it has already failed.
func (f *Future[T]) failedNow() error {
	select {
	case <-f.done:
		return f.err
	default:
		return nil
	}
}
