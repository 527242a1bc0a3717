package server_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/transport"
)

// almostFrame is a frame of total bytes on the wire, length field included,
// less its last byte: a frame the server can never finish.
func almostFrame(total int) []byte {
	b := make([]byte, total-1)
	binary.BigEndian.PutUint32(b, uint32(total-4))
	return b
}

// heapAlloc returns the live heap after collecting twice, which also
// empties the buffer pools of what they hold unused.
func heapAlloc() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// holder is a client connection that sends one frame short of a byte
// and then reads until the server closes it.
type holder struct {
	c      net.Conn
	closed atomic.Bool
}

// TestPartialFramesBounded sends, on many connections at once, a large
// frame less one byte each. The server must hold no more of them than
// MaxPartialBytes, by its own count and by the heap, close the
// connections past it and still serve a client on another connection.
func TestPartialFramesBounded(t *testing.T) {
	onEachTransport(t, func(t *testing.T, kind transport.Kind) {
		const (
			frameLen = 4 << 20
			conns    = 16
			budget   = 4*frameLen + 2<<20 // four frames and room for a normal stream
			slack    = 8 << 20            // read buffers, connections, the client
		)
		g := startGroup(t, 1, groupOpts{kind: kind, tweak: func(c *server.Config) {
			c.MaxFrame = frameLen + 64<<10
			c.MaxPartialBytes = budget
			c.ReadStallTimeout = time.Minute // held frames stay held
		}})
		s := g.servers[0]
		data := almostFrame(frameLen)
		base := heapAlloc()

		var wg sync.WaitGroup
		hs := make([]*holder, conns)
		for i := range hs {
			c, err := net.Dial("tcp", g.peers[0].StreamAddr)
			if err != nil {
				t.Fatal(err)
			}
			h := &holder{c: c}
			hs[i] = h
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = c.Write(data) // fails once the server closes c
				_, err := io.Copy(io.Discard, c)
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					h.closed.Store(true)
				}
			}()
		}
		defer func() {
			for _, h := range hs {
				_ = h.c.Close()
			}
			wg.Wait()
		}()

		// Settled: the connections past the budget closed, and those
		// held have all their bytes in.
		var peak int64
		closedCount := func() int {
			n := 0
			for _, h := range hs {
				if h.closed.Load() {
					n++
				}
			}
			return n
		}
		held := func() int64 {
			b := s.PartialBytes()
			peak = max(peak, b)
			return b
		}
		minClosed := conns - budget/frameLen
		waitFor(t, 60*time.Second, "connections past the budget closed and the others' frames in", func() bool {
			c := closedCount()
			return c >= minClosed && held() >= int64(conns-c)*frameLen
		})
		for range 20 { // a while longer: nothing creeps past the bound
			held()
			time.Sleep(10 * time.Millisecond)
		}
		if peak > budget {
			t.Fatalf("server held %d bytes of incomplete frames; bound %d", peak, budget)
		}
		if b := s.PartialBytes(); b < frameLen {
			t.Fatalf("server holds %d bytes of incomplete frames; want at least one whole frame of %d held, not every connection refused", b, frameLen)
		}
		grown := heapAlloc() - base
		if grown > budget+slack {
			t.Fatalf("heap grew by %d MiB with %d connections holding a frame each; want at most %d MiB",
				grown>>20, conns, (budget+slack)>>20)
		}
		t.Logf("%d of %d connections closed; %d MiB held, peak %d MiB; heap grew %d MiB", closedCount(), conns, s.PartialBytes()>>20, peak>>20, grown>>20)

		// A client on another connection still streams a large packet.
		c := g.client(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out := openStream(t, ctx, c, "beside-the-holders")
		body := randomBytes(7, 1<<20)
		if err := writeAll(ctx, out, body, len(body)); err != nil {
			t.Fatalf("a client beside the held frames was not served: %v", err)
		}
		if got, ok := g.memory(0).Sum(key(c, out)); !ok || got != sum(body) {
			t.Fatalf("stream beside the held frames: committed=%v, checksum match=%v", ok, got == sum(body))
		}
	})
}

// TestStalledFrameClosed sends a large frame less one byte and then
// nothing: after ReadStallTimeout the server closes the connection and
// releases the frame's buffer, and serves others as before.
func TestStalledFrameClosed(t *testing.T) {
	onEachTransport(t, func(t *testing.T, kind transport.Kind) {
		const frameLen = 1 << 20
		g := startGroup(t, 1, groupOpts{kind: kind, tweak: func(c *server.Config) {
			c.ReadStallTimeout = 300 * time.Millisecond
			c.SweepInterval = 50 * time.Millisecond
		}})
		s := g.servers[0]
		live := buffer.Live()
		r := dialRaw(t, g.peers[0].StreamAddr)
		if _, err := r.c.Write(almostFrame(frameLen)); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, r.c)
		waitFor(t, 10*time.Second, "the stalled frame's buffer released", func() bool {
			return buffer.Live() == live && s.PartialBytes() == 0
		})
		g.healthy(t)
	})
}
