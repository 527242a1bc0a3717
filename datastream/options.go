package datastream

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/transport"
)

// Defaults for the client options.
const (
	// DefaultWindowBytes and DefaultWindowPackets bound one stream's
	// packets in flight. The packet bound is high enough that the bytes
	// bind down to 16 KiB packets: every packet waits for its reply from
	// the far end of the chain, so a stream of small packets moves at
	// most a window per round trip (64 packets of 4 KiB ran at a third
	// of a relay's rate through three peers; 1,024 at a half).
	DefaultWindowBytes   = 16 << 20
	DefaultWindowPackets = 1024
	// DefaultMaxOutstanding and DefaultMaxOutstandingBytes bound the
	// packets in flight over all of a client's streams: four streams'
	// packet windows, so that one stream of small packets does not hold
	// every slot while the client's other streams wait.
	DefaultMaxOutstanding      = 4096
	DefaultMaxOutstandingBytes = 128 << 20
	// DefaultPacketSize is the packet size of WriteFile and Writer.
	DefaultPacketSize = 1 << 20
	// DefaultReplyTimeout is longer than the server's own commit timeout
	// (handler.DefaultCommitTimeout), so that a slow commit is reported by
	// the server, with its code, rather than by the client.
	DefaultReplyTimeout = time.Minute
	// DefaultDialTimeout bounds connecting to a peer.
	DefaultDialTimeout = 10 * time.Second
)

// maxPayload is the largest packet body a frame of the default size holds.
const maxPayload = dscodec.DefaultMaxPacketFrame - dscodec.DefaultMaxPacketHeader

type options struct {
	kind           transport.Kind
	topts          []transport.Option
	windowBytes    int64
	windowPackets  int
	maxOutstanding int
	maxBytes       int64
	packetSize     int
	replyTimeout   time.Duration
	dialTimeout    time.Duration
	noChecksums    bool
	noFailover     bool
	logger         *slog.Logger
}

func defaultOptions() options {
	return options{
		windowBytes:    DefaultWindowBytes,
		windowPackets:  DefaultWindowPackets,
		maxOutstanding: DefaultMaxOutstanding,
		maxBytes:       DefaultMaxOutstandingBytes,
		packetSize:     DefaultPacketSize,
		replyTimeout:   DefaultReplyTimeout,
		dialTimeout:    DefaultDialTimeout,
		logger:         slog.Default(),
	}
}

func (o *options) validate() error {
	switch {
	case o.windowBytes <= 0 || o.windowPackets <= 0:
		return errors.New("datastream: window must be positive")
	case o.maxOutstanding <= 0 || o.maxBytes <= 0:
		return errors.New("datastream: outstanding limits must be positive")
	case o.packetSize <= 0 || o.packetSize > maxPayload:
		return fmt.Errorf("datastream: packet size %d is not in (0, %d]", o.packetSize, maxPayload)
	case o.replyTimeout <= 0 || o.dialTimeout <= 0:
		return errors.New("datastream: timeouts must be positive")
	case o.logger == nil:
		return errors.New("datastream: nil logger")
	}
	return nil
}

// Option configures a Client.
type Option func(*options)

// WithTransport picks the transport (gnet by default) and its options. The
// net.Conn transport is the one with TLS (transport.WithTLS) and the one on
// which WriteFile uses sendfile(2).
func WithTransport(k transport.Kind, opts ...transport.Option) Option {
	return func(o *options) { o.kind, o.topts = k, opts }
}

// WithWindow bounds each stream's bytes and packets in flight: sent and not
// yet answered. A write that would exceed either waits. A single packet
// larger than the byte window is sent alone.
func WithWindow(bytes int64, packets int) Option {
	return func(o *options) { o.windowBytes, o.windowPackets = bytes, packets }
}

// WithMaxOutstanding bounds the packets and bytes in flight over all of the
// client's streams, as Ratis bounds requests per client, so that many
// streams together cannot queue more than a connection should hold.
func WithMaxOutstanding(packets int, bytes int64) Option {
	return func(o *options) { o.maxOutstanding, o.maxBytes = packets, bytes }
}

// WithPacketSize sets the packet size WriteFile and Writer cut data into.
func WithPacketSize(n int) Option { return func(o *options) { o.packetSize = n } }

// WithReplyTimeout fails a stream that has packets in flight and has had no
// reply for this long, with ErrReplyTimeout, and aborts it, or with
// failover (WithFailover) moves it to another peer; if the peer has sent
// nothing on the connection for this long, the connection is closed,
// failing (or moving) all its streams. It is checked on a tick of a quarter of the
// timeout (at most a second), since gnet has no deadlines.
func WithReplyTimeout(d time.Duration) Option { return func(o *options) { o.replyTimeout = d } }

// WithChecksums sets whether each data packet carries the CRC32C of the
// stream through its end (the CHECKSUM option), which every peer checks
// before it stores the packet, so a byte corrupted on the way fails the
// stream instead of being committed. On by default; it costs one pass of
// the CPU's CRC32 instruction over the data, on the client and on each
// peer (see docs/performance.md).
func WithChecksums(on bool) Option { return func(o *options) { o.noChecksums = !on } }

// WithFailover sets whether a stream moves to another peer when its
// primary fails: its connection ends, it does not answer within the reply
// timeout, or it answers that it is shutting down (CANCELLED). The client
// then resumes the stream on the next peer of the stream's routing table
// that accepts a connection, as that stream's new primary, at the last
// offset every peer acknowledged, with a routing table that leaves out the
// failed peers, and once that peer has taken the resume sends it again
// every packet that was not acknowledged; the stream goes on there and its
// CLOSE commits through the new primary. To do so each data
// packet's bytes are kept until its reply comes, which the window bounds,
// and WriteFile reads files into pooled buffers instead of handing them to
// sendfile(2). A stream fails over at most once per peer of the group; when
// no peer is left to take it, or the peers cannot meet the write quorum
// without the failed ones, it fails with an error that names each peer
// tried and why it could not go on (errors.Is sees through to the first
// cause, ErrConnectionLost say). A primary that committed the stream
// before it failed, its reply to CLOSE lost, leaves the entry on the
// peers, and a peer that applied it says so to the resume: the CLOSE then
// succeeds with the entry's index and term (see Reply.RaftClientReply).
// Only when no peer confirms the commit does the error say that the
// stream may have committed. See docs/protocol.md, "Pipeline recovery"
// and "Client failover".
//
// On by default for a client of several peers; a client of one peer has
// nowhere to go.
func WithFailover(on bool) Option { return func(o *options) { o.noFailover = !on } }

// WithDialTimeout bounds connecting to a peer.
func WithDialTimeout(d time.Duration) Option { return func(o *options) { o.dialTimeout = d } }

// WithLogger sets the client's logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }
