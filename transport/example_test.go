package transport_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

// A server whose pipeline frames messages with a length prefix and answers
// each in upper case, and a client that prints the answers.
func ExampleListen() {
	framing := func(p *pipeline.Pipeline) {
		dec, _ := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4})
		pre, _ := codec.NewLengthFieldPrepender(codec.PrependerConfig{LengthFieldLength: 4})
		_ = p.AddLast("frame-decoder", dec)
		_ = p.AddLast("prepender", pre)
	}

	ctx := context.Background()
	s, err := transport.Listen(ctx, "127.0.0.1:0", func(ch transport.Channel) {
		framing(ch.Pipeline())
		_ = ch.Pipeline().AddLast("upper", pipeline.Inbound(func(ctx *pipeline.Context, m *buffer.Buf) {
			_ = ctx.WriteAndFlush(strings.ToUpper(string(m.Bytes())) + "!")
			m.Release()
		}))
		// Strings become bytes on their way out, before the prepender.
		_ = ch.Pipeline().AddAfter("prepender", "strings", pipeline.Outbound(func(ctx *pipeline.Context, s string) error {
			return ctx.Write([]byte(s))
		}))
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() { _ = s.Shutdown(ctx) }()

	answers := make(chan string, 1)
	ch, err := transport.Dial(ctx, s.Addr().String(), func(ch transport.Channel) {
		framing(ch.Pipeline())
		_ = ch.Pipeline().AddLast("print", pipeline.Inbound(func(_ *pipeline.Context, m *buffer.Buf) {
			answers <- string(m.Bytes())
			m.Release()
		}))
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = ch.Pipeline().WriteAndFlush([]byte("hello"))
	fmt.Println(<-answers)
	_ = ch.Close()
	<-ch.Done()
	// Output:
	// HELLO!
}
