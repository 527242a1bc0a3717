package handler

// fifo is a queue that reuses its memory: a stream's reply and
// acknowledgement queues see a push and a pop per packet, and re-slicing
// from the front would reallocate them over and over.
type fifo[T any] struct {
	buf  []T
	head int
}

func (f *fifo[T]) len() int { return len(f.buf) - f.head }

func (f *fifo[T]) push(v T) {
	if f.head > 0 && (f.head == len(f.buf) || len(f.buf) == cap(f.buf) && f.head >= len(f.buf)/2) {
		n := copy(f.buf, f.buf[f.head:])
		clear(f.buf[n:])
		f.buf, f.head = f.buf[:n], 0
	}
	f.buf = append(f.buf, v)
}

// peek returns the oldest element; the queue must not be empty.
func (f *fifo[T]) peek() T { return f.buf[f.head] }

// pop removes and returns the oldest element; the queue must not be empty.
func (f *fifo[T]) pop() T {
	var zero T
	v := f.buf[f.head]
	f.buf[f.head] = zero
	f.head++
	return v
}

// take removes and returns every element, oldest first.
func (f *fifo[T]) take() []T {
	out := append([]T(nil), f.buf[f.head:]...)
	clear(f.buf)
	f.buf, f.head = f.buf[:0], 0
	return out
}
