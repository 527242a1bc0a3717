package datastream_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/grouptest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// heldCommitter stands in for Raft with followers whose applier lags: it
// links each entry on the primary (peer 0) at once and on the others when
// release is called. Its CLOSE replies carry commit infos as raft.Node's
// do, with the followers' applied index as it is: behind.
type heldCommitter struct {
	peers []*server.Server

	mu      sync.Mutex
	index   uint64
	applied uint64 // the followers'
	held    []statemachine.Entry
}

func (h *heldCommitter) Commit(ctx context.Context, s statemachine.StreamInfo) (*pb.RaftClientReply, error) {
	h.mu.Lock()
	h.index++
	e := statemachine.Entry{Index: h.index, Term: 1, Key: s.Key, Request: s.Request, Length: s.Length,
		Checksum: s.Checksum, Checksummed: s.Checksummed}
	h.held = append(h.held, e)
	applied := h.applied
	h.mu.Unlock()
	if err := h.peers[0].Streams().Link(ctx, e); err != nil {
		return nil, err
	}
	infos := []*pb.CommitInfo{{ServerId: h.peers[0].ID(), CommitIndex: e.Index, AppliedIndex: e.Index}}
	for _, p := range h.peers[1:] {
		infos = append(infos, &pb.CommitInfo{ServerId: p.ID(), CommitIndex: e.Index, AppliedIndex: applied})
	}
	return &pb.RaftClientReply{ClientId: s.Request.GetClientId(), CallId: s.Request.GetCallId(),
		Success: true, LogIndex: e.Index, Term: e.Term, CommitInfos: infos}, nil
}

// release links the held entries on the followers, in log order.
func (h *heldCommitter) release(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	held := h.held
	h.held = nil
	h.mu.Unlock()
	for _, e := range held {
		grouptest.Link(t, context.Background(), h.peers[1:], e)
		h.mu.Lock()
		h.applied = e.Index
		h.mu.Unlock()
	}
}

// WaitApplied returns once every peer has applied the stream's entry, not
// when the CLOSE is acknowledged: while the followers' links are held it
// times out naming them, and once they are released it returns with the
// file in each peer's catalog.
func TestWaitApplied(t *testing.T) {
	buffertest.Check(t)
	g, stores := fileGroup(t, 3, transport.Gnet)
	hc := &heldCommitter{peers: g.servers}
	for _, s := range g.servers {
		s.SetCommitter(hc)
	}
	t.Cleanup(func() { hc.release(t) }) // before the peers shut down
	c := g.client(t)
	ctx := testCtx(t)

	out, err := c.Stream(ctx, []byte("dir/late"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := out.WriteAsync(ctx, []byte("applied later"), datastream.Close).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	index := rep.RaftClientReply.GetLogIndex()
	if infos := rep.CommitInfos(); len(infos) != 3 || infos[0].GetAppliedIndex() != index || infos[1].GetAppliedIndex() >= index {
		t.Fatalf("CommitInfos %v: want the primary at %d and the followers behind", infos, index)
	}

	// The primary has applied it; the followers cannot have.
	if err := out.WaitApplied(ctx, g.peers[0].ID); err != nil {
		t.Fatalf("WaitApplied on the primary: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err = out.WaitApplied(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not applied on s2, s3") {
		t.Fatalf("WaitApplied with the followers held: %v, want a deadline naming s2 and s3 only", err)
	}
	for i := 1; i < 3; i++ {
		if files := stores[i].List(); len(files) != 0 {
			t.Fatalf("%s holds %v before its link was released", g.peers[i].ID, files)
		}
	}

	done := make(chan error, 1)
	go func() { done <- out.WaitApplied(ctx) }()
	hc.release(t)
	if err := <-done; err != nil {
		t.Fatalf("WaitApplied after the release: %v", err)
	}
	for i := range stores {
		files, err := c.List(ctx, g.peers[i].ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(files) != 1 || files[0].Name != "dir/late" || files[0].Index != index {
			t.Errorf("%s lists %v, want dir/late at %d", g.peers[i].ID, files, index)
		}
	}

	// Client.WaitApplied by name: a later entry of the name counts, an
	// index beyond any entry does not.
	if err := c.WaitApplied(ctx, "dir/late", index); err != nil {
		t.Errorf("Client.WaitApplied: %v", err)
	}
	// notYet checks that Client.WaitApplied of name at index at on peer
	// (what, in a failure) is still waiting a moment later.
	notYet := func(what, name string, at uint64, peer string) {
		t.Helper()
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if err := c.WaitApplied(short, name, at, peer); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Client.WaitApplied of %s: %v, want a deadline", what, err)
		}
	}
	notYet("an index not reached", "dir/late", index+1, g.peers[1].ID)
	if err := c.WaitApplied(ctx, "dir/late", index, "nobody"); err == nil {
		t.Error("Client.WaitApplied on a peer outside the group succeeded")
	}

	// An entry applied without a copy (no peer got its stream) is applied
	// all the same: a stat of it answers ErrMissing, and its index comes
	// from the catalog.
	gone := statemachine.Entry{Index: index + 1, Term: 1, Key: statemachine.StreamKey{ClientID: "other", StreamID: 9},
		Request: &pb.RaftClientRequest{Type: pb.RaftClientRequest_STREAM, Message: []byte("gone")}}
	for _, s := range g.servers {
		_ = s.Streams().Link(ctx, gone) // fails: there is no copy to link
	}
	if files, err := c.List(ctx, g.peers[2].ID); err != nil || len(files) != 2 || !files[1].Missing {
		t.Fatalf("%s lists %v, %v; want gone as missing", g.peers[2].ID, files, err)
	}
	if err := c.WaitApplied(ctx, "gone", index+1); err != nil {
		t.Errorf("Client.WaitApplied of a missing entry: %v", err)
	}
	notYet("a missing entry's later index", "gone", index+2, g.peers[2].ID)
}

// A state machine that serves no reads cannot be watched: WaitApplied
// fails at once with ErrForbidden instead of polling until ctx ends.
func TestWaitAppliedWithoutReads(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 2, groupOpts{})
	c := g.client(t)
	ctx := testCtx(t)
	err := c.WaitApplied(ctx, "x", 1)
	if !errors.Is(err, datastream.ErrForbidden) {
		t.Fatalf("WaitApplied on Memory state machines: %v, want ErrForbidden", err)
	}
	if ctx.Err() != nil {
		t.Fatal("WaitApplied waited for ctx")
	}
}
