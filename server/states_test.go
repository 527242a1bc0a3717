package server_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/internal/smtest"
	"github.com/pipestream/pipestream/internal/statetrace"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

// holdingChannel holds its Close until release is closed, so that a
// stream stays closing on this peer.
type holdingChannel struct {
	smtest.Channel
	release chan struct{}
}

func (c holdingChannel) Close() error {
	<-c.release
	return c.DataChannel.Close()
}

func (c holdingChannel) Truncate(n uint64) error {
	return c.DataChannel.(statemachine.Truncater).Truncate(n)
}

// refusingCommitter never commits: the primary's stream stays parked.
type refusingCommitter struct{}

func (refusingCommitter) Commit(context.Context, statemachine.StreamInfo) (*pb.RaftClientReply, error) {
	return nil, errors.New("no commit here")
}

// TestStreamStates drives real servers through every transition of the
// stream state diagram (handler/stream_state.go) and checks that no stream
// took one the diagram lacks. The peer under test, b, is a successor of a
// primary that the test plays over raw connections: a peer connection
// opens with a PING.
func TestStreamStates(t *testing.T) {
	buffertest.Check(t)
	var (
		mu   sync.Mutex
		seen = map[statetrace.Change]int{}
	)
	stop := statetrace.Watch(func(c statetrace.Change) {
		mu.Lock()
		seen[c]++
		mu.Unlock()
	})
	defer stop()

	var gate atomic.Pointer[chan struct{}]
	hold := func() (release func()) {
		ch := make(chan struct{})
		gate.Store(&ch)
		return func() { close(ch) }
	}
	open0 := make(chan struct{})
	close(open0)
	gate.Store(&open0)
	g := startGroup(t, 2, groupOpts{
		quorum: 1, // below every peer: recovery on
		sm: func(i int) statemachine.StateMachine {
			if i == 1 {
				// Each stream takes the gate of its open.
				return &smtest.Wrapper{Memory: statemachine.NewMemory(), Wrap: func(ch statemachine.DataChannel) statemachine.DataChannel {
					return holdingChannel{smtest.Channel{DataChannel: ch}, *gate.Load()}
				}}
			}
			return statemachine.NewMemory()
		},
		tweak: func(c *server.Config) {
			c.ReplyTimeout, c.SweepInterval = 2*time.Second, 20*time.Millisecond
			c.CommitTimeout, c.LinkTimeout = 100*time.Millisecond, 300*time.Millisecond
		},
	})
	b := g.peers[1]
	table := pb.Chain(g.peers[0].ID, b.ID)
	peerConn := func() *raw {
		r := dialRaw(t, b.StreamAddr)
		r.sendFrame(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}, nil)
		if h, _ := r.reply(); !h.GetSuccess() {
			t.Fatalf("PING: %v", h)
		}
		return r
	}
	open := func(r *raw, id uint64) {
		r.header(id, r.request(id, g.peers[0].ID, table))
		if h, _ := r.reply(); !h.GetSuccess() {
			t.Fatalf("header %d: %v", id, h)
		}
	}
	// resume sends a RESUME; its reply comes after those of the packets
	// the stream already had, so the caller reads it.
	resume := func(r *raw, id, at uint64) {
		body, err := protoMarshal(r.request(id, g.peers[0].ID, table))
		if err != nil {
			t.Fatal(err)
		}
		r.sendFrame(&pb.DataStreamPacketHeader{
			ClientId: r.client, Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: id,
			StreamOffset: at, DataLength: uint64(len(body)), Options: uint32(pb.DataStreamPacketHeader_RESUME), Epoch: 1,
		}, body)
	}
	settled := func(what string) {
		waitFor(t, 10*time.Second, what, func() bool {
			s := g.servers[1].Streams()
			return s.Active() == 0
		})
	}
	data := []byte("twelve bytes")
	n := uint64(len(data))

	// open → orphaned → failed → drained: the predecessor goes away and
	// nobody resumes within the reply timeout.
	r := peerConn()
	open(r, 1)
	r.data(1, 0, data)
	r.reply()
	r.c.Close()
	settled("the orphan to fail")

	// open → failed → drained: the predecessor aborts.
	r = peerConn()
	open(r, 2)
	r.data(2, 0, nil, pb.DataStreamPacketHeader_ABORT)
	r.reply()
	settled("the aborted stream to drain")

	// closing → failed: aborted while its CLOSE is being written.
	release := hold()
	open(r, 3)
	r.data(3, 0, data, pb.DataStreamPacketHeader_CLOSE)
	waitFor(t, 10*time.Second, "the CLOSE to be routed", func() bool { return seen2(&mu, seen, "open", "closing") >= 1 })
	r.data(3, n, nil, pb.DataStreamPacketHeader_ABORT)
	waitFor(t, 10*time.Second, "the closing stream to fail", func() bool { return seen2(&mu, seen, "closing", "failed") >= 1 })
	release()
	r.reply() // CLOSE's, failed
	r.reply() // the ABORT's
	settled("the failed closing stream to drain")

	// closing → orphaned → open → (closing →) parked: the predecessor
	// goes away while the CLOSE is being written; another resumes at the
	// end and replays the CLOSE, which the copy, closed by then, already
	// holds.
	release = hold()
	r = peerConn()
	open(r, 4)
	r.data(4, 0, data, pb.DataStreamPacketHeader_CLOSE)
	waitFor(t, 10*time.Second, "the CLOSE to be routed", func() bool { return seen2(&mu, seen, "open", "closing") >= 2 })
	r.c.Close()
	waitFor(t, 10*time.Second, "the closing stream to be orphaned", func() bool { return seen2(&mu, seen, "closing", "orphaned") >= 1 })
	r2 := peerConn()
	resume(r2, 4, n)
	waitFor(t, 10*time.Second, "the resume to take the orphan", func() bool { return seen2(&mu, seen, "orphaned", "open") >= 1 })
	release()
	if h, _ := r2.reply(); !h.GetSuccess() {
		t.Fatalf("resume of an orphan: %v", h)
	}
	r2.data(4, n, nil, pb.DataStreamPacketHeader_CLOSE)
	if h, _ := r2.reply(); !h.GetSuccess() {
		t.Fatalf("CLOSE replayed after the resume: %v", h)
	}

	// orphaned → parked: the CLOSE an orphan was writing completes, and
	// the stream closed on every successor (none here) parks, waiting for
	// its entry (linked at once, standalone).
	release = hold()
	r4 := peerConn()
	open(r4, 7)
	r4.data(7, 0, data, pb.DataStreamPacketHeader_CLOSE)
	waitFor(t, 10*time.Second, "the CLOSE to be routed", func() bool { return seen2(&mu, seen, "open", "closing") >= 4 })
	r4.c.Close()
	waitFor(t, 10*time.Second, "the closing stream to be orphaned", func() bool { return seen2(&mu, seen, "closing", "orphaned") >= 2 })
	release()
	waitFor(t, 10*time.Second, "the orphan to park", func() bool { return seen2(&mu, seen, "orphaned", "parked") >= 1 })
	settled("the orphan to be linked")

	// closing → open: a new predecessor resumes while the old one is
	// still connected (it was dropped); the old one is fenced off.
	release = hold()
	open(r2, 5)
	r2.data(5, 0, data, pb.DataStreamPacketHeader_CLOSE)
	waitFor(t, 10*time.Second, "the CLOSE to be routed", func() bool { return seen2(&mu, seen, "open", "closing") >= 5 })
	r3 := peerConn()
	resume(r3, 5, n)
	waitFor(t, 10*time.Second, "the resume to take the stream", func() bool { return seen2(&mu, seen, "closing", "open") >= 1 })
	r2.data(5, n, []byte("late"))
	release()
	if h, _ := r3.reply(); !h.GetSuccess() {
		t.Fatalf("resume of a closing stream: %v", h)
	}
	r3.data(5, n, nil, pb.DataStreamPacketHeader_CLOSE)
	for {
		h, _ := r3.reply()
		if h.GetPacketHeader().GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
			if !h.GetSuccess() {
				t.Fatalf("CLOSE from the new predecessor: %v", h)
			}
			break
		}
	}
	for {
		h, _ := r2.reply()
		if h.GetPacketHeader().GetStreamOffset() == n && h.GetPacketHeader().GetDataLength() == 4 {
			if h.GetErrorCode() != pb.ErrorCode_FORBIDDEN {
				t.Errorf("late data from the dropped predecessor: %v, want FORBIDDEN", h)
			}
			break
		}
	}
	settled("the resumed streams to park")

	// Standalone-free paths on the primary a: a commit that never comes
	// leaves the stream parked until the link timeout: parked → discarded.
	g.servers[0].SetCommitter(refusingCommitter{})
	g.servers[1].SetCommitter(refusingCommitter{})
	c := g.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := openStream(t, ctx, c, "never committed")
	out.WriteAsync(ctx, data)
	if _, err := out.Close(ctx).Wait(ctx); err == nil {
		t.Fatal("committed with a committer that refuses")
	}
	waitFor(t, 10*time.Second, "the parked streams to be discarded", func() bool {
		return g.servers[0].Streams().Pending() == 0 && g.servers[1].Streams().Pending() == 0
	})

	// parked → released: b shuts down with a stream parked, waiting for
	// an entry that may still come.
	r = peerConn()
	open(r, 6)
	r.data(6, 0, data, pb.DataStreamPacketHeader_CLOSE)
	if h, _ := r.reply(); !h.GetSuccess() {
		t.Fatalf("CLOSE on b: %v", h)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := g.servers[1].Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	g.servers, g.sms, g.peers = g.servers[:1], g.sms[:1], g.peers[:1]

	mu.Lock()
	defer mu.Unlock()
	for c, k := range seen {
		if !c.Allowed {
			t.Errorf("%d streams went %s → %s, which the diagram does not have", k, c.From, c.To)
		}
	}
	for _, c := range statetrace.Declared() {
		if seen[c] == 0 {
			t.Errorf("no stream went %s → %s", c.From, c.To)
		}
	}
}

func seen2(mu *sync.Mutex, seen map[statetrace.Change]int, from, to string) int {
	mu.Lock()
	defer mu.Unlock()
	return seen[statetrace.Change{From: from, To: to, Allowed: true}]
}
