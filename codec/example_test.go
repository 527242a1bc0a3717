package codec_test

import (
	"fmt"
	"net"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/pipeline"
)

// wire is an in-memory connection for the examples: what a pipeline writes
// to it can be read back as a buffer.Inbound.
type wire struct{ in buffer.Queue }

func (w *wire) Write(msg any) error {
	switch m := msg.(type) {
	case *buffer.Buf:
		_, _ = w.in.Write(m.Bytes())
		m.Release()
	case []byte:
		_, _ = w.in.Write(m)
	default:
		pipeline.Release(msg)
		return fmt.Errorf("wire: cannot write %T", msg)
	}
	return nil
}

func (w *wire) Flush() error         { return nil }
func (w *wire) Close() error         { return nil }
func (w *wire) LocalAddr() net.Addr  { return nil }
func (w *wire) RemoteAddr() net.Addr { return nil }

// A frame decoder in a pipeline passes on each frame once it is whole, however
// the bytes arrive.
func ExampleFrameDecoder() {
	dec, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 2, InitialBytesToStrip: 2})
	if err != nil {
		panic(err)
	}
	p := pipeline.New(&wire{})
	_ = p.AddLast("frames", dec)
	_ = p.AddLast("print", pipeline.Inbound(func(_ *pipeline.Context, frame *buffer.Buf) {
		fmt.Printf("%q\n", frame.Bytes())
		frame.Release()
	}))

	// A transport fires the bytes it has; a partial frame waits in them.
	var in buffer.Queue
	_, _ = in.Write([]byte("\x00\x05hello\x00\x05wo"))
	p.FireChannelRead(&in)
	_, _ = in.Write([]byte("rld"))
	p.FireChannelRead(&in)
	// Output:
	// "hello"
	// "world"
}

// Without a pipeline, as a client reading a net.Conn does, Decode returns
// each whole frame and nil when it needs more bytes.
func ExampleFrameDecoder_Decode() {
	dec, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 1, InitialBytesToStrip: 1})
	if err != nil {
		panic(err)
	}
	var in buffer.Queue // fed by in.ReadOnce(conn, ...) in a real client
	_, _ = in.Write([]byte("\x02hi\x03yo"))
	for {
		frame, err := dec.Decode(&in)
		if err != nil || frame == nil {
			fmt.Println("need more bytes:", err == nil, in.Buffered())
			return
		}
		fmt.Printf("%s\n", frame.Bytes())
		frame.Release()
	}
	// Output:
	// hi
	// need more bytes: true 3
}

func ExampleLengthFieldPrepender() {
	pre, err := codec.NewLengthFieldPrepender(codec.PrependerConfig{LengthFieldLength: 2})
	if err != nil {
		panic(err)
	}
	var conn wire
	p := pipeline.New(&conn)
	_ = p.AddLast("prepend", pre)
	_ = p.Write(buffer.Copy([]byte("hello")))
	_ = p.Flush()
	b, _ := conn.in.Peek(conn.in.Buffered())
	fmt.Printf("% x\n", b)
	// Output:
	// 00 05 68 65 6c 6c 6f
}

// A client's pipeline marshals protobuf messages and frames them; a
// server's pipeline splits the frames and unmarshals them. Outbound
// messages travel towards the head, so the encoder is added after the
// prepender.
func Example() {
	var conn wire

	client := pipeline.New(&conn)
	pre, err := codec.NewLengthFieldPrepender(codec.PrependerConfig{LengthFieldLength: 4})
	if err != nil {
		panic(err)
	}
	_ = client.AddLast("frames", pre)
	_ = client.AddLast("proto", codec.ProtoEncoder{})
	_ = client.Write(wrapperspb.String("hello"))
	_ = client.WriteAndFlush(wrapperspb.String("world"))

	server := pipeline.New(&wire{})
	dec, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4})
	if err != nil {
		panic(err)
	}
	_ = server.AddLast("frames", dec)
	_ = server.AddLast("proto", codec.NewProtoDecoder[*wrapperspb.StringValue]())
	_ = server.AddLast("app", pipeline.Inbound(func(_ *pipeline.Context, m *wrapperspb.StringValue) {
		fmt.Println(m.GetValue())
	}))
	server.FireChannelRead(&conn.in)
	// Output:
	// hello
	// world
}
