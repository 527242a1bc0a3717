package server_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

func memoryGroup(t *testing.T, n int, tweak func(*groupOpts)) *group {
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
			out, err := c.Stream(ctx, []byte("recovered"), datastream.WithRoutingTable(tc.routing(ids...)))
			if err != nil {
				t.Fatal(err)
			}
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
