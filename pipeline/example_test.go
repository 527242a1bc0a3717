package pipeline_test

import (
	"fmt"
	"strings"

	"github.com/pipestream/pipestream/pipeline"
)

// A stage is any value with the event methods it cares about; the generic
// adapters make one-message-type stages one-liners.
func Example() {
	p := pipeline.New(&fakeTransport{}, quiet())
	_ = p.AddLast("upper", pipeline.Inbound(func(ctx *pipeline.Context, s string) {
		ctx.FireChannelRead(strings.ToUpper(s))
	}))
	_ = p.AddLast("print", pipeline.Inbound(func(_ *pipeline.Context, s string) {
		fmt.Println(s)
	}))
	p.FireChannelRead("hello")

	// Insert a stage between the two while the pipeline is in use.
	_ = p.AddAfter("upper", "exclaim", pipeline.Inbound(func(ctx *pipeline.Context, s string) {
		ctx.FireChannelRead(s + "!")
	}))
	p.FireChannelRead("again")
	fmt.Println(p.Names())
	// Output:
	// HELLO
	// AGAIN!
	// [upper exclaim print]
}
