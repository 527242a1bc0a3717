package codec_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec"
)

// Frames written one after another read back one by one, whatever their
// parts, and a reader that hands out one byte at a time changes nothing.
func TestReadWriteFrame(t *testing.T) {
	bodies := [][][]byte{
		{},
		{[]byte("a")},
		{[]byte{7}, []byte("kind then body")},
		{nil, bytes.Repeat([]byte("x"), 70<<10), []byte("tail")},
	}
	var stream bytes.Buffer
	for _, parts := range bodies {
		if err := codec.WriteFrame(&stream, parts...); err != nil {
			t.Fatal(err)
		}
	}
	r := iotest.OneByteReader(bytes.NewReader(stream.Bytes()))
	for i, parts := range bodies {
		got, err := codec.ReadFrame(r, 1<<20)
		if want := bytes.Join(parts, nil); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("frame %d: %d bytes, %v; want %d bytes", i, len(got), err, len(want))
		}
	}
	if _, err := codec.ReadFrame(r, 1<<20); err != io.EOF {
		t.Errorf("ReadFrame at the end = %v, want io.EOF itself", err)
	}
}

// WriteFrame writes the layout the pipeline's frame decoder reads with a
// bare 4-byte prefix, so either end of a connection may use either.
func TestWriteFrameMatchesFrameDecoder(t *testing.T) {
	buffertest.Check(t)
	var stream bytes.Buffer
	bodies := []string{"", "one", "and another one"}
	for _, b := range bodies {
		if err := codec.WriteFrame(&stream, []byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	d, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: codec.PrefixLength, InitialBytesToStrip: codec.PrefixLength})
	if err != nil {
		t.Fatal(err)
	}
	var in buffer.Queue
	_, _ = in.Write(stream.Bytes())
	for i, want := range bodies {
		f, err := d.Decode(&in)
		if err != nil || f == nil {
			t.Fatalf("Decode %d = %v, %v", i, f, err)
		}
		if got := string(f.Bytes()); got != want {
			t.Errorf("frame %d = %q, want %q", i, got, want)
		}
		f.Release()
	}
}

// A frame over the limit fails before its body is read; one cut short is
// an unexpected EOF; the reader's own errors come through.
func TestReadFrameErrors(t *testing.T) {
	var big bytes.Buffer
	if err := codec.WriteFrame(&big, make([]byte, 101)); err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(big.Bytes())
	if _, err := codec.ReadFrame(r, 100); !errors.Is(err, codec.ErrFrameTooLong) {
		t.Errorf("ReadFrame over the limit = %v, want ErrFrameTooLong", err)
	}
	if r.Len() != 101 {
		t.Errorf("ReadFrame over the limit read %d bytes of the body", 101-r.Len())
	}
	if _, err := codec.ReadFrame(bytes.NewReader(big.Bytes()[:50]), 1000); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadFrame of a cut body = %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := codec.ReadFrame(bytes.NewReader(big.Bytes()[:2]), 1000); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadFrame of a cut prefix = %v, want io.ErrUnexpectedEOF", err)
	}
	boom := errors.New("boom")
	if _, err := codec.ReadFrame(iotest.ErrReader(boom), 1000); !errors.Is(err, boom) {
		t.Errorf("ReadFrame from a failing reader = %v, want its error", err)
	}
	if err := codec.WriteFrame(failingWriter{boom}, []byte("x")); !errors.Is(err, boom) {
		t.Errorf("WriteFrame to a failing writer = %v, want its error", err)
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }
