package codec_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/internal/testkit"
	"github.com/pipestream/pipestream/pipeline"
)

// readQueue is what the net.Conn transport reads into.
type readQueue interface {
	buffer.Inbound
	ReadOnce(r io.Reader, min int) (int, error)
}

// copyingQueue is a buffer.Queue that hides its DirectReader methods, so
// that a decoder copies every byte out of it, as before direct reads.
type copyingQueue struct {
	buffer.Inbound
	q *buffer.Queue
}

func newCopyingQueue() *copyingQueue {
	q := new(buffer.Queue)
	return &copyingQueue{q, q}
}

func (c *copyingQueue) ReadOnce(r io.Reader, min int) (int, error) { return c.q.ReadOnce(r, min) }

var readQueues = []struct {
	name   string
	make   func() readQueue
	direct bool
}{
	{"direct", func() readQueue { return new(buffer.Queue) }, true},
	{"copying", func() readQueue { return newCopyingQueue() }, false},
}

// socket serves a stream as a socket would, each Read returning at most
// the next size from next, or all that was asked for when next is nil.
type socket struct {
	data []byte
	next func() int
}

func (s *socket) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	if s.next != nil {
		p = p[:min(len(p), s.next())]
	}
	n := copy(p, s.data)
	s.data = s.data[n:]
	return n, nil
}

// lengthPrefixed returns bodies each behind a 4-byte big-endian length.
func lengthPrefixed(bodies [][]byte) []byte {
	var stream []byte
	for _, b := range bodies {
		stream = binary.BigEndian.AppendUint32(stream, uint32(len(b)))
		stream = append(stream, b...)
	}
	return stream
}

var stripped = codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4}

