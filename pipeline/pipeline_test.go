package pipeline_test

import (
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/pipeline"
)

// fakeTransport records what reaches the head of a pipeline.
type fakeTransport struct {
	mu      sync.Mutex
	written []any
	flushes int
	closed  int
}

func (t *fakeTransport) Write(msg any) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.written = append(t.written, msg)
	return nil
}

func (t *fakeTransport) Flush() error { t.mu.Lock(); t.flushes++; t.mu.Unlock(); return nil }
func (t *fakeTransport) Close() error { t.mu.Lock(); t.closed++; t.mu.Unlock(); return nil }

func (t *fakeTransport) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
}
func (t *fakeTransport) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}
}

func quiet() pipeline.Option {
	return pipeline.WithLogger(slog.New(slog.NewTextHandler(discard{}, nil)))
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// tag appends its name to every string read or written through it.
type tag string

func (h tag) ChannelRead(ctx *pipeline.Context, msg any) {
	ctx.FireChannelRead(msg.(string) + string(h))
}

func (h tag) Write(ctx *pipeline.Context, msg any) error {
	return ctx.Write(msg.(string) + string(h))
}

func TestOrderAndMutation(t *testing.T) {
	tr := &fakeTransport{}
	p := pipeline.New(tr, quiet())
	var got []string
	must(t, p.AddLast("b", tag("b")))
	must(t, p.AddFirst("a", tag("a")))
	must(t, p.AddLast("sink", pipeline.Inbound(func(_ *pipeline.Context, s string) { got = append(got, s) })))
	must(t, p.AddBefore("sink", "c", tag("c")))
	must(t, p.AddAfter("a", "x", tag("x")))

	if names := p.Names(); !slices.Equal(names, []string{"a", "x", "b", "c", "sink"}) {
		t.Fatalf("Names = %v", names)
	}
	p.FireChannelRead("")
	if _, err := p.Remove("x"); err != nil {
		t.Fatal(err)
	}
	old, err := p.Replace("b", "B", tag("B"))
	if err != nil || old != tag("b") {
		t.Fatalf("Replace = %v, %v", old, err)
	}
	p.FireChannelRead("")
	if want := []string{"axbc", "aBc"}; !slices.Equal(got, want) {
		t.Fatalf("reads = %q, want %q", got, want)
	}

	// Outbound from the tail passes c, B, a in that order.
	must(t, p.Write(""))
	if tr.written[0] != "cBa" {
		t.Fatalf("written = %q", tr.written)
	}
	// Outbound from a context starts at the stage before it.
	must(t, p.Context("B").Write(""))
	if tr.written[1] != "a" {
		t.Fatalf("written from B = %q", tr.written[1])
	}
}

func TestNameErrors(t *testing.T) {
	p := pipeline.New(&fakeTransport{}, quiet())
	must(t, p.AddLast("a", tag("a")))
	for name, err := range map[string]error{
		"dup":          p.AddLast("a", tag("a")),
		"reserved":     p.AddFirst("head", tag("h")),
		"before-none":  p.AddBefore("zz", "q", tag("q")),
		"after-none":   p.AddAfter("zz", "q", tag("q")),
		"remove-none":  second(p.Remove("zz")),
		"replace-none": second(p.Replace("zz", "q", tag("q"))),
		"replace-dup":  second(p.Replace("a", "a2", tag("a"))),
	} {
		switch name {
		case "dup", "reserved":
			if !errors.Is(err, pipeline.ErrDuplicateName) {
				t.Errorf("%s: err = %v, want ErrDuplicateName", name, err)
			}
		case "replace-dup":
			if err != nil {
				t.Errorf("%s: replacing under a fresh name failed: %v", name, err)
			}
		default:
			if !errors.Is(err, pipeline.ErrNoSuchHandler) {
				t.Errorf("%s: err = %v, want ErrNoSuchHandler", name, err)
			}
		}
	}
	if err := p.AddLast("nil", nil); err == nil {
		t.Error("adding a nil handler succeeded")
	}
}

func TestUnhandledErrorClosesAndLogs(t *testing.T) {
	var log strings.Builder
	tr := &fakeTransport{}
	p := pipeline.New(tr, pipeline.WithLogger(slog.New(slog.NewTextHandler(&log, nil))))
	must(t, p.AddLast("pass", tag("p")))
	p.FireError(errors.New("boom"))
	if tr.closed != 1 {
		t.Fatalf("closed = %d, want 1", tr.closed)
	}
	if !strings.Contains(log.String(), "boom") {
		t.Fatalf("log does not mention the error: %q", log.String())
	}
}

func TestHandlerTakesError(t *testing.T) {
	tr := &fakeTransport{}
	p := pipeline.New(tr, quiet())
	var caught error
	must(t, p.AddLast("catch", pipeline.ErrorFunc(func(_ *pipeline.Context, err error) { caught = err })))
	p.FireError(errors.New("mine"))
	if caught == nil || tr.closed != 0 {
		t.Fatalf("caught = %v, closed = %d", caught, tr.closed)
	}
}

func TestPanicBecomesError(t *testing.T) {
	tr := &fakeTransport{}
	p := pipeline.New(tr, quiet())
	var caught error
	must(t, p.AddLast("bad", pipeline.ReadFunc(func(*pipeline.Context, any) { panic("bad input") })))
	must(t, p.AddLast("catch", pipeline.ErrorFunc(func(_ *pipeline.Context, err error) { caught = err })))
	p.FireChannelRead("x")
	var pe *pipeline.PanicError
	if !errors.As(caught, &pe) || pe.Value != "bad input" {
		t.Fatalf("caught = %v, want a PanicError", caught)
	}
}

func TestUnhandledReadIsReleased(t *testing.T) {
	buffertest.Check(t)
	p := pipeline.New(&fakeTransport{}, quiet())
	must(t, p.AddLast("other", pipeline.Inbound(func(*pipeline.Context, string) {})))
	p.FireChannelRead(buffer.Get(64))
}

type lifecycle struct {
	added, removed, inactive int
}

func (l *lifecycle) HandlerAdded(*pipeline.Context)    { l.added++ }
func (l *lifecycle) HandlerRemoved(*pipeline.Context)  { l.removed++ }
func (l *lifecycle) ChannelInactive(*pipeline.Context) { l.inactive++ }

func TestInactiveRemovesHandlersOnce(t *testing.T) {
	p := pipeline.New(&fakeTransport{}, quiet())
	l := &lifecycle{}
	must(t, p.AddLast("l", l))
	p.FireChannelInactive()
	p.FireChannelInactive()
	if *l != (lifecycle{added: 1, removed: 1, inactive: 1}) {
		t.Fatalf("lifecycle = %+v", *l)
	}
	if len(p.Names()) != 0 {
		t.Fatalf("handlers left: %v", p.Names())
	}
}

func TestOutboundTyped(t *testing.T) {
	tr := &fakeTransport{}
	p := pipeline.New(tr, quiet())
	must(t, p.AddLast("upper", pipeline.Outbound(func(ctx *pipeline.Context, s string) error {
		return ctx.Write(strings.ToUpper(s))
	})))
	must(t, p.Write("hi"))
	must(t, p.Write(42))
	must(t, p.Flush())
	if tr.written[0] != "HI" || tr.written[1] != 42 || tr.flushes != 1 {
		t.Fatalf("written = %v, flushes = %d", tr.written, tr.flushes)
	}
}

// TestConcurrentWritesWhileMutating runs outbound writes from many
// goroutines while the chain changes; -race checks the links.
func TestConcurrentWritesWhileMutating(t *testing.T) {
	tr := &fakeTransport{}
	p := pipeline.New(tr, quiet())
	pass := pipeline.WriteFunc(func(ctx *pipeline.Context, msg any) error { return ctx.Write(msg) })
	must(t, p.AddLast("a", pass))
	var wg sync.WaitGroup
	const writers, writes = 4, 500
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < writes; i++ {
				if err := p.Write(i); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := 0; i < 200; i++ {
		must(t, p.AddFirst("b", pass))
		if _, err := p.Remove("b"); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if len(tr.written) != writers*writes {
		t.Fatalf("written %d, want %d", len(tr.written), writers*writes)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func second[T any](_ T, err error) error { return err }

// BenchmarkPassThrough8 measures an inbound read and an outbound write
// passing eight stages that forward them untouched.
func BenchmarkPassThrough8(b *testing.B) {
	p := pipeline.New(nopTransport{}, quiet())
	for i := 0; i < 8; i++ {
		h := struct {
			pipeline.ReadFunc
			pipeline.WriteFunc
		}{
			func(ctx *pipeline.Context, msg any) { ctx.FireChannelRead(msg) },
			func(ctx *pipeline.Context, msg any) error { return ctx.Write(msg) },
		}
		if err := p.AddLast(string(rune('a'+i)), h); err != nil {
			b.Fatal(err)
		}
	}
	var sink int
	if err := p.AddLast("sink", pipeline.ReadFunc(func(_ *pipeline.Context, msg any) { sink += msg.(*buffer.Buf).Len() })); err != nil {
		b.Fatal(err)
	}
	buf := buffer.Get(4096)
	defer buf.Release()
	b.SetBytes(int64(buf.Len()))
	b.ReportAllocs()
	for b.Loop() {
		p.FireChannelRead(buf)
		if err := p.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if sink == 0 {
		b.Fatal("nothing reached the sink")
	}
}

type nopTransport struct{}

func (nopTransport) Write(any) error      { return nil }
func (nopTransport) Flush() error         { return nil }
func (nopTransport) Close() error         { return nil }
func (nopTransport) LocalAddr() net.Addr  { return nil }
func (nopTransport) RemoteAddr() net.Addr { return nil }
