// Package raft is pipestream's commit path on hashicorp/raft.
//
// Streamed bytes never pass through the Raft log. When a stream is closed
// on every peer, the primary commits one small entry naming it (a
// pipestreamv1.StreamEntry) and every peer's FSM links the data it already
// holds to the committed entry through a statemachine.Linker. A Node is one
// peer of such a group; it implements statemachine.Committer.
//
// # Leader forwarding
//
// Only the Raft leader can append to the log, but any peer can be a stream's
// primary. A Node that is not the leader forwards Commit to the leader over a
// small RPC of its own: every Node listens on a commit address
// (the members' CommitAddr) where each message is a 4-byte big-endian length
// followed by a protobuf message, a StreamEntry one way and a
// RaftClientReply the other. Commit then
// waits until its own FSM has applied the entry, so when it returns the
// calling peer's data is linked, not just the leader's.
//
// # TLS
//
// Config.TLS and Config.PeerTLS put TLS on both of a Node's connections:
// hashicorp/raft's RPCs, through a stream layer of its own, and the
// commit-forwarding RPC. With mutual TLS (ClientAuth
// tls.RequireAndVerifyClientCert) a process without a certificate the
// group trusts can neither vote, nor replicate, nor forward a commit. An
// accepted connection's handshake runs on the goroutine that serves it, so
// a silent or failing client never holds up the accept loop.
//
// # Leader loss
//
// While there is no leader (an election is under way, or the leader just
// died), or the leader it asked stepped down, Commit retries with a growing
// backoff until its context expires; it then returns ErrNoLeader together
// with a reply carrying ErrorCode NOT_LEADER and the last leader it knew.
// Retrying is safe because the FSM remembers the stream keys it committed:
// an entry for a key already committed is a duplicate, is not linked again,
// and answers with the original index and term.
//
// # Snapshots and replay
//
// The FSM holds only the last applied index and term, counters, the
// bounded set of committed stream keys and the last membership entry; the
// linked data lives in the state machine's own durable files. That small
// state, and the state machine's catalog, is all a snapshot carries.
// A restarted peer restores its latest snapshot and replays the entries after
// it, calling Link again for entries it linked before, so Link must be
// idempotent (the state machine gets a nil channel then). A peer that falls
// so far behind that the leader sends it a snapshot instead of log entries
// gets no Link calls for the entries the snapshot covers: keep TrailingLogs
// large enough that a peer is caught up from the log.
//
// # Membership
//
// The group's members are in the log: hashicorp/raft's configuration
// (voters and their Raft addresses) and membership entries, which name
// every member with its stream, Raft and commit addresses and are applied
// by every FSM, which calls Config.OnMembers. AddMember, RemoveMember and
// TransferLeadership are led by the leader and forwarded to it from any
// peer, or sent to any peer by a tool (RequestChange); QueryMembership
// reads a peer's view. A new peer starts with Config.Join and waits to be
// added. See membership.go for the order of the steps.
//
// # Baseline
//
// ApplyData writes raw bytes through the same group as ordinary log entries,
// the path streaming avoids; BenchmarkRaftLogThroughput measures it.
package raft
