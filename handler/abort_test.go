package handler_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/handler"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// TestAbortAroundClose aborts streams that closed on a peer that is not
// their primary, the ABORT following the CLOSE at once: it lands before
// the close is written, after the stream parked, or between the two, when
// the stream has closed but not yet parked. The entry of an aborted stream
// never comes, so however the ABORT lands no stream may stay parked (or
// open in the state machine) waiting for it until the link timeout, and
// none may be linked. Which moment each stream hits is up to the
// scheduler; over many streams, each is hit.
func TestAbortAroundClose(t *testing.T) {
	buffertest.Check(t)
	const streams = 300
	c := newConn(t, false, func(cfg *handler.Config) {
		cfg.Peers = []string{"s0", self}
		cfg.Committer = refuseCommits{t}
		cfg.LinkTimeout = time.Hour // only the abort may clean up
	})
	c.send(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}, nil)
	c.await(1)
	for id := uint64(1); id <= streams; id++ {
		body, err := proto.Marshal(&pb.RaftClientRequest{
			ClientId: []byte(client), CallId: id, ServerId: "s0", Type: pb.RaftClientRequest_STREAM,
			RoutingTable: pb.Chain("s0", self),
		})
		if err != nil {
			t.Fatal(err)
		}
		c.send(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: id}, body)
		c.data(id, 0, "abc", pb.DataStreamPacketHeader_CLOSE)
		for range id % 8 {
			runtime.Gosched() // spreads where the ABORT lands
		}
		c.data(id, 3, "", pb.DataStreamPacketHeader_ABORT)
		c.drain()
	}
	deadline := time.Now().Add(waitFor)
	for c.streams.Pending() != 0 || c.streams.Active() != 0 || c.sm.Open() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after aborting every stream: %d parked, %d active, %d open in the state machine",
				c.streams.Pending(), c.streams.Active(), c.sm.Open())
		}
		time.Sleep(time.Millisecond)
		c.drain()
	}
	if n := len(c.sm.Committed()); n != 0 {
		t.Fatalf("%d aborted streams linked", n)
	}
}

// drain drops the replies received so far; the test judges the peer's
// state, not what it answered.
func (c *conn) drain() {
	for {
		select {
		case <-c.replies:
		default:
			return
		}
	}
}

// refuseCommits is the committer of a peer that must never commit: it is
// the primary of no stream.
type refuseCommits struct{ t *testing.T }

func (r refuseCommits) Commit(context.Context, statemachine.StreamInfo) (*pb.RaftClientReply, error) {
	r.t.Error("a peer that is not the primary committed a stream")
	return nil, context.Canceled
}
