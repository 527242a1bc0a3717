// Package datastream is the client of pipestream's DataStream protocol: it
// streams bytes to a primary peer, which writes them locally and forwards
// them along the routing table, and commits the stream with one Raft entry
// when it is closed.
//
//	c, err := datastream.NewClient(peers)
//	out, err := c.Stream(ctx, []byte("name-of-the-blob"))
//	out.WriteAsync(ctx, chunk)            // as many times as needed
//	reply, err := out.Close(ctx).Wait(ctx) // reply.RaftClientReply has the log index
//
// Every write returns a Future; replies come back in order, and a failed
// packet fails the stream and every later future with the same error. A
// bounded window of bytes and packets in flight per stream makes a writer
// faster than the peers wait instead of growing memory.
package datastream

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/transport"
)

// Peer is a member of the group the client streams to.
type Peer struct {
	ID   string
	Addr string // DataStream address, host:port
}

// Defaults for the client options.
const (
	DefaultWindowBytes         = 16 << 20
	DefaultWindowPackets       = 64
	DefaultMaxOutstanding      = 1024
	DefaultMaxOutstandingBytes = 128 << 20
	DefaultPacketSize          = 1 << 20
	DefaultReplyTimeout        = 30 * time.Second
)

type options struct {
	kind           transport.Kind
	topts          []transport.Option
	windowBytes    int64
	windowPackets  int
	maxOutstanding int
	maxBytes       int64
	packetSize     int
	replyTimeout   time.Duration
	maxFrame       int
	logger         *slog.Logger
}

// Option configures a Client.
type Option func(*options)

// WithTransport picks the transport (gnet by default) and its options.
func WithTransport(k transport.Kind, opts ...transport.Option) Option {
	return func(o *options) { o.kind, o.topts = k, opts }
}

// WithWindow bounds each stream's bytes and packets in flight: sent and not
// yet answered. A write that would exceed either waits.
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

// WithReplyTimeout fails a stream whose oldest packet has waited this long
// for its reply.
func WithReplyTimeout(d time.Duration) Option { return func(o *options) { o.replyTimeout = d } }

// WithLogger sets the client's logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Client streams to one group of peers. It is safe for concurrent use and
// keeps one connection per peer, shared by its streams.
type Client struct {
	id     []byte
	peers  []Peer
	opts   options
	dialer *transport.Dialer // gnet only
	callID atomic.Uint64
	slots  chan struct{}       // outstanding packets over all streams
	bytes  *semaphore.Weighted // outstanding bytes over all streams

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[string]*conn
	closed bool
}

// NewClient returns a client for the group of peers.
func NewClient(peers []Peer, opts ...Option) (*Client, error) {
	if len(peers) == 0 {
		return nil, errors.New("datastream: no peers")
	}
	o := options{
		windowBytes:    DefaultWindowBytes,
		windowPackets:  DefaultWindowPackets,
		maxOutstanding: DefaultMaxOutstanding,
		maxBytes:       DefaultMaxOutstandingBytes,
		packetSize:     DefaultPacketSize,
		replyTimeout:   DefaultReplyTimeout,
		maxFrame:       codec.DefaultMaxPacketFrame,
		logger:         slog.Default(),
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.windowBytes <= 0 || o.windowPackets <= 0 || o.maxOutstanding <= 0 || o.maxBytes <= 0 || o.packetSize <= 0 {
		return nil, errors.New("datastream: window, outstanding limit and packet size must be positive")
	}
	if o.packetSize > o.maxFrame-codec.DefaultMaxPacketHeader {
		return nil, fmt.Errorf("datastream: packet size %d exceeds the frame limit", o.packetSize)
	}
	c := &Client{
		id:    make([]byte, 16),
		peers: append([]Peer(nil), peers...),
		opts:  o,
		slots: make(chan struct{}, o.maxOutstanding),
		bytes: semaphore.NewWeighted(o.maxBytes),
		conns: make(map[string]*conn),
	}
	_, _ = rand.Read(c.id)
	// The outbound queue of a connection never holds more than the bytes
	// in flight, plus the frames' prefixes.
	o.topts = append([]transport.Option{transport.WithLogger(o.logger), transport.WithMaxOutbound(int(o.maxBytes) + o.maxOutstanding*codec.DefaultMaxPacketHeader)}, o.topts...)
	if o.kind == transport.Gnet {
		d, err := transport.NewDialer(append([]transport.Option{transport.WithEventLoops(1)}, o.topts...)...)
		if err != nil {
			return nil, err
		}
		c.dialer = d
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wg.Add(1)
	go c.sweep()
	return c, nil
}

// ID returns the client's 16-byte id, part of every stream's key.
func (c *Client) ID() []byte { return c.id }

// Peers returns the group.
func (c *Client) Peers() []Peer { return c.peers }

func (c *Client) peer(id string) (Peer, bool) {
	for _, p := range c.peers {
		if p.ID == id {
			return p, true
		}
	}
	return Peer{}, false
}

// connFor returns the connection to peer, dialing it if needed.
func (c *Client) connFor(ctx context.Context, p Peer) (*conn, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if cn := c.conns[p.ID]; cn != nil && !cn.isDead() {
		c.mu.Unlock()
		return cn, nil
	}
	c.mu.Unlock()

	cn := newConn(c, p)
	var err error
	if c.dialer != nil {
		cn.ch, err = c.dialer.Dial(ctx, p.Addr, cn.init)
	} else {
		cn.ch, err = c.opts.kind.Dial(ctx, p.Addr, cn.init, c.opts.topts...)
	}
	if err != nil {
		return nil, fmt.Errorf("datastream: connect to %s: %w", p.ID, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		_ = cn.ch.Close()
		return nil, ErrClosed
	}
	if old := c.conns[p.ID]; old != nil && !old.isDead() {
		// Another stream dialed at the same time; keep one connection.
		_ = cn.ch.Close()
		return old, nil
	}
	c.conns[p.ID] = cn
	return cn, nil
}

// acquireSlot takes one of the client's outstanding-packet slots and n of
// its outstanding bytes.
func (c *Client) acquireSlot(ctx context.Context, n int64) error {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClosed
	}
	// A packet larger than the whole budget waits for everything else.
	if err := c.bytes.Acquire(ctx, min(n, c.opts.maxBytes)); err != nil {
		<-c.slots
		return err
	}
	return nil
}

func (c *Client) releaseSlot(n int64) {
	c.bytes.Release(min(n, c.opts.maxBytes))
	<-c.slots
}

// sweep fails streams whose replies are overdue: gnet has no deadlines.
func (c *Client) sweep() {
	defer c.wg.Done()
	t := time.NewTicker(min(time.Second, c.opts.replyTimeout/4))
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			c.mu.Lock()
			conns := make([]*conn, 0, len(c.conns))
			for _, cn := range c.conns {
				conns = append(conns, cn)
			}
			c.mu.Unlock()
			for _, cn := range conns {
				cn.sweep(now, c.opts.replyTimeout)
			}
		case <-c.ctx.Done():
			return
		}
	}
}

// Close fails every open stream with ErrClosed, closes the connections and
// waits for the client's goroutines to end.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	c.cancel()
	for _, cn := range conns {
		cn.failAll(ErrClosed)
		_ = cn.ch.Close()
		<-cn.ch.Done()
	}
	c.wg.Wait()
	if c.dialer != nil {
		return c.dialer.Close()
	}
	return nil
}
