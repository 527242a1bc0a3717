package codec_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/pipeline"
)

func newPrepender(t testing.TB, cfg codec.PrependerConfig) (*pipeline.Pipeline, *fakeTransport) {
	t.Helper()
	pre, err := codec.NewLengthFieldPrepender(cfg)
	must(t, err)
	tr := &fakeTransport{}
	p := pipeline.New(tr, quiet())
	must(t, p.AddLast("prepend", pre))
	return p, tr
}

// TestPrependerRoundTrip writes bodies small and large, as buffers and as
// byte slices, with every prefix, and reads them back with the matching
// decoder configuration.
func TestPrependerRoundTrip(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 8} {
		for _, little := range []bool{false, true} {
			for _, includes := range []bool{false, true} {
				name := fmt.Sprintf("%dbytes/little=%v/includes=%v", n, little, includes)
				t.Run(name, func(t *testing.T) {
					buffertest.Check(t)
					p, tr := newPrepender(t, codec.PrependerConfig{LengthFieldLength: n, LittleEndian: little, LengthIncludesLengthField: includes})
					sizes := []int{0, 1, 200}
					if n >= 3 {
						sizes = append(sizes, 5000, 70000)
					}
					var bodies [][]byte
					for i, size := range sizes {
						body := bytes.Repeat([]byte{byte(i + 1)}, size)
						bodies = append(bodies, body)
						must(t, p.Write(buffer.Copy(body)))
						must(t, p.Write(body))
					}
					dcfg := codec.FrameConfig{LengthFieldLength: n, LittleEndian: little, InitialBytesToStrip: n}
					if includes {
						dcfg.LengthAdjustment = -n
					}
					c, _ := decodeAll(t, dcfg, new(buffer.Queue), tr.out, []int{len(tr.out)})
					if len(c.errs) > 0 || len(c.frames) != 2*len(bodies) {
						t.Fatalf("decoded %d frames, errors %v; want %d", len(c.frames), c.errs, 2*len(bodies))
					}
					for i, f := range c.frames {
						if !bytes.Equal(f, bodies[i/2]) {
							t.Errorf("frame %d: %d bytes, want %d", i, len(f), len(bodies[i/2]))
						}
					}
				})
			}
		}
	}
}

func TestPrependerPrefixBytes(t *testing.T) {
	tests := []struct {
		cfg  codec.PrependerConfig
		want string
	}{
		{codec.PrependerConfig{LengthFieldLength: 2}, "\x00\x03abc"},
		{codec.PrependerConfig{LengthFieldLength: 2, LittleEndian: true}, "\x03\x00abc"},
		{codec.PrependerConfig{LengthFieldLength: 3, LengthIncludesLengthField: true}, "\x00\x00\x06abc"},
		{codec.PrependerConfig{LengthFieldLength: 4, LengthAdjustment: 2}, "\x00\x00\x00\x05abc"},
		{codec.PrependerConfig{LengthFieldLength: 8, LittleEndian: true, LengthIncludesLengthField: true, LengthAdjustment: -1}, "\x0A\x00\x00\x00\x00\x00\x00\x00abc"},
	}
	for _, tt := range tests {
		buffertest.Check(t)
		p, tr := newPrepender(t, tt.cfg)
		must(t, p.Write([]byte("abc")))
		if string(tr.out) != tt.want {
			t.Errorf("%+v wrote %q, want %q", tt.cfg, tr.out, tt.want)
		}
	}
}

// TestPrependerLargeBodyNotCopied checks that a small body goes out in one
// message and a large buffer goes out as itself, behind its own prefix.
func TestPrependerLargeBodyNotCopied(t *testing.T) {
	buffertest.Check(t)
	p, tr := newPrepender(t, codec.PrependerConfig{LengthFieldLength: 4})
	must(t, p.Write(buffer.Get(100)))
	large := buffer.Get(64 << 10)
	must(t, p.Write(large))
	must(t, p.Write(make([]byte, 64<<10)))
	want := []written{
		{n: 104},
		{n: 4}, {buf: large, n: 64 << 10},
		{n: 4}, {bytes: true, n: 64 << 10},
	}
	if len(tr.msgs) != len(want) {
		t.Fatalf("transport got %d messages, want %d", len(tr.msgs), len(want))
	}
	for i, w := range want {
		got := tr.msgs[i]
		if got.n != w.n || got.bytes != w.bytes || (w.buf != nil && got.buf != w.buf) {
			t.Errorf("message %d = %+v, want %+v", i, got, w)
		}
	}
}

