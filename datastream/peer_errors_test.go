package datastream_test

import (
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/testkit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
)

// TestPeerReplies answers a stream the way a broken or unhappy peer would.
func TestPeerReplies(t *testing.T) {
	isData := func(h *pb.DataStreamPacketHeader) bool {
		return h.GetType() == pb.DataStreamPacketHeader_STREAM_DATA && !h.HasOption(pb.DataStreamPacketHeader_ABORT)
	}
	for _, tc := range []struct {
		name   string
		answer func(c net.Conn, h *pb.DataStreamPacketHeader)
		want   error // nil: the stream commits
		abort  bool  // the client must abort the stream
		// failsHeader: the peer fails the header too, and its answer may
		// be back before Stream returns, which then reports it.
		failsHeader bool
		check       func(t *testing.T, err error)
	}{
		{name: "reply for an unknown stream is ignored", answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			other := &pb.DataStreamPacketHeader{ClientId: h.GetClientId(), Type: h.GetType(), StreamId: h.GetStreamId() + 1000}
			reply(c, &pb.DataStreamReplyHeader{PacketHeader: other, Success: true}, nil)
			success(c, h)
		}},
		{name: "reply for the wrong packet", abort: true, want: datastream.ErrInternal, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			if isData(h) {
				h.StreamOffset += 7
			}
			success(c, h)
		}},
		{name: "wrong bytes written", abort: true, want: datastream.ErrInternal, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			if isData(h) {
				reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, BytesWritten: 1, Success: true}, nil)
				return
			}
			success(c, h)
		}},
		{name: "close without a commit", abort: true, want: datastream.ErrInternal, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, BytesWritten: h.GetStreamOffset() + h.GetDataLength(), Success: true}, nil)
		}},
		{name: "not leader", want: datastream.ErrNotLeader, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			if h.HasOption(pb.DataStreamPacketHeader_CLOSE) {
				reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, ErrorCode: pb.ErrorCode_NOT_LEADER, ErrorMessage: "ask s9"},
					&pb.RaftClientReply{ErrorCode: pb.ErrorCode_NOT_LEADER, LeaderHint: "s9"})
				return
			}
			success(c, h)
		}, check: func(t *testing.T, err error) {
			var pe *pb.Error
			if !errors.As(err, &pe) || pe.Code != pb.ErrorCode_NOT_LEADER || !strings.Contains(err.Error(), "s9") {
				t.Errorf("error %v: want a *pb.Error NOT_LEADER naming the leader", err)
			}
		}},
		{name: "failure without a code", want: datastream.ErrInternal, failsHeader: true, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			reply(c, &pb.DataStreamReplyHeader{PacketHeader: h}, nil)
		}},
		{name: "garbage", want: datastream.ErrConnectionLost, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			if isData(h) {
				_, _ = c.Write([]byte{0, 0, 0, 2, 0, 0}) // shorter than a frame's prefix
				return
			}
			success(c, h)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			f := startFake(t, tc.answer)
			c := f.client(t)
			ctx := testCtx(t)
			out, err := c.Stream(ctx, []byte("s"))
			if err != nil {
				if !tc.failsHeader || !errors.Is(err, tc.want) {
					t.Fatalf("stream: %v", err)
				}
				return
			}
			data := out.WriteAsync(ctx, []byte("data"))
			_, err = out.Close(ctx).Wait(ctx)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := data.Wait(ctx); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("close: %v, want %v", err, tc.want)
			}
			if _, err := out.RaftClientReplyFuture().Wait(ctx); !errors.Is(err, tc.want) {
				t.Fatalf("RaftClientReplyFuture: %v, want %v", err, tc.want)
			}
			if tc.check != nil {
				tc.check(t, err)
			}
			if tc.abort {
				f.waitPacket(t, "an ABORT", func(h *pb.DataStreamPacketHeader) bool {
					return h.HasOption(pb.DataStreamPacketHeader_ABORT)
				})
			}
		})
	}
}

// A lost connection fails its streams; the next stream dials again.
func TestReconnect(t *testing.T) {
	buffertest.Check(t)
	var killed atomic.Bool
	f := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
		if killed.CompareAndSwap(false, true) {
			_ = c.Close() // the first connection dies at its first packet
			return
		}
		success(c, h)
	})
	c := f.client(t)
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("first"))
	if err == nil {
		_, err = out.Close(ctx).Wait(ctx)
	}
	if !errors.Is(err, datastream.ErrConnectionLost) {
		t.Fatalf("first stream: %v, want ErrConnectionLost", err)
	}
	eventually(t, "the connection to be seen dead", func() bool {
		out, err := c.Stream(ctx, []byte("again"))
		if err != nil {
			return false
		}
		_, err = out.WriteAsync(ctx, []byte("x"), datastream.Close).Wait(ctx)
		return err == nil
	})
}

