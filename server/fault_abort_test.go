package server_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/internal/smtest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// TestFaultAbortReachesParkedStream: with a Committer, a successor parks a
// stream once CLOSE is written there, to wait for its entry. When the
// primary then fails the stream, because another successor is lost before
// it acknowledged CLOSE, the stream can never be committed: the primary
// commits only after every successor acknowledged CLOSE, and fail does
// nothing once the commit has started. The primary says so with ABORT;
// the successor that parked the stream must let go of it then, not hold
// its data for the link timeout (five minutes by default).
func TestFaultAbortReachesParkedStream(t *testing.T) {
	buffertest.Check(t)
	g, proxies := startGroupVia(t, 3, groupOpts{quorum: handler.QuorumAll}, edge{0, 1})
	px := proxies[edge{0, 1}]
	g.commitByFanout()
	c := g.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := g.ids()
	out := openStream(t, ctx, c, "parked-then-aborted", datastream.WithRoutingTable(pb.Star(ids[0], ids[1:]...)))
	if _, err := out.WriteAsync(ctx, randomBytes(60, 256<<10)).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// b stops reading before CLOSE; c gets it and parks the stream.
	px.Pause()
	closed := out.Close(ctx)
	waitFor(t, 10*time.Second, "c parking the closed stream", func() bool {
		return g.servers[2].Streams().Pending() == 1
	})
	// b's connection is lost: the primary fails the stream and aborts it
	// on c.
	px.Cut()
	px.Resume()
	if _, err := closed.Wait(ctx); !isCode(err, pb.ErrorCode_SUCCESSOR_FAILED) {
		t.Fatalf("close: %v, want SUCCESSOR_FAILED", err)
	}
	// Far less than the link timeout: the abort, not the sweep, must
	// clean up.
	deadline := time.Now().Add(5 * time.Second)
	for g.servers[2].Streams().Pending() != 0 || g.memory(2).Open() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("c still holds the aborted stream: %d parked, %d open in its state machine (link timeout %v)",
				g.servers[2].Streams().Pending(), g.memory(2).Open(), g.servers[2].Streams().Config().LinkTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for p := range g.servers {
		if committedKeys(g.memory(p))[key(c, out)] {
			t.Errorf("%s committed the aborted stream", g.peers[p].ID)
		}
	}
	g.waitClean(t)
}

// TestFaultAbortReachesParkedChain: in a chain with a Committer, the peers
// below the primary park a stream once CLOSE is written on them and below.
// If the primary then fails it (here its own CLOSE fails), it aborts its
// successor, which drops its parked copy; the ABORT must go on down the
// chain, or the peer below keeps the data for the link timeout.
func TestFaultAbortReachesParkedChain(t *testing.T) {
	buffertest.Check(t)
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // before the servers shut down, whatever happens
	g := startGroup(t, 3, groupOpts{quorum: handler.QuorumAll, sm: func(i int) statemachine.StateMachine {
		if i == 0 {
			return closeFailing(release)
		}
		return statemachine.NewMemoryHashing()
	}})
	mem := func(p int) *statemachine.Memory {
		if sm, ok := g.sms[p].(*smtest.Wrapper); ok {
			return sm.Memory
		}
		return g.memory(p)
	}
	g.commitByFanout()
	c := g.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := openStream(t, ctx, c, "parked-down-the-chain", datastream.WithRoutingTable(pb.Chain(g.ids()...)))
	out.WriteAsync(ctx, randomBytes(61, 256<<10))
	closed := out.Close(ctx)
	waitFor(t, 10*time.Second, "b and c parking the closed stream", func() bool {
		return g.servers[1].Streams().Pending() == 1 && g.servers[2].Streams().Pending() == 1
	})
	free() // the primary's CLOSE fails now
	if _, err := closed.Wait(ctx); !isCode(err, pb.ErrorCode_STATE_MACHINE) {
		t.Fatalf("close: %v, want STATE_MACHINE", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p := 1; p < 3; p++ {
		for g.servers[p].Streams().Pending() != 0 || mem(p).Open() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s still holds the aborted stream: %d parked, %d open in its state machine (link timeout %v)",
					g.peers[p].ID, g.servers[p].Streams().Pending(), mem(p).Open(), g.servers[p].Streams().Config().LinkTimeout)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for p := range g.servers {
		if committedKeys(mem(p))[key(c, out)] {
			t.Errorf("%s committed the aborted stream", g.peers[p].ID)
		}
	}
}

// closeFailing returns a Memory whose streams' Close waits until release
// is closed, and then fails, so that a test can fail the primary's CLOSE
// after its successors have parked the stream.
func closeFailing(release chan struct{}) *smtest.Wrapper {
	return &smtest.Wrapper{
		Memory: statemachine.NewMemoryHashing(),
		Wrap: func(ch statemachine.DataChannel) statemachine.DataChannel {
			return &closeFailingChannel{Channel: smtest.Channel{DataChannel: ch}, release: release}
		},
	}
}

var errCloseFailed = errors.New("close failed")

type closeFailingChannel struct {
	smtest.Channel
	release chan struct{}
}

func (c *closeFailingChannel) Close() error {
	<-c.release
	return errCloseFailed
}
