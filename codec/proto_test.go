package codec_test

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/pipeline"
)

// protoPipeline returns a pipeline that decodes buffers into T and
// collects the messages in c.other.
func protoPipeline[T proto.Message](t testing.TB) (*pipeline.Pipeline, *collector) {
	t.Helper()
	p := pipeline.New(&fakeTransport{}, quiet())
	must(t, p.AddLast("proto", codec.NewProtoDecoder[T]()))
	c := &collector{}
	must(t, p.AddLast("collect", c))
	return p, c
}

func TestProtoRoundTrip(t *testing.T) {
	buffertest.Check(t)
	s, err := structpb.NewStruct(map[string]any{"stream": "a", "offset": 4096.0, "list": []any{true, nil, "x"}})
	must(t, err)
	msgs := []*structpb.Struct{s, {}}

	tr := &fakeTransport{}
	out := pipeline.New(tr, quiet())
	must(t, out.AddLast("proto", codec.ProtoEncoder{}))
	for _, m := range msgs {
		must(t, out.Write(m))
	}
	if len(tr.msgs) != len(msgs) {
		t.Fatalf("transport got %d messages, want %d", len(tr.msgs), len(msgs))
	}

	in, c := protoPipeline[*structpb.Struct](t)
	data := tr.out
	for _, w := range tr.msgs {
		in.FireChannelRead(buffer.Copy(data[:w.n]))
		data = data[w.n:]
	}
	if len(c.errs) > 0 || len(c.other) != len(msgs) {
		t.Fatalf("decoded %d messages, errors %v", len(c.other), c.errs)
	}
	for i, m := range c.other {
		if !proto.Equal(m.(*structpb.Struct), msgs[i]) {
			t.Errorf("message %d = %v, want %v", i, m, msgs[i])
		}
	}
}

func TestProtoDecoderBadMessage(t *testing.T) {
	buffertest.Check(t)
	p, c := protoPipeline[*structpb.Struct](t)
	p.FireChannelRead(buffer.Copy([]byte("\n;\n\x06nested")))
	if len(c.errs) != 1 || !errors.Is(c.errs[0], codec.ErrBadMessage) || len(c.other) != 0 {
		t.Fatalf("errors %v, messages %v; want one ErrBadMessage", c.errs, c.other)
	}
	t.Log(c.errs[0])
}

func TestProtoDecoderPassesOtherMessages(t *testing.T) {
	p, c := protoPipeline[*wrapperspb.StringValue](t)
	p.FireChannelRead(42)
	if len(c.other) != 1 || c.other[0] != 42 {
		t.Fatalf("other = %v", c.other)
	}
}

func TestProtoEncoderBadMessage(t *testing.T) {
	buffertest.Check(t)
	tr := &fakeTransport{}
	p := pipeline.New(tr, quiet())
	must(t, p.AddLast("proto", codec.ProtoEncoder{}))
	err := p.Write(wrapperspb.String("\xff not UTF-8"))
	if !errors.Is(err, codec.ErrBadMessage) || len(tr.msgs) != 0 {
		t.Fatalf("Write = %v, %d messages sent; want ErrBadMessage, none", err, len(tr.msgs))
	}
	t.Log(err)
	// Not a message: passed on.
	must(t, p.Write([]byte("raw")))
	if len(tr.msgs) != 1 {
		t.Fatalf("raw bytes did not pass through")
	}
}

func TestNewProtoDecoderNeedsConcreteType(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("NewProtoDecoder[proto.Message] did not panic")
		}
	}()
	codec.NewProtoDecoder[proto.Message]()
}

// FuzzProtoDecoder decodes arbitrary bytes as a structpb.Struct, a message
// with recursion, maps, oneofs and strings. A message that parses must
// survive a round trip through the encoder; one that does not is an
// ErrBadMessage. Nothing may panic or leak.
func FuzzProtoDecoder(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\n\x05\n\x01k\x12\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		buffertest.Check(t)
		p, c := protoPipeline[*structpb.Struct](t)
		p.FireChannelRead(buffer.Copy(data))
		if len(c.errs) > 0 {
			if !errors.Is(c.errs[0], codec.ErrBadMessage) {
				t.Fatalf("error %v is not an ErrBadMessage", c.errs[0])
			}
			return
		}
		m := c.other[0].(*structpb.Struct)
		b, err := codec.ProtoEncoder{}.Encode(m)
		must(t, err)
		defer b.Release()
		again, err := codec.NewProtoDecoder[*structpb.Struct]().Decode(b.Bytes())
		must(t, err)
		if !proto.Equal(m, again) {
			t.Fatalf("round trip changed %v into %v", m, again)
		}
	})
}

func benchStruct(b *testing.B, strings int) *structpb.Struct {
	fields := map[string]any{}
	for i := range strings {
		fields[fmt.Sprint("field", i)] = fmt.Sprint("a value of some length, number ", i)
	}
	s, err := structpb.NewStruct(fields)
	must(b, err)
	return s
}

// BenchmarkProtoEncoder marshals a message into a pooled buffer: a flat
// one, where the codec should not allocate, and one with a map, where
// protobuf's map iteration does.
func BenchmarkProtoEncoder(b *testing.B) {
	for _, bc := range []struct {
		name string
		m    proto.Message
	}{
		{"bytes1KiB", wrapperspb.Bytes(make([]byte, 1<<10))},
		{"struct16", benchStruct(b, 16)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := pipeline.New(&releasingTransport{}, quiet())
			must(b, p.AddLast("proto", codec.ProtoEncoder{}))
			b.SetBytes(int64(proto.Size(bc.m)))
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Write(bc.m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkProtoDecoder unmarshals a frame into a new message; the message
// itself is what allocates.
func BenchmarkProtoDecoder(b *testing.B) {
	m := benchStruct(b, 16)
	data, err := proto.Marshal(m)
	must(b, err)
	p := pipeline.New(&fakeTransport{}, quiet())
	must(b, p.AddLast("proto", codec.NewProtoDecoder[*structpb.Struct]()))
	must(b, p.AddLast("sink", pipeline.ReadFunc(func(*pipeline.Context, any) {})))
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		p.FireChannelRead(buffer.Copy(data))
	}
}