// readLoop reads r into in as the net.Conn transport does, firing a read
// into p after each, until r ends, and returns how many bytes went
// straight past in.
func readLoop(t testing.TB, p *pipeline.Pipeline, in readQueue, r io.Reader, minRead int) (direct int) {
	for range 1 << 20 {
		before := in.Buffered()
		n, err := in.ReadOnce(r, minRead)
		direct += n - (in.Buffered() - before)
		if n > 0 {
			p.FireChannelRead(in)
		}
		if err == io.EOF {
			return direct
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("the stream did not end")
	return 0
}

// TestFrameDecoderReadsDirect reads frames on either side of the eager
// threshold, some larger than a read, through a queue however the socket
// splits the stream: with direct reads the frames are the same, byte for
// byte, as without, and the bulk of the large ones went straight into
// their buffers.
func TestFrameDecoderReadsDirect(t *testing.T) {
	sizes := []int{0, 10, 70000, 1 << 20, 3, 2<<20 + 5, 64<<10 - 4, 64 << 10, 300000, 1}
	bodies := make([][]byte, len(sizes))
	for i, n := range sizes {
		bodies[i] = testkit.RandomBytes(uint64(i), n)
	}
	stream := lengthPrefixed(bodies)
	// Only what comes after the first quarter of a frame of 64 KiB or
	// more can go straight into it, or all of a frame that follows one:
	// its length field is read ahead into a buffer of its own.
	maxDirect, last := 0, 0
	for _, b := range bodies {
		switch n := 4 + len(b); {
		case last >= 64<<10:
			maxDirect += n
		case n >= 64<<10:
			maxDirect += n - n/4
		}
		last = 4 + len(b)
	}
	reads := []struct {
		name string
		next func() func() int
	}{
		{"as asked", func() func() int { return nil }},
		{"small", func() func() int {
			r := rand.New(rand.NewPCG(1, 1))
			return func() int { return 1 + r.IntN(8<<10) }
		}},
		{"random", func() func() int {
			r := rand.New(rand.NewPCG(2, 2))
			return func() int { return 1 + r.IntN(300<<10) }
		}},
	}
	for _, rd := range reads {
		for _, q := range readQueues {
			t.Run(rd.name+"/"+q.name, func(t *testing.T) {
				buffertest.Check(t)
				d := newDecoding(t, stripped)
				dec, p, c, tr := d.dec, d.p, d.c, d.tr
				in := q.make()
				direct := readLoop(t, p, in, &socket{data: stream, next: rd.next()}, 64<<10)
				if len(c.errs) > 0 || tr.closed > 0 || in.Buffered() != 0 {
					t.Fatalf("errors %v, closed %d, %d bytes left", c.errs, tr.closed, in.Buffered())
				}
				if len(c.frames) != len(bodies) {
					t.Fatalf("decoded %d frames, want %d", len(c.frames), len(bodies))
				}
				for i, f := range c.frames {
					if !bytes.Equal(f, bodies[i]) {
						t.Errorf("frame %d of %d bytes differs from the one sent", i, len(bodies[i]))
					}
				}
				if q.direct && (direct == 0 || direct > maxDirect) {
					t.Errorf("%d bytes read straight into frames", direct)
				}
				if !q.direct && direct != 0 {
					t.Errorf("%d bytes read past a queue that cannot read directly", direct)
				}
				dec.Reset()
			})
		}
	}
}

// gate is an io.Reader whose first Read waits for open, having closed
// started, so that a test can act while a read is in progress; it then
// serves data.
type gate struct {
	started, open chan struct{}
	data          []byte
}

func (g *gate) Read(p []byte) (int, error) {
	close(g.started)
	<-g.open
	return copy(p, g.data), nil
}

// TestFrameDecoderWithdrawsTarget tears a decoder down while it has the
// transport reading into a frame: its buffer is released once, and the
// next read is buffered as usual rather than written into a frame nobody
// holds.
func TestFrameDecoderWithdrawsTarget(t *testing.T) {
	const size = 1 << 20
	head := lengthPrefixed([][]byte{make([]byte, size)})[:4+size/2]
	for _, tt := range []struct {
		name     string
		teardown func(*testing.T, *pipeline.Pipeline, *codec.FrameDecoder, *buffer.Queue)
	}{
		{"Reset", func(_ *testing.T, _ *pipeline.Pipeline, d *codec.FrameDecoder, _ *buffer.Queue) { d.Reset() }},
		{"removed", func(t *testing.T, p *pipeline.Pipeline, _ *codec.FrameDecoder, _ *buffer.Queue) {
			_, err := p.Remove("frames")
			must(t, err)
		}},
		{"connection ended", func(_ *testing.T, p *pipeline.Pipeline, _ *codec.FrameDecoder, _ *buffer.Queue) {
			p.FireChannelInactive()
		}},
		{"Reset during a read", func(t *testing.T, _ *pipeline.Pipeline, d *codec.FrameDecoder, in *buffer.Queue) {
			g := &gate{started: make(chan struct{}), open: make(chan struct{}), data: []byte("lost")}
			var wg sync.WaitGroup
			wg.Go(func() {
				if n, err := in.ReadOnce(g, 64<<10); n != 4 || err != nil || in.Buffered() != 0 {
					t.Errorf("the read in progress: %d, %v, %d buffered", n, err, in.Buffered())
				}
			})
			<-g.started
			d.Reset()
			close(g.open)
			wg.Wait()
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			buffertest.Check(t)
			d := newDecoding(t, stripped)
			dec, p, c := d.dec, d.p, d.c
			var in buffer.Queue
			readLoop(t, p, &in, &socket{data: head}, 64<<10)
			live := buffer.Live()
			if n, _ := in.ReadOnce(strings.NewReader("direct"), 64<<10); n != 6 || in.Buffered() != 0 {
				t.Fatalf("half a frame in, a read was buffered (%d of %d bytes), not read into the frame", in.Buffered(), n)
			}
			p.FireChannelRead(&in)
			tt.teardown(t, p, dec, &in)
			if buffer.Live() != live-1 {
				t.Errorf("the frame's buffer is not released: %+d buffers", buffer.Live()-live)
			}
			if n, _ := in.ReadOnce(strings.NewReader("after"), 64<<10); n != 5 || in.Buffered() != 5 {
				t.Errorf("after the teardown %d of %d bytes read were buffered", in.Buffered(), n)
			}
			if len(c.frames) != 0 {
				t.Errorf("a frame came out of a torn-down decoder")
			}
		})
	}
}

// BenchmarkFrameDecoderDirect decodes 1 MiB frames read from a socket that
// returns at most 256 KiB a read, the way the net.Conn transport does,
// with and without reads straight into the frame: the difference is the
// copy out of the queue that direct reads save for all but the first
// quarter of each frame.
func BenchmarkFrameDecoderDirect(b *testing.B) {
	const size, maxRead = 1 << 20, 256 << 10
	frame := lengthPrefixed([][]byte{testkit.RandomBytes(1, size)})
	for _, q := range readQueues {
		b.Run(q.name, func(b *testing.B) {
			dec, err := codec.NewFrameDecoder(stripped)
			must(b, err)
			in := q.make()
			src := &socket{}
			next := func() int { return maxRead }
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				*src = socket{data: frame, next: next}
				for {
					if _, err := in.ReadOnce(src, 64<<10); err != nil {
						b.Fatal(err)
					}
					f, err := dec.Decode(in)
					if err != nil {
						b.Fatal(err)
					}
					if f != nil {
						f.Release()
						break
					}
				}
			}
			dec.Reset()
		})
	}
}

// A large frame's first quarter or more is copied out of the queue; the
// rest is read straight into the frame's buffer.
func ExampleFrameDecoder_direct() {
	dec, _ := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4})
	defer dec.Reset()
	body := bytes.Repeat([]byte("x"), 1<<20)
	conn := &socket{data: lengthPrefixed([][]byte{body}), next: func() int { return 384 << 10 }}

	// The net.Conn transport's read loop, in short.
	var in buffer.Queue
	for {
		before := in.Buffered()
		n, _ := in.ReadOnce(conn, 64<<10)
		where := "the queue"
		if in.Buffered() == before {
			where = "the frame"
		}
		fmt.Printf("read %d KiB into %s\n", n>>10, where)
		f, _ := dec.Decode(&in)
		if f != nil {
			fmt.Printf("a frame of %d KiB\n", f.Len()>>10)
			f.Release()
			return
		}
	}
	// Output:
	// read 64 KiB into the queue
	// read 128 KiB into the queue
	// read 256 KiB into the queue
	// read 384 KiB into the frame
	// read 192 KiB into the frame
	// a frame of 1024 KiB
}