// TestServerErrors checks that a server's refusal arrives as the matching
// sentinel and as a *pb.Error.
func TestServerErrors(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	c := g.client(t)
	ctx := testCtx(t)

	// The client checks a table against the peers it knows of; one that
	// knows only two of the three passes a table that leaves the third
	// out, which the server refuses.
	partial, err := datastream.NewClient(g.peers[:2], datastream.WithLogger(testkit.QuietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	out, err := partial.Stream(ctx, []byte("short"), datastream.WithRoutingTable(pb.Chain(g.peers[0].ID, g.peers[1].ID)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = out.HeaderFuture().Wait(ctx)
	var pe *pb.Error
	if !errors.Is(err, datastream.ErrBadRouting) || !errors.As(err, &pe) || pe.Message == "" {
		t.Fatalf("header with a table missing a peer: %v, want BAD_ROUTING with a message", err)
	}
	if _, err := out.WriteAsync(ctx, []byte("x")).Wait(ctx); !errors.Is(err, datastream.ErrBadRouting) {
		t.Fatalf("write after a failed header: %v, want the header's error", err)
	}

	if _, err := c.Stream(ctx, []byte("x"), datastream.WithPrimary("nobody")); err == nil {
		t.Fatal("Stream to a primary outside the group succeeded")
	}

	// A stream with a different primary and the default chain.
	out, err = c.Stream(ctx, []byte("via s3"), datastream.WithPrimary(g.peers[2].ID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, []byte("fine"), datastream.Close).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	g.checkCommitted(t, c, out, []byte("fine"))
}

// TestLateFailureInOrder has the primary lose its successor while its own
// write of the stream's first packet is slow, and keeps writing: the
// primary must answer every packet in order, so every future fails with
// the cause, SUCCESSOR_FAILED. A server that refuses the late packets at
// once (UNKNOWN_STREAM) answers them ahead of the first one and hides the
// cause. The late packets are paced until the primary has surely noticed
// the loss; the assertion holds for a correct server whatever the timing.
func TestLateFailureInOrder(t *testing.T) {
	buffertest.Check(t)
	sm, sms := gated(func(i int) bool { return i == 0 })
	g := startGroup(t, 2, groupOpts{sm: sm, tweak: func(c *server.Config) { c.ReplyTimeout = time.Hour }})
	t.Cleanup(func() { openAll(sms) })
	c := g.client(t, datastream.WithWindow(1<<20, 1000))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("late"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.HeaderFuture().Wait(ctx); err != nil {
		t.Fatal(err)
	}
	futures := []*datastream.Future[*datastream.Reply]{out.WriteAsync(ctx, []byte("first"))}
	eventually(t, "both peers to take the first packet", func() bool {
		return sms[0].writes.Load() == 1 && sms[1].writes.Load() == 1
	})
	g.stop(1)
	for i := 0; i < 100 && out.Err() == nil; i++ {
		futures = append(futures, out.WriteAsync(ctx, []byte("late")))
		time.Sleep(time.Millisecond)
	}
	openAll(sms)
	for i, f := range futures {
		if _, err := f.Wait(ctx); !errors.Is(err, datastream.ErrSuccessorFailed) {
			t.Fatalf("future %d of %d: %v, want SUCCESSOR_FAILED", i, len(futures), err)
		}
	}
	g.waitClean(t)
}

// A CLOSE answered with success but without a successful RaftClientReply
// (a peer that did not commit, or wrote the body wrong) is not a commit:
// the client fails the stream rather than report it committed.
func TestCloseWithoutRaftClientReplyFails(t *testing.T) {
	for _, body := range []string{"none", "failed"} {
		t.Run(body, func(t *testing.T) {
			buffertest.Check(t)
			f := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
				if !h.HasOption(pb.DataStreamPacketHeader_CLOSE) {
					success(c, h)
					return
				}
				var rcr *pb.RaftClientReply
				if body == "failed" {
					rcr = &pb.RaftClientReply{ClientId: h.GetClientId(), CallId: h.GetStreamId()}
				}
				reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, BytesWritten: h.GetStreamOffset() + h.GetDataLength(),
					Success: true, ServerId: "fake"}, rcr)
			})
			c := f.client(t)
			ctx := testCtx(t)
			out, err := c.Stream(ctx, []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			out.WriteAsync(ctx, []byte("data"))
			if r, err := out.Close(ctx).Wait(ctx); !errors.Is(err, datastream.ErrInternal) {
				t.Fatalf("Close = %+v, %v; want a failure (INTERNAL)", r, err)
			}
			if _, err := out.RaftClientReplyFuture().Wait(ctx); err == nil {
				t.Fatal("RaftClientReplyFuture completed without a commit")
			}
		})
	}
}
