package server_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

func memoryGroup(t *testing.T, n int, tweak func(*groupOpts)) *cluster {
	o := groupOpts{sm: func(int) statemachine.StateMachine { return statemachine.NewMemory() }}
	if tweak != nil {
		tweak(&o)
	}
	return startGroup(t, n, o)
}

// TestRecoverySuccessorShutDown: a successor that goes away mid-stream is
// routed around, in a chain (its successor is resumed by its predecessor)
// and in a star; the stream commits on the survivors with every byte.
func TestRecoverySuccessorShutDown(t *testing.T) {
	for _, tc := range []struct {
		name    string
		routing func(ids ...string) *pb.RoutingTable
		victim  int
	}{
		{"chain-middle", pb.Chain, 1},
		{"chain-tail", pb.Chain, 2},
		{"star", func(ids ...string) *pb.RoutingTable { return pb.Star(ids[0], ids[1:]...) }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			g := memoryGroup(t, 3, nil)
			c := g.client(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ids := []string{g.peers[0].ID, g.peers[1].ID, g.peers[2].ID}
			out := openStream(t, ctx, c, "recovered", datastream.WithRoutingTable(tc.routing(ids...)))
			data := randomBytes(7, 8<<20)
			const pkt = 64 << 10
			for off := 0; off < len(data); off += pkt {
				if off == len(data)/2 {
					sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
					if err := g.servers[tc.victim].Shutdown(sctx); err != nil {
						t.Fatal(err)
					}
					scancel()
				}
				out.WriteAsync(ctx, data[off:off+pkt])
			}
			reply, err := out.Close(ctx).Wait(ctx)
			if err != nil {
				t.Fatalf("close with %s shut down mid-stream: %v", ids[tc.victim], err)
			}
			t.Logf("committed at %d", reply.RaftClientReply.GetLogIndex())
			for i := range g.servers {
				if i == tc.victim {
					continue
				}
				got, ok := g.memory(i).Data(key(c, out))
				if !ok || !bytes.Equal(got, data) {
					t.Errorf("%s holds %d bytes (linked %v), want the %d sent", ids[i], len(got), ok, len(data))
				}
			}
		})
	}
}

// TestRecoveryTwoDown: with two of three peers down the write quorum (two)
// cannot be met: the header is refused with NOT_ENOUGH_PEERS naming both,
// and nothing is stored.
func TestRecoveryTwoDown(t *testing.T) {
	buffertest.Check(t)
	g := memoryGroup(t, 3, nil)
	for _, i := range []int{1, 2} {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := g.servers[i].Shutdown(sctx); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	c := g.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Until the primary has seen both connections end, a stream may get
	// as far as a successor that is closing; each try is a new stream.
	var err error
	waitFor(t, 10*time.Second, "the primary to refuse for want of peers", func() bool {
		var out *datastream.Output
		out, err = c.Stream(ctx, []byte("no quorum"))
		if err == nil {
			_, err = out.Close(ctx).Wait(ctx)
		}
		return errors.Is(err, datastream.ErrNotEnoughPeers)
	})
	if err == nil {
		t.Fatal("a stream committed with two of three peers down")
	}
	for _, id := range []string{g.peers[1].ID, g.peers[2].ID} {
		if !strings.Contains(err.Error(), id) {
			t.Errorf("error %q does not name %s", err, id)
		}
	}
	if n := len(g.memory(0).Committed()); n != 0 {
		t.Errorf("%d streams committed on the survivor", n)
	}
	g.servers, g.sms, g.peers = g.servers[:1], g.sms[:1], g.peers[:1]
}

// TestRecoveryStalledSuccessorFenced: the middle peer of a chain stops
// answering (its inbound connection paused, the process alive). Its
// predecessor times it out, resumes the tail and commits with the two
// holders; once the middle peer's connection flows again, the late bytes
// and the abort reach it, and it never links a copy under the committed
// key: it has the entry without data, as a missing copy.
func TestRecoveryStalledSuccessorFenced(t *testing.T) {
	buffertest.Check(t)
	g, proxies := startGroupVia(t, 3, groupOpts{
		sm:    func(int) statemachine.StateMachine { return statemachine.NewMemory() },
		tweak: func(c *server.Config) { c.ReplyTimeout = 500 * time.Millisecond },
	}, edge{0, 1})
	g.commitByFanout()
	c := g.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := openStream(t, ctx, c, "fenced")
	data := randomBytes(9, 4<<20)
	half := len(data) / 2
	if _, err := out.WriteAsync(ctx, data[:half]).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	px := proxies[edge{0, 1}]
	px.Pause()
	for off := half; off < len(data); off += 256 << 10 {
		out.WriteAsync(ctx, data[off:off+256<<10])
	}
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		t.Fatalf("close with the middle peer stalled: %v", err)
	}
	px.Resume()
	k := key(c, out)
	for _, i := range []int{0, 2} {
		if got, ok := g.memory(i).Data(k); !ok || !bytes.Equal(got, data) {
			t.Errorf("%s holds %d bytes (linked %v), want all %d", g.peers[i].ID, len(got), ok, len(data))
		}
	}
	waitFor(t, 10*time.Second, "the stalled peer to drop its stream", func() bool {
		return g.servers[1].Streams().Active() == 0 && g.servers[1].Streams().Pending() == 0
	})
	if _, ok := g.memory(1).Data(k); ok {
		t.Errorf("%s, dropped from the pipeline, linked a copy", g.peers[1].ID)
	}
	if n := g.memory(1).Missing(); n != 1 {
		t.Errorf("%s records %d missing copies, want 1", g.peers[1].ID, n)
	}
}
