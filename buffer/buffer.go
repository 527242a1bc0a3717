// Package buffer provides pooled, reference-counted byte buffers.
//
// A Buf is taken from a size-classed pool with Get, shared with Retain and
// given back with Release: the bytes return to the pool when the last
// reference is released. Passing a *Buf to another stage hands that stage
// the caller's reference; a stage that keeps the bytes and also passes them
// on calls Retain first. This is what lets the DataStream server copy a
// packet's body once off the wire and then write it locally and forward it to
// every successor without another copy.
//
// Sizes from 256 bytes to 32 MiB are pooled in power-of-two classes, so that
// the largest DataStream frame (16 MiB of body and its header) is; larger
// buffers are allocated and left to the garbage collector, but are still
// reference-counted and counted as live.
//
// The package counts live buffers so that tests can prove that no code path
// leaks or double-releases one; see package buffertest.
package buffer

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
)

const (
	minClassShift = 8  // 256 B
	maxClassShift = 25 // 32 MiB
	numClasses    = maxClassShift - minClassShift + 1

	// MaxPooled is the largest size served from the pool.
	MaxPooled = 1 << maxClassShift
)

var pools [numClasses]sync.Pool

// Buf is a reference-counted view of a pooled byte slice. The readable bytes
// are Bytes(); Skip and Truncate narrow the view without copying, which is
// how a decoder exposes a frame's body from the same buffer as its header.
//
// A Buf is safe to Retain and Release from several goroutines; reading and
// narrowing it are not synchronized and belong to its current owner.
type Buf struct {
	b     []byte // whole backing array of the size class
	r, w  int    // readable window is b[r:w]
	refs  atomic.Int32
	class int8 // index into pools, or -1 when not pooled
	track *record
	// parent is set on a view made by Slice: the view's bytes belong to
	// parent, and the view holds one reference on it.
	parent *Buf
}

var views = sync.Pool{New: func() any { return &Buf{class: -1} }}

// Slice returns a view of b.Bytes()[i:j] that shares b's memory. The view
// has a reference count of its own, starting at one, and holds a reference
// on b until the view's last Release; the caller keeps its own reference on
// b. This is how a packet's body and its whole frame travel to different
// stages (a local write and a forward) without a copy.
func (b *Buf) Slice(i, j int) *Buf {
	if i < 0 || j < i || j > b.Len() {
		panic(fmt.Sprintf("buffer: Slice(%d, %d) out of range [0,%d]", i, j, b.Len()))
	}
	root := b
	if b.parent != nil {
		root = b.parent
	}
	root.Retain()
	v := views.Get().(*Buf)
	v.b, v.r, v.w = b.b, b.r+i, b.r+j
	v.parent = root
	v.refs.Store(1)
	return v
}

// Get returns a buffer of length n holding one reference. Its bytes are not
// zeroed: the caller is expected to fill them.
func Get(n int) *Buf {
	if n < 0 {
		panic("buffer: negative size")
	}
	class := classOf(n)
	var b *Buf
	if class >= 0 && !tracking.Load() {
		if v := pools[class].Get(); v != nil {
			b = v.(*Buf)
		}
	}
	if b == nil {
		size := n
		if class >= 0 {
			size = 1 << (class + minClassShift)
		}
		b = &Buf{b: make([]byte, size), class: int8(class)}
	}
	b.r, b.w = 0, n
	b.refs.Store(1)
	live.Add(1)
	if tracking.Load() {
		b.track = newRecord()
	}
	return b
}

// Copy returns a new buffer holding a copy of p.
func Copy(p []byte) *Buf {
	b := Get(len(p))
	copy(b.b, p)
	return b
}

func classOf(n int) int {
	if n > MaxPooled {
		return -1
	}
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// Bytes returns the readable bytes. The slice is valid until the last
// reference is released.
func (b *Buf) Bytes() []byte { return b.b[b.r:b.w] }

// Len returns the number of readable bytes.
func (b *Buf) Len() int { return b.w - b.r }

// Cap returns how far the readable window can grow with SetLen.
func (b *Buf) Cap() int { return len(b.b) - b.r }

// Skip drops the first n readable bytes.
func (b *Buf) Skip(n int) {
	if n < 0 || n > b.Len() {
		panic(fmt.Sprintf("buffer: Skip(%d) out of range [0,%d]", n, b.Len()))
	}
	b.r += n
}

// Truncate keeps the first n readable bytes.
func (b *Buf) Truncate(n int) {
	if n < 0 || n > b.Len() {
		panic(fmt.Sprintf("buffer: Truncate(%d) out of range [0,%d]", n, b.Len()))
	}
	b.w = b.r + n
}

// SetLen sets the number of readable bytes to n, which may be up to Cap.
// Bytes exposed by growing the window are not zeroed.
func (b *Buf) SetLen(n int) {
	if n < 0 || n > b.Cap() {
		panic(fmt.Sprintf("buffer: SetLen(%d) out of range [0,%d]", n, b.Cap()))
	}
	b.w = b.r + n
}

// Refs returns the current reference count, for tests and diagnostics.
func (b *Buf) Refs() int32 { return b.refs.Load() }

// Retain adds a reference and returns b, so that a stage can keep the buffer
// while handing it on: next.Handle(b.Retain()).
func (b *Buf) Retain() *Buf {
	if b.refs.Add(1) <= 1 {
		b.refs.Add(-1)
		reportMisuse(b, "Retain of a released buffer")
	}
	return b
}

// Release drops a reference. The last Release returns the bytes to the pool;
// the caller must not touch b afterwards. Releasing more often than the
// buffer was retained is a bug: it panics, and is reported to buffertest.
func (b *Buf) Release() {
	switch n := b.refs.Add(-1); {
	case n > 0:
		return
	case n < 0:
		b.refs.Add(1)
		reportMisuse(b, "Release of a released buffer")
		return
	}
	if p := b.parent; p != nil {
		// Views are not counted as live: their parent is.
		b.parent, b.b = nil, nil
		views.Put(b)
		p.Release()
		return
	}
	live.Add(-1)
	if b.track != nil {
		b.track.free()
		// A tracked buffer is never recycled, so a second Release finds
		// refs == 0 instead of a stranger's reference.
		return
	}
	if b.class >= 0 {
		pools[b.class].Put(b)
	}
}
