package codec

import (
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/pipeline"
)

// FrameDecoder splits a byte stream into frames. As a pipeline stage it
// consumes each buffer.Inbound it reads and fires every whole frame in it as
// a *buffer.Buf, whose reference the next stage owns; other messages pass
// through. A frame that is too long or corrupt fires an error wrapping
// ErrFrameTooLong or ErrCorruptFrame and closes the connection, and from
// then on the decoder discards whatever it reads.
//
// If the decoder is removed from its pipeline while it is decoding, as a
// protocol switch would do, the bytes it has not decoded are passed on to
// the next stage as the buffer.Inbound. Bytes the transport has already
// read straight into a large frame, or into the length field read ahead
// after one (see Decode), go with the decoder when it is removed from
// another goroutine; a switch made while handling a frame loses nothing.
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
	// Decode. mu guards partial, direct, head, headN and lastLen against
	// HandlerRemoved on another goroutine.
	mu      sync.Mutex
	partial *buffer.Buf
	have    int                 // bytes of partial filled
	direct  buffer.DirectReader // reads into partial's missing tail, or head's, or nil

	// After a large frame, the next frame's length field is read on its
	// own, straight into head, so that the frame's body can then be read
	// straight into the frame (see Decode). headN bytes of head are filled.
	head    *buffer.Buf
	headN   int
	lastLen int // of the last frame returned; from eagerMin up, prefetch the next head

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
// frames wait in the transport's buffer, where they cost little, unless
// they follow a frame this large, whose successor's length field was read
// ahead (see Decode).
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
// assembled, or the first bytes of one read ahead (see Decode).
func (d *FrameDecoder) HandlerRemoved(*pipeline.Context) {
	d.removed.Store(true)
	d.Reset()
}

// Reset drops a frame being assembled, or the length field of one read
// ahead, releasing its buffer and withdrawing it as the target of direct
// reads. A decoder used without a pipeline calls it when its connection
// ends.
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
	d.releaseHead()
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
// After a frame of 64 KiB or more, when in is empty, the next frame's
// bytes up to the end of its length field become the target: a stream of
// large frames then costs two reads a frame, the length field and the
// whole rest, with no copy through in. Without it, each read through in
// would take the tail of one frame and most of the next, and the copy out
// of in would come back for nearly every byte. A frame read ahead like
// this that is no longer than the one before it is assembled at once, so
// that the socket's backlog need not be asked for every frame: a few
// bytes may then make the decoder allocate as much as the frame before
// them, which the peer has sent in full. A longer one waits for its
// quarter as above. (Not when the decoder strips bytes past the length
// field, which it could then not keep; an idle decoder holds this small
// buffer until Reset.)
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
	if d.removed.Load() {
		// Removed from another goroutine since ChannelRead looked: aim no
		// read at a buffer that no Reset will withdraw.
		return nil, nil
	}
	d.decodes++
	if d.stalled {
		return nil, d.fail(in, fmt.Errorf("%w: no bytes of it arrived for too long", ErrReadStalled))
	}
	if d.partial != nil {
		return d.fill(in)
	}
	if d.head != nil {
		return d.fillHead(in)
	}
	return d.decodeBuffered(in)
}

// decodeBuffered is Decode with no frame in progress: the next frame
// starts in in. d.mu is held.
func (d *FrameDecoder) decodeBuffered(in buffer.Inbound) (*buffer.Buf, error) {
	buffered := in.Buffered()
	if buffered < d.end {
		if buffered == 0 && d.lastLen >= eagerMin {
			return nil, d.aimHead(in)
		}
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
	d.lastLen = total
	return frame, nil
}

// aimHead makes a buffer for the next frame's length field the target of
// in's next reads, if in can read directly and no byte past the length
// field is to be stripped. d.mu is held.
func (d *FrameDecoder) aimHead(in buffer.Inbound) error {
	r, ok := in.(buffer.DirectReader)
	if !ok || d.cfg.InitialBytesToStrip > d.end {
		return d.wait(in, 0)
	}
	d.pending = 0 // nothing of the frame yet: an idle connection is not a stalled one
	d.head, d.headN = buffer.Get(d.end), 0
	r.ReadInto(d.head.Slice(0, d.end))
	d.direct = r
	return nil
}

// releaseHead lets go of the length field read ahead, if there is one;
// its bytes have been copied or were never read. d.mu is held.
func (d *FrameDecoder) releaseHead() {
	if d.head != nil {
		d.head.Release()
		d.head, d.headN = nil, 0
	}
}

// fillHead completes the next frame's length field, read ahead into head,
// with what landed and what in holds, and then goes on as Decode does with
// the field in hand: a whole frame is returned; an incomplete one no
// longer than the frame before it, or of which a quarter has arrived, is
// assembled, its rest read straight into it; a longer one waits.
func (d *FrameDecoder) fillHead(in buffer.Inbound) (*buffer.Buf, error) {
	d.headN += d.withdraw()
	if d.headN == 0 {
		// Nothing was read ahead: the field, whole or not, is in in,
		// where it stays for whatever follows the decoder if it goes.
		d.releaseHead()
		return d.decodeBuffered(in)
	}
	h := d.head.Bytes()
	if need := d.end - d.headN; need > 0 {
		r, direct := in.(buffer.DirectReader)
		switch buffered := in.Buffered(); {
		case buffered >= need:
			if err := take(in, h[d.headN:], 0); err != nil {
				return nil, d.fail(in, err)
			}
			d.headN = d.end
		case buffered == 0 && direct:
			r.ReadInto(d.head.Slice(d.headN, d.end))
			d.direct = r
			return nil, d.wait(in, d.headN)
		default:
			// Bytes read ahead come before in's: in keeps its own until
			// it can complete the field.
			return nil, d.wait(in, d.headN+buffered)
		}
	}
	total, err := d.frameLength(h[d.cfg.LengthFieldOffset:d.end])
	if err != nil {
		return nil, d.fail(in, err)
	}
	strip := d.cfg.InitialBytesToStrip
	buffered := d.end + in.Buffered()
	if total <= buffered {
		d.pending = 0
		frame := buffer.Get(total - strip)
		n := copy(frame.Bytes(), h[strip:])
		d.releaseHead()
		if err := take(in, frame.Bytes()[n:], 0); err != nil {
			frame.Release()
			return nil, d.fail(in, err)
		}
		d.lastLen = total
		return frame, nil
	}
	// A frame no longer than the one before it is assembled at once: the
	// peer has sent a frame that long already, so what a few bytes make
	// the decoder allocate is bounded by that, and the socket's backlog
	// need not be asked for each frame of a run of large ones.
	if total > d.lastLen && arrived(in, buffered, total/4) < total/4 {
		// Too little of a larger frame to assemble it yet: keep the field
		// and wait for more.
		return nil, d.wait(in, buffered)
	}
	if err := d.hold(total - strip); err != nil {
		return nil, d.fail(in, err)
	}
	d.pending = total - strip
	d.partial = buffer.Get(total - strip)
	d.have = copy(d.partial.Bytes(), h[strip:])
	d.releaseHead()
	return d.fill(in)
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
	d.lastLen = frame.Len() + d.cfg.InitialBytesToStrip
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
