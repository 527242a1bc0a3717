package group_test

import (
	"fmt"

	"github.com/pipestream/pipestream/group"
)

// A raft-less group needs only the DataStream addresses; the same list
// serves a server's Config.Peers and a datastream client.
func ExampleMember() {
	members := []group.Member{
		{ID: "s1", StreamAddr: "10.0.0.1:7000"},
		{ID: "s2", StreamAddr: "10.0.0.2:7000"},
	}
	for _, m := range members {
		fmt.Println(m.ID, m.StreamAddr)
	}
	// Output:
	// s1 10.0.0.1:7000
	// s2 10.0.0.2:7000
}
