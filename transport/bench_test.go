package transport_test

import (
	"fmt"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

// BenchmarkEcho measures echo throughput over loopback: one client writes
// length-prefixed messages from its own goroutine, flushing each, with up
// to 4 MiB in flight; the server echoes them. One op is one message there
// and back; allocations count both sides.
func BenchmarkEcho(b *testing.B) {
	for _, k := range kinds {
		for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
			name := fmt.Sprintf("%v/%dKiB", k, size>>10)
			b.Run(name, func(b *testing.B) { benchEcho(b, k, size) })
		}
	}
}

func benchEcho(b *testing.B, k transport.Kind, size int) {
	s := listen(b, k, func(ch transport.Channel) {
		addFraming(b, ch.Pipeline())
		_ = ch.Pipeline().AddLast("echo", echo{})
	})
	window := make(chan struct{}, max(4, 4<<20/size))
	done := make(chan struct{})
	received := 0 // on the client's inbound goroutine only
	ch := dial(b, dialerFor(b, k), s.Addr().String(), func(ch transport.Channel) {
		addFraming(b, ch.Pipeline())
		_ = ch.Pipeline().AddLast("sink", pipeline.Inbound(func(_ *pipeline.Context, m *buffer.Buf) {
			m.Release()
			<-window
			if received++; received == b.N {
				close(done)
			}
		}))
	})
	p := ch.Pipeline()

	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		window <- struct{}{}
		if err := p.Write(buffer.Get(size)); err != nil {
			b.Fatal(err)
		}
		if err := p.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, done, "the last echo")
}
