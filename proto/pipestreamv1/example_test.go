package pipestreamv1_test

import (
	"errors"
	"fmt"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

func ExampleRoutingTable_Validate() {
	group := []string{"s1", "s2", "s3"}

	chain := pb.Chain("s1", "s2", "s3")
	fmt.Println(chain.Validate("s1", group))

	// s3 is listed by both s1 and s2, so it would get every byte twice.
	diamond := &pb.RoutingTable{Routes: []*pb.Route{
		{Peer: "s1", Successors: []string{"s2", "s3"}},
		{Peer: "s2", Successors: []string{"s3"}},
	}}
	err := diamond.Validate("s1", group)
	fmt.Println(errors.Is(err, pb.ErrInvalidRoutingTable))
	fmt.Println(err)
	// Output:
	// <nil>
	// true
	// pipestreamv1: invalid routing table: peer "s3" has two predecessors, "s1" and "s2"
}

func ExampleRoutingTable_OrStar() {
	group := []string{"s1", "s2", "s3"}

	// A request without a routing table means the primary sends to everyone.
	var rt *pb.RoutingTable
	for _, peer := range group {
		fmt.Println(peer, "->", rt.OrStar("s1", group).Successors(peer))
	}
	// Output:
	// s1 -> [s2 s3]
	// s2 -> []
	// s3 -> []
}
