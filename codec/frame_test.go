package codec_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/pipeline"
)

// readerQueue is a buffer.Queue that is also an io.Reader, as gnet's
// connection is, so the decoder takes its Read path.
type readerQueue struct{ buffer.Queue }

func (q *readerQueue) Read(p []byte) (int, error) {
	b, err := q.Peek(min(len(p), q.Buffered()))
	if err != nil {
		return 0, err
	}
	n := copy(p, b)
	_, err = q.Discard(n)
	return n, err
}

// inbound is a buffer.Inbound that tests can also write into.
type inbound interface {
	buffer.Inbound
	io.Writer
}

var inbounds = []struct {
	name string
	make func() inbound
}{
	{"peek", func() inbound { return new(buffer.Queue) }},
	{"read", func() inbound { return new(readerQueue) }},
}

// splitter cuts a stream into the pieces a transport would read.
type splitter struct {
	name  string
	split func(n int) []int // sizes of the pieces of an n-byte stream
}

func splitters() []splitter {
	s := []splitter{
		{"whole", func(n int) []int { return []int{n} }},
		{"bytewise", func(n int) []int {
			p := make([]int, n)
			for i := range p {
				p[i] = 1
			}
			return p
		}},
	}
	for seed := uint64(1); seed <= 5; seed++ {
		s = append(s, splitter{fmt.Sprintf("random%d", seed), func(n int) []int {
			r := rand.New(rand.NewPCG(seed, seed))
			var p []int
			for n > 0 {
				k := min(n, 1+r.IntN(24))
				p = append(p, k)
				n -= k
			}
			return p
		}})
	}
	return s
}

// decodeAll runs stream through a pipeline of a decoder for cfg and a
// collector, firing one read per piece.
func decodeAll(t *testing.T, cfg codec.FrameConfig, in inbound, stream []byte, pieces []int) (*collector, *fakeTransport) {
	t.Helper()
	d := newDecoding(t, cfg)
	p, c, tr := d.p, d.c, d.tr
	for _, n := range pieces {
		_, _ = in.Write(stream[:n])
		stream = stream[n:]
		p.FireChannelRead(in)
	}
	return c, tr
}

const hello = "HELLO, WORLD"

func cat(parts ...string) []byte { return []byte(strings.Join(parts, "")) }

// TestNettyExamples decodes every example in the javadoc of Netty's
// LengthFieldBasedFrameDecoder, three frames in a row, however the stream
// is cut.
func TestNettyExamples(t *testing.T) {
	tests := []struct {
		name string
		cfg  codec.FrameConfig
		in   []byte
		want []byte
	}{
		{
			"2 byte length, no strip",
			codec.FrameConfig{LengthFieldLength: 2},
			cat("\x00\x0C", hello), cat("\x00\x0C", hello),
		},
		{
			"2 byte length, strip header",
			codec.FrameConfig{LengthFieldLength: 2, InitialBytesToStrip: 2},
			cat("\x00\x0C", hello), cat(hello),
		},
		{
			"length counts the whole message",
			codec.FrameConfig{LengthFieldLength: 2, LengthAdjustment: -2},
			cat("\x00\x0E", hello), cat("\x00\x0E", hello),
		},
		{
			"3 byte length after a 2 byte header",
			codec.FrameConfig{LengthFieldOffset: 2, LengthFieldLength: 3},
			cat("\xCA\xFE", "\x00\x00\x0C", hello), cat("\xCA\xFE", "\x00\x00\x0C", hello),
		},
		{
			"header after the length",
			codec.FrameConfig{LengthFieldLength: 3, LengthAdjustment: 2},
			cat("\x00\x00\x0C", "\xCA\xFE", hello), cat("\x00\x00\x0C", "\xCA\xFE", hello),
		},
		{
			"HDR1 LEN HDR2, strip HDR1 and LEN",
			codec.FrameConfig{LengthFieldOffset: 1, LengthFieldLength: 2, LengthAdjustment: 1, InitialBytesToStrip: 3},
			cat("\xCA", "\x00\x0C", "\xFE", hello), cat("\xFE", hello),
		},
		{
			"HDR1 LEN HDR2, length counts the whole message",
			codec.FrameConfig{LengthFieldOffset: 1, LengthFieldLength: 2, LengthAdjustment: -3, InitialBytesToStrip: 3},
			cat("\xCA", "\x00\x10", "\xFE", hello), cat("\xFE", hello),
		},
	}
	for _, tt := range tests {
		stream := slices.Concat(tt.in, tt.in, tt.in)
		for _, ib := range inbounds {
			for _, s := range splitters() {
				t.Run(tt.name+"/"+ib.name+"/"+s.name, func(t *testing.T) {
					buffertest.Check(t)
					in := ib.make()
					c, tr := decodeAll(t, tt.cfg, in, stream, s.split(len(stream)))
					if len(c.errs) > 0 || tr.closed > 0 {
						t.Fatalf("errors %v, closed %d", c.errs, tr.closed)
					}
					if len(c.frames) != 3 {
						t.Fatalf("decoded %d frames, want 3", len(c.frames))
					}
					for i, f := range c.frames {
						if !bytes.Equal(f, tt.want) {
							t.Errorf("frame %d = %q, want %q", i, f, tt.want)
						}
					}
					if in.Buffered() != 0 {
						t.Errorf("%d bytes left over", in.Buffered())
					}
				})
			}
		}
	}
}

