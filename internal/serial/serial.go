// Package serial runs tasks one at a time, in submission order, on a
// goroutine of their own.
//
// Each DataStream stream gets one: writes within a stream must stay in order,
// which a shared worker pool would not keep. The goroutine starts with the
// first task and waits for more until Close, so that a stream receiving a
// packet every millisecond does not start a goroutine per packet; a stream
// that is never closed keeps one parked goroutine.
package serial

import "sync"

// Queue runs fn for each submitted value, in order, never two at once.
type Queue[T any] struct {
	fn func(T)
	wg *sync.WaitGroup

	mu      sync.Mutex
	items   []T
	spare   []T
	running bool // a goroutine is draining or parked
	parked  bool // it waits on wake
	inline  bool // TryRun runs a task on its caller's goroutine
	closed  bool
	wake    chan struct{}
}

// New returns a queue that runs fn. If wg is not nil, the queue's goroutine
// is counted in it while it exists, so an owner can wait for it to end.
func New[T any](fn func(T), wg *sync.WaitGroup) *Queue[T] {
	return &Queue[T]{fn: fn, wg: wg, wake: make(chan struct{}, 1)}
}

// Submit queues v. It never blocks on fn. After Close, it still runs v, on
// a goroutine that ends once the queue is empty again.
func (q *Queue[T]) Submit(v T) {
	q.mu.Lock()
	q.items = append(q.items, v)
	q.kickLocked()
}

// TryRun runs v on the calling goroutine if nothing is queued or running,
// and reports whether it did; otherwise it leaves v to the caller, which
// then submits it. It saves waking the queue's goroutine for a task that
// is quick and never blocks. Tasks submitted while v runs wait for it.
func (q *Queue[T]) TryRun(v T) bool {
	q.mu.Lock()
	if q.inline || len(q.items) > 0 || q.running && !q.parked {
		q.mu.Unlock()
		return false
	}
	q.inline = true
	q.mu.Unlock()
	q.fn(v)
	q.mu.Lock()
	q.inline = false
	if len(q.items) > 0 || q.closed && q.parked {
		q.kickLocked()
		return true
	}
	q.mu.Unlock()
	return true
}

// kickLocked starts or wakes the goroutine for what is queued, unless a
// task runs inline: TryRun kicks once it returns. q.mu is held; it unlocks
// it.
func (q *Queue[T]) kickLocked() {
	switch {
	case q.inline:
		q.mu.Unlock()
	case q.parked:
		q.parked = false
		q.mu.Unlock()
		q.wake <- struct{}{}
	case q.running:
		q.mu.Unlock()
	default:
		q.running = true
		if q.wg != nil {
			q.wg.Add(1)
		}
		q.mu.Unlock()
		go q.drain()
	}
}

// Close lets the goroutine end once it has run everything submitted.
func (q *Queue[T]) Close() {
	q.mu.Lock()
	q.closed = true
	wake := q.parked && !q.inline // else TryRun wakes it
	if wake {
		q.parked = false
	}
	q.mu.Unlock()
	if wake {
		q.wake <- struct{}{}
	}
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
			if q.closed {
				q.running = false
				q.mu.Unlock()
				return
			}
			q.parked = true
			q.mu.Unlock()
			<-q.wake
			continue
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
