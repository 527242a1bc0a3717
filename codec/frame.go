package codec

import (
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/pipeline"
)

// DefaultMaxFrameLength is the MaxFrameLength used when a FrameConfig leaves
// it zero.
const DefaultMaxFrameLength = 16 << 20

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
// once a quarter of it is in, and the bytes of a smaller or younger frame
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

// FrameConfig describes where a frame's length is and what the decoder
// passes on; the package documentation draws it. The fields mean what the
// parameters of the same names mean to Netty's LengthFieldBasedFrameDecoder.
type FrameConfig struct {
	// LengthFieldOffset is where the length field starts in the frame.
	LengthFieldOffset int
	// LengthFieldLength is the size of the length field: 1, 2, 3, 4 or 8
	// bytes, an unsigned integer.
	LengthFieldLength int
	// LittleEndian reads the length field least significant byte first;
	// the default is big-endian, network order.
	LittleEndian bool
	// LengthAdjustment is added to the length field's value to get the
	// number of bytes after the field: negative when the value also counts
	// the field or the bytes before it, positive when a header after the
	// field is not counted.
	LengthAdjustment int
	// InitialBytesToStrip is how many bytes are cut off the front of each
	// frame before it is passed on.
	InitialBytesToStrip int
	// MaxFrameLength bounds the whole frame, stripped bytes included;
	// zero means DefaultMaxFrameLength.
	MaxFrameLength int
}

// validLengthField reports whether n is a supported length-field size.
func validLengthField(n int) bool {
	switch n {
	case 1, 2, 3, 4, 8:
		return true
	}
	return false
}

// withDefaults checks c and fills in its defaults.
func (c FrameConfig) withDefaults() (FrameConfig, error) {
	if !validLengthField(c.LengthFieldLength) {
		return c, fmt.Errorf("codec: length field of %d bytes; want 1, 2, 3, 4 or 8", c.LengthFieldLength)
	}
	if c.LengthFieldOffset < 0 || c.LengthFieldOffset > math.MaxInt-8 {
		return c, fmt.Errorf("codec: length field offset %d out of range", c.LengthFieldOffset)
	}
	if c.InitialBytesToStrip < 0 {
		return c, fmt.Errorf("codec: negative InitialBytesToStrip %d", c.InitialBytesToStrip)
	}
	switch {
	case c.MaxFrameLength < 0:
		return c, fmt.Errorf("codec: negative MaxFrameLength %d", c.MaxFrameLength)
	case c.MaxFrameLength == 0:
		c.MaxFrameLength = DefaultMaxFrameLength
	}
	end := c.LengthFieldOffset + c.LengthFieldLength
	if c.MaxFrameLength < end {
		return c, fmt.Errorf("codec: MaxFrameLength %d is less than the %d bytes up to the end of the length field", c.MaxFrameLength, end)
	}
	if c.InitialBytesToStrip > c.MaxFrameLength {
		return c, fmt.Errorf("codec: InitialBytesToStrip %d is more than MaxFrameLength %d", c.InitialBytesToStrip, c.MaxFrameLength)
	}
	// Keeps end + LengthAdjustment from overflowing in frameLength.
	if c.LengthAdjustment > math.MaxInt-end {
		return c, fmt.Errorf("codec: LengthAdjustment %d out of range", c.LengthAdjustment)
	}
	return c, nil
}