// backlogQueue is a buffer.Queue over a socket whose unread bytes it
// reports as its Backlog, as a transport asks the kernel.
type backlogQueue struct {
	buffer.Queue
	sock *socket
}

func (q *backlogQueue) Backlog() int { return len(q.sock.data) }

// TestFrameDecoderCountsBacklog: with the socket's backlog counted as
// arrived, a large frame is assembled from its first read on, so all but
// that read goes straight into it, where without it the first quarter
// waits in the queue; the frame is the same either way.
func TestFrameDecoderCountsBacklog(t *testing.T) {
	const size, read = 1 << 20, 16 << 10
	body := testkit.RandomBytes(7, size)
	for _, backlog := range []bool{false, true} {
		t.Run(fmt.Sprintf("backlog=%v", backlog), func(t *testing.T) {
			buffertest.Check(t)
			sock := &socket{data: lengthPrefixed([][]byte{body}), next: func() int { return read }}
			var in readQueue = new(buffer.Queue)
			if backlog {
				in = &backlogQueue{sock: sock}
			}
			d := newDecoding(t, stripped)
			p, c := d.p, d.c
			direct := readLoop(t, p, in, sock, read)
			if len(c.errs) > 0 || len(c.frames) != 1 || !bytes.Equal(c.frames[0], body) {
				t.Fatalf("errors %v, %d frames; want the one sent", c.errs, len(c.frames))
			}
			if backlog && direct != size+4-read {
				t.Fatalf("%d bytes read directly, want all but the first read's %d", direct, size+4-read)
			}
			if !backlog && direct > size-size/4 {
				t.Fatalf("%d bytes read directly, more than the last three quarters", direct)
			}
		})
	}
}

