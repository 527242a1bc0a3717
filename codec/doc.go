// Package codec turns a connection's byte stream into messages and back:
// length-field framing with the parameters of Netty's
// LengthFieldBasedFrameDecoder and LengthFieldPrepender, and a protobuf codec.
// Every codec is a pipeline stage; the frame decoder and the protobuf codec
// can also be called directly, as the net.Conn client and the fuzz tests do.
// ReadFrame and WriteFrame speak the bare length prefix on a blocking
// connection. The DataStream frame format built on this framing is package
// codec/dscodec.
//
// # Frame layout
//
// A FrameDecoder finds each frame's length in a field of 1, 2, 3, 4 or 8
// bytes that starts LengthFieldOffset bytes into the frame. The field's value
// plus LengthAdjustment is the number of bytes that follow the field, so the
// whole frame is
//
//	LengthFieldOffset + LengthFieldLength + value + LengthAdjustment
//
// bytes, and it may be at most MaxFrameLength. The decoded frame is the whole
// frame less its first InitialBytesToStrip bytes:
//
//	|<-LengthFieldOffset->|<-LengthFieldLength->|<--- value + LengthAdjustment --->|
//	+---------------------+---------------------+----------------------------------+
//	|  header before len  |       length        |  header after len, then body     |
//	+---------------------+---------------------+----------------------------------+
//	|<----- InitialBytesToStrip ----->|<--------------- decoded frame ------------>|
//	|<------------------ frame length, at most MaxFrameLength -------------------->|
//
// The common case is a bare length prefix that counts the bytes after it
// and is stripped, FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4},
// which is what PrependerConfig{LengthFieldLength: 4} writes. A length that
// counts itself as well is LengthAdjustment: -4 on the decoder and
// LengthIncludesLengthField on the prepender.
//
// # Copies and memory
//
// The decoder consumes the buffer.Inbound that a transport fires, which for
// the gnet transport is gnet's own inbound buffer, and copies each frame
// once into a pooled *buffer.Buf that it passes on. A small partial frame
// stays in the transport's buffer until it is whole; a large one (64 KiB or
// more) is taken into its buffer once a quarter of it has arrived, and the
// rest is copied straight there, so that the transport does not copy it
// again to keep it. Where the Inbound is a buffer.DirectReader, as both
// transports' are, the transport then reads the rest from the socket into
// the frame's buffer with no copy in user space, and bytes still waiting in
// the socket (buffer.Backlog) count towards the quarter. A frame is never
// allocated from its announced length alone: the decoder holds at most
// four times what a peer has sent of a frame, and a frame announced longer
// than MaxFrameLength fails as soon as its length field arrives.
//
// The prepender copies a small body behind its prefix into one buffer and
// writes a large *buffer.Buf as two messages, the prefix and the body
// itself, so a body that was received, stored and forwarded is never copied
// to be framed.
//
// # Errors
//
// A frame that is too long or whose length makes no sense fails the
// connection: the decoder fires an error wrapping ErrFrameTooLong or
// ErrCorruptFrame, closes the connection, and discards everything after it,
// since once framing is lost no later byte can be trusted. A protobuf
// message that does not parse is an error wrapping ErrBadMessage; the frame
// boundaries are intact, so what to do about it is left to the stages that
// handle errors.
package codec

import "errors"

// Errors that the codecs wrap, with details, in the errors they return or
// fire. Test for them with errors.Is.
var (
	// ErrFrameTooLong means a frame is longer than the decoder's
	// MaxFrameLength, or a body too long for the prepender's length field.
	ErrFrameTooLong = errors.New("codec: frame too long")
	// ErrCorruptFrame means a frame's length field cannot be right: it is
	// negative as a signed 64-bit number, or, adjusted, leaves the frame
	// shorter than its own header or than the bytes to strip.
	ErrCorruptFrame = errors.New("codec: corrupt frame")
	// ErrBadMessage means a protobuf message could not be unmarshaled or
	// marshaled.
	ErrBadMessage = errors.New("codec: bad message")
)
