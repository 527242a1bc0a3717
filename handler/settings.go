package handler

import (
	"fmt"
	"time"

	"github.com/pipestream/pipestream/codec/dscodec"
)

// The settings of a peer are declared here once, in three structs that
// handler.Config, server.Config and peer.Config each embed: a setting is
// written the same way (cfg.MaxStreams, cfg.ReplyTimeout) on whichever
// layer a program starts from, every layer passes the structs on whole,
// and the defaults are filled in by Limits.WithDefaults and
// Timeouts.WithDefaults alone. Some fields are used only by the server
// (the frame limits, the connection timeouts); they are declared here all
// the same, the handler being the lowest layer that reads the others, so
// that no layer copies settings field by field.

// Policy is how a peer treats the streams it takes part in. Every peer of
// a group should have the same.
type Policy struct {
	// GroupID, if set, is the only group id a header request may name; a
	// header naming another fails its stream with GROUP_MISMATCH.
	GroupID []byte
	// WriteQuorum is how many peers, the primary included, must hold a
	// stream for its CLOSE to commit. 0 is a majority of the group;
	// QuorumAll, or any value from the group's size up, is every peer.
	// Below all, a stream goes on when peers fail (routed around at the
	// header, recovered around mid-stream, the primary resumed elsewhere
	// by the client) and the peers that miss it repair their copy after
	// the commit.
	WriteQuorum int
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
}

// QuorumAll is the WriteQuorum of every peer: one peer down fails
// every stream through it.
const QuorumAll = -1

// Limits bound what clients and predecessors can make a peer hold. A zero
// field takes its default; see WithDefaults.
type Limits struct {
	// MaxFrame bounds one frame, packet header and data, on a client or
	// predecessor connection; a larger one closes the connection.
	// Default dscodec.DefaultMaxPacketFrame.
	MaxFrame int
	// MaxHeader bounds a packet header and a stream's header request.
	// Default dscodec.DefaultMaxPacketHeader.
	MaxHeader int
	// MaxStreams bounds the open streams of this peer. Default
	// DefaultMaxStreams.
	MaxStreams int
	// MaxStreamsPerConn bounds the open streams of one client connection;
	// peer connections are spared. Default DefaultMaxStreamsPerConn.
	MaxStreamsPerConn int
	// MaxConnBytes bounds the packet bytes one connection may have
	// admitted and not yet answered. A client keeps within it by its
	// window; one that does not has its packet refused and its stream
	// failed, rather than this peer's memory grown. Default
	// DefaultMaxConnBytes.
	MaxConnBytes int64
	// MaxPartialBytes bounds the bytes that client and predecessor
	// connections hold, all together, in frames that have not fully
	// arrived (see codec.PartialBudget); a connection whose frame would
	// take them past it is closed, and the others go on. Default
	// DefaultMaxPartialBytes, or MaxFrame if that is more; a value below
	// MaxFrame is refused (see Check), since the largest frames could
	// never arrive.
	MaxPartialBytes int64
}

// Timeouts bound how long a peer waits, for a stream and for a
// connection. A zero field takes its default; see WithDefaults.
type Timeouts struct {
	// ReplyTimeout bounds how long a packet waits for its successors'
	// replies, and an orphaned stream for its resume. Default
	// DefaultReplyTimeout.
	ReplyTimeout time.Duration
	// CommitTimeout bounds a closed stream's commit, forwarding to the
	// Raft leader and waiting out an election included. Default
	// DefaultCommitTimeout.
	CommitTimeout time.Duration
	// LinkTimeout is how long a stream closed on every peer waits for its
	// committed entry before its data is cleaned up. It should exceed
	// CommitTimeout (package peer requires it). Default DefaultLinkTimeout.
	LinkTimeout time.Duration
	// IdleTimeout fails a stream that receives no packet for this long,
	// checked on the sweep tick: never sooner, and at most two
	// SweepIntervals later. Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// ReadStallTimeout closes a connection whose incomplete frame gets no
	// bytes this long, releasing what it holds. It is checked on the
	// sweep tick. Default DefaultReadStallTimeout.
	ReadStallTimeout time.Duration
	// HandshakeTimeout bounds connecting to a peer and its answer to the
	// first PING. Default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// KeepaliveInterval is how long a connection to a successor goes
	// without an answered PING before it is sent one; default
	// DefaultKeepaliveInterval. KeepaliveTimeout bounds the wait for the
	// answer, after which the connection is closed and redialed; default
	// ReplyTimeout, since a PING may queue behind forwarded packets that
	// have that long to be answered. A successor that went silent without
	// a reset (a partition) is so reported down within KeepaliveInterval
	// + KeepaliveTimeout.
	KeepaliveInterval time.Duration
	KeepaliveTimeout  time.Duration
	// SweepInterval is the tick on which the timeouts above are checked,
	// since gnet has no deadlines. Default DefaultSweepInterval, or a
	// tenth of ReplyTimeout, IdleTimeout or ReadStallTimeout if that is
	// shorter.
	SweepInterval time.Duration
	// RedialInterval is the longest wait between attempts to reconnect to
	// a peer. Default DefaultRedialInterval.
	RedialInterval time.Duration
}