// frame encodes body behind a length field of n bytes, independently of
// the package's own encoding.
func frame(n int, little bool, length uint64, body []byte) []byte {
	f := make([]byte, n, n+len(body))
	for i := range n {
		shift := 8 * (n - 1 - i)
		if little {
			shift = 8 * i
		}
		f[i] = byte(length >> shift)
	}
	return append(f, body...)
}

func TestFrameHelperByteOrder(t *testing.T) {
	if got := frame(3, false, 0x010203, nil); !bytes.Equal(got, []byte{1, 2, 3}) {
		t.Errorf("big-endian = % x", got)
	}
	if got := frame(3, true, 0x010203, nil); !bytes.Equal(got, []byte{3, 2, 1}) {
		t.Errorf("little-endian = % x", got)
	}
}

func TestLengthFieldSizes(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 8} {
		for _, little := range []bool{false, true} {
			t.Run(fmt.Sprintf("%dbytes/little=%v", n, little), func(t *testing.T) {
				buffertest.Check(t)
				sizes := []int{0, 1, 255}
				if n >= 3 {
					sizes = append(sizes, 70000) // needs three bytes
				}
				var stream []byte
				for i, size := range sizes {
					stream = append(stream, frame(n, little, uint64(size), bytes.Repeat([]byte{byte(i)}, size))...)
				}
				cfg := codec.FrameConfig{LengthFieldLength: n, LittleEndian: little, InitialBytesToStrip: n}
				c, _ := decodeAll(t, cfg, new(buffer.Queue), stream, splitters()[2].split(len(stream)))
				if len(c.errs) > 0 || len(c.frames) != len(sizes) {
					t.Fatalf("decoded %d frames, errors %v; want %d frames", len(c.frames), c.errs, len(sizes))
				}
				for i, f := range c.frames {
					if len(f) != sizes[i] || (len(f) > 0 && f[0] != byte(i)) {
						t.Errorf("frame %d: %d bytes, want %d", i, len(f), sizes[i])
					}
				}
			})
		}
	}
}

func TestMaxFrameLength(t *testing.T) {
	buffertest.Check(t)
	cfg := codec.FrameConfig{LengthFieldLength: 2, InitialBytesToStrip: 2, MaxFrameLength: 16}
	atMax := frame(2, false, 14, bytes.Repeat([]byte("x"), 14))
	c, tr := decodeAll(t, cfg, new(buffer.Queue), atMax, []int{len(atMax)})
	if len(c.frames) != 1 || len(c.errs) != 0 || tr.closed != 0 {
		t.Fatalf("a frame of exactly MaxFrameLength: %d frames, errors %v", len(c.frames), c.errs)
	}

	// One byte more fails as soon as the length is in, body or not.
	c, tr = decodeAll(t, cfg, new(buffer.Queue), frame(2, false, 15, nil), []int{2})
	if len(c.errs) != 1 || !errors.Is(c.errs[0], codec.ErrFrameTooLong) || tr.closed != 1 {
		t.Fatalf("errors %v, closed %d; want one ErrFrameTooLong and a close", c.errs, tr.closed)
	}
	t.Log(c.errs[0])
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  codec.FrameConfig
		in   []byte
		want error
	}{
		{"4 byte length over the default max", codec.FrameConfig{LengthFieldLength: 4}, frame(4, false, math.MaxUint32, nil), codec.ErrFrameTooLong},
		{"8 byte length of 2^63", codec.FrameConfig{LengthFieldLength: 8}, frame(8, false, 1<<63, nil), codec.ErrCorruptFrame},
		{"8 byte length of 2^64-1", codec.FrameConfig{LengthFieldLength: 8, LittleEndian: true}, frame(8, true, math.MaxUint64, nil), codec.ErrCorruptFrame},
		{"8 byte length that overflows with the header", codec.FrameConfig{LengthFieldLength: 8, MaxFrameLength: math.MaxInt}, frame(8, false, math.MaxInt64, nil), codec.ErrFrameTooLong},
		{"adjusted length less than the header", codec.FrameConfig{LengthFieldLength: 2, LengthAdjustment: -2}, frame(2, false, 1, []byte("x")), codec.ErrCorruptFrame},
		{"frame shorter than the strip", codec.FrameConfig{LengthFieldLength: 1, InitialBytesToStrip: 4}, frame(1, false, 1, []byte("x")), codec.ErrCorruptFrame},
		{"large negative adjustment", codec.FrameConfig{LengthFieldLength: 8, LengthAdjustment: math.MinInt}, frame(8, false, 5, nil), codec.ErrCorruptFrame},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buffertest.Check(t)
			good := frame(tt.cfg.LengthFieldLength, tt.cfg.LittleEndian, 0, nil)
			stream := slices.Concat(tt.in, good)
			in := new(buffer.Queue)
			c, tr := decodeAll(t, tt.cfg, in, stream, []int{len(stream)})
			if len(c.errs) != 1 || !errors.Is(c.errs[0], tt.want) {
				t.Fatalf("errors %v, want one wrapping %v", c.errs, tt.want)
			}
			t.Log(c.errs[0])
			if tr.closed != 1 || len(c.frames) != 0 || in.Buffered() != 0 {
				t.Fatalf("closed %d, frames %d, %d bytes left; want closed, none, none", tr.closed, len(c.frames), in.Buffered())
			}
		})
	}
}