// TestFrameDecoderReadsHeadAhead streams large frames through a queue
// whose socket returns all that is asked: after the first, each frame's
// length field is read on its own and then its whole body straight into
// the frame, with nothing copied through the queue; a small frame ends the
// run, and the frame after it is read through the queue again. With the
// length field kept (as DataStream frames keep theirs) and stripped.
func TestFrameDecoderReadsHeadAhead(t *testing.T) {
	const large = 100 << 10
	sizes := []int{large, large, large - 7, 10, large}
	bodies := make([][]byte, len(sizes))
	for i, n := range sizes {
		bodies[i] = testkit.RandomBytes(uint64(i), n)
	}
	stream := lengthPrefixed(bodies)
	for _, strip := range []int{0, 4} {
		t.Run(fmt.Sprintf("strip=%d", strip), func(t *testing.T) {
			buffertest.Check(t)
			d := newDecoding(t, codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: strip})
			p, c := d.p, d.c
			var in buffer.Queue
			src := &socket{data: stream}
			// read reads once, fires the read, and returns what it read
			// and whether all of it went past the queue.
			read := func() (n int, direct bool) {
				t.Helper()
				before := in.Buffered()
				n, err := in.ReadOnce(src, 64<<10)
				if err != nil {
					t.Fatal(err)
				}
				direct = in.Buffered() == before
				p.FireChannelRead(&in)
				return n, direct
			}
			// The first frame: its first read goes through the queue.
			if _, direct := read(); direct {
				t.Fatal("the first read went past the queue")
			}
			for len(c.frames) < 1 {
				read()
			}
			// The next two: the length field, then the whole body.
			for i := 1; i <= 2; i++ {
				if n, direct := read(); n != 4 || !direct {
					t.Fatalf("frame %d: read %d bytes (direct %v), want its 4-byte length field, direct", i, n, direct)
				}
				if n, direct := read(); n != len(bodies[i]) || !direct {
					t.Fatalf("frame %d: read %d bytes (direct %v), want its %d-byte body, direct", i, n, direct, len(bodies[i]))
				}
				if len(c.frames) != i+1 {
					t.Fatalf("frame %d not decoded after its body was read", i)
				}
			}
			// The small frame, read ahead too, and then a large frame that
			// follows a small one goes through the queue.
			for len(c.frames) < 4 {
				if _, direct := read(); !direct {
					t.Fatal("the small frame after a large one went through the queue")
				}
			}
			if _, direct := read(); direct {
				t.Fatal("the first read of a frame after a small one went past the queue")
			}
			for len(c.frames) < len(bodies) {
				read()
			}
			if len(c.errs) > 0 || in.Buffered() != 0 {
				t.Fatalf("errors %v, %d bytes left", c.errs, in.Buffered())
			}
			for i, f := range c.frames {
				want := lengthPrefixed(bodies[i : i+1])[strip:]
				if !bytes.Equal(f, want) {
					t.Errorf("frame %d of %d bytes differs from the one sent", i, len(want))
				}
			}
		})
	}
}

// TestFrameDecoderHeadAheadBounded checks what a length field read ahead
// can make the decoder hold: a frame no longer than the one before it is
// assembled at once, but a longer one only once a quarter of it has
// arrived, as without the read ahead, so that a few bytes claiming 8 MiB
// cost nothing.
func TestFrameDecoderHeadAheadBounded(t *testing.T) {
	buffertest.Check(t)
	const large, huge = 100 << 10, 8 << 20
	b := codec.NewPartialBudget(64 << 20)
	d := budgetDecoder(t, b)
	first := lengthPrefixed([][]byte{testkit.RandomBytes(1, large)})
	second := lengthPrefixed([][]byte{testkit.RandomBytes(2, huge)})
	src := &socket{data: first}
	var in buffer.Queue
	var frames [][]byte
	// step reads once and decodes as the pipeline does, until nothing is
	// left to decode; it reports whether the read went past the queue.
	step := func() (direct bool) {
		t.Helper()
		before := in.Buffered()
		if _, err := in.ReadOnce(src, 64<<10); err != nil {
			t.Fatal(err)
		}
		direct = in.Buffered() == before
		for {
			f, err := d.Decode(&in)
			if err != nil {
				t.Fatal(err)
			}
			if f == nil {
				return direct
			}
			frames = append(frames, bytes.Clone(f.Bytes()))
			f.Release()
		}
	}
	for range 4 {
		if len(frames) == 1 {
			break
		}
		step()
	}
	if len(frames) != 1 || !bytes.Equal(frames[0], first) {
		t.Fatal("the first frame was not decoded")
	}
	src.data = second[:4+1024]
	if !step() {
		t.Fatal("the length field after a large frame went through the queue")
	}
	step()
	d.Sweep(time.Now(), time.Hour) // gives back what the first frame held
	if held := b.Held(); held > 4+1024 {
		t.Fatalf("4 bytes claiming %d and 1 KiB after them hold %d bytes of the budget", huge, held)
	}
	// Past a quarter it is assembled, and the rest read into it.
	src.data = second[4+1024:]
	for range 1 << 10 {
		if len(frames) == 2 {
			break
		}
		step()
	}
	if len(frames) != 2 || !bytes.Equal(frames[1], second) {
		t.Fatal("the 8 MiB frame was not decoded whole")
	}
}

