package codec

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/pipeline"
)

// ProtoDecoder unmarshals each *buffer.Buf it reads, one frame, into a new
// message of type T, releases the buffer and passes the message on. Other
// messages pass through. A frame that does not parse fires an error
// wrapping ErrBadMessage and nothing else: the connection's framing is
// intact, so closing it is left to the stages that handle errors (the
// pipeline's tail does, when none does).
//
// T is a generated message's pointer type, such as *pb.Header. A
// ProtoDecoder holds no per-connection state and may be shared.
type ProtoDecoder[T proto.Message] struct {
	typ protoreflect.MessageType
}

// NewProtoDecoder returns a decoder for messages of type T. It panics if T
// is an interface type, since then there is no message type to make.
func NewProtoDecoder[T proto.Message]() *ProtoDecoder[T] {
	var zero T
	if any(zero) == nil {
		panic("codec: NewProtoDecoder needs a concrete message type, not an interface")
	}
	// A generated message's nil pointer still knows its type.
	return &ProtoDecoder[T]{typ: zero.ProtoReflect().Type()}
}

// Decode unmarshals p into a new message. The message does not refer to p
// afterwards.
func (d *ProtoDecoder[T]) Decode(p []byte) (T, error) {
	m := d.typ.New().Interface().(T)
	if err := proto.Unmarshal(p, m); err != nil {
		var zero T
		return zero, fmt.Errorf("%w: %s: %w", ErrBadMessage, d.typ.Descriptor().FullName(), err)
	}
	return m, nil
}

// ChannelRead decodes a *buffer.Buf and passes any other message on.
func (d *ProtoDecoder[T]) ChannelRead(ctx *pipeline.Context, msg any) {
	b, ok := msg.(*buffer.Buf)
	if !ok {
		ctx.FireChannelRead(msg)
		return
	}
	m, err := d.Decode(b.Bytes())
	b.Release()
	if err != nil {
		ctx.FireError(err)
		return
	}
	ctx.FireChannelRead(m)
}

// ProtoEncoder marshals each outbound proto.Message into a pooled
// *buffer.Buf and passes the buffer on; other messages pass through. A
// message that does not marshal, such as a string field holding invalid
// UTF-8, fails the write with an error wrapping ErrBadMessage. The zero
// value is ready to use and safe for concurrent use.
type ProtoEncoder struct{}

// Encode marshals m into a new buffer that the caller must release.
func (ProtoEncoder) Encode(m proto.Message) (*buffer.Buf, error) {
	size := proto.Size(m)
	b := buffer.Get(size)
	// Size has just cached the sizes of m's sub-messages; reuse them.
	out, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b.Bytes()[:0], m)
	if err != nil {
		b.Release()
		return nil, fmt.Errorf("%w: %s: %w", ErrBadMessage, m.ProtoReflect().Descriptor().FullName(), err)
	}
	if len(out) != size {
		b.Release()
		return nil, fmt.Errorf("%w: %s changed while it was marshaled", ErrBadMessage, m.ProtoReflect().Descriptor().FullName())
	}
	return b, nil
}

// Write encodes a proto.Message and passes any other message on.
func (e ProtoEncoder) Write(ctx *pipeline.Context, msg any) error {
	m, ok := msg.(proto.Message)
	if !ok {
		return ctx.Write(msg)
	}
	b, err := e.Encode(m)
	if err != nil {
		return err
	}
	return ctx.Write(b)
}
