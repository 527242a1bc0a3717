// Package peer runs one process's full pipestream peer: the DataStream
// server that receives and forwards streams (package server), the Raft
// node that commits them (package raft), and the state machine that
// stores them (package statemachine), wired together from one Config.
//
//	p, err := peer.Start(ctx, cfg)  // or peer.New, then p.Start(ctx, members)
//	err = p.WaitReady(ctx)          // a leader is known, every peer is reachable
//	...
//	err = p.Shutdown(ctx)
//
// # Any peer can be a stream's primary
//
// A client may send a stream to any member. When every peer has closed the
// stream, its primary commits one small entry naming it through its own
// Raft node; a node that is not the leader forwards the entry to the leader
// and waits until its own state machine has applied it (see package raft).
// The client's CLOSE reply therefore carries the same committed log index
// and term whichever peer was the primary. Only when no leader accepts the
// entry within Config.CommitTimeout does the primary answer NOT_LEADER, with
// the last leader it knew as the hint.
//
// # What happens to a stream that does not commit
//
// A stream that fails before every peer closed it (a write error, a peer or
// connection lost, an ABORT) is discarded at once on every peer that holds
// it. A stream closed everywhere whose commit then fails stays parked, since
// a commit that timed out may still be applied; each peer discards its copy
// when no entry came within Config.LinkTimeout, on the sweep that runs every
// Config.SweepInterval. Such an entry can in rare cases still commit after
// the copies were swept (it reached the leader's log before the timeout and
// a later leader committed it); every peer then links it without data, and
// a FileStore counts it in Missing. LinkTimeout must therefore be well above
// CommitTimeout.
//
// # Restarts and peers that were away
//
// With a DataDir, the Raft log lives in DataDir/raft (raft-boltdb) and the
// files in DataDir/files (statemachine.FileStore), so a restarted peer keeps
// every stream it linked. After a restart Raft replays the entries since
// its last snapshot, each linked again with no data; the FileStore knows the
// ones it holds and ignores them.
//
// A peer holds a stream's bytes only if it received them while the stream
// was open: Raft replicates the small entry, not the data. A peer that was
// down or cut off while a stream was written, or that stopped after closing
// its copy but before linking it, has no copy of that stream when it comes
// back; it learns of the entry from the log and counts it as missing (see
// statemachine.FileStore.Missing). Apache Ratis leaves re-replicating
// such copies to the application; here the peer's Repairer (package
// repair) fetches them from the other members.
//
// # Membership
//
// The group's members live in the Raft log (see package raft): a peer
// started with Config.Join waits to be added (Peer.AddMember, asked of any
// member); Peer.RemoveMember takes one out, and Peer.TransferLeadership
// moves the leadership. Every peer follows the log's membership: its
// stream server dials the new members and drops the removed ones, its
// repairer reads from the current ones, and Members reports them; a
// restarted peer knows them from its log and snapshots, whatever Peers
// says.
//
// # Ports
//
// Every address may have port 0. New binds them and Addrs reports the
// bound ones; hand every member's Addrs to Start on every peer. A restarted
// peer must bind the Raft address it had before: the group's Raft
// configuration names it.
package peer
