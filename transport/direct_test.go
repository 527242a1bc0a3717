package transport_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

// TestLargeFrames sends frames of 1 byte to 2 MiB through a frame decoder,
// in writes cut at random points so that frames arrive in pieces across
// reads, and checks every frame's bytes and order on the server. Frames of
// 64 KiB or more are assembled in place, the rest of each read from the
// socket straight into the frame (both transports' Inbound is a
// buffer.DirectReader); a byte read twice, skipped or misplaced there
// shows up as a wrong digest.
func TestLargeFrames(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		rng := rand.New(rand.NewPCG(1, uint64(k)))
		var (
			frames [][]byte
			stream []byte
		)
		for i := range 60 {
			n := 1 + rng.IntN(2<<20)
			if i%3 == 0 {
				n = 1 + rng.IntN(1<<10) // small frames between the large
			}
			f := make([]byte, n)
			for j := range f {
				f[j] = byte(rng.Uint32())
			}
			frames = append(frames, f)
			stream = binary.BigEndian.AppendUint32(stream, uint32(n))
			stream = append(stream, f...)
		}

		got := make(chan [sha256.Size]byte, len(frames))
		s := listen(t, k, func(ch transport.Channel) {
			addFraming(t, ch.Pipeline())
			_ = ch.Pipeline().AddLast("digest", pipeline.Inbound(func(_ *pipeline.Context, b *buffer.Buf) {
				got <- sha256.Sum256(b.Bytes())
				b.Release()
			}))
		})
		ch := dial(t, dialerFor(t, k), s.Addr().String(), nil)
		for rest := stream; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(512<<10))
			if err := ch.Write(bytes.Clone(rest[:n])); err != nil {
				t.Fatal(err)
			}
			if err := ch.Flush(); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		for i, f := range frames {
			if recv(t, got, "a frame") != sha256.Sum256(f) {
				t.Fatalf("frame %d of %d bytes arrived different", i, len(f))
			}
		}
	})
}