// FrameDecoder splits a byte stream into frames. As a pipeline stage it
// consumes each buffer.Inbound it reads and fires every whole frame in it as
// a *buffer.Buf, whose reference the next stage owns; other messages pass
// through. A frame that is too long or corrupt fires an error wrapping
// ErrFrameTooLong or ErrCorruptFrame and closes the connection, and from
// then on the decoder discards whatever it reads.
//
// If the decoder is removed from its pipeline while it is decoding, as a
// protocol switch would do, the bytes it has not decoded are passed on to
// the next stage as the buffer.Inbound.
//
// A FrameDecoder holds one connection's state: make one per pipeline. Its
// methods are called from the connection's event loop, or from the one
// goroutine that reads a net.Conn, never concurrently.
type FrameDecoder struct {
	cfg     FrameConfig
	end     int   // offset of the first byte after the length field
	err     error // the error that failed the stream, for good
	removed atomic.Bool

	// A large frame that has partly arrived is assembled in place: see
	// Decode. mu guards partial against HandlerRemoved on another
	// goroutine.
	mu      sync.Mutex
	partial *buffer.Buf
	have    int                 // bytes of partial filled
	direct  buffer.DirectReader // reads into partial's missing tail, or nil

	// Also guarded by mu, for Sweep on another goroutine.
	budget   *PartialBudget // nil: unbounded
	reserved int            // bytes taken from budget
	pending  int            // bytes held of the incomplete frame at the front, as of the last Decode
	decodes  uint64         // Decode calls: each follows a read
	watched  uint64         // decodes when Sweep started watching a pending frame
	since    time.Time      // when it did; zero when not watching
	stalled  bool           // Sweep dropped the frame; the next Decode fails
}

// eagerMin is the smallest frame assembled before it is whole; smaller
// frames wait in the transport's buffer, where they cost little.
const eagerMin = 64 << 10

// NewFrameDecoder returns a decoder for frames laid out as c describes. It
// fails if c is inconsistent.
func NewFrameDecoder(c FrameConfig) (*FrameDecoder, error) {
	c, err := c.withDefaults()
	if err != nil {
		return nil, err
	}
	return &FrameDecoder{cfg: c, end: c.LengthFieldOffset + c.LengthFieldLength}, nil
}

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

// ChannelRead decodes every whole frame in a buffer.Inbound and passes any
// other message on.
func (d *FrameDecoder) ChannelRead(ctx *pipeline.Context, msg any) {
	in, ok := msg.(buffer.Inbound)
	if !ok {
		ctx.FireChannelRead(msg)
		return
	}
	failed := d.err != nil
	for !d.removed.Load() {
		frame, err := d.Decode(in)
		if err != nil {
			if !failed {
				// Fire first so that an error handler can still write a
				// reply before the connection goes.
				ctx.FireError(err)
				_ = ctx.Close()
			}
			return
		}
		if frame == nil {
			return
		}
		ctx.FireChannelRead(frame)
	}
	if in.Buffered() > 0 {
		ctx.FireChannelRead(in)
	}
}

// HandlerRemoved stops a decode loop in progress, so that the rest of the
// input goes to whatever replaced the decoder, and drops a frame being
// assembled.
func (d *FrameDecoder) HandlerRemoved(*pipeline.Context) {
	d.removed.Store(true)
	d.Reset()
}

// Reset drops a frame being assembled, releasing its buffer and
// withdrawing it as the target of direct reads. A decoder used without a
// pipeline calls it when its connection ends.
func (d *FrameDecoder) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.drop()
}

// drop releases the frame being assembled and gives back the budget;
// d.mu is held.
func (d *FrameDecoder) drop() {
	d.withdraw()
	if d.partial != nil {
		d.partial.Release()
		d.partial, d.have = nil, 0
	}
	d.pending = 0
	d.trim(0)
}

// withdraw takes back the target of the Inbound's direct reads, if there
// is one, and returns how many bytes landed in it. d.mu is held.
func (d *FrameDecoder) withdraw() int {
	if d.direct == nil {
		return 0
	}
	n := d.direct.Withdraw()
	d.direct = nil
	return n
}

// Decode takes the next whole frame out of in and returns it, stripped, in a
// new buffer that the caller must release. It returns (nil, nil), consuming
// nothing, when in does not yet hold a whole frame.
//
// An error fails the decoder for good: this call and every later one
// discard all that in holds and return the same error.
//
// If in also implements io.Reader, reading consumed bytes as gnet's
// connection does, the frame is read into its buffer with Read, which spares
// an Inbound whose Peek must join two pieces of memory (gnet's, for a frame
// that wraps its ring buffer) a second copy of the frame.
//
// A frame of 64 KiB or more of which at least a quarter has arrived is
// taken out of in into its buffer before it is whole, and its remaining
// bytes go straight there as they come: a transport that keeps what a
// decoder leaves (gnet parks it in a ring buffer) would otherwise copy
// every byte of a large frame twice. Waiting for a quarter bounds what a
// peer can make the decoder allocate to four times what it has sent,
// never the length it announces alone: a few bytes claiming a 16 MiB
// frame cost nothing until they are followed by 4 MiB. A DirectReader that
// is also a buffer.Backlog counts the bytes waiting in its socket as
// arrived: they have been sent, and reading them into the frame rather
// than into in spares them a copy.
//
// If in is also a buffer.DirectReader, as both transports' are, the
// frame's missing tail becomes its target whenever in is empty: the
// transport then reads the rest of the frame into the frame's buffer with
// no copy through in, and may take all of it in one read, and the next
// Decode counts what landed. So a Decode may return a frame while in is
// empty. The target is withdrawn by the next Decode, Reset,
// HandlerRemoved and a failure.
//
// A decoder given a PartialBudget (SetBudget) counts against it the bytes
// of an incomplete frame, whether assembled or waiting in in, and fails
// with ErrPartialBudget rather than hold more than the budget has left.
func (d *FrameDecoder) Decode(in buffer.Inbound) (*buffer.Buf, error) {
	if d.err != nil {
		discardAll(in)
		return nil, d.err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.decodes++
	if d.stalled {
		return nil, d.fail(in, fmt.Errorf("%w: no bytes of it arrived for too long", ErrReadStalled))
	}
	if d.partial != nil {
		return d.fill(in)
	}
	buffered := in.Buffered()
	if buffered < d.end {
		return nil, d.wait(in, buffered)
	}
	head, err := in.Peek(d.end)
	if err != nil {
		return nil, d.fail(in, fmt.Errorf("codec: peeking a frame header: %w", err))
	}
	total, err := d.frameLength(head[d.cfg.LengthFieldOffset:d.end])
	if err != nil {
		return nil, d.fail(in, err)
	}
	if buffered < total {
		if strip := d.cfg.InitialBytesToStrip; total >= eagerMin && buffered > strip && arrived(in, buffered, total/4) >= total/4 {
			if err := d.hold(total - strip); err != nil {
				return nil, d.fail(in, err)
			}
			d.pending = total - strip
			d.partial = buffer.Get(total - strip)
			if err := take(in, d.partial.Bytes()[:buffered-strip], strip); err != nil {
				return nil, d.fail(in, err)
			}
			d.have = buffered - strip
			d.aim(in)
			return nil, nil
		}
		return nil, d.wait(in, buffered)
	}
	d.pending = 0
	frame := buffer.Get(total - d.cfg.InitialBytesToStrip)
	if err := take(in, frame.Bytes(), d.cfg.InitialBytesToStrip); err != nil {
		frame.Release()
		return nil, d.fail(in, err)
	}
	return frame, nil
}

// arrived returns the bytes of the stream that have arrived: those
// buffered and, if fewer than want and in can tell, those waiting in the
// socket, which a DirectReader reads straight into the frame.
func arrived(in buffer.Inbound, buffered, want int) int {
	if buffered >= want {
		return buffered
	}
	if _, direct := in.(buffer.DirectReader); !direct {
		return buffered
	}
	if b, ok := in.(buffer.Backlog); ok {
		return buffered + b.Backlog()
	}
	return buffered
}

// fill moves what has arrived of the frame being assembled into it, and
// returns the frame once it is whole.
func (d *FrameDecoder) fill(in buffer.Inbound) (*buffer.Buf, error) {
	// Landed bytes come before everything in the Inbound.
	d.have += d.withdraw()
	dst := d.partial.Bytes()
	if n := min(len(dst)-d.have, in.Buffered()); n > 0 {
		if err := take(in, dst[d.have:d.have+n], 0); err != nil {
			return nil, d.fail(in, err)
		}
		d.have += n
	}
	if d.have < len(dst) {
		d.aim(in)
		return nil, nil
	}
	frame := d.partial
	d.partial, d.have, d.pending = nil, 0, 0
	return frame, nil
}

// aim makes the missing tail of the frame being assembled the target of
// in's next reads, if in can read directly and is empty, as it is once
// the decoder has taken all of it into an unfinished frame. d.mu is held.
func (d *FrameDecoder) aim(in buffer.Inbound) {
	r, ok := in.(buffer.DirectReader)
	if !ok || in.Buffered() > 0 {
		return
	}
	r.ReadInto(d.partial.Slice(d.have, d.partial.Len()))
	d.direct = r
}

// fail fails the decoder for good; d.mu is held.
func (d *FrameDecoder) fail(in buffer.Inbound, err error) error {
	d.err = err
	d.drop()
	discardAll(in)
	return err
}

// frameLength returns the length of the whole frame whose length field is
// field, or why that length is unacceptable.
func (d *FrameDecoder) frameLength(field []byte) (int, error) {
	v := getUint(field, d.cfg.LittleEndian)
	if v > math.MaxInt64 {
		// Netty reads an 8-byte field as a signed long; so do its peers.
		return 0, fmt.Errorf("%w: length field %d is negative as a signed 64-bit integer", ErrCorruptFrame, v)
	}
	n := int64(v)
	fixed := int64(d.end) + int64(d.cfg.LengthAdjustment)
	if fixed > 0 && n > math.MaxInt64-fixed {
		return 0, fmt.Errorf("%w: length field %d overflows with %d bytes of header", ErrFrameTooLong, v, fixed)
	}
	n += fixed
	switch {
	case n < int64(d.end):
		return 0, fmt.Errorf("%w: adjusted frame length %d is less than the %d bytes up to the end of the length field", ErrCorruptFrame, n, d.end)
	case n > int64(d.cfg.MaxFrameLength):
		return 0, fmt.Errorf("%w: %d bytes, more than the maximum of %d", ErrFrameTooLong, n, d.cfg.MaxFrameLength)
	case n < int64(d.cfg.InitialBytesToStrip):
		return 0, fmt.Errorf("%w: frame of %d bytes is shorter than the %d bytes to strip", ErrCorruptFrame, n, d.cfg.InitialBytesToStrip)
	}
	return int(n), nil
}

// take consumes strip bytes and then len(dst) bytes from in, copying the
// latter into dst. The caller has checked that in holds them all.
func take(in buffer.Inbound, dst []byte, strip int) error {
	if r, ok := in.(io.Reader); ok {
		if err := discard(in, strip); err != nil {
			return err
		}
		if _, err := io.ReadFull(r, dst); err != nil {
			return fmt.Errorf("codec: reading a buffered frame: %w", err)
		}
		return nil
	}
	total := strip + len(dst)
	p, err := in.Peek(total)
	if err != nil {
		return fmt.Errorf("codec: peeking a buffered frame: %w", err)
	}
	copy(dst, p[strip:])
	return discard(in, total)
}

func discard(in buffer.Inbound, n int) error {
	if n == 0 {
		return nil
	}
	m, err := in.Discard(n)
	if err == nil && m != n {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("codec: discarding %d buffered bytes: %w", n, err)
	}
	return nil
}

func discardAll(in buffer.Inbound) {
	if n := in.Buffered(); n > 0 {
		_, _ = in.Discard(n)
	}
}

// getUint reads an unsigned integer of len(p) bytes, at most 8.
func getUint(p []byte, littleEndian bool) uint64 {
	var v uint64
	if littleEndian {
		for i := len(p) - 1; i >= 0; i-- {
			v = v<<8 | uint64(p[i])
		}
		return v
	}
	for _, b := range p {
		v = v<<8 | uint64(b)
	}
	return v
}

// putUint writes v into all of p, which holds at most 8 bytes.
func putUint(p []byte, v uint64, littleEndian bool) {
	if littleEndian {
		for i := range p {
			p[i] = byte(v)
			v >>= 8
		}
		return
	}
	for i := len(p) - 1; i >= 0; i-- {
		p[i] = byte(v)
		v >>= 8
	}
}