// Defaults of the zero fields of Limits and Timeouts.
const (
	DefaultMaxStreams        = 4096
	DefaultMaxStreamsPerConn = 1024
	DefaultMaxConnBytes      = 256 << 20
	// DefaultMaxPartialBytes is 16 frames of 16 MiB.
	DefaultMaxPartialBytes = 256 << 20

	DefaultReplyTimeout     = 10 * time.Second
	DefaultCommitTimeout    = 30 * time.Second
	DefaultLinkTimeout      = 5 * time.Minute
	DefaultIdleTimeout      = time.Minute
	DefaultReadStallTimeout = 30 * time.Second
	DefaultHandshakeTimeout = 3 * time.Second
	// DefaultKeepaliveInterval is how long a successor connection goes
	// without an answered PING.
	DefaultKeepaliveInterval = 5 * time.Second
	DefaultSweepInterval     = time.Second
	DefaultRedialInterval    = time.Second
)

// WithDefaults returns l with every zero or negative field set to its
// default. It is idempotent, so that each layer may apply it.
func (l Limits) WithDefaults() Limits {
	orDefault(&l.MaxFrame, dscodec.DefaultMaxPacketFrame)
	orDefault(&l.MaxHeader, dscodec.DefaultMaxPacketHeader)
	orDefault(&l.MaxStreams, DefaultMaxStreams)
	orDefault(&l.MaxStreamsPerConn, DefaultMaxStreamsPerConn)
	orDefault(&l.MaxConnBytes, DefaultMaxConnBytes)
	orDefault(&l.MaxPartialBytes, max(DefaultMaxPartialBytes, int64(l.MaxFrame)))
	return l
}

// Check refuses limits that cannot work together: MaxPartialBytes below
// MaxFrame, after defaults.
func (l Limits) Check() error {
	if l = l.WithDefaults(); l.MaxPartialBytes < int64(l.MaxFrame) {
		return fmt.Errorf("MaxPartialBytes %d is less than MaxFrame %d", l.MaxPartialBytes, l.MaxFrame)
	}
	return nil
}

// WithDefaults returns t with every zero or negative field set to its
// default. It is idempotent, so that each layer may apply it.
func (t Timeouts) WithDefaults() Timeouts {
	orDefault(&t.ReplyTimeout, DefaultReplyTimeout)
	orDefault(&t.CommitTimeout, DefaultCommitTimeout)
	orDefault(&t.LinkTimeout, DefaultLinkTimeout)
	orDefault(&t.IdleTimeout, DefaultIdleTimeout)
	orDefault(&t.ReadStallTimeout, DefaultReadStallTimeout)
	orDefault(&t.HandshakeTimeout, DefaultHandshakeTimeout)
	orDefault(&t.KeepaliveInterval, DefaultKeepaliveInterval)
	orDefault(&t.KeepaliveTimeout, t.ReplyTimeout)
	orDefault(&t.SweepInterval, min(DefaultSweepInterval, t.ReplyTimeout/10, t.IdleTimeout/10, t.ReadStallTimeout/10))
	orDefault(&t.RedialInterval, DefaultRedialInterval)
	return t
}

// orDefault sets *v to def unless it is positive: zero means the default,
// and a layer that does not refuse negative settings treats them alike.
func orDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}
