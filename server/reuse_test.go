package server_test

import (
	"context"
	"crypto/sha256"
	"strings"
	"sync"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/internal/grouptest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

// laggingCommitter stands in for Raft with followers that apply late: it
// links an entry on the primary (peer 0) at once and on the others only
// when release is called, as followers whose log applier lags.
type laggingCommitter struct {
	peers []*server.Server

	mu      sync.Mutex
	index   uint64
	keys    map[statemachine.StreamKey]uint64
	pending []statemachine.Entry
}

func (l *laggingCommitter) Commit(ctx context.Context, s statemachine.StreamInfo) (*pb.RaftClientReply, error) {
	l.mu.Lock()
	l.index++
	e := statemachine.Entry{Index: l.index, Term: 1, Key: s.Key, Request: s.Request, Length: s.Length}
	l.keys[s.Key] = e.Index
	l.pending = append(l.pending, e)
	l.mu.Unlock()
	if err := l.peers[0].Streams().Link(ctx, e); err != nil {
		return nil, err
	}
	return &pb.RaftClientReply{ClientId: s.Request.GetClientId(), CallId: s.Request.GetCallId(),
		Success: true, LogIndex: e.Index, Term: e.Term}, nil
}

// release links every committed entry on the followers, in log order.
func (l *laggingCommitter) release(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	pending := l.pending
	l.pending = nil
	l.mu.Unlock()
	for _, e := range pending {
		grouptest.Link(t, context.Background(), l.peers[1:], e)
	}
}

// rememberingCommitter is a laggingCommitter that is a KeyChecker, as
// raft.Node is.
type rememberingCommitter struct{ *laggingCommitter }

func (r rememberingCommitter) Committed(k statemachine.StreamKey) (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.keys[k]
	return i, ok
}

// A client that sends a header again with the id of a stream it just
// closed (loss path 3 of the durability issue): the committed stream must
// end up on every peer, and the reused id must not be called committed.
func TestStreamIDReusedAfterClose(t *testing.T) {
	for _, remember := range []bool{true, false} {
		name := map[bool]string{true: "primary-knows-committed-keys", false: "followers-guard-the-closed-stream"}[remember]
		t.Run(name, func(t *testing.T) {
			buffertest.Check(t)
			g := startGroup(t, 3, groupOpts{})
			lc := &laggingCommitter{peers: g.servers, keys: map[statemachine.StreamKey]uint64{}}
			var c statemachine.Committer = lc
			if remember {
				c = rememberingCommitter{lc}
			}
			for _, s := range g.servers {
				s.SetCommitter(c)
			}
			r := dialRaw(t, g.peers[0].StreamAddr)
			data := randomBytes(3, 100<<10)
			r.header(1, r.request(1, g.peers[0].ID, nil))
			r.data(1, 0, data, pb.DataStreamPacketHeader_CLOSE)
			for i, want := range []pb.DataStreamPacketHeader_Type{pb.DataStreamPacketHeader_STREAM_HEADER, pb.DataStreamPacketHeader_STREAM_DATA} {
				h, rcr := r.reply()
				if !h.GetSuccess() || h.GetPacketHeader().GetType() != want {
					t.Fatalf("reply %d: %v", i, h)
				}
				if i == 1 && !rcr.GetSuccess() {
					t.Fatalf("CLOSE reply without a successful RaftClientReply: %v", rcr)
				}
			}

			// The same id again, at once: the followers still wait for the
			// entry.
			r.header(1, r.request(1, g.peers[0].ID, nil))
			h, _ := r.reply()
			if h.GetSuccess() {
				t.Fatalf("a reused stream id was accepted: %v", h)
			}
			if remember && h.GetErrorCode() != pb.ErrorCode_DUPLICATE_HEADER {
				t.Errorf("reused id refused with %v, want DUPLICATE_HEADER from the primary", h.GetErrorCode())
			}
			// Whatever the refusal, the first stream commits everywhere.
			lc.release(t)
			k := statemachine.StreamKey{ClientID: string(r.client), StreamID: 1}
			for i := range g.servers {
				sum, ok := g.memory(i).Sum(k)
				if !ok || sum != sha256.Sum256(data) {
					t.Errorf("%s: committed stream has data %v (sum ok %v), want the streamed bytes", g.peers[i].ID, sum != [32]byte{}, ok)
				}
				if m := g.memory(i).Missing(); m != 0 {
					t.Errorf("%s: %d entries missing", g.peers[i].ID, m)
				}
			}
		})
	}
}

// Past what a committer remembers, a durable state machine still knows
// the key: a primary whose FileStore linked a stream refuses its id again.
func TestStreamIDReusedLongAfter(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{sm: fileStores(t)})
	lc := &laggingCommitter{peers: g.servers, keys: map[statemachine.StreamKey]uint64{}} // remembers nothing for the primary
	for _, s := range g.servers {
		s.SetCommitter(lc)
	}
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.open(1, g.peers[0].ID)
	r.data(1, 0, []byte("once"), pb.DataStreamPacketHeader_CLOSE)
	r.expect("close", 1, 0, pb.ErrorCode_ERROR_NONE)
	lc.release(t)
	r.header(1, r.request(1, g.peers[0].ID, nil))
	if h := r.expect("reused id", 1, 0, pb.ErrorCode_DUPLICATE_HEADER); !strings.Contains(h.GetErrorMessage(), "used once") {
		t.Errorf("refusal %q does not say why", h.GetErrorMessage())
	}
}

// fileStores gives each peer of a test group a FileStore of its own in a
// temporary directory, closed when t ends.
func fileStores(t testing.TB) func(int) statemachine.StateMachine {
	return func(int) statemachine.StateMachine {
		fs, err := statemachine.NewFileStore(t.TempDir(), statemachine.WithLogger(quietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fs.Close() })
		return fs
	}
}
