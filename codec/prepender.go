package codec

import (
	"fmt"
	"math"
	"sync"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/pipeline"
)

// PrependerConfig describes the length prefix a LengthFieldPrepender
// writes. The fields mean what the parameters of the same names mean to
// Netty's LengthFieldPrepender.
type PrependerConfig struct {
	// LengthFieldLength is the size of the prefix: 1, 2, 3, 4 or 8 bytes.
	LengthFieldLength int
	// LittleEndian writes the prefix least significant byte first; the
	// default is big-endian, network order.
	LittleEndian bool
	// LengthIncludesLengthField makes the prefix count its own bytes as
	// well as the body's.
	LengthIncludesLengthField bool
	// LengthAdjustment is added to the length written.
	LengthAdjustment int
}

// copyLimit is the largest body copied behind its prefix into one buffer.
// Up to here a copy costs less than queueing and writing a second message;
// beyond it the body is written as it is.
const copyLimit = 4 << 10

// LengthFieldPrepender frames outbound messages with a length prefix. It
// takes a *buffer.Buf, whose reference it owns from then on, or a []byte,
// which it only reads; other messages pass through. A body of up to a few
// KiB is copied behind its prefix into one new buffer; a larger one is
// written as two messages, a small prefix buffer and then the body itself,
// without a copy. A body too long for the prefix fails the write with an
// error wrapping ErrFrameTooLong.
//
// Writes through a prepender are serialized, so that writers on several
// goroutines cannot put one frame's prefix before another's body. The lock
// is held only across the next stages' Write calls, which queue rather than
// send; a stage between the prepender and the transport must not write
// through the prepender again from inside its Write. Make one prepender per
// pipeline: one shared by several would serialize them all.
type LengthFieldPrepender struct {
	cfg PrependerConfig
	max uint64 // largest length the prefix can hold
	mu  sync.Mutex
}

// NewLengthFieldPrepender returns a prepender that writes the prefix c
// describes. It fails if c.LengthFieldLength is not a supported size.
func NewLengthFieldPrepender(c PrependerConfig) (*LengthFieldPrepender, error) {
	if !validLengthField(c.LengthFieldLength) {
		return nil, fmt.Errorf("codec: length field of %d bytes; want 1, 2, 3, 4 or 8", c.LengthFieldLength)
	}
	if int64(c.LengthAdjustment) > math.MaxInt64-8 {
		// Keeps the adjustment plus the field's size from overflowing.
		return nil, fmt.Errorf("codec: LengthAdjustment %d out of range", c.LengthAdjustment)
	}
	max := uint64(math.MaxInt64) // what a signed reader of 8 bytes accepts
	if c.LengthFieldLength < 8 {
		max = 1<<(8*c.LengthFieldLength) - 1
	}
	return &LengthFieldPrepender{cfg: c, max: max}, nil
}

// Write frames a *buffer.Buf or []byte and passes the frame on.
func (p *LengthFieldPrepender) Write(ctx *pipeline.Context, msg any) error {
	var body []byte
	switch m := msg.(type) {
	case *buffer.Buf:
		body = m.Bytes()
	case []byte:
		body = m
	default:
		p.mu.Lock()
		defer p.mu.Unlock()
		return ctx.Write(msg)
	}
	length, err := p.length(len(body))
	if err != nil {
		pipeline.Release(msg)
		return err
	}
	n := p.cfg.LengthFieldLength
	if len(body) <= copyLimit {
		frame := buffer.Get(n + len(body))
		putUint(frame.Bytes()[:n], length, p.cfg.LittleEndian)
		copy(frame.Bytes()[n:], body)
		pipeline.Release(msg)
		p.mu.Lock()
		defer p.mu.Unlock()
		return ctx.Write(frame)
	}
	prefix := buffer.Get(n)
	putUint(prefix.Bytes(), length, p.cfg.LittleEndian)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := ctx.Write(prefix); err != nil {
		pipeline.Release(msg)
		return err
	}
	return ctx.Write(msg)
}

// length returns the prefix value for a body of size bytes.
func (p *LengthFieldPrepender) length(size int) (uint64, error) {
	add := int64(p.cfg.LengthAdjustment)
	if p.cfg.LengthIncludesLengthField {
		add += int64(p.cfg.LengthFieldLength)
	}
	v := int64(size)
	if add > 0 && v > math.MaxInt64-add {
		return 0, fmt.Errorf("%w: length of a %d-byte body overflows", ErrFrameTooLong, size)
	}
	v += add
	if v < 0 {
		return 0, fmt.Errorf("codec: adjusted length %d of a %d-byte body is negative", v, size)
	}
	if uint64(v) > p.max {
		return 0, fmt.Errorf("%w: length %d does not fit a %d-byte length field", ErrFrameTooLong, v, p.cfg.LengthFieldLength)
	}
	return uint64(v), nil
}
