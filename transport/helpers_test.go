package transport_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// gnet's goroutine pool (ants) starts two goroutines when the
		// package is loaded and keeps them for the life of the process.
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	)
}

// patience bounds every wait in the tests, so that a bug fails a test
// instead of hanging it. Nothing is asserted about how long things take.
const patience = 20 * time.Second

var quiet = transport.WithLogger(slog.New(slog.DiscardHandler))

var kinds = transport.Kinds()

// dialFunc connects one channel.
type dialFunc func(ctx context.Context, addr string, init transport.Initializer) (transport.Channel, error)

// dialerFor returns the way tests connect with kind k: a Connector of the
// kind, closed when t ends.
func dialerFor(t testing.TB, k transport.Kind, opts ...transport.Option) dialFunc {
	t.Helper()
	d, err := k.NewConnector(append([]transport.Option{quiet}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Connector.Close: %v", err)
		}
	})
	return d.Dial
}

// listen starts a server of kind k and shuts it down when t ends.
func listen(t testing.TB, k transport.Kind, init transport.Initializer, opts ...transport.Option) transport.Server {
	t.Helper()
	opts = append([]transport.Option{quiet}, opts...)
	s, err := k.Listen(context.Background(), "127.0.0.1:0", init, opts...)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

func dial(t testing.TB, d dialFunc, addr string, init transport.Initializer) transport.Channel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	ch, err := d(ctx, addr, init)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		_ = ch.Close()
		waitFor(t, ch.Done(), "client channel to end")
	})
	return ch
}

func waitFor(t testing.TB, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(patience):
		t.Fatalf("gave up waiting for %s", what)
	}
}

func recv[T any](t testing.TB, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(patience):
		t.Fatalf("gave up waiting for %s", what)
	}
	panic("unreachable")
}

// fixedFrames cuts inbound bytes into size-byte messages, each copied once
// into a pooled buffer: a stand-in for a real frame decoder.
func fixedFrames(size int) pipeline.ReadHandler {
	return pipeline.Inbound(func(ctx *pipeline.Context, in buffer.Inbound) {
		for in.Buffered() >= size {
			p, err := in.Peek(size)
			if err != nil {
				ctx.FireError(err)
				return
			}
			b := buffer.Copy(p)
			if _, err := in.Discard(size); err != nil {
				b.Release()
				ctx.FireError(err)
				return
			}
			ctx.FireChannelRead(b)
		}
	})
}

// echo writes every message back and flushes once per read.
type echo struct{}

func (echo) ChannelRead(ctx *pipeline.Context, msg any) {
	if err := ctx.Write(msg); err != nil {
		ctx.FireError(err)
	}
}

func (echo) ChannelReadComplete(ctx *pipeline.Context) { _ = ctx.Flush() }

// echoServer frames size-byte messages and echoes them.
func echoServer(size int) transport.Initializer {
	return func(ch transport.Channel) {
		_ = ch.Pipeline().AddLast("frames", fixedFrames(size))
		_ = ch.Pipeline().AddLast("echo", echo{})
	}
}

// collect frames size-byte messages and sends them to out as strings.
func collect(size int, out chan<- string) transport.Initializer {
	return func(ch transport.Channel) {
		_ = ch.Pipeline().AddLast("frames", fixedFrames(size))
		_ = ch.Pipeline().AddLast("collect", pipeline.Inbound(func(_ *pipeline.Context, b *buffer.Buf) {
			out <- string(b.Bytes())
			b.Release()
		}))
	}
}