// TestFailedDecoderDiscards checks that a failed decoder stays failed: later
// reads are discarded without another error, and Decode repeats the error.
func TestFailedDecoderDiscards(t *testing.T) {
	buffertest.Check(t)
	d := newDecoding(t, codec.FrameConfig{LengthFieldLength: 1, InitialBytesToStrip: 1, MaxFrameLength: 8})
	dec, p, c, tr := d.dec, d.p, d.c, d.tr

	var in buffer.Queue
	_, _ = in.Write([]byte{1, 'a', 200, 'b'})
	p.FireChannelRead(&in)
	_, _ = in.Write([]byte{1, 'c'})
	p.FireChannelRead(&in)
	if len(c.frames) != 1 || len(c.errs) != 1 || tr.closed != 1 || in.Buffered() != 0 {
		t.Fatalf("frames %q, errors %v, closed %d, left %d", c.frames, c.errs, tr.closed, in.Buffered())
	}
	_, _ = in.Write([]byte{1, 'd'})
	if f, err := dec.Decode(&in); f != nil || !errors.Is(err, codec.ErrFrameTooLong) || in.Buffered() != 0 {
		t.Fatalf("Decode after failure = %v, %v, left %d", f, err, in.Buffered())
	}
}

// recordingQueue remembers the largest Peek.
type recordingQueue struct {
	buffer.Queue
	maxPeek int
}

func (q *recordingQueue) Peek(n int) ([]byte, error) {
	q.maxPeek = max(q.maxPeek, n)
	return q.Queue.Peek(n)
}

// TestPartialFrameCostsNothing checks that a partial frame is neither
// consumed nor copied, and no buffer is taken for it, however large it
// claims to be.
func TestPartialFrameCostsNothing(t *testing.T) {
	buffertest.Check(t)
	dec, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldOffset: 2, LengthFieldLength: 4})
	must(t, err)
	var q recordingQueue
	_, _ = q.Write([]byte{0xCA, 0xFE})
	_, _ = q.Write(frame(4, false, 1<<20, make([]byte, 1000)))
	live := buffer.Live()
	for range 3 {
		if f, err := dec.Decode(&q); f != nil || err != nil {
			t.Fatalf("Decode of a partial frame = %v, %v", f, err)
		}
	}
	if q.Buffered() != 1006 || q.maxPeek > 6 || buffer.Live() != live {
		t.Fatalf("buffered %d (want 1006), largest peek %d (want <= 6), live buffers %+d",
			q.Buffered(), q.maxPeek, buffer.Live()-live)
	}
	_, _ = q.Write(make([]byte, 1<<20-1000))
	f, err := dec.Decode(&q)
	if err != nil || f == nil || f.Len() != 6+1<<20 || q.Buffered() != 0 {
		t.Fatalf("Decode of the whole frame = %v, %v", f, err)
	}
	f.Release()
}

func TestDecoderPassesOtherMessages(t *testing.T) {
	buffertest.Check(t)
	d := newDecoding(t, codec.FrameConfig{LengthFieldLength: 4})
	p, c := d.p, d.c
	p.FireChannelRead("not bytes")
	b := buffer.Copy([]byte("a buffer is not an Inbound"))
	p.FireChannelRead(b)
	if len(c.other) != 1 || c.other[0] != "not bytes" || len(c.frames) != 1 {
		t.Fatalf("other %v, frames %q", c.other, c.frames)
	}
}

