package datastream_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
)

// TestClientClose closes a client with packets in flight: every future
// fails with ErrClosed, the client refuses new streams, and the peers drop
// what they held.
func TestClientClose(t *testing.T) {
	buffertest.Check(t)
	sm, gates := gated(func(i int) bool { return i == 2 })
	g := startGroup(t, 3, groupOpts{sm: sm})
	t.Cleanup(func() { openAll(gates) })
	c := g.client(t)
	ctx := testCtx(t)
	var futures []*datastream.Future[*datastream.Reply]
	var outs []*datastream.Output
	for i := 0; i < 3; i++ {
		out, err := c.Stream(ctx, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, out)
		futures = append(futures, out.WriteAsync(ctx, []byte("pending")), out.WriteAsync(ctx, []byte("more")))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for i, f := range futures {
		if _, err := f.Wait(ctx); !errors.Is(err, datastream.ErrClosed) {
			t.Fatalf("future %d: %v, want ErrClosed", i, err)
		}
	}
	for _, out := range outs {
		if _, err := out.RaftClientReplyFuture().Wait(ctx); !errors.Is(err, datastream.ErrClosed) {
			t.Fatalf("RaftClientReplyFuture: %v, want ErrClosed", err)
		}
		if _, err := out.WriteAsync(ctx, []byte("late")).Wait(ctx); !errors.Is(err, datastream.ErrClosed) {
			t.Fatalf("write on a closed client: %v, want ErrClosed", err)
		}
	}
	if _, err := c.Stream(ctx, []byte("late")); !errors.Is(err, datastream.ErrClosed) {
		t.Fatalf("Stream on a closed client: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// No CLOSE was sent, so the peers can only drop the streams: they
	// lost their upstream.
	openAll(gates)
	g.waitClean(t)
}

// A ctx that is already done opens nothing.
func TestStreamContextDone(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	c := g.client(t)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Unix(1, 0))
	defer cancel2()
	for _, tc := range []struct {
		ctx  context.Context
		want error
	}{{cancelled, context.Canceled}, {expired, context.DeadlineExceeded}} {
		if out, err := c.Stream(tc.ctx, []byte("never")); !errors.Is(err, tc.want) || out != nil {
			t.Fatalf("Stream: %v, %v; want %v", out, err, tc.want)
		}
	}
	// The client is unharmed.
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("fine"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, []byte("ok"), datastream.Close).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range g.servers {
		if n := len(g.memory(i).Committed()); n != 1 {
			t.Errorf("%s committed %d streams, want 1", g.peers[i].ID, n)
		}
	}
}

// TestCancelAborts cancels a stream's ctx with packets in flight: every
// future fails with the cancellation, and the ABORT reaches every peer,
// which drops the stream and its data without committing.
func TestCancelAborts(t *testing.T) {
	buffertest.Check(t)
	sm, gates := gated(func(i int) bool { return i == 2 })
	g := startGroup(t, 3, groupOpts{sm: sm, tweak: func(c *server.Config) { c.ReplyTimeout = time.Hour }})
	t.Cleanup(func() { openAll(gates) })
	c := g.client(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	out, err := c.Stream(ctx, []byte("doomed"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.HeaderFuture().Wait(ctx); err != nil {
		t.Fatal(err)
	}
	var futures []*datastream.Future[*datastream.Reply]
	for i := 0; i < 4; i++ {
		futures = append(futures, out.WriteAsync(ctx, make([]byte, 10<<10)))
	}
	eventually(t, "the last peer to hold a write", func() bool { return gates[2].writes.Load() > 0 })
	cancel()
	wait := testCtx(t)
	for i, f := range futures {
		if _, err := f.Wait(wait); !errors.Is(err, context.Canceled) {
			t.Fatalf("future %d: %v, want context.Canceled", i, err)
		}
	}
	if err := out.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err: %v, want context.Canceled", err)
	}
	// The peers' own timeouts are an hour away and the connections stay
	// up, so only the ABORT can make the last peer drop the stream.
	openAll(gates)
	g.waitClean(t)
}

// TestPeerKilled kills a peer while packets wait for their replies, held
// back by the last peer of the chain: every pending future fails, with
// the error that names what happened.
func TestPeerKilled(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill int
		want error
	}{
		// The connection to the primary drops.
		{"primary", 0, datastream.ErrConnectionLost},
		// The primary loses its successor and says so.
		{"successor", 1, datastream.ErrSuccessorFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			sm, sms := gated(func(i int) bool { return i == 2 })
			// WriteQuorum all: a lost peer fails the stream, as this test
			// wants; recovery has its own tests in package server.
			g := startGroup(t, 3, groupOpts{sm: sm, tweak: func(c *server.Config) {
				c.ReplyTimeout, c.WriteQuorum = time.Hour, handler.QuorumAll
			}})
			t.Cleanup(func() { openAll(sms) })
			c := g.client(t)
			ctx := testCtx(t)
			out, err := c.Stream(ctx, []byte("victim"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := out.HeaderFuture().Wait(ctx); err != nil {
				t.Fatal(err)
			}
			const packets = 5
			var futures []*datastream.Future[*datastream.Reply]
			for i := 0; i < packets; i++ {
				futures = append(futures, out.WriteAsync(ctx, make([]byte, 4<<10)))
			}
			// Every packet has passed the middle peer, and the last one
			// holds them. (No CLOSE: one held at the last peer could
			// commit there once the gate opens, as standalone peers
			// link on their own.)
			eventually(t, "the packets to reach the last peer", func() bool {
				return sms[1].writes.Load() == packets && sms[2].writes.Load() > 0
			})
			g.stop(tc.kill)
			for i, f := range futures {
				if _, err := f.Wait(ctx); !errors.Is(err, tc.want) {
					t.Fatalf("future %d: %v, want %v", i, err, tc.want)
				}
			}
			if _, err := out.RaftClientReplyFuture().Wait(ctx); !errors.Is(err, tc.want) {
				t.Fatalf("RaftClientReplyFuture: %v, want %v", err, tc.want)
			}
			openAll(sms)
			g.waitClean(t)
		})
	}
}

// TestReplyTimeout streams to a peer that accepts and never answers: every
// pending future fails with ErrReplyTimeout, and since the peer has sent
// nothing at all, the client closes the connection.
func TestReplyTimeout(t *testing.T) {
	buffertest.Check(t)
	f := startFake(t, nil)
	c := f.client(t, datastream.WithReplyTimeout(200*time.Millisecond))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("void"))
	if err != nil {
		t.Fatal(err)
	}
	futures := []*datastream.Future[*datastream.Reply]{out.HeaderFuture()}
	for i := 0; i < 3; i++ {
		futures = append(futures, out.WriteAsync(ctx, []byte("anyone?")))
	}
	for i, fu := range futures {
		if _, err := fu.Wait(ctx); !errors.Is(err, datastream.ErrReplyTimeout) {
			t.Fatalf("future %d: %v, want ErrReplyTimeout", i, err)
		}
	}
	eventually(t, "the client to close the connection", func() bool { return f.ended.Load() == 1 })
}

// A peer that answers one stream and not another: only the silent stream
// times out, and it is aborted; the other carries on over the same
// connection.
func TestReplyTimeoutOneStream(t *testing.T) {
	buffertest.Check(t)
	var silent atomic.Uint64
	f := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
		if h.GetStreamId() != silent.Load() {
			success(c, h)
		}
	})
	c := f.client(t, datastream.WithReplyTimeout(200*time.Millisecond))
	ctx := testCtx(t)
	busy, err := c.Stream(ctx, []byte("busy"))
	if err != nil {
		t.Fatal(err)
	}
	silent.Store(busy.ID() + 1)
	quiet, err := c.Stream(ctx, []byte("quiet"))
	if err != nil || quiet.ID() != silent.Load() {
		t.Fatalf("second stream: id %d, %v", quiet.ID(), err)
	}
	pending := quiet.WriteAsync(ctx, []byte("hello?"))
	for i := 0; ; i++ {
		if _, err := busy.WriteAsync(ctx, []byte("tick")).Wait(ctx); err != nil {
			t.Fatalf("busy stream, write %d: %v", i, err)
		}
		select {
		case <-pending.Done():
		default:
			continue
		}
		break
	}
	if _, err := pending.Wait(ctx); !errors.Is(err, datastream.ErrReplyTimeout) {
		t.Fatalf("quiet stream: %v, want ErrReplyTimeout", err)
	}
	f.waitPacket(t, "an ABORT", func(h *pb.DataStreamPacketHeader) bool {
		return h.HasOption(pb.DataStreamPacketHeader_ABORT) && h.GetStreamId() == quiet.ID()
	})
	if _, err := busy.Close(ctx).Wait(ctx); err != nil {
		t.Fatalf("busy stream: %v", err)
	}
}
