package datastream_test

import (
	"errors"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/testkit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// A routing table that cannot carry the stream is refused by Stream before
// anything is dialed or sent: the fake primary sees only the valid stream
// that follows the bad ones.
func TestStreamValidatesRoutingTable(t *testing.T) {
	buffertest.Check(t)
	f := startFake(t, success)
	peers := []group.Member{
		{ID: "fake", StreamAddr: f.ln.Addr().String()},
		{ID: "b", StreamAddr: "127.0.0.1:1"},
		{ID: "c", StreamAddr: "127.0.0.1:1"},
	}
	c, err := datastream.NewClient(peers, datastream.WithLogger(testkit.QuietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testCtx(t)
	for name, table := range map[string]*pb.RoutingTable{
		"unknown peer": pb.Chain("fake", "b", "zz"),
		"cycle": {Routes: []*pb.Route{
			{Peer: "fake"}, {Peer: "b", Successors: []string{"c"}}, {Peer: "c", Successors: []string{"b"}},
		}},
		"missing peer":     pb.Chain("fake", "b"),
		"other root":       pb.Chain("b", "fake", "c"),
		"forward to self":  {Routes: []*pb.Route{{Peer: "fake", Successors: []string{"fake", "b", "c"}}}},
		"two predecessors": {Routes: []*pb.Route{{Peer: "fake", Successors: []string{"b", "c"}}, {Peer: "b", Successors: []string{"c"}}}},
	} {
		out, err := c.Stream(ctx, []byte("s"), datastream.WithRoutingTable(table))
		if !errors.Is(err, datastream.ErrBadRouting) || !errors.Is(err, pb.ErrInvalidRoutingTable) {
			t.Errorf("%s: Stream = %v, %v; want an error matching ErrBadRouting and ErrInvalidRoutingTable", name, out, err)
		}
	}
	// A valid table that is not the default goes through; its stream is
	// the first and only one the fake peer hears of.
	out, err := c.Stream(ctx, []byte("s"), datastream.WithRoutingTable(pb.Star("fake", "c", "b")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.conns) != 1 {
		t.Errorf("fake peer accepted %d connections, want 1", len(f.conns))
	}
	for _, h := range f.packets {
		if h.GetStreamId() != out.ID() {
			t.Errorf("fake peer got a packet of stream %d; only stream %d was valid", h.GetStreamId(), out.ID())
		}
	}
	if len(f.packets) != 2 { // the header and CLOSE
		t.Errorf("fake peer got %d packets, want 2", len(f.packets))
	}
}
