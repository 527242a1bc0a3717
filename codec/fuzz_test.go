package codec_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/internal/testkit"
	"github.com/pipestream/pipestream/pipeline"
)

// FuzzFrameDecoder decodes arbitrary bytes with an arbitrary layout, fed in
// pieces of chunk+1 bytes through a pipeline and whole through Decode. Both
// must agree; every frame must be the bytes of the stream where the layout
// puts it; nothing may panic or leak. With the default layout, a 4-byte
// big-endian length that is stripped, the frames re-encoded by the
// prepender must give back the stream.
func FuzzFrameDecoder(f *testing.F) {
	def := func(data []byte) {
		f.Add(data, uint8(0), uint8(0), uint8(4), int8(0), uint8(4), false)
	}
	def(nil)
	def(frame(4, false, 5, []byte("hello")))
	def(slices.Concat(frame(4, false, 0, nil), frame(4, false, 3, []byte("abc")), []byte{0, 0}))
	def(frame(4, false, 1<<20, []byte("too long")))
	f.Add(cat("\xCA", "\x00\x10", "\xFE", hello), uint8(2), uint8(1), uint8(2), int8(-3), uint8(3), false)
	f.Add(cat("\x00\x00\x0C", "\xCA\xFE", hello), uint8(0), uint8(0), uint8(3), int8(2), uint8(0), false)
	f.Add(frame(8, true, 1<<63, nil), uint8(3), uint8(0), uint8(8), int8(0), uint8(8), true)

	f.Fuzz(func(t *testing.T, data []byte, chunk, offset, size uint8, adjust int8, strip uint8, little bool) {
		buffertest.Check(t)
		cfg := codec.FrameConfig{
			LengthFieldOffset:   int(offset % 16),
			LengthFieldLength:   int(size),
			LittleEndian:        little,
			LengthAdjustment:    int(adjust),
			InitialBytesToStrip: int(strip % 32),
			MaxFrameLength:      4 << 10,
		}
		dec, err := codec.NewFrameDecoder(cfg)
		if err != nil {
			return
		}
		var whole buffer.Queue
		_, _ = whole.Write(data)
		var want [][]byte
		var wantErr error
		for {
			f, err := dec.Decode(&whole)
			if err != nil {
				wantErr = err
				break
			}
			if f == nil {
				break
			}
			want = append(want, bytes.Clone(f.Bytes()))
			f.Release()
		}
		if wantErr != nil && !errors.Is(wantErr, codec.ErrFrameTooLong) && !errors.Is(wantErr, codec.ErrCorruptFrame) {
			t.Fatalf("error %v wraps neither ErrFrameTooLong nor ErrCorruptFrame", wantErr)
		}

		pieces := make([]int, 0, len(data)/(int(chunk)+1)+1)
		for n := len(data); n > 0; n -= int(chunk) + 1 {
			pieces = append(pieces, min(n, int(chunk)+1))
		}
		in := new(buffer.Queue)
		c, tr := decodeAll(t, cfg, in, data, pieces)
		if (wantErr != nil) != (len(c.errs) > 0) || len(c.errs) > 1 || (wantErr != nil) != (tr.closed > 0) {
			t.Fatalf("Decode failed with %v; the pipeline fired %v and closed %d times", wantErr, c.errs, tr.closed)
		}
		if len(c.frames) != len(want) {
			t.Fatalf("the pipeline decoded %d frames, Decode %d", len(c.frames), len(want))
		}

		pos := 0
		for i, f := range c.frames {
			if !bytes.Equal(f, want[i]) {
				t.Fatalf("frame %d differs between the pipeline and Decode", i)
			}
			start := pos + cfg.InitialBytesToStrip
			if start+len(f) > len(data) || !bytes.Equal(f, data[start:start+len(f)]) {
				t.Fatalf("frame %d is not the stream's bytes %d to %d", i, start, start+len(f))
			}
			pos = start + len(f)
		}
		if wantErr == nil && in.Buffered() != len(data)-pos {
			t.Fatalf("%d bytes left over, want %d", in.Buffered(), len(data)-pos)
		}
		if wantErr != nil && in.Buffered() != 0 {
			t.Fatalf("%d bytes left after a failure", in.Buffered())
		}

		if cfg == (codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4, MaxFrameLength: 4 << 10}) {
			pre, err := codec.NewLengthFieldPrepender(codec.PrependerConfig{LengthFieldLength: 4})
			must(t, err)
			out := &fakeTransport{}
			p := pipeline.New(out, quiet())
			must(t, p.AddLast("prepend", pre))
			for _, f := range c.frames {
				must(t, p.Write(buffer.Copy(f)))
			}
			if !bytes.Equal(out.out, data[:pos]) {
				t.Fatalf("re-encoded frames differ from the stream they came from")
			}
		}
	})
}

