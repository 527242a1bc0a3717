package peer_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/peer"
)

// Three peers in one process, on ports the system picks: New binds them,
// Start hands every peer the group's bound addresses.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	ids := []peer.Member{{ID: "s1"}, {ID: "s2"}, {ID: "s3"}}

	var peers []*peer.Peer
	var members []peer.Member
	for _, m := range ids {
		// No DataDir: Raft log and streams in memory.
		p, err := peer.New(ctx, peer.Config{ID: m.ID, Peers: ids, Logger: quiet})
		if err != nil {
			log.Fatal(err)
		}
		defer p.Shutdown(context.Background())
		peers = append(peers, p)
		members = append(members, p.Addrs())
	}
	for _, p := range peers {
		if err := p.Start(ctx, members); err != nil {
			log.Fatal(err)
		}
	}
	for _, p := range peers {
		if err := p.WaitReady(ctx); err != nil {
			log.Fatal(err)
		}
	}

	// A client takes the same member list; it dials the StreamAddrs.
	c, err := datastream.NewClient(members, datastream.WithLogger(quiet))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// Any peer may be the primary; a follower forwards the commit.
	out, err := c.Stream(ctx, []byte("hello.txt"), datastream.WithPrimary("s3"))
	if err != nil {
		log.Fatal(err)
	}
	out.WriteAsync(ctx, []byte("hello, world\n"))
	r, err := out.Close(ctx).Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("committed:", r.RaftClientReply.GetSuccess(), "bytes:", r.BytesWritten())
	// Output: committed: true bytes: 13
}
