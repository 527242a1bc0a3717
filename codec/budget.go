package codec

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/pipestream/pipestream/buffer"
)

var (
	// ErrPartialBudget is wrapped by the error of a decoder that would
	// hold more bytes of an incomplete frame than its PartialBudget has
	// left.
	ErrPartialBudget = errors.New("codec: incomplete frames over budget")
	// ErrReadStalled is wrapped by the error of a decoder whose incomplete
	// frame Sweep found stalled.
	ErrReadStalled = errors.New("codec: incomplete frame stalled")
)

// PartialBudget bounds the bytes that the decoders sharing it hold in
// frames that have not fully arrived: a large frame's buffer, allocated
// once a quarter of it is in (or at once, after a frame at least as long:
// see FrameDecoder.Decode), and the bytes of a smaller or younger frame
// waiting in the transport's buffer. Without it, each connection may hold
// a frame of MaxFrameLength, and many connections that each stop one byte
// short of a frame hold that many times over. A decoder that would go past
// the bound fails with ErrPartialBudget, which closes its connection; the
// others go on.
//
// A decoder keeps what it has taken across the frames it decodes, so that a
// connection streaming large frames costs the budget nothing per frame, and
// gives back what its current frame does not need when Sweep is called.
// Its methods are safe for concurrent use.
type PartialBudget struct {
	max  int64
	held atomic.Int64
}

// NewPartialBudget returns a budget of max bytes.
func NewPartialBudget(max int64) *PartialBudget { return &PartialBudget{max: max} }

// Max returns the budget's bound.
func (b *PartialBudget) Max() int64 { return b.max }

// Held returns the bytes the decoders hold of the budget.
func (b *PartialBudget) Held() int64 { return b.held.Load() }

// take takes n bytes if the budget has them left.
func (b *PartialBudget) take(n int64) bool {
	for {
		h := b.held.Load()
		if h+n > b.max {
			return false
		}
		if b.held.CompareAndSwap(h, h+n) {
			return true
		}
	}
}

func (b *PartialBudget) give(n int64) { b.held.Add(-n) }

// SetBudget makes the decoder hold the bytes of its incomplete frames
// against b. Call it before the first Decode.
func (d *FrameDecoder) SetBudget(b *PartialBudget) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.trim(0)
	d.budget = b
}

// Sweep gives back to the budget what the decoder holds beyond the needs of
// its incomplete frame, and reports whether that frame has stalled: no read
// since an earlier Sweep saw it, stall ago or more. It then drops the
// frame, releasing its buffer, and the decoder's next Decode fails with
// ErrReadStalled; the caller closes the connection, since gnet, unlike a
// net.Conn, has no read deadline. Sweep may be called from any goroutine;
// a server calls it for each connection on its tick.
func (d *FrameDecoder) Sweep(now time.Time, stall time.Duration) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.trim(d.pending)
	if d.pending == 0 || d.stalled || d.err != nil {
		d.since = time.Time{}
		return false
	}
	if d.since.IsZero() || d.decodes != d.watched {
		d.watched, d.since = d.decodes, now
		return false
	}
	if now.Sub(d.since) < stall {
		return false
	}
	d.stalled = true
	d.drop()
	return true
}

// hold makes sure the decoder holds n bytes of its budget, if it has one;
// d.mu is held.
func (d *FrameDecoder) hold(n int) error {
	if d.budget == nil || n <= d.reserved {
		return nil
	}
	if !d.budget.take(int64(n - d.reserved)) {
		return fmt.Errorf("%w: an incomplete frame needs %d bytes; %d of %d are held", ErrPartialBudget, n, d.budget.Held(), d.budget.Max())
	}
	d.reserved = n
	return nil
}

// trim gives back what the decoder holds of its budget beyond n bytes;
// d.mu is held.
func (d *FrameDecoder) trim(n int) {
	if d.reserved > n {
		d.budget.give(int64(d.reserved - n))
		d.reserved = n
	}
}

// wait notes the buffered bytes of an incomplete frame that stay in the
// transport; d.mu is held.
func (d *FrameDecoder) wait(in buffer.Inbound, buffered int) error {
	d.pending = buffered
	if err := d.hold(buffered); err != nil {
		return d.fail(in, err)
	}
	return nil
}
