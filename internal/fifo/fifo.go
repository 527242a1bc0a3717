// Package fifo provides a first-in, first-out queue that reuses its memory.
//
// A stream's queues of packets in flight see a push and a pop per packet;
// popping by re-slicing from the front would make every append past the
// end reallocate the queue, an allocation per window's worth of packets on
// a path meant to allocate nothing.
package fifo

import "iter"

// Queue is a FIFO queue. The zero value is empty and ready to use. It is
// not safe for concurrent use.
type Queue[T any] struct {
	buf  []T
	head int
}

// Len returns the number of elements.
func (q *Queue[T]) Len() int { return len(q.buf) - q.head }

// Push adds v at the back.
func (q *Queue[T]) Push(v T) {
	if q.head > 0 && (q.head == len(q.buf) || len(q.buf) == cap(q.buf) && q.head >= len(q.buf)/2) {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	q.buf = append(q.buf, v)
}

// Peek returns the oldest element; the queue must not be empty.
func (q *Queue[T]) Peek() T { return q.buf[q.head] }

// Pop removes and returns the oldest element; the queue must not be empty.
func (q *Queue[T]) Pop() T {
	var zero T
	v := q.buf[q.head]
	q.buf[q.head] = zero
	q.head++
	return v
}

// All yields every element, oldest first, without removing any. The queue
// must not change while it runs.
func (q *Queue[T]) All() iter.Seq[T] {
	return func(yield func(T) bool) {
		for _, v := range q.buf[q.head:] {
			if !yield(v) {
				return
			}
		}
	}
}

// Take removes and returns every element, oldest first, in a new slice.
func (q *Queue[T]) Take() []T {
	out := append([]T(nil), q.buf[q.head:]...)
	clear(q.buf)
	q.buf, q.head = q.buf[:0], 0
	return out
}