// TestRemovedMidRead replaces the decoder from a stage after it, as a
// protocol switch would: the bytes after the frame that caused the switch
// reach the new stage in the same read.
func TestRemovedMidRead(t *testing.T) {
	buffertest.Check(t)
	dec, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 1, InitialBytesToStrip: 1})
	must(t, err)
	p := pipeline.New(&fakeTransport{}, quiet())
	must(t, p.AddLast("frames", dec))
	var rest []byte
	must(t, p.AddLast("switch", pipeline.ReadFunc(func(ctx *pipeline.Context, msg any) {
		switch m := msg.(type) {
		case *buffer.Buf:
			if string(m.Bytes()) == "upgrade" {
				_, err := p.Remove("frames")
				must(t, err)
			}
			m.Release()
		case buffer.Inbound:
			b, _ := m.Peek(m.Buffered())
			rest = append(rest, b...)
			_, _ = m.Discard(len(b))
		}
	})))
	var in buffer.Queue
	_, _ = in.Write(slices.Concat(frame(1, false, 7, []byte("upgrade")), []byte("raw bytes")))
	p.FireChannelRead(&in)
	if string(rest) != "raw bytes" {
		t.Fatalf("after the switch the next stage read %q", rest)
	}
}

func TestFrameConfigErrors(t *testing.T) {
	for _, cfg := range []codec.FrameConfig{
		{},
		{LengthFieldLength: 5},
		{LengthFieldLength: 16},
		{LengthFieldLength: 4, LengthFieldOffset: -1},
		{LengthFieldLength: 4, LengthFieldOffset: math.MaxInt},
		{LengthFieldLength: 4, InitialBytesToStrip: -1},
		{LengthFieldLength: 4, MaxFrameLength: -1},
		{LengthFieldLength: 4, LengthFieldOffset: 4, MaxFrameLength: 7},
		{LengthFieldLength: 4, MaxFrameLength: 16, InitialBytesToStrip: 17},
		{LengthFieldLength: 4, LengthAdjustment: math.MaxInt},
	} {
		if _, err := codec.NewFrameDecoder(cfg); err == nil {
			t.Errorf("NewFrameDecoder(%+v) succeeded", cfg)
		}
	}
	if _, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 4, LengthFieldOffset: 4, MaxFrameLength: 8}); err != nil {
		t.Errorf("a frame that is all header: %v", err)
	}
}

// BenchmarkFrameDecoder measures the steady state of a decoder in a
// pipeline: one whole frame per read, copied into a pooled buffer that the
// next stage releases.
func BenchmarkFrameDecoder(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			dec, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4})
			must(b, err)
			p := pipeline.New(&fakeTransport{}, quiet())
			must(b, p.AddLast("frames", dec))
			var got int
			must(b, p.AddLast("sink", pipeline.Inbound(func(_ *pipeline.Context, f *buffer.Buf) {
				got += f.Len()
				f.Release()
			})))
			stream := frame(4, false, uint64(size), make([]byte, size))
			var in buffer.Queue
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				_, _ = in.Write(stream)
				p.FireChannelRead(&in)
			}
			if got == 0 || in.Buffered() != 0 {
				b.Fatalf("decoded %d bytes, %d left", got, in.Buffered())
			}
		})
	}
}

// TestFrameDecoderAssemblesLargeFrames: a large frame is taken out of the
// transport's buffer once a quarter of it has arrived, and not before, and
// comes out whole and unchanged.
func TestFrameDecoderAssemblesLargeFrames(t *testing.T) {
	buffertest.Check(t)
	d, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4})
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	wire := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	wire = append(wire, body...)
	var q buffer.Queue
	feed := func(n int) *buffer.Buf {
		t.Helper()
		_, _ = q.Write(wire[:n])
		wire = wire[n:]
		f, err := d.Decode(&q)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	live := buffer.Live()
	if f := feed(200 << 10); f != nil || q.Buffered() != 200<<10 || buffer.Live() != live {
		t.Fatalf("under a quarter of the frame: frame %v, %d bytes left buffered, %d buffers taken", f, q.Buffered(), buffer.Live()-live)
	}
	if f := feed(100 << 10); f != nil || q.Buffered() != 0 || buffer.Live() != live+1 {
		t.Fatalf("past a quarter: frame %v, %d bytes left buffered, %d buffers taken; want the bytes moved into one buffer", f, q.Buffered(), buffer.Live()-live)
	}
	feed(300 << 10)
	f := feed(len(wire))
	if f == nil || !bytes.Equal(f.Bytes(), body) {
		t.Fatal("assembled frame differs from the one sent")
	}
	f.Release()

	// A decoder removed or reset mid-frame gives its buffer back.
	_, _ = q.Write(binary.BigEndian.AppendUint32(nil, uint32(len(body))))
	_, _ = q.Write(body[:len(body)/2])
	if f, err := d.Decode(&q); f != nil || err != nil {
		t.Fatalf("half a frame: %v, %v", f, err)
	}
	d.Reset()
}
