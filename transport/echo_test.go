package transport_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

// addFraming puts a 4-byte length-prefix decoder and prepender first in a
// pipeline.
func addFraming(t testing.TB, p *pipeline.Pipeline) {
	dec, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4})
	if err != nil {
		t.Error(err)
		return
	}
	pre, err := codec.NewLengthFieldPrepender(codec.PrependerConfig{LengthFieldLength: 4})
	if err != nil {
		t.Error(err)
		return
	}
	_ = p.AddLast("frame-decoder", dec)
	_ = p.AddLast("prepender", pre)
}

// echoMessage is client c's message number seq: its numbers, then filler
// bytes that depend on both, 8 to 64 bytes in all.
func echoMessage(c, seq int) []byte {
	m := make([]byte, 8+seq%57)
	binary.BigEndian.PutUint32(m, uint32(c))
	binary.BigEndian.PutUint32(m[4:], uint32(seq))
	for i := 8; i < len(m); i++ {
		m[i] = byte(c*31 + seq*7 + i)
	}
	return m
}

// countLive fails t if it ends with more or fewer live buffers than it
// started with. It is buffertest.Check without the stack of every buffer,
// which would make a test moving 400,000 buffers take most of a minute
// under the race detector; the other tests of the package run with the full
// check.
func countLive(t testing.TB) {
	start := buffer.Live()
	t.Cleanup(func() {
		if n := buffer.Live() - start; n != 0 {
			t.Errorf("%d buffer(s) leaked", n)
		}
	})
}

// TestEcho has many clients each send many length-prefixed messages at once
// and checks every echo, byte for byte and in order.
func TestEcho(t *testing.T) {
	const clients, messages = 100, 1000
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		countLive(t)
		s := listen(t, k, func(ch transport.Channel) {
			addFraming(t, ch.Pipeline())
			_ = ch.Pipeline().AddLast("echo", echo{})
		})
		d := dialerFor(t, k)

		var wg sync.WaitGroup
		for c := range clients {
			wg.Go(func() {
				if err := echoClient(t, d, s.Addr().String(), c, messages); err != nil {
					t.Errorf("client %d: %v", c, err)
				}
			})
		}
		wg.Wait()
	})
}

func echoClient(t *testing.T, d dialFunc, addr string, c, messages int) error {
	done := make(chan error, 1)
	var next atomic.Int64 // read by this goroutine on timeout
	check := pipeline.Inbound(func(_ *pipeline.Context, b *buffer.Buf) {
		defer b.Release()
		n := int(next.Load())
		if n == messages {
			return
		}
		if want := echoMessage(c, n); !bytes.Equal(b.Bytes(), want) {
			done <- fmt.Errorf("echo %d = %x, want %x", n, b.Bytes(), want)
			next.Store(int64(messages))
			return
		}
		if next.Add(1) == int64(messages) {
			done <- nil
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	ch, err := d(ctx, addr, func(ch transport.Channel) {
		addFraming(t, ch.Pipeline())
		_ = ch.Pipeline().AddLast("check", check)
	})
	if err != nil {
		return err
	}
	defer func() {
		_ = ch.Close()
		<-ch.Done()
	}()
	p := ch.Pipeline()
	for seq := range messages {
		if err := p.Write(echoMessage(c, seq)); err != nil {
			return err
		}
		if seq%100 == 99 {
			if err := p.Flush(); err != nil {
				return err
			}
		}
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%d of %d echoes: %w", next.Load(), messages, ctx.Err())
	}
}
