package handler

import (
	"log/slog"
	"time"

	"github.com/pipestream/pipestream/statemachine"
)

// StreamKey identifies a stream: the client that opened it and its id.
type StreamKey = statemachine.StreamKey

// Successor is a connection to a peer that streams are forwarded to. Many
// streams share one; *pipeline.Pipeline implements it.
type Successor interface {
	Write(msg any) error
	Flush() error
}

// PeerDialer returns the connection to the peer with the given id. It must
// not block: the router calls it on an event loop, so an implementation
// keeps connections up in the background and fails fast when one is down.
type PeerDialer func(id string) (Successor, error)

// Config is what the stages of every connection of one server share.
type Config struct {
	// GroupID, if set, is the only group id a header request may name.
	GroupID []byte
	// ID is this peer's id in the group.
	ID string
	// Peers lists every peer id of the group, this one included. Routing
	// tables may only name these.
	Peers []string
	// Dial reaches successors.
	Dial PeerDialer
	// StateMachine stores the streams.
	StateMachine statemachine.StateMachine
	// InlineWrites runs a plain data packet's DataChannel.Write on the
	// connection's event loop whenever the stream's executor is idle,
	// instead of waking the executor's goroutine: one goroutine hand-off
	// less per packet on every peer. Open, Sync, Close and CleanUp stay on
	// the executor, and so does a Write while it has work queued, so a
	// stream's calls stay in order and never overlap. Set it only for a
	// state machine whose Write never blocks and returns in microseconds
	// (a copy into memory, a counter): one that waits on a disk, a lock
	// held across I/O or the network would hold up every connection of the
	// loop. A setting rather than a method of the state machine, so that a
	// wrapper that blocks cannot inherit it by embedding.
	InlineWrites bool
	// VerifyEveryPeer has every peer check each packet's CRC32C, not only
	// the leaves of the routing tree. The leaves' checks already cover
	// every peer's copy, since a peer forwards the bytes it stores; set it
	// to catch a corruption inside an interior peer between receiving a
	// packet and forwarding it, for one more pass over the data there.
	VerifyEveryPeer bool
	// Committer commits closed streams on the primary. Nil runs
	// standalone: each peer links its stream as soon as CLOSE succeeded
	// everywhere downstream, under a local index.
	Committer statemachine.Committer
	// ReplyTimeout bounds how long a packet waits for its successors.
	ReplyTimeout time.Duration
	// CommitTimeout bounds the commit of a closed stream.
	CommitTimeout time.Duration
	// LinkTimeout bounds how long a closed stream waits for its committed
	// entry before its data is cleaned up.
	LinkTimeout time.Duration
	// MaxHeader bounds a packet header and a stream's header request.
	MaxHeader int
	// MaxStreams bounds the open streams of this peer.
	MaxStreams int
	// MaxStreamsPerConn bounds the open streams of one connection.
	MaxStreamsPerConn int
	// MaxConnBytes bounds the packet bytes one connection may have
	// admitted and not yet answered. A client keeps within it by its
	// window; one that does not has its packet refused and its stream
	// failed, rather than this peer's memory grown.
	MaxConnBytes int64
	// IdleTimeout fails a stream that receives no packet for this long.
	IdleTimeout time.Duration
	// WriteQuorum is how many peers, the primary included, must hold a
	// stream for its CLOSE to commit. 0 is a majority of Peers; QuorumAll,
	// or any value from len(Peers) up, is every peer. Below all, a stream
	// goes on when peers fail (routed around at the header, recovered
	// around mid-stream, the primary resumed elsewhere by the client) and
	// the peers that miss it repair their copy after the commit.
	WriteQuorum int
	// Events, if set, is told of streams, packets and connections; see
	// Events for what an implementation may do.
	Events Events
	Logger *slog.Logger
}

// QuorumAll is the WriteQuorum of every peer: one peer down fails
// every stream through it.
const QuorumAll = -1

// Defaults for Config's zero fields.
const (
	DefaultReplyTimeout  = 10 * time.Second
	DefaultCommitTimeout = 30 * time.Second
	DefaultLinkTimeout   = 5 * time.Minute
	DefaultIdleTimeout   = time.Minute

	DefaultMaxStreams        = 4096
	DefaultMaxStreamsPerConn = 1024
	DefaultMaxConnBytes      = 256 << 20
)
