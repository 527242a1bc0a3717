// Package group holds the record every layer names a group member by: the
// server and its DataStream client, the Raft layer and the peer that joins
// them all. One type lets a member list pass from one layer to the next as
// it is.
package group

// Member is one member of a group as the others reach it. A layer that
// does not need an address may leave it empty: a raft-less server group
// needs StreamAddr only, and a server's own entry not even that.
type Member struct {
	// ID names the member; it must be unique in the group and never reused.
	ID string
	// StreamAddr is the member's DataStream address, host:port, where
	// clients and the members that forward to it connect.
	StreamAddr string
	// RaftAddr is the member's Raft transport; only the Raft layer uses it.
	RaftAddr string
	// CommitAddr is where the member accepts commits forwarded by the
	// others while it leads; only the Raft layer uses it.
	CommitAddr string
}
