package server_test

import (
	"strings"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// A client whose primary committed its stream and then failed resumes the
// stream on a peer that has linked the entry and dropped it: the peer
// answers ALREADY_COMMITTED with the entry's index and term in the body,
// not UNKNOWN_STREAM. A stream that never committed still gets
// UNKNOWN_STREAM.
func TestResumeOfCommittedStream(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{sm: fileStores(t)})
	lc := &laggingCommitter{peers: g.servers, keys: map[statemachine.StreamKey]uint64{}}
	for _, s := range g.servers {
		s.SetCommitter(lc)
	}
	a, b, c := g.peers[0], g.peers[1], g.peers[2]
	table := pb.Chain(a.ID, b.ID, c.ID)
	r := dialRaw(t, a.StreamAddr)
	// Two streams, so that the index the answer names is not 1 by chance.
	for id := uint64(1); id <= 2; id++ {
		r.header(id, r.request(id, a.ID, table))
		r.expect("header", id, 0, pb.ErrorCode_ERROR_NONE)
		r.data(id, 0, []byte("committed"), pb.DataStreamPacketHeader_CLOSE)
		r.expect("close", id, 0, pb.ErrorCode_ERROR_NONE)
	}
	lc.release(t) // b and c link both entries and drop the streams
	for i, s := range g.servers {
		if n := s.Streams().Pending(); n != 0 {
			t.Fatalf("%s: %d streams still wait for their entry", g.peers[i].ID, n)
		}
	}

	// A raw client resumes on b, as a client's failover would.
	rb := dialRaw(t, b.StreamAddr)
	rb.client = r.client
	resume := func(id, at uint64, table *pb.RoutingTable) (*pb.DataStreamReplyHeader, *pb.RaftClientReply) {
		t.Helper()
		rb.resume(id, at, b.ID, table)
		return rb.reply()
	}
	// At an offset past 0, at 0, and with a table below the write quorum
	// of two, which would not do for a stream still to commit: the
	// answer is the commit's.
	for _, tc := range []struct {
		at    uint64
		table *pb.RoutingTable
	}{{4, pb.Chain(b.ID, c.ID)}, {0, pb.Chain(b.ID, c.ID)}, {4, pb.Chain(b.ID)}} {
		h, rcr := resume(2, tc.at, tc.table)
		if h.GetSuccess() || h.GetErrorCode() != pb.ErrorCode_ALREADY_COMMITTED {
			t.Fatalf("resume at %d through %v of a committed stream: %v, want ALREADY_COMMITTED", tc.at, tc.table, h)
		}
		if !strings.Contains(h.GetErrorMessage(), "index 2") {
			t.Errorf("resume at %d: message %q does not name index 2", tc.at, h.GetErrorMessage())
		}
		if rcr.GetLogIndex() != 2 || rcr.GetTerm() != 1 || rcr.GetSuccess() || rcr.GetErrorCode() != pb.ErrorCode_ALREADY_COMMITTED || rcr.GetCallId() != 2 {
			t.Errorf("resume at %d: body %v, want the entry's index 2 and term 1", tc.at, rcr)
		}
	}
	if h, rcr := resume(3, 4, pb.Chain(b.ID, c.ID)); h.GetErrorCode() != pb.ErrorCode_UNKNOWN_STREAM || rcr != nil {
		t.Errorf("resume of a stream never committed: %v (body %v), want UNKNOWN_STREAM without a body", h, rcr)
	}
	if n := g.servers[1].Streams().Active(); n != 0 {
		t.Errorf("b holds %d open streams after refusing the resumes", n)
	}
}

// A client that moves a stream to a new primary with a table that leaves
// out the peers it gave up on is refused below the write quorum, and the
// refusal names those peers as dropped, not an empty list of unreachable
// ones. The new primary checks the quorum of a client's resume before it
// looks for the stream, at any offset.
func TestResumeBelowQuorumNamesDroppedPeers(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	a, b, c := g.peers[0], g.peers[1], g.peers[2]
	r := dialRaw(t, b.StreamAddr)
	r.resume(1, 0, b.ID, pb.Chain(b.ID))
	h, _ := r.reply()
	if h.GetErrorCode() != pb.ErrorCode_NOT_ENOUGH_PEERS {
		t.Fatalf("resume through %s alone: %v, want NOT_ENOUGH_PEERS", b.ID, h)
	}
	msg := h.GetErrorMessage()
	want := "1 of 3 peers reachable (" + b.ID + "), the write quorum is 2; dropped from the stream: "
	if !strings.Contains(msg, want) || !strings.Contains(msg, a.ID) || !strings.Contains(msg, c.ID) || strings.Contains(msg, "unreachable") {
		t.Errorf("refusal %q, want %q naming %s and %s, and no unreachable peer", msg, want, a.ID, c.ID)
	}
	if n := g.servers[1].Streams().Active(); n != 0 {
		t.Errorf("%s holds %d open streams after refusing the resume", b.ID, n)
	}
}
