package buffer

import (
	"errors"
	"io"
)

// Inbound is the bytes a transport has received and not yet consumed. A
// transport fires it with ChannelRead; a decoder takes whole frames out of it
// and leaves the rest, which the transport keeps for the next read. This is
// what lets a frame be copied once, when it is whole, instead of once per
// read.
//
// Slices returned by Peek are valid only until the next Discard and only
// inside the ChannelRead call that received the Inbound.
type Inbound interface {
	// Buffered returns the number of bytes available to Peek.
	Buffered() int
	// Peek returns the next n bytes without consuming them, or
	// io.ErrShortBuffer when fewer are buffered.
	Peek(n int) ([]byte, error)
	// Discard consumes the next n bytes.
	Discard(n int) (int, error)
}

// Queue is a growable Inbound fed by Write, for transports that read into
// their own memory (net.Conn) and for tests. The zero value is ready to use.
type Queue struct {
	b []byte
	r int
}

// Write appends p. It never fails.
func (q *Queue) Write(p []byte) (int, error) {
	if q.r > 0 && q.r == len(q.b) {
		q.b, q.r = q.b[:0], 0
	}
	if q.r > 0 && len(q.b)+len(p) > cap(q.b) && q.r >= len(q.b)/2 {
		// Reclaim the consumed front before growing.
		n := copy(q.b, q.b[q.r:])
		q.b, q.r = q.b[:n], 0
	}
	q.b = append(q.b, p...)
	return len(p), nil
}

// ReadOnce reads from r into the queue's free space, growing it by at least
// min bytes when it is full, and returns after one Read.
func (q *Queue) ReadOnce(r io.Reader, min int) (int, error) {
	if q.r > 0 && q.r == len(q.b) {
		q.b, q.r = q.b[:0], 0
	}
	if cap(q.b)-len(q.b) < min {
		if q.r > 0 {
			n := copy(q.b, q.b[q.r:])
			q.b, q.r = q.b[:n], 0
		}
		if cap(q.b)-len(q.b) < min {
			nb := make([]byte, len(q.b), 2*cap(q.b)+min)
			copy(nb, q.b)
			q.b = nb
		}
	}
	n, err := r.Read(q.b[len(q.b):cap(q.b)])
	q.b = q.b[:len(q.b)+n]
	return n, err
}

// Buffered returns the number of unconsumed bytes.
func (q *Queue) Buffered() int { return len(q.b) - q.r }

// Peek returns the next n unconsumed bytes.
func (q *Queue) Peek(n int) ([]byte, error) {
	if n < 0 {
		return nil, errors.New("buffer: negative Peek")
	}
	if n > q.Buffered() {
		return nil, io.ErrShortBuffer
	}
	return q.b[q.r : q.r+n], nil
}

// Discard consumes the next n bytes, or all of them if fewer are buffered.
func (q *Queue) Discard(n int) (int, error) {
	if n < 0 {
		return 0, errors.New("buffer: negative Discard")
	}
	if n > q.Buffered() {
		n = q.Buffered()
	}
	q.r += n
	return n, nil
}
