// Package statemachine defines what a peer stores streams into and how a
// closed stream is committed, the boundary between the data path (packages
// handler and server) and the commit path (package raft).
//
// On every peer a stream's header opens a DataChannel; the data is written
// into it in order on a per-stream executor; CLOSE closes it. The primary
// then asks a Committer to commit one small entry naming the stream, and
// each peer links its closed channel to the committed entry (Link), for
// example by renaming a temporary file to its final name. A channel that is
// never linked is cleaned up. A peer that acknowledged a stream keeps its
// copy until the entry is applied, across a crash where the state machine
// is durable (see FileStore), and a peer that applies an entry without a
// copy records it as missing.
package statemachine

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// ErrNoStream is returned by Link when the peer holds no data for the
// entry's stream.
var ErrNoStream = errors.New("statemachine: no data for stream")

// StreamKey identifies a stream: the client that opened it and its id.
type StreamKey struct {
	ClientID string // raw client id bytes
	StreamID uint64
}

func (k StreamKey) String() string {
	return fmt.Sprintf("%s/%d", hex.EncodeToString([]byte(k.ClientID)), k.StreamID)
}

// StateMachine stores streams.
type StateMachine interface {
	// OpenStream is called on every peer of a stream's routing table when
	// its header arrives. The returned channel gets the data in order.
	OpenStream(ctx context.Context, key StreamKey, req *pb.RaftClientRequest) (DataChannel, error)
	// Link is called on every peer when the stream's entry is committed,
	// in log order. ch is the stream's closed data channel, or nil when
	// this peer holds no data for it (it was not in the routing table, or
	// it restarted and is replaying its log); Link must then be idempotent.
	Link(ctx context.Context, e Entry, ch DataChannel) error
}

// DataChannel receives one stream's data on one peer. Its methods are called
// from one goroutine at a time, never from an event loop.
type DataChannel interface {
	// Write appends p to the stream. p is only valid during the call.
	Write(p []byte) (int, error)
	// Sync makes what was written durable (the SYNC option).
	Sync() error
	// Close ends the data; the stream now waits for its commit.
	Close() error
	// CleanUp discards the stream's data: it failed, was aborted, or was
	// never committed. It may follow Close.
	CleanUp() error
}

// Cataloger is a StateMachine that can list the entries it has applied, so
// a Raft snapshot can carry them to a peer that restores it: the peer links
// each one with a nil channel, and so records every copy it lacks as
// missing instead of knowing nothing of it.
type Cataloger interface {
	// Catalog returns the newest applied entry of each name, in log order,
	// with Request.Message set to what names it.
	Catalog() []Entry
}

// Truncater is a DataChannel that can discard what was written past a
// size, so that a stream resumed after a pipeline recovery (a RESUME
// header, docs/protocol.md) continues from the offset its new predecessor
// replays from. A channel that is not a Truncater can be resumed only at
// the length it holds.
type Truncater interface {
	// Truncate cuts the stream to its first size bytes; later writes
	// append there. size is at most what was written.
	Truncate(size uint64) error
}

// Releaser is a DataChannel that can be let go of without discarding its
// data: a closed stream at shutdown, whose entry may commit while the
// process is down, keeps its data for the state machine to link after a
// restart. FileStore's channels are Releasers; Memory's are not, since
// nothing of it outlives the process.
type Releaser interface {
	// Release gives up the channel and keeps its data. It is a no-op after
	// Link or CleanUp.
	Release() error
}

// Entry is a committed stream entry.
type Entry struct {
	Index, Term uint64
	Key         StreamKey
	Request     *pb.RaftClientRequest
	Length      uint64 // bytes in the stream
	// Checksum is the CRC32C of the stream's bytes, when Checksummed: the
	// client sent checksums and every peer checked them.
	Checksum    uint32
	Checksummed bool
	// Holders are the peers that acknowledged the whole stream; empty
	// means every peer. A peer not among them was dropped from the
	// stream's pipeline: the Linker (handler.Streams) discards whatever
	// copy it has and links with no data, so the copy is recorded missing
	// and repaired from a holder.
	Holders []string
	// Epoch counts the stream's pipeline recoveries.
	Epoch uint64
}

// Holds reports whether peer id acknowledged the whole stream.
func (e Entry) Holds(id string) bool {
	if len(e.Holders) == 0 {
		return true
	}
	for _, h := range e.Holders {
		if h == id {
			return true
		}
	}
	return false
}

// StreamInfo is what the primary asks to commit once every peer closed a
// stream.
type StreamInfo struct {
	Key     StreamKey
	Request *pb.RaftClientRequest
	Length  uint64
	// Checksum is the CRC32C of the stream's data, which every peer
	// checked as it arrived, when Checksummed.
	Checksum    uint32
	Checksummed bool
	// Holders and Epoch go to the entry; see Entry.
	Holders []string
	Epoch   uint64
}

// Committer commits closed streams. The raft package implements it on
// hashicorp/raft; without one, handler.Streams links each stream at once
// under a local index (standalone, for a single process).
type Committer interface {
	Commit(ctx context.Context, s StreamInfo) (*pb.RaftClientReply, error)
}

// KeyChecker is a Committer or a StateMachine that remembers the streams
// committed, so that a primary can refuse a header that reuses a committed
// stream's key. raft.Node implements it for the keys its FSM keeps for
// deduplication, FileStore for every key it has applied.
type KeyChecker interface {
	// Committed reports whether key was committed, and at which index.
	Committed(key StreamKey) (index uint64, ok bool)
}

// TermChecker is a KeyChecker that also knows the term of the entry it
// remembers, so that a peer can tell a client that resumes a committed
// stream the whole of its RaftClientReply. raft.Node and FileStore
// implement it.
type TermChecker interface {
	KeyChecker
	// CommittedEntry reports whether key was committed, and at which
	// index and term.
	CommittedEntry(key StreamKey) (index, term uint64, ok bool)
}

// Freshness is a Committer that knows whether this peer's state machine
// is up to date with its group. While Fresh reports false (the peer has
// just started, or a new leader was elected, and it has not yet caught
// up; or it has not heard from a leader for longer than an election
// takes), a server refuses the reads that name no version (STREAM_READ
// without an index, STREAM_LIST) with NOT_CAUGHT_UP, rather than answer
// from a state that may hold an older version of a name. raft.Node
// implements it.
type Freshness interface {
	Fresh() bool
}

// Linker links a committed entry to the data a peer holds for it.
// handler.Streams implements it; the raft FSM calls it from Apply and, for
// each entry of a snapshot's catalog, from Restore.
type Linker interface {
	Link(ctx context.Context, e Entry) error
}