func TestPrependerErrors(t *testing.T) {
	buffertest.Check(t)
	p, _ := newPrepender(t, codec.PrependerConfig{LengthFieldLength: 1})
	if err := p.Write(buffer.Get(256)); !errors.Is(err, codec.ErrFrameTooLong) {
		t.Errorf("256 bytes behind a 1-byte length: %v, want ErrFrameTooLong", err)
	}
	if err := p.Write(make([]byte, 256)); !errors.Is(err, codec.ErrFrameTooLong) {
		t.Errorf("256 bytes behind a 1-byte length: %v, want ErrFrameTooLong", err)
	}
	must(t, p.Write(buffer.Get(255)))

	p, _ = newPrepender(t, codec.PrependerConfig{LengthFieldLength: 2, LengthAdjustment: -10})
	if err := p.Write(buffer.Get(9)); err == nil {
		t.Error("a negative adjusted length was written")
	}

	// A failed prefix write releases the body too.
	p, tr := newPrepender(t, codec.PrependerConfig{LengthFieldLength: 4})
	tr.failNext = 1
	if err := p.Write(buffer.Get(1 << 20)); !errors.Is(err, errFakeWrite) {
		t.Errorf("write with a failing transport: %v", err)
	}
	if len(tr.msgs) != 0 {
		t.Errorf("transport got %d messages after a failed prefix", len(tr.msgs))
	}

	for _, cfg := range []codec.PrependerConfig{
		{}, {LengthFieldLength: 7}, {LengthFieldLength: 4, LengthAdjustment: math.MaxInt},
	} {
		if _, err := codec.NewLengthFieldPrepender(cfg); err == nil {
			t.Errorf("NewLengthFieldPrepender(%+v) succeeded", cfg)
		}
	}
}

func TestPrependerPassesOtherMessages(t *testing.T) {
	p, tr := newPrepender(t, codec.PrependerConfig{LengthFieldLength: 4})
	if err := p.Write(42); err == nil || len(tr.msgs) != 0 {
		t.Fatalf("an int reached the transport: err %v, messages %d", err, len(tr.msgs))
	}
}

// TestPrependerConcurrentWriters writes large and small frames from several
// goroutines; every frame must come out whole, its prefix right before its
// own body.
func TestPrependerConcurrentWriters(t *testing.T) {
	buffertest.Check(t)
	p, tr := newPrepender(t, codec.PrependerConfig{LengthFieldLength: 4})
	const writers, writes = 4, 100
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range writes {
				size := 10 + i
				if i%2 == 0 {
					size = 8<<10 + i
				}
				b := buffer.Get(size)
				for j := range b.Bytes() {
					b.Bytes()[j] = byte(w)
				}
				if err := p.Write(b); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	c, _ := decodeAll(t, codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4}, new(buffer.Queue), tr.out, []int{len(tr.out)})
	if len(c.errs) > 0 || len(c.frames) != writers*writes {
		t.Fatalf("decoded %d frames, errors %v; want %d", len(c.frames), c.errs, writers*writes)
	}
	for i, f := range c.frames {
		if len(bytes.Trim(f, string(f[:1]))) != 0 {
			t.Fatalf("frame %d mixes writers", i)
		}
	}
}

// BenchmarkLengthFieldPrepender measures framing a pooled buffer: copied
// behind its prefix when small, written as prefix and body when large.
func BenchmarkLengthFieldPrepender(b *testing.B) {
	for _, size := range []int{64, 4 << 10, 64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			pre, err := codec.NewLengthFieldPrepender(codec.PrependerConfig{LengthFieldLength: 4})
			must(b, err)
			p := pipeline.New(&releasingTransport{}, quiet())
			must(b, p.AddLast("prepend", pre))
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Write(buffer.Get(size)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// releasingTransport drops what is written, as a transport does once it has
// sent it.
type releasingTransport struct{ fakeTransport }

func (*releasingTransport) Write(msg any) error { pipeline.Release(msg); return nil }
