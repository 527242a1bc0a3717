package codec_test

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/pipeline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeTransport is the head of a test pipeline: it appends what is written
// to out, remembers each message, and counts closes.
type fakeTransport struct {
	mu       sync.Mutex
	out      []byte
	msgs     []written
	closed   int
	failNext int // fail this many more writes
}

// written is one message as it reached the transport.
type written struct {
	buf   *buffer.Buf // the message, if it was a buffer; released already
	bytes bool        // it was a []byte
	n     int
}

var errFakeWrite = errors.New("fake transport: write failed")

func (t *fakeTransport) Write(msg any) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.failNext > 0 {
		t.failNext--
		pipeline.Release(msg)
		return errFakeWrite
	}
	switch m := msg.(type) {
	case *buffer.Buf:
		t.out = append(t.out, m.Bytes()...)
		t.msgs = append(t.msgs, written{buf: m, n: m.Len()})
		m.Release()
	case []byte:
		t.out = append(t.out, m...)
		t.msgs = append(t.msgs, written{bytes: true, n: len(m)})
	default:
		pipeline.Release(msg)
		return fmt.Errorf("fake transport: cannot write %T", msg)
	}
	return nil
}

func (t *fakeTransport) Flush() error { return nil }

func (t *fakeTransport) Close() error {
	t.mu.Lock()
	t.closed++
	t.mu.Unlock()
	return nil
}

func (t *fakeTransport) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
}

func (t *fakeTransport) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}
}

func quiet() pipeline.Option {
	return pipeline.WithLogger(slog.New(slog.DiscardHandler))
}

// collector is the last stage of a test pipeline: it keeps a copy of every
// frame it reads, releasing the buffer, and every error.
type collector struct {
	frames [][]byte
	errs   []error
	other  []any
}

func (c *collector) ChannelRead(_ *pipeline.Context, msg any) {
	switch m := msg.(type) {
	case *buffer.Buf:
		c.frames = append(c.frames, append([]byte{}, m.Bytes()...))
		m.Release()
	default:
		c.other = append(c.other, msg)
	}
}

func (c *collector) ErrorCaught(_ *pipeline.Context, err error) { c.errs = append(c.errs, err) }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// decoding is a FrameDecoder in a pipeline with a collector behind it.
type decoding struct {
	dec *codec.FrameDecoder
	p   *pipeline.Pipeline
	c   *collector
	tr  *fakeTransport
}

func newDecoding(t testing.TB, cfg codec.FrameConfig) decoding {
	t.Helper()
	dec, err := codec.NewFrameDecoder(cfg)
	must(t, err)
	tr := &fakeTransport{}
	p := pipeline.New(tr, quiet())
	must(t, p.AddLast("frames", dec))
	c := &collector{}
	must(t, p.AddLast("collect", c))
	// The connection ends with the test: after a large frame the decoder
	// holds a buffer for the next one's length field until then.
	t.Cleanup(dec.Reset)
	return decoding{dec, p, c, tr}
}
