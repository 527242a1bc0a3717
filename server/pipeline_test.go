package server_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

// TestPipelineHook inserts a stage on every upstream connection of every
// peer and checks that it sits where it was put and sees each peer's data.
func TestPipelineHook(t *testing.T) {
	buffertest.Check(t)
	const peers = 3
	var (
		seen  [peers]atomic.Int64 // data bytes each peer's stage saw
		mu    sync.Mutex
		names [][]string
	)
	g := startGroup(t, peers, groupOpts{tweak: func(cfg *server.Config) {
		i := int(cfg.ID[0] - 'a') // peerID(i)
		cfg.Pipeline = func(p *pipeline.Pipeline) error {
			err := p.AddAfter(handler.StageRouter, "count", pipeline.Inbound(func(ctx *pipeline.Context, pk *handler.Packet) {
				if pk.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
					seen[i].Add(int64(pk.Body.Len()))
				}
				ctx.FireChannelRead(pk)
			}))
			mu.Lock()
			names = append(names, p.Names())
			mu.Unlock()
			return err
		}
	}})
	c := g.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := openStream(t, ctx, c, "hooked")
	data := randomBytes(5, 3<<20+1)
	if _, err := out.Writer(ctx).Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range seen {
		if n := seen[i].Load(); n != int64(len(data)) {
			t.Errorf("%s: stage saw %d data bytes, want %d", peerID(i), n, len(data))
		}
	}
	want := []string{handler.StageFrame, handler.StageRead, handler.StagePacket, server.StagePeerGate, handler.StageRouter, "count",
		handler.StageWrite, handler.StageForward, handler.StageReply, handler.StageEncode}
	mu.Lock()
	defer mu.Unlock()
	if len(names) == 0 {
		t.Fatal("hook never called")
	}
	for _, n := range names {
		if !slices.Equal(n, want) {
			t.Errorf("stages = %v, want %v", n, want)
		}
	}
}

// TestPipelineHookError closes a connection whose hook fails: the client's
// stream fails instead of hanging.
func TestPipelineHookError(t *testing.T) {
	buffertest.Check(t)
	errHook := errors.New("no thanks")
	var calls atomic.Int32
	g := startGroup(t, 1, groupOpts{tweak: func(cfg *server.Config) {
		cfg.Pipeline = func(*pipeline.Pipeline) error {
			calls.Add(1)
			return errHook
		}
	}})
	c := g.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := c.Stream(ctx, []byte("refused"))
	if err == nil {
		_, err = out.HeaderFuture().Wait(ctx)
	}
	if !errors.Is(err, datastream.ErrConnectionLost) {
		t.Fatalf("stream on a refused connection: %v, want ErrConnectionLost", err)
	}
	if calls.Load() == 0 {
		t.Fatal("hook never called")
	}
}

// TestPipelineStageDropsPacket puts a stage between the router and the
// reply of the middle peer of a chain that releases one data packet
// instead of passing it on, which a stage there must not do. The middle
// peer's stream fails at once with INTERNAL naming the rule, not at the
// idle timeout, and its copy, with a hole in it, is never linked: with
// every peer required the stream fails with that error, and with a
// majority its predecessor recovers the chain around it and the others
// commit. No buffer leaks, and the next stream goes through.
func TestPipelineStageDropsPacket(t *testing.T) {
	for _, tc := range []struct {
		name   string
		quorum int
	}{{"quorum all", handler.QuorumAll}, {"majority", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			var dropped atomic.Bool
			g := startGroup(t, 3, groupOpts{quorum: tc.quorum, sm: func(int) statemachine.StateMachine {
				return statemachine.NewMemory() // a recovery may cut a copy back; a hashing one cannot
			}, tweak: func(cfg *server.Config) {
				dropper := cfg.ID == peerID(1)
				cfg.Pipeline = func(p *pipeline.Pipeline) error {
					return p.AddAfter(handler.StageRouter, "dropper", pipeline.Inbound(func(ctx *pipeline.Context, pk *handler.Packet) {
						if dropper && pk.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA &&
							pk.Header.GetStreamOffset() > 0 && dropped.CompareAndSwap(false, true) {
							pk.Release()
							return
						}
						ctx.FireChannelRead(pk)
					}))
				}
			}})
			g.commitByFanout()
			c := g.client(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			table := pb.Chain(g.ids()...)
			data := randomBytes(7, 1<<20)
			out := openStream(t, ctx, c, "dropped", datastream.WithRoutingTable(table))
			for off := 0; off < len(data); off += 64 << 10 {
				out.WriteAsync(ctx, data[off:off+64<<10])
			}
			_, err := out.Close(ctx).Wait(ctx)
			if !dropped.Load() {
				t.Fatal("the stage dropped nothing")
			}
			k := key(c, out)
			if tc.quorum == handler.QuorumAll {
				if err == nil || !strings.Contains(err.Error(), "instead of passing it on") {
					t.Fatalf("stream through a stage that drops a packet: %v, want the error naming the rule", err)
				}
			} else {
				if err != nil {
					t.Fatalf("stream recovered around the peer whose stage dropped a packet: %v", err)
				}
				for _, i := range []int{0, 2} {
					if got, ok := g.memory(i).Data(k); !ok || !bytes.Equal(got, data) {
						t.Errorf("%s holds %d bytes (linked %v), want all %d", peerID(i), len(got), ok, len(data))
					}
				}
			}
			if err := stream(ctx, c, table, data); err != nil {
				t.Fatalf("next stream: %v", err)
			}
			g.waitClean(t)
			if _, ok := g.memory(1).Data(k); ok {
				t.Errorf("%s linked the copy its stage cut a packet out of", peerID(1))
			}
		})
	}
}
