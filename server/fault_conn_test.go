package server_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/handler"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
)

// TestFaultPeerRestarted shuts the last peer of a chain down during a
// stream, which fails, and starts a new server with its id on another
// port: the other peers redial it, with the PING handshake, at its new
// address, and a new stream commits with the right bytes on all three.
func TestFaultPeerRestarted(t *testing.T) {
	buffertest.Check(t)
	o := groupOpts{quorum: handler.QuorumAll, tweak: func(c *server.Config) {
		c.RedialInterval = 100 * time.Millisecond
		// A peer that redials the old address while it shuts down may
		// have its connection accepted and never served: gnet's main
		// reactor can hand the socket to an event loop that has
		// already exited. The PING handshake times out on it; keep
		// that short.
		c.HandshakeTimeout = 500 * time.Millisecond
	}}
	g := startGroup(t, 3, o)
	c := g.client(t)
	table := pb.Chain(g.ids()...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := openStream(t, ctx, c, "across-a-restart", datastream.WithRoutingTable(table))
	data := randomBytes(40, 4<<20)
	half := len(data) / 2
	var last *datastream.Future[*datastream.Reply]
	for off := 0; off < half; off += 64 << 10 {
		last = out.WriteAsync(ctx, data[off:off+64<<10])
	}
	if _, err := last.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	old := g.memory(2)
	g.kill(t, 2)
	if err := writeAll(ctx, out, data[half:], 64<<10); !isCode(err, pb.ErrorCode_SUCCESSOR_FAILED) {
		t.Fatalf("stream whose tail was shut down: %v, want SUCCESSOR_FAILED", err)
	}
	if old.Open() != 0 {
		t.Errorf("the shut down peer holds %d uncommitted streams", old.Open())
	}

	g.restart(t, 2, o)
	g.commitsEventually(t, c, table, func(err error) bool {
		return isCode(err, pb.ErrorCode_SUCCESSOR_FAILED)
	})
	// And a larger one, now that the chain is whole.
	big := randomBytes(41, 8<<20+3)
	out2, err := c.Stream(ctx, []byte("after-the-restart"), datastream.WithRoutingTable(table))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeAll(ctx, out2, big, 256<<10); err != nil {
		t.Fatal(err)
	}
	for p := range g.servers {
		if got, ok := g.memory(p).Sum(key(c, out2)); !ok || got != sum(big) {
			t.Errorf("%s: committed=%v, checksum match=%v", g.peers[p].ID, ok, got == sum(big))
		}
		if committedKeys(g.memory(p))[key(c, out)] {
			t.Errorf("%s committed the stream that failed", g.peers[p].ID)
		}
	}
	if committedKeys(old)[key(c, out)] {
		t.Error("the shut down peer committed the stream that failed")
	}
	g.waitClean(t)
}

// TestFaultConnectionDrops closes a connection after a given number of
// bytes: between two peers (each stage of a chain), at a frame boundary or
// inside a frame, and between the client and the primary. The stream on it
// fails cleanly, every peer lets go of it, and later streams commit once
// the peers have redialed.
func TestFaultConnectionDrops(t *testing.T) {
	const pkt, packets = 64 << 10, 8
	for _, stage := range []edge{{0, 1}, {1, 2}} {
		for _, cut := range []struct {
			name  string
			extra func(frame int64) int64 // bytes of the 4th frame that get through
		}{
			{"frame-boundary", func(int64) int64 { return 0 }},
			{"in-frame-header", func(int64) int64 { return 6 }},
			{"in-frame-body", func(frame int64) int64 { return frame / 2 }},
		} {
			t.Run(fmt.Sprintf("%s-%s/%s", peerID(stage.from)[:1], peerID(stage.to)[:1], cut.name), func(t *testing.T) {
				buffertest.Check(t)
				g, proxies := startGroupVia(t, 3, groupOpts{quorum: handler.QuorumAll, tweak: func(c *server.Config) {
					c.RedialInterval = 100 * time.Millisecond
				}}, stage)
				px := proxies[stage]
				c := g.client(t)
				table := pb.Chain(g.ids()...)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				out := openStream(t, ctx, c, "dropped", datastream.WithRoutingTable(table))
				// Once the header is answered, nothing is on its way over
				// the proxied connection: counting starts at the first
				// data frame.
				if _, err := out.HeaderFuture().Wait(ctx); err != nil {
					t.Fatal(err)
				}
				var n int64
				for i := range 3 {
					n += dataFrameLen(t, c, out, uint64(i*pkt), pkt)
				}
				n += cut.extra(dataFrameLen(t, c, out, 3*pkt, pkt))
				before := px.Stats().ToTarget
				px.DropAfter(n)
				err := writeAll(ctx, out, randomBytes(50, packets*pkt), pkt)
				if !isCode(err, pb.ErrorCode_SUCCESSOR_FAILED, pb.ErrorCode_CANCELLED) {
					t.Fatalf("stream over a dropped connection: %v, want SUCCESSOR_FAILED or CANCELLED", err)
				}
				// The proxy drops a connection only once it forwarded
				// exactly the n bytes it was armed with.
				if st := px.Stats(); st.Dropped != 1 || st.ToTarget-before < n {
					t.Fatalf("proxy dropped %d connections after %d bytes, want 1 after %d", st.Dropped, st.ToTarget-before, n)
				}
				g.waitClean(t)
				for p := range g.servers {
					if committedKeys(g.memory(p))[key(c, out)] {
						t.Errorf("%s committed the failed stream", g.peers[p].ID)
					}
				}
				g.commitsEventually(t, c, table, func(err error) bool {
					return isCode(err, pb.ErrorCode_SUCCESSOR_FAILED)
				})
			})
		}
	}

	t.Run("client-primary/in-frame-body", func(t *testing.T) {
		buffertest.Check(t)
		g := startGroup(t, 3, groupOpts{quorum: handler.QuorumAll})
		px := listenProxy(t, g.peers[0].StreamAddr)
		peers := append([]group.Member(nil), g.peers...)
		peers[0].StreamAddr = px.Addr()
		c, err := datastream.NewClient(peers, datastream.WithLogger(quietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out := openStream(t, ctx, c, "client-dropped")
		if _, err := out.HeaderFuture().Wait(ctx); err != nil {
			t.Fatal(err)
		}
		n := dataFrameLen(t, c, out, 0, pkt) + dataFrameLen(t, c, out, pkt, pkt)/2
		px.DropAfter(n)
		err = writeAll(ctx, out, randomBytes(51, packets*pkt), pkt)
		if !errors.Is(err, datastream.ErrConnectionLost) {
			t.Fatalf("stream over a dropped client connection: %v, want ErrConnectionLost", err)
		}
		if st := px.Stats(); st.Dropped != 1 {
			t.Fatalf("proxy dropped %d connections, want 1", st.Dropped)
		}
		g.waitClean(t)
		for p := range g.servers {
			if committedKeys(g.memory(p))[key(c, out)] {
				t.Errorf("%s committed the failed stream", g.peers[p].ID)
			}
		}
		// The client dials the primary again for the next stream.
		g.commitsEventually(t, c, pb.Chain(g.ids()...), func(err error) bool {
			return errors.Is(err, datastream.ErrConnectionLost)
		})
		if st := px.Stats(); st.Accepted != 2 {
			t.Errorf("the client connected %d times, want twice", st.Accepted)
		}
	})
}
