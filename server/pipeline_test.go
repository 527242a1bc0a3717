package server_test

import (
	"context"
	"errors"
	"slices"
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
	out, err := c.Stream(ctx, []byte("hooked"))
	if err != nil {
		t.Fatal(err)
	}
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
	want := []string{handler.StageFrame, handler.StageRead, handler.StagePacket, handler.StageRouter, "count",
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
