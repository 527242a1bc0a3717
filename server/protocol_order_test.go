package server_test

import (
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/internal/smtest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
)

// gatedGroup starts a standalone peer whose data writes wait for the
// returned function to be called.
func gatedGroup(t *testing.T) (*cluster, func()) {
	g, open, _ := gatedGroupEntered(t)
	return g, open
}

// gatedGroupEntered is gatedGroup with a channel that receives when a Write
// has reached the gate.
func gatedGroupEntered(t *testing.T) (*cluster, func(), <-chan struct{}) {
	gate := smtest.NewGate(1)
	t.Cleanup(gate.Open) // before the servers' shutdown, which waits for writes
	g := startGroup(t, 1, groupOpts{sm: func(int) statemachineSM { return gate.Hold(newMemory()) }})
	return g, gate.Open, gate.Entered()
}

// barrier sends a PING, which the peer answers as soon as it reads it, and
// returns the stream replies that came before its answer: once it returns,
// the peer has routed every packet sent before.
func (r *raw) barrier() []*pb.DataStreamReplyHeader {
	r.t.Helper()
	r.sendFrame(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}, nil)
	var before []*pb.DataStreamReplyHeader
	for i := 0; i < 100; i++ {
		h, _ := r.reply()
		if h.GetPacketHeader().GetType() == pb.DataStreamPacketHeader_PING {
			return before
		}
		before = append(before, h)
	}
	r.t.Fatal("no answer to the ping")
	return nil
}

func (r *raw) expect(name string, stream, offset uint64, code pb.ErrorCode) *pb.DataStreamReplyHeader {
	r.t.Helper()
	h, _ := r.reply()
	ph := h.GetPacketHeader()
	if ph.GetStreamId() != stream || ph.GetStreamOffset() != offset || h.GetErrorCode() != code || h.GetSuccess() != (code == pb.ErrorCode_ERROR_NONE) {
		r.t.Fatalf("%s: reply %v; want stream %d offset %d %v", name, h, stream, offset, code)
	}
	return h
}

// TestProtocolDuplicateHeaderInOrder: a pipelined duplicate header is
// answered DUPLICATE_HEADER in the open stream's reply order, after the
// replies of the packets sent before it, and the open stream goes on.
func TestProtocolDuplicateHeaderInOrder(t *testing.T) {
	buffertest.Check(t)
	g, open := gatedGroup(t)
	r := dialRaw(t, g.peers[0].StreamAddr)
	req := r.request(1, g.peers[0].ID, nil)
	r.header(1, req)
	r.data(1, 0, []byte("abc")) // held by the state machine
	r.header(1, req)
	before := r.barrier()
	open()
	r.data(1, 3, []byte("def"), pb.DataStreamPacketHeader_CLOSE)
	switch {
	case len(before) > 1 || len(before) == 1 && before[0].GetPacketHeader().GetType() != pb.DataStreamPacketHeader_STREAM_HEADER:
		t.Fatalf("answered while the first data packet was held: %v", before)
	case len(before) == 0:
		r.expect("header", 1, 0, pb.ErrorCode_ERROR_NONE)
	case !before[0].GetSuccess():
		t.Fatalf("header: %v", before[0])
	}
	r.expect("data", 1, 0, pb.ErrorCode_ERROR_NONE)
	r.expect("duplicate header", 1, 0, pb.ErrorCode_DUPLICATE_HEADER)
	if h := r.expect("close", 1, 3, pb.ErrorCode_ERROR_NONE); h.GetBytesWritten() != 6 {
		t.Fatalf("close: %v, want 6 bytes written", h)
	}
}

// TestProtocolUnknownOptionInOrder: an unknown option bit on a stream's
// data is BAD_HEADER and fails the stream, in the stream's reply order;
// later packets get the same cause.
func TestProtocolUnknownOptionInOrder(t *testing.T) {
	buffertest.Check(t)
	g, open, entered := gatedGroupEntered(t)
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.open(1, g.peers[0].ID)
	r.data(1, 0, []byte("abc"))
	select { // held by the state machine: the failure cannot skip it
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the first data packet never reached the state machine")
	}
	r.sendFrame(&pb.DataStreamPacketHeader{
		ClientId: r.client, Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: 1, StreamOffset: 3,
		DataLength: 3, Options: 1 << 20,
	}, []byte("def"))
	if before := r.barrier(); len(before) != 0 {
		t.Fatalf("answered while the first data packet was held: %v", before)
	}
	open()
	r.expect("data before the bad packet", 1, 0, pb.ErrorCode_BAD_HEADER)
	r.expect("unknown option", 1, 3, pb.ErrorCode_BAD_HEADER)
	g.waitClean(t)
	r.data(1, 3, []byte("ghi"))
	r.expect("data after the failure", 1, 3, pb.ErrorCode_BAD_HEADER)
}

// TestProtocolLateFailure: a stream that failed on its own, while idle,
// answers the client's next packets with the cause, TIMEOUT, not
// UNKNOWN_STREAM; a stream that closed answers UNKNOWN_STREAM.
func TestProtocolLateFailure(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{tweak: func(c *server.Config) { c.IdleTimeout = 200 * time.Millisecond }})
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.open(1, g.peers[0].ID)
	g.waitClean(t) // every peer drops the idle stream
	for i := 0; i < 2; i++ {
		r.data(1, 0, []byte("late"))
		if h := r.expect("late data", 1, 0, pb.ErrorCode_TIMEOUT); !strings.Contains(h.GetErrorMessage(), "no packet") {
			t.Fatalf("late data: %q does not say why", h.GetErrorMessage())
		}
	}
	r.open(2, g.peers[0].ID)
	r.data(2, 0, []byte("x"), pb.DataStreamPacketHeader_CLOSE)
	r.expect("close", 2, 0, pb.ErrorCode_ERROR_NONE)
	r.data(2, 1, []byte("y"))
	r.expect("data after the commit", 2, 1, pb.ErrorCode_UNKNOWN_STREAM)
}

// TestProtocolConnectionRules: PING is answered at once, echoing it; every
// reply names the peer; packets without a client id are BAD_HEADER and do
// not bind the connection, which the first client id does.
func TestProtocolConnectionRules(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 1, groupOpts{})
	id := g.peers[0].ID
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.sendFrame(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: 1}, nil)
	if h, _ := r.reply(); h.GetErrorCode() != pb.ErrorCode_BAD_HEADER || h.GetServerId() != id {
		t.Fatalf("packet without a client id: %v, want BAD_HEADER from %s", h, id)
	}
	r.data(9, 0, []byte("x"))
	if h, _ := r.reply(); h.GetErrorCode() != pb.ErrorCode_UNKNOWN_STREAM || h.GetServerId() != id {
		t.Fatalf("data without a header: %v, want UNKNOWN_STREAM from %s", h, id)
	}
	r.sendFrame(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}, nil)
	h, rcr := r.reply()
	if !h.GetSuccess() || h.GetPacketHeader().GetType() != pb.DataStreamPacketHeader_PING || h.GetServerId() != id || rcr != nil {
		t.Fatalf("ping: %v %v, want a successful echo from %s", h, rcr, id)
	}
	// The connection is a client's, bound to the first client id it used.
	mine := r.client
	r.client = []byte("another-client!!")
	r.header(1, r.request(1, id, nil))
	if h, _ := r.reply(); h.GetErrorCode() != pb.ErrorCode_FORBIDDEN || h.GetServerId() != id {
		t.Fatalf("another client id on a bound connection: %v, want FORBIDDEN", h)
	}
	r.client = mine
	r.open(1, id)
}
