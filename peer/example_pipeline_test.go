package peer_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// A stage of the program's own on every client and predecessor connection
// of a peer, set through Config.Pipeline: here one that counts the data
// bytes the peer receives, placed after the router so that each packet
// already knows its stream. The settings of the stream server are set on
// the Config the same way, by name: InlineWrites suits the in-memory
// state machine, whose Write never blocks.
func ExampleConfig_pipeline() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)

	var received atomic.Int64
	count := pipeline.Inbound(func(ctx *pipeline.Context, p *handler.Packet) {
		if p.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
			received.Add(int64(p.Body.Len()))
		}
		ctx.FireChannelRead(p) // pass it on, or the stream stalls
	})
	cfg := peer.Config{ID: "s1", Peers: []peer.Member{{ID: "s1"}}, Logger: quiet}
	cfg.InlineWrites = true
	cfg.Pipeline = func(p *pipeline.Pipeline) error {
		return p.AddAfter(handler.StageRouter, "count", count)
	}

	p, err := peer.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	if err := p.Start(ctx, []peer.Member{p.Addrs()}); err != nil {
		log.Fatal(err)
	}
	if err := p.WaitReady(ctx); err != nil {
		log.Fatal(err)
	}

	c, err := datastream.NewClient([]peer.Member{{ID: "s1", StreamAddr: p.Addrs().StreamAddr}}, datastream.WithLogger(quiet))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	out, err := c.Stream(ctx, []byte("counted.txt"))
	if err != nil {
		log.Fatal(err)
	}
	out.WriteAsync(ctx, []byte("hello, "))
	out.WriteAsync(ctx, []byte("world\n"))
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("the stage saw", received.Load(), "data bytes")
	// Output: the stage saw 13 data bytes
}
