package server_test

import (
	"bytes"
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

// TestRecoveryBeforeHeaderForwarded: the successor of a chain's primary
// goes down after the primary opened a stream with a link to it and
// before the primary forwarded the stream's header. The primary recovers
// around it at once; the header, forwarded next, must open the stream on
// the new link, and the stream commits on the two peers left. (A resume
// sent by that recovery opened it there too, and the header was refused as
// a duplicate, failing a put that a quorum could take.)
func TestRecoveryBeforeHeaderForwarded(t *testing.T) {
	buffertest.Check(t)
	var (
		g       *cluster
		stalled atomic.Bool
		around  = make(chan []string, 1) // the stream's successors after the recovery
	)
	g = startGroup(t, 3, groupOpts{
		sm: func(int) statemachine.StateMachine { return statemachine.NewMemory() },
		tweak: func(cfg *server.Config) {
			if cfg.ID != peerID(0) {
				return
			}
			cfg.Pipeline = func(p *pipeline.Pipeline) error {
				return p.AddAfter(handler.StageRouter, "stall", pipeline.Inbound(func(ctx *pipeline.Context, pk *handler.Packet) {
					if pk.Header.GetType() == pb.DataStreamPacketHeader_STREAM_HEADER && stalled.CompareAndSwap(false, true) {
						// The primary has opened the stream, its header is
						// not forwarded yet: take the successor down and
						// wait, bounded, until the primary routed around it.
						sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						_ = g.servers[1].Shutdown(sctx)
						cancel()
						deadline := time.Now().Add(10 * time.Second)
						succ := pk.Stream.Successors()
						for slices.Contains(succ, peerID(1)) && time.Now().Before(deadline) {
							time.Sleep(5 * time.Millisecond)
							succ = pk.Stream.Successors()
						}
						around <- succ
					}
					ctx.FireChannelRead(pk)
				}))
			}
		},
	})
	g.commitByFanout(1)
	c := g.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	data := randomBytes(11, 2<<20)
	out := openStream(t, ctx, c, "early", datastream.WithRoutingTable(pb.Chain(g.ids()...)))
	out.WriteAsync(ctx, data)
	_, err := out.Close(ctx).Wait(ctx)
	select {
	case succ := <-around:
		if !slices.Equal(succ, []string{peerID(2)}) {
			t.Fatalf("after %s went down before the header, the stream goes to %v, want [%s]", peerID(1), succ, peerID(2))
		}
	default:
		t.Fatal("the stage never stalled a header")
	}
	if err != nil {
		t.Fatalf("stream whose successor went down before its header: %v", err)
	}
	k := key(c, out)
	for _, i := range []int{0, 2} {
		if got, ok := g.memory(i).Data(k); !ok || !bytes.Equal(got, data) {
			t.Errorf("%s holds %d bytes (linked %v), want all %d", peerID(i), len(got), ok, len(data))
		}
	}
	// Peer 1 is shut down already; the cleanup stops the others.
	g.servers = []*server.Server{g.servers[0], g.servers[2]}
	g.sms = []statemachine.StateMachine{g.sms[0], g.sms[2]}
	g.peers = []group.Member{g.peers[0], g.peers[2]}
}
