package server_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// stream writes data through table and closes the stream.
func stream(ctx context.Context, c *datastream.Client, table *pb.RoutingTable, data []byte) error {
	out, err := c.Stream(ctx, []byte("members"), datastream.WithRoutingTable(table))
	if err != nil {
		return err
	}
	out.WriteAsync(ctx, data)
	_, err = out.Close(ctx).Wait(ctx)
	return err
}

// SetPeers takes a peer out of the group and puts it back, while streams
// run: the servers close their connection to it and refuse routing tables
// that name it, then dial it again and route through it.
func TestSetPeers(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 4, groupOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := g.client(t)
	three, four := g.peers[:3], g.peers
	set := func(peers []group.Member) {
		for _, s := range g.servers[:3] {
			s.SetPeers(peers)
		}
	}
	chain := func(peers []group.Member) *pb.RoutingTable {
		var ids []string
		for _, p := range peers {
			ids = append(ids, p.ID)
		}
		return pb.Chain(ids...)
	}

	set(three)
	gone := g.peers[3].ID
	for _, s := range g.servers[:3] {
		if s.PeerConnected(gone) {
			t.Errorf("%s still connected to %s", s.ID(), gone)
		}
	}
	var pe *pb.Error
	if err := stream(ctx, c, chain(four), []byte("x")); !errors.As(err, &pe) || pe.Code != pb.ErrorCode_BAD_ROUTING {
		t.Errorf("stream through %s after it left: %v, want BAD_ROUTING", gone, err)
	}
	c3, err := datastream.NewClient(three, datastream.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if err := stream(ctx, c3, chain(three), []byte("x")); err != nil {
		t.Errorf("stream through the three: %v", err)
	}

	set(four)
	for _, s := range g.servers[:3] {
		if err := s.WaitPeers(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream(ctx, c, chain(four), randomBytes(1, 256<<10)); err != nil {
		t.Errorf("stream through the four: %v", err)
	}

	// Streams while the group changes: each commits or fails, none hangs
	// or leaks, and the group serves once it has settled.
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 20 {
				_ = stream(ctx, c, chain(four), randomBytes(uint64(i*100+j), 32<<10))
			}
		})
	}
	for i := range 20 {
		if i%2 == 0 {
			set(three)
		} else {
			set(four)
		}
	}
	wg.Wait()
	for _, s := range g.servers[:3] {
		if err := s.WaitPeers(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream(ctx, c, chain(four), []byte("settled")); err != nil {
		t.Errorf("stream through the four once settled: %v", err)
	}
	g.waitClean(t)
}
