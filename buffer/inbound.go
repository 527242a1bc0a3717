package buffer

import (
	"errors"
	"io"
	"sync"
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

// DirectReader is an Inbound that can read the next bytes of the stream
// straight into a consumer's buffer instead of its own memory. A decoder
// assembling a large frame names the frame's missing tail as the target
// (or, after one, the next frame's length field), and the transport's
// reads land there: the bytes are copied once, by the kernel, instead of
// once more out of the Inbound.
//
// While a target is set and nothing is buffered, each read goes into the
// target's free part, and may fill all of it at once; a full target, or
// bytes already buffered, send reads to the Inbound as usual. So the bytes
// in the target always come before every byte buffered. The transport
// fires ChannelRead after such a read as after any other, with nothing
// buffered when all of it went to the target.
//
// ReadInto, like Peek and Discard, is called on the goroutine that fires
// the reads, between reads. Withdraw may also be called from any other
// goroutine, so that a consumer torn down elsewhere can let go of its
// target; a read into the target may then be in progress.
type DirectReader interface {
	Inbound
	// ReadInto makes dst.Bytes() the target of the next reads, replacing
	// any earlier target. It hands over the caller's reference to dst,
	// which the Inbound releases when the target is withdrawn or replaced,
	// and not before a read into it has ended: a caller passes a Slice
	// view of its own buffer, and may release its own reference at any
	// time. A caller must withdraw its target when it is done with the
	// stream, or the reference leaks.
	ReadInto(dst *Buf)
	// Withdraw removes the target, releasing its reference, and returns
	// how many bytes were read into its front: the next bytes of the
	// stream, ahead of everything buffered. It returns 0 when there is no
	// target. The bytes of a read that is in progress when Withdraw is
	// called are lost to the stream.
	Withdraw() int
}

// Backlog is implemented by an Inbound that knows how many bytes have
// arrived beyond those it holds: the socket's receive queue, which a
// DirectReader can read straight into a frame. A decoder that assembles a
// large frame only once a share of it has arrived counts them, so that the
// share need not be copied through the Inbound first.
type Backlog interface {
	// Backlog returns the bytes received and not yet read into the
	// Inbound, or 0 when it cannot tell.
	Backlog() int
}

// Target is the target half of a DirectReader, for a transport's Inbound
// to embed: it keeps the target that ReadInto names, and ReadDirect reads
// into it. The zero value has no target.
type Target struct {
	// mu guards the target against Withdraw on another goroutine.
	mu     sync.Mutex
	dst    *Buf // the target, or nil
	landed int  // bytes read into the front of dst
}

// ReadInto makes dst the target of ReadDirect; see DirectReader.
func (t *Target) ReadInto(dst *Buf) {
	t.mu.Lock()
	old := t.dst
	t.dst, t.landed = dst, 0
	t.mu.Unlock()
	if old != nil {
		old.Release()
	}
}

// Withdraw removes the target and returns how many bytes ReadDirect read
// into it; see DirectReader.
func (t *Target) Withdraw() int {
	t.mu.Lock()
	dst, n := t.dst, t.landed
	t.dst, t.landed = nil, 0
	t.mu.Unlock()
	if dst == nil {
		return 0
	}
	dst.Release()
	return n
}

// ReadDirect reads once from r into the free part of the target, if there
// is a target with room; ok is false when it did not read. The caller
// checks that its Inbound holds no bytes, which would come first.
func (t *Target) ReadDirect(r io.Reader) (n int, ok bool, err error) {
	t.mu.Lock()
	dst, off := t.dst, t.landed
	if dst == nil || off == dst.Len() {
		t.mu.Unlock()
		return 0, false, nil
	}
	// The read's own reference keeps the memory valid if the target is
	// withdrawn while the read waits on the socket.
	dst.Retain()
	t.mu.Unlock()
	n, err = r.Read(dst.Bytes()[off:])
	t.mu.Lock()
	if t.dst == dst && n > 0 {
		t.landed += n
	}
	t.mu.Unlock()
	dst.Release()
	return n, true, err
}

// Queue is a growable Inbound fed by Write, for transports that read into
// their own memory (net.Conn) and for tests. The zero value is ready to use.
//
// Queue is a DirectReader: ReadOnce reads into the target while the queue
// is empty. Write always appends to the queue.
type Queue struct {
	b []byte
	r int
	Target
}

var _ DirectReader = (*Queue)(nil)

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
// min bytes when it is full, and returns after one Read. When the queue is
// empty and has a target with room (see ReadInto), the Read goes into the
// target instead, asking for all of its free part.
func (q *Queue) ReadOnce(r io.Reader, min int) (int, error) {
	if q.r == len(q.b) {
		q.b, q.r = q.b[:0], 0
		if n, ok, err := q.ReadDirect(r); ok {
			return n, err
		}
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
