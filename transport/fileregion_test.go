package transport_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/internal/testkit"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

// tempFile writes n seeded random bytes to a file that is removed when t
// ends.
func tempFile(t *testing.T, n int) (*os.File, []byte) {
	t.Helper()
	data := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 1))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	return testkit.TempFile(t, data), data
}

// A file region between two buffers arrives intact and in order on both
// transports (sendfile from their writer goroutines on Linux), and is released
// exactly once. The region is larger than a socket buffer, so sendfile has
// to wait for the socket.
func TestFileRegion(t *testing.T) {
	const off, count = 12345, 8<<20 + 3
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		f, data := tempFile(t, off+count+100)
		want := append(append([]byte("head"), data[off:off+count]...), "tail"...)
		got := make(chan []byte, 1)
		s := listen(t, k, func(ch transport.Channel) {
			_ = ch.Pipeline().AddLast("frames", fixedFrames(len(want)))
			_ = ch.Pipeline().AddLast("collect", pipeline.Inbound(func(_ *pipeline.Context, b *buffer.Buf) {
				got <- bytes.Clone(b.Bytes())
				b.Release()
			}))
		})
		ch := dial(t, dialerFor(t, k), s.Addr().String(), nil)
		var released atomic.Int32
		region := &transport.FileRegion{File: f, Offset: off, Count: count, OnRelease: func() { released.Add(1) }}
		for _, m := range []any{[]byte("head"), region, []byte("tail")} {
			if err := ch.Write(m); err != nil {
				t.Fatal(err)
			}
		}
		if err := ch.Flush(); err != nil {
			t.Fatal(err)
		}
		if b := recv(t, got, "the bytes"); !bytes.Equal(b, want) {
			t.Fatalf("received %d bytes that differ from the %d sent", len(b), len(want))
		}
		closeReleasedOnce(t, ch, &released)
	})
}

// closeReleasedOnce closes ch and fails the test unless, once the channel
// ended, a region it was given was released exactly once: the release
// follows the send on the writer goroutine.
func closeReleasedOnce(t *testing.T, ch transport.Channel, released *atomic.Int32) {
	t.Helper()
	_ = ch.Close()
	waitFor(t, ch.Done(), "channel to end")
	if n := released.Load(); n != 1 {
		t.Fatalf("region released %d times, want 1", n)
	}
}

// A region past the end of its file cannot be sent: Write fails where it
// is read at once; with sendfile the frame that announced the bytes is
// broken, so the connection closes. Either way the region is released
// once.
func TestFileRegionPastEOF(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		f, _ := tempFile(t, 1000)
		s := listen(t, k, func(ch transport.Channel) {
			_ = ch.Pipeline().AddLast("frames", fixedFrames(1<<20))
		})
		ch := dial(t, dialerFor(t, k), s.Addr().String(), nil)
		var released atomic.Int32
		err := ch.Write(&transport.FileRegion{File: f, Offset: 500, Count: 1000, OnRelease: func() { released.Add(1) }})
		if err == nil {
			if err := ch.Flush(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, ch.Done(), "the connection to close")
		}
		closeReleasedOnce(t, ch, &released)
	})
}

func TestSendsFileRegions(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		s := listen(t, k, nil)
		ch := dial(t, dialerFor(t, k), s.Addr().String(), nil)
		want := runtime.GOOS == "linux"
		if got := transport.SendsFileRegions(ch); got != want {
			t.Fatalf("SendsFileRegions = %v, want %v", got, want)
		}
	})
}
