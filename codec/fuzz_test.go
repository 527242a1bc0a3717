package codec_test

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec"
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
