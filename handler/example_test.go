package handler_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

// checksums is a user stage: it keeps a SHA-256 of every stream's data as
// the data passes this peer. One value serves every connection of a
// server, and connections run on different event loops, hence the lock.
type checksums struct {
	mu      sync.Mutex
	running map[handler.StreamKey]hash.Hash
	closed  map[handler.StreamKey][]byte
}

func newChecksums() *checksums {
	return &checksums{
		running: make(map[handler.StreamKey]hash.Hash),
		closed:  make(map[handler.StreamKey][]byte),
	}
}

// observe sees each packet after the router (so p.Stream is set) and
// before the local write. It runs on the event loop: hashing a packet is
// quick, but anything that can block belongs on an executor. It only reads
// p.Body, and hands the packet, with its reference, to the next stage.
func (c *checksums) observe(ctx *pipeline.Context, p *handler.Packet) {
	if p.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
		k := p.Key()
		c.mu.Lock()
		if p.Has(pb.DataStreamPacketHeader_ABORT) {
			delete(c.running, k)
		} else {
			h := c.running[k]
			if h == nil {
				h = sha256.New()
				c.running[k] = h
			}
			h.Write(p.Body.Bytes())
			if p.Has(pb.DataStreamPacketHeader_CLOSE) {
				c.closed[k] = h.Sum(nil)
				delete(c.running, k)
			}
		}
		c.mu.Unlock()
	}
	ctx.FireChannelRead(p)
}

func (c *checksums) sum(k handler.StreamKey) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed[k]
}

// Insert a checksum stage between the router and the local write on every
// connection of a three-peer group, stream some bytes through the chain,
// and print what the stage computed on each peer.
func Example_insertStage() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	ids := []string{"s1", "s2", "s3"}
	var members []group.Member
	for _, id := range ids {
		members = append(members, group.Member{ID: id})
	}
	var (
		servers []*server.Server
		sums    []*checksums
		peers   []group.Member
	)
	for _, id := range ids {
		sum := newChecksums()
		s, err := server.Listen(ctx, server.Config{
			ID: id, Peers: members, Logger: quiet,
			StateMachine: statemachine.NewMemoryHashing(),
			// Called for every client and predecessor connection, after
			// the server stages are in place.
			Pipeline: func(p *pipeline.Pipeline) error {
				return p.AddAfter(handler.StageRouter, "checksum", pipeline.Inbound(sum.observe))
			},
		})
		if err != nil {
			fmt.Println(err)
			return
		}
		defer s.Shutdown(context.Background())
		servers, sums = append(servers, s), append(sums, sum)
		peers = append(peers, group.Member{ID: id, StreamAddr: s.Addr().String()})
	}
	for _, s := range servers {
		for _, p := range peers {
			s.SetPeerAddr(p.ID, p.StreamAddr)
		}
	}
	for _, s := range servers {
		if err := s.WaitPeers(ctx); err != nil {
			fmt.Println(err)
			return
		}
	}

	c, err := datastream.NewClient(peers, datastream.WithLogger(quiet))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	out, err := c.Stream(ctx, []byte("greetings.txt")) // a chain s1 -> s2 -> s3
	if err != nil {
		fmt.Println(err)
		return
	}
	out.WriteAsync(ctx, []byte("hello, "))
	out.WriteAsync(ctx, []byte("pipeline"))
	// The reply to CLOSE comes once every peer has closed the stream, so
	// every peer's stage has seen the whole stream by then.
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		fmt.Println(err)
		return
	}

	key := handler.StreamKey{ClientID: string(c.ID()), StreamID: out.ID()}
	for i, sum := range sums {
		fmt.Printf("%s %x\n", ids[i], sum.sum(key)[:8])
	}
	want := sha256.Sum256([]byte("hello, pipeline"))
	fmt.Printf("want %x\n", want[:8])
	// Output:
	// s1 57f9d12212a035c0
	// s2 57f9d12212a035c0
	// s3 57f9d12212a035c0
	// want 57f9d12212a035c0
}
