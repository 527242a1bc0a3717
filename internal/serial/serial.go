// Package serial runs tasks one at a time, in submission order, on a
// goroutine that exists only while there is work.
//
// Each DataStream stream gets one: writes within a stream must stay in order,
// which a shared worker pool would not keep, and a goroutine parked per idle
// stream would cost memory for thousands of open streams.
package serial

import "sync"

// Queue runs fn for each submitted value, in order, never two at once.
type Queue[T any] struct {
	fn func(T)
	wg *sync.WaitGroup

	mu      sync.Mutex
	items   []T
	spare   []T
	running bool
}

// New returns a queue that runs fn. If wg is not nil, each running drain
// goroutine is counted in it, so an owner can wait for all of them to end.
func New[T any](fn func(T), wg *sync.WaitGroup) *Queue[T] {
	return &Queue[T]{fn: fn, wg: wg}
}

// Submit queues v. It never blocks on fn.
func (q *Queue[T]) Submit(v T) {
	q.mu.Lock()
	q.items = append(q.items, v)
	if q.running {
		q.mu.Unlock()
		return
	}
	q.running = true
	if q.wg != nil {
		q.wg.Add(1)
	}
	q.mu.Unlock()
	go q.drain()
}

func (q *Queue[T]) drain() {
	if q.wg != nil {
		defer q.wg.Done()
	}
	var zero T
	for {
		q.mu.Lock()
		batch := q.items
		if len(batch) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		// Swap in the spare slice so producers append without waiting for
		// this batch, and neither slice is reallocated in steady state.
		q.items, q.spare = q.spare[:0], nil
		q.mu.Unlock()
		for i, v := range batch {
			q.fn(v)
			batch[i] = zero
		}
		q.mu.Lock()
		q.spare = batch[:0]
		q.mu.Unlock()
	}
}
