package datastream_test

import (
	"errors"
	"net"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/testkit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// A CLOSE whose commit fails with a RaftClientReply keeps the reply in the
// error, on the Close future and on RaftClientReplyFuture alike.
func TestCloseErrorKeepsRaftClientReply(t *testing.T) {
	buffertest.Check(t)
	f := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
		if h.HasOption(pb.DataStreamPacketHeader_CLOSE) {
			reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, ErrorCode: pb.ErrorCode_NOT_LEADER, ErrorMessage: "ask s9"},
				&pb.RaftClientReply{ErrorCode: pb.ErrorCode_NOT_LEADER, LeaderHint: "s9", LogIndex: 7, Term: 3})
			return
		}
		success(c, h)
	})
	c := f.client(t)
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("s"))
	if err != nil {
		t.Fatal(err)
	}
	_, closeErr := out.Close(ctx).Wait(ctx)
	_, raftErr := out.RaftClientReplyFuture().Wait(ctx)
	for what, err := range map[string]error{"Close": closeErr, "RaftClientReplyFuture": raftErr} {
		if !errors.Is(err, datastream.ErrNotLeader) {
			t.Errorf("%s: %v, want ErrNotLeader", what, err)
		}
		var ce *datastream.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("%s: %v (%T) is no *CloseError", what, err, err)
		}
		if r := ce.Reply; r.GetLeaderHint() != "s9" || r.GetLogIndex() != 7 || r.GetTerm() != 3 {
			t.Errorf("%s: reply %v, want leader hint s9, index 7, term 3", what, r)
		}
	}

	// A failure without a body has no reply to keep.
	f2 := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
		if h.HasOption(pb.DataStreamPacketHeader_CLOSE) {
			reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, ErrorCode: pb.ErrorCode_TIMEOUT}, nil)
			return
		}
		success(c, h)
	})
	c2, err := datastream.NewClient(f2.peers(), datastream.WithLogger(testkit.QuietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	out, err = c2.Stream(ctx, []byte("s"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = out.Close(ctx).Wait(ctx)
	var ce *datastream.CloseError
	if !errors.Is(err, datastream.ErrTimeout) || errors.As(err, &ce) {
		t.Errorf("Close: %v, want ErrTimeout and no *CloseError", err)
	}
}
