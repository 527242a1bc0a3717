package codec

import (
	"fmt"
	"math"
)

// DefaultMaxFrameLength is the MaxFrameLength used when a FrameConfig leaves
// it zero.
const DefaultMaxFrameLength = 16 << 20

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