// FuzzFrameDecoderDirect reads frames of up to 512 KiB, many past the
// eager threshold, through a buffer.Queue from a socket that splits the
// stream as reads says, as the net.Conn transport does, so that their
// tails are read straight into their buffers. Every frame must be the one
// sent, byte for byte. A nonzero cut tears the decoder down after that
// many reads, likely mid-frame: the queue must then hold no target, and
// nothing may leak.
func FuzzFrameDecoderDirect(f *testing.F) {
	f.Add([]byte{0x80, 0, 0, 10, 0xFF, 0xFF}, []byte{0}, uint16(0))
	f.Add([]byte{0x40, 0, 0x20, 0, 0x20, 1, 0, 0}, []byte{40, 200, 3, 255, 17}, uint16(0))
	f.Add([]byte{0xFF, 0xFF, 0x80, 0}, []byte{130, 250}, uint16(3))
	f.Add([]byte{0x30, 0}, []byte{90, 91}, uint16(1))

	f.Fuzz(func(t *testing.T, sizes, reads []byte, cut uint16) {
		buffertest.Check(t)
		// Each pair of bytes is a body of up to 512 KiB; at most 8.
		var bodies [][]byte
		for i := 0; i+1 < len(sizes) && len(bodies) < 8; i += 2 {
			n := int(binary.BigEndian.Uint16(sizes[i:])) * 8
			bodies = append(bodies, testkit.RandomBytes(uint64(len(bodies)), n))
		}
		// Read byte k gets all that was asked for when it is 0, k bytes
		// up to 15, and then steps of 2 KiB up to 480 KiB; an odd k
		// leaves the decoder to the next read, so that reads pile up.
		i := 0
		next := func() int {
			if len(reads) == 0 {
				return math.MaxInt
			}
			switch k := int(reads[i%len(reads)]); {
			case k == 0:
				return math.MaxInt
			case k < 16:
				return k
			default:
				return (k - 15) << 11
			}
		}
		fire := func() bool { return len(reads) == 0 || reads[i%len(reads)]%2 == 0 }
		src := &socket{data: lengthPrefixed(bodies), next: next}
		if cut == 0 || cut > 1<<14 {
			cut = 1 << 14 // bounds the test; rarely reached
		}

		// An odd number of size bytes keeps the length field in the frame,
		// as DataStream frames do.
		strip := 4 - 4*(len(sizes)%2)
		d := newDecoding(t, codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: strip})
		p, c := d.p, d.c
		var in buffer.Queue
		ended := false
		for ; i < int(cut) && !ended; i++ {
			n, err := in.ReadOnce(src, 64<<10)
			ended = err != nil
			if n > 0 && fire() || ended {
				p.FireChannelRead(&in)
			}
		}
		p.FireChannelInactive() // as the transport does; the decoder is reset
		before := in.Buffered()
		if n, _ := in.ReadOnce(strings.NewReader("after"), 64<<10); n != 5 || in.Buffered() != before+5 {
			t.Fatalf("after the decoder went, %d of %d bytes read were buffered", in.Buffered()-before, n)
		}
		if ended && len(c.frames) != len(bodies) {
			t.Fatalf("decoded %d frames, want %d", len(c.frames), len(bodies))
		}
		for i, f := range c.frames {
			if !bytes.Equal(f, lengthPrefixed(bodies[i : i+1])[strip:]) {
				t.Fatalf("frame %d of %d bytes differs from the one sent", i, len(bodies[i]))
			}
		}
	})
}
