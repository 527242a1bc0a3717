package raft_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
	"github.com/pipestream/pipestream/statemachine"
)

// printLinker prints what it links; a real one renames the stream's file.
type printLinker struct{ id string }

func (l printLinker) Link(_ context.Context, e statemachine.Entry) error {
	if l.id == "b" { // the committing peer, which has linked when Commit returns
		fmt.Printf("%s links %s (%d bytes)\n", l.id, e.Request.GetMessage(), e.Length)
	}
	return nil
}

// Three peers on loopback, in memory. Every peer binds port 0 first, so the
// group is known only once all are bound; then each starts with the list.
// A commit from any peer links the stream on all of them.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var nodes []*raft.Node
	var peers []group.Member
	for _, id := range []string{"a", "b", "c"} {
		n, err := raft.New(raft.Config{
			ID:         id,
			RaftAddr:   "127.0.0.1:0",
			CommitAddr: "127.0.0.1:0",
			Linker:     printLinker{id},
		})
		if err != nil {
			log.Fatal(err)
		}
		defer n.Shutdown()
		nodes = append(nodes, n)
		peers = append(peers, n.Addr())
	}
	for _, n := range nodes {
		if err := n.Start(ctx, peers); err != nil {
			log.Fatal(err)
		}
	}

	// Commit from peer b, leader or not: a follower forwards to the leader.
	rep, err := nodes[1].Commit(ctx, statemachine.StreamInfo{
		Key:     statemachine.StreamKey{ClientID: "client-1", StreamID: 1},
		Request: &pb.RaftClientRequest{Type: pb.RaftClientRequest_STREAM, Message: []byte("photo.jpg")},
		Length:  4096,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("success:", rep.GetSuccess())
	// Output:
	// b links photo.jpg (4096 bytes)
	// success: true
}
