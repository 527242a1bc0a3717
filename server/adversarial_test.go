package server_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/handler"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/transport"
)

// expectClosed reads until the server closes the connection, and fails if
// it does not within the deadline. Replies read on the way are dropped.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	// Generous: under -race, on a loaded machine, a server can take many
	// seconds to work through what a flooding client sent.
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server did not close the connection")
	}
}

// healthy streams one small stream through the group with a fresh client.
func (g *cluster) healthy(t *testing.T) {
	t.Helper()
	c := g.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := openStream(t, ctx, c, "still-serving")
	out.WriteAsync(ctx, []byte("hello"))
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		t.Fatalf("a well-behaved client was not served: %v", err)
	}
}

func TestAdversarialFrames(t *testing.T) {
	onEachTransport(t, func(t *testing.T, kind transport.Kind) {
		g := startGroup(t, 3, groupOpts{kind: kind})
		addr := g.peers[0].StreamAddr
		frame := func(length uint32, rest ...byte) []byte {
			b := binary.BigEndian.AppendUint32(nil, length)
			return append(b, rest...)
		}
		random := make([]byte, 64<<10)
		rng := rand.New(rand.NewPCG(3, 4))
		for i := range random {
			random[i] = byte(rng.Uint32())
		}
		cases := []struct {
			name  string
			bytes []byte
		}{
			{"random bytes", random},
			{"length 2^31", frame(1 << 31)},
			{"length 2^32-1", frame(1<<32 - 1)},
			{"frame shorter than its header length field", frame(2, 0, 0)},
			{"header length 2^31 in a small frame", frame(8, 0x80, 0, 0, 0, 1, 2, 3, 4)},
		}
		for _, tc := range cases {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(tc.bytes); err != nil {
				t.Fatal(err)
			}
			// A malformed frame either gets an error reply (frame
			// boundaries intact) or the connection closed; no case may
			// leave the server holding it open forever. Close our end
			// after a bounded wait for either.
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			var hdr [4]byte
			if _, err := io.ReadFull(c, hdr[:]); err == nil {
				t.Logf("%s: answered", tc.name)
			}
			c.Close()
		}
		// Frames the decoder must refuse outright close the connection.
		for _, b := range [][]byte{frame(1 << 31), frame(1<<32 - 1)} {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, c)
			c.Close()
		}
		// Truncated frames, then the client goes away.
		for _, n := range []int{1, 3, 5, 9, 100} {
			r := dialRaw(t, addr)
			body, _ := protoMarshal(r.request(1, g.peers[0].ID, nil))
			full := encodeRaw(t, &pb.DataStreamPacketHeader{ClientId: r.client, Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: 1, DataLength: uint64(len(body))}, body)
			if _, err := r.c.Write(full[:min(n, len(full)-1)]); err != nil {
				t.Fatal(err)
			}
			r.c.Close()
		}
		g.waitClean(t)
		g.healthy(t)
	})
}

func encodeRaw(t *testing.T, h *pb.DataStreamPacketHeader, body []byte) []byte {
	t.Helper()
	b, err := encodeFrameBytes(h, body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHeadersWithoutData opens thousands of streams and never sends data:
// the per-connection limit refuses what is over it, and when the clients
// go away every stream is dropped and the peer's memory does not keep them.
// A stream whose client went away waits the reply timeout for the client
// to resume it on another peer, and the test waits for that. The timeout
// stays the default: it also bounds the successor's replies to 3,000
// headers, which under load can take seconds, and a primary that timed
// out would drop the successor from the streams this test counts there.
func TestHeadersWithoutData(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{tweak: func(c *server.Config) {
		c.MaxStreamsPerConn = 1000
	}})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const conns, perConn = 3, 1500
	for c := 0; c < conns; c++ {
		r := dialRaw(t, g.peers[0].StreamAddr)
		r.client = []byte{byte(c), 'h', 'e', 'a', 'd', 'e', 'r', 's', '-', 'o', 'n', 'l', 'y', '!', '!', '!'}
		for i := uint64(1); i <= perConn; i++ {
			r.header(i, r.request(i, g.peers[0].ID, nil))
		}
		counts := map[pb.ErrorCode]int{}
		for i := 0; i < perConn; i++ {
			h, _ := r.reply()
			counts[h.GetErrorCode()]++
		}
		if counts[pb.ErrorCode_ERROR_NONE] != 1000 || counts[pb.ErrorCode_LIMIT_EXCEEDED] != perConn-1000 {
			t.Errorf("connection %d: replies by code %v, want 1000 opened and %d refused", c, counts, perConn-1000)
		}
		if n := g.servers[1].Streams().Active(); n < 1000 {
			t.Errorf("successor has %d streams open, want at least this connection's 1000", n)
		}
		r.c.Close()
	}
	g.waitCleanWithin(t, handler.DefaultReplyTimeout+10*time.Second)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 64<<20 {
		t.Errorf("heap grew by %d MiB after every stream was dropped", grown>>20)
	}
	g.healthy(t)
}

// TestClientThatNeverReads sends packets and never reads a reply: once the
// connection's outbound bound is reached the server closes it.
func TestClientThatNeverReads(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 1, groupOpts{tweak: func(c *server.Config) {
		c.TransportOptions = []transport.Option{transport.WithMaxOutbound(64 << 10)}
	}})
	c, err := net.Dial("tcp", g.peers[0].StreamAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Each packet for a stream that does not exist earns an error reply of
	// over a hundred bytes, straight from the event loop; enough of them
	// overflow the socket buffers and then the 64 KiB bound. The client's
	// receive buffer stays the kernel's: shrunk to 4 KiB, loopback TCP
	// stopped taking the client's bytes at times (its retransmission timer
	// backing off for tens of seconds, the server's receive queue empty),
	// and the server, never sent the packets, had nothing to close on.
	one, err := encodeFrameBytes(&pb.DataStreamPacketHeader{ClientId: []byte("never-reads-0001"), Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var batch []byte
	for i := 0; i < 1000; i++ {
		batch = append(batch, one...)
	}
	for i := 0; i < 1000; i++ { // at most a million packets
		// Generous, as in expectClosed: a client that gave up writing
		// early, while the server was still working through its backlog,
		// would start reading before the server's bound was reached, and
		// the server would rightly never close the connection.
		_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(batch); err != nil {
			break // the server closed the connection
		}
	}
	expectClosed(t, c)
	g.waitClean(t)
	g.healthy(t)
}