// TestFrameDecoderHeadAheadEdges covers the length field read ahead where
// it meets the rest of the decoder: a whole frame after a large one is not
// charged to the budget; bytes the transport buffered itself stay in it,
// to go to whatever replaces a removed decoder; and a Decode after the
// decoder was removed aims no read.
func TestFrameDecoderHeadAheadEdges(t *testing.T) {
	large := lengthPrefixed([][]byte{testkit.RandomBytes(1, 70<<10)})
	// afterLarge returns a decoder that has just returned a large frame
	// from q, with nothing left in q, so that its next frame's length
	// field is read ahead.
	afterLarge := func(t *testing.T, cfg codec.FrameConfig, b *codec.PartialBudget) (decoding, *buffer.Queue) {
		d := newDecoding(t, cfg)
		if b != nil {
			d.dec.SetBudget(b)
		}
		q := new(buffer.Queue)
		_, _ = q.Write(large)
		d.p.FireChannelRead(q)
		if len(d.c.frames) != 1 || q.Buffered() != 0 {
			t.Fatalf("%d frames, %d bytes left after a whole large frame", len(d.c.frames), q.Buffered())
		}
		return d, q
	}

	t.Run("whole frame, budget held by another", func(t *testing.T) {
		buffertest.Check(t)
		// Another decoder holds all of the budget with a frame it is
		// assembling.
		other := lengthPrefixed([][]byte{testkit.RandomBytes(2, 200<<10)})
		b := codec.NewPartialBudget(int64(len(other)))
		od, oq := budgetDecoder(t, b), new(buffer.Queue)
		_, _ = oq.Write(other[:len(other)-1])
		if f, err := od.Decode(oq); f != nil || err != nil || b.Held() != b.Max() {
			t.Fatalf("the other decoder: %v, %v, holding %d of %d", f, err, b.Held(), b.Max())
		}
		d, q := afterLarge(t, codec.FrameConfig{LengthFieldLength: 4}, b)
		small := lengthPrefixed([][]byte{[]byte("small")})
		_, _ = q.Write(small)
		d.p.FireChannelRead(q)
		if len(d.c.errs) > 0 || len(d.c.frames) != 2 || !bytes.Equal(d.c.frames[1], small) {
			t.Fatalf("errors %v, %d frames; want the whole small frame, which holds no budget", d.c.errs, len(d.c.frames))
		}
	})

	t.Run("removed between frames", func(t *testing.T) {
		buffertest.Check(t)
		d, q := afterLarge(t, stripped, nil)
		_, _ = q.Write([]byte("NE")) // buffered by the transport, as gnet does
		d.p.FireChannelRead(q)
		if _, err := d.p.Remove("frames"); err != nil {
			t.Fatal(err)
		}
		_, _ = q.Write([]byte("W-PROTO"))
		d.p.FireChannelRead(q)
		if got, _ := q.Peek(q.Buffered()); string(got) != "NEW-PROTO" || len(d.c.other) == 0 {
			t.Fatalf("after the decoder went, the next stage got %q (%d reads), want %q", got, len(d.c.other), "NEW-PROTO")
		}
	})

	t.Run("Decode after removal", func(t *testing.T) {
		buffertest.Check(t)
		d, q := afterLarge(t, stripped, nil)
		d.dec.HandlerRemoved(nil)
		if f, err := d.dec.Decode(q); f != nil || err != nil {
			t.Fatalf("Decode after removal: %v, %v", f, err)
		}
		if n, _ := q.ReadOnce(strings.NewReader("next-protocol"), 64<<10); n != 13 || q.Buffered() != 13 {
			t.Fatalf("a read after removal put %d of %d bytes in the queue; the rest went to a target nobody holds", q.Buffered(), n)
		}
	})
}
