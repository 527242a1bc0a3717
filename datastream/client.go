package datastream

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/transport"
)

// Client streams to one group of peers. It is safe for concurrent use and
// keeps one connection per peer, shared by its streams.
type Client struct {
	id     []byte
	peers  []group.Member
	opts   options
	dialer transport.Connector
	callID atomic.Uint64
	slots  chan struct{}       // outstanding packets over all streams
	bytes  *semaphore.Weighted // outstanding bytes over all streams

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // sweep and dials

	mu      sync.Mutex
	conns   map[string]*conn
	retired []*conn // replaced after they died; Close waits for them
	closed  bool
}

// NewClient returns a client for the group of peers, each named by its ID
// and StreamAddr. It connects to a peer when the first stream to it opens.
func NewClient(peers []group.Member, opts ...Option) (*Client, error) {
	if len(peers) == 0 {
		return nil, errors.New("datastream: no peers")
	}
	seen := make(map[string]bool, len(peers))
	for _, p := range peers {
		if p.ID == "" || p.StreamAddr == "" {
			return nil, fmt.Errorf("datastream: peer %q needs an id and an address", p.ID)
		}
		if seen[p.ID] {
			return nil, fmt.Errorf("datastream: peer %q listed twice", p.ID)
		}
		seen[p.ID] = true
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	c := &Client{
		id:    make([]byte, 16),
		peers: append([]group.Member(nil), peers...),
		opts:  o,
		slots: make(chan struct{}, o.maxOutstanding),
		bytes: semaphore.NewWeighted(o.maxBytes),
		conns: make(map[string]*conn),
	}
	_, _ = rand.Read(c.id)
	// The client's own budget bounds what a connection queues; the
	// transport's bound, a little above it (frame prefixes, aborts), is
	// only a safety net.
	outbound := o.maxBytes + int64(o.maxOutstanding)*dscodec.DefaultMaxPacketHeader
	c.opts.topts = append([]transport.Option{
		transport.WithLogger(o.logger),
		transport.WithMaxOutbound(int(min(outbound, 1<<40))),
	}, o.topts...)
	d, err := o.kind.NewConnector(append([]transport.Option{transport.WithEventLoops(1)}, c.opts.topts...)...)
	if err != nil {
		return nil, err
	}
	c.dialer = d
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wg.Add(1)
	go c.sweep()
	return c, nil
}

// ID returns the client's 16-byte id, part of every stream's key.
func (c *Client) ID() []byte { return c.id }

// Peers returns the group.
func (c *Client) Peers() []group.Member { return append([]group.Member(nil), c.peers...) }

// failsOver reports whether the client's streams move to another peer
// when their primary fails (WithFailover).
func (c *Client) failsOver() bool { return !c.opts.noFailover && len(c.peers) > 1 }

// startFailover runs o's failover on a goroutine that Close waits for,
// unless the client is closed.
func (c *Client) startFailover(o *Output) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	go o.failover()
	return true
}

func (c *Client) peer(id string) (group.Member, bool) {
	for _, p := range c.peers {
		if p.ID == id {
			return p, true
		}
	}
	return group.Member{}, false
}

// connFor returns the connection to p, dialing it if there is none or the
// last one died. Streams opening at the same time share one dial; each
// waits for it up to its own ctx.
func (c *Client) connFor(ctx context.Context, p group.Member) (*conn, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	cn := c.conns[p.ID]
	if cn == nil || cn.isDead() {
		if cn != nil {
			c.retireLocked(cn)
		}
		cn = newConn(c, p)
		c.conns[p.ID] = cn
		c.wg.Add(1)
		go c.dial(cn)
	}
	c.mu.Unlock()
	select {
	case <-cn.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if cn.ch == nil {
		return nil, cn.err()
	}
	return cn, nil
}

// dial connects cn on behalf of every stream waiting for it. It runs under
// the client's context, not a stream's: one stream giving up must not fail
// the others.
func (c *Client) dial(cn *conn) {
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.dialTimeout)
	defer cancel()
	ch, err := c.dialer.Dial(ctx, cn.peer.StreamAddr, cn.init)
	if err != nil {
		if c.ctx.Err() != nil {
			err = ErrClosed
		} else {
			err = fmt.Errorf("datastream: connect to %s: %w", cn.peer.ID, err)
		}
		cn.markDead(err)
		c.mu.Lock()
		if c.conns[cn.peer.ID] == cn {
			delete(c.conns, cn.peer.ID)
		}
		c.mu.Unlock()
	} else {
		cn.ch, cn.sendfile = ch, transport.SendsFileRegions(ch)
	}
	close(cn.ready)
}

// retireLocked keeps a dead connection until its goroutines have ended, so
// that Close can wait for them, and forgets those that have.
func (c *Client) retireLocked(cn *conn) {
	live := c.retired[:0]
	for _, r := range c.retired {
		if !r.ended() {
			live = append(live, r)
		}
	}
	clear(c.retired[len(live):])
	c.retired = append(live, cn)
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
	var conns []*conn
	for {
		select {
		case now := <-t.C:
			c.mu.Lock()
			conns = conns[:0]
			for _, cn := range c.conns {
				select {
				case <-cn.ready: // a connection still dialing has no streams
					conns = append(conns, cn)
				default:
				}
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
// waits for the client's goroutines to end. Streams whose CLOSE was sent
// may still commit on the peers. Closing a closed client does nothing.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conns := make([]*conn, 0, len(c.conns)+len(c.retired))
	for _, cn := range c.conns {
		conns = append(conns, cn)
	}
	conns = append(conns, c.retired...)
	c.conns, c.retired = nil, nil
	c.mu.Unlock()
	c.cancel()
	for _, cn := range conns {
		<-cn.ready
		cn.failAll(ErrClosed)
		if cn.ch != nil {
			_ = cn.ch.Close()
			<-cn.ch.Done()
		}
	}
	c.wg.Wait()
	return c.dialer.Close()
}
