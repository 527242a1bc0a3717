package datastream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/valyala/bytebufferpool"
	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/fifo"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// WriteOption is a packet option, as Ratis' StandardWriteOption.
type WriteOption = pb.DataStreamPacketHeader_Option

// Packet options.
const (
	// Sync asks every peer to make the stream durable before replying.
	Sync = pb.DataStreamPacketHeader_SYNC
	// Flush is a hint that the client will not write again soon.
	Flush = pb.DataStreamPacketHeader_FLUSH
	// Close ends the stream after this packet; its future completes once
	// the stream is committed.
	Close = pb.DataStreamPacketHeader_CLOSE
)

// Reply is the primary's answer to one packet, given once every peer of the
// routing table handled it.
type Reply struct {
	// Offset and Length locate the packet in the stream.
	Offset, Length uint64
	// Server is the id of the peer that answered: the stream's primary.
	Server string
	// RaftClientReply is set on the reply to CLOSE: the commit's log
	// index and term. When the primary committed the stream and failed
	// before its reply came, the peer the stream moved to answers for it
	// (ALREADY_COMMITTED): the index and term are those it remembers for
	// the entry, and Server is that peer. The term is 0 if that peer's
	// committer and state machine keep only indexes (a
	// statemachine.KeyChecker that is not a TermChecker); raft.Node and
	// FileStore keep both.
	RaftClientReply *pb.RaftClientReply

	bytesWritten uint64
}

// BytesWritten returns the stream length on every peer after the packet.
func (r *Reply) BytesWritten() uint64 { return r.bytesWritten }

type streamOptions struct {
	primary string
	routing *pb.RoutingTable
	group   []byte
}

// StreamOption configures a stream.
type StreamOption func(*streamOptions)

// WithPrimary sends the stream to peer id. The default is the first peer,
// in the order NewClient got them, that accepts a connection.
func WithPrimary(id string) StreamOption { return func(o *streamOptions) { o.primary = id } }

// WithRoutingTable sets how peers forward the stream. The default is a
// chain through the group's peers, primary first, in the order NewClient
// got them.
func WithRoutingTable(t *pb.RoutingTable) StreamOption {
	return func(o *streamOptions) { o.routing = t }
}

// WithGroupID sets the Raft group id in the header request.
func WithGroupID(id []byte) StreamOption { return func(o *streamOptions) { o.group = id } }

// Output is one open stream. Its methods are safe for concurrent use;
// packets are sent in the order their writes take the stream's turn, so a
// caller that cares about the order of its data writes from one goroutine.
type Output struct {
	c   *Client
	cn  *conn
	id  uint64
	req *pb.RaftClientRequest

	header *Future[*Reply]
	raft   *Future[*pb.RaftClientReply]

	mu        sync.Mutex
	hdr       pb.DataStreamPacketHeader // reused for every packet, under mu
	offset    uint64
	crc       uint32                     // CRC32C of the data sent so far, with checksums
	pending   fifo.Queue[*pendingPacket] // sent, not yet answered, in order
	err       error                      // the stream failed
	closeF    *Future[*Reply]            // CLOSE was sent
	committed bool
	winBytes  int64 // window taken: sent, or about to be, and not answered
	winPkts   int
	flight    int64         // bytes of the pending packets
	peak      int64         // most bytes ever in flight
	waits     int           // times a writer waited for the window, for tests
	waiting   int           // writers waiting for the window now
	space     chan struct{} // capacity 1: wakes a waiting writer to look again
	lastReply time.Time
	stopCtx   func() bool
	ended     bool // committed or failed; stopCtx has been called

	// Failover (output_failover.go). cn changes under mu when the stream
	// moves to another primary.
	ctx      context.Context // the stream's, for the dials of a failover
	retain   bool            // keep each data packet's bytes until its reply
	acked    uint64          // bytes every peer acknowledged
	crcAcked uint32          // CRC32C of those bytes
	primary  string          // the primary's id now
	table    *pb.RoutingTable
	moving   bool     // a failover is under way: packets queue unsent
	resuming bool     // the resume is sent and not answered: packets queue unsent
	tried    []string // primaries and candidates that failed, in order
	causes   []error  // why each of tried failed
	epoch    uint64   // failovers made
	// closedOn is the connection CLOSE was last sent on; mayHave names
	// the primary that failed after it had been sent CLOSE: whatever
	// the stream fails with from then on, it may have committed there.
	closedOn *conn
	mayHave  string
}

// pendingPacket is a packet in flight. Its future and reply live in it, to
// save allocations per packet. A packet nobody holds the future of (Send,
// Writer) comes from a pool and goes back to it when answered.
type pendingPacket struct {
	f      Future[*Reply]
	reply  Reply
	typ    pb.DataStreamPacketHeader_Type
	offset uint64
	length int64
	close  bool
	pooled bool
	sentAt time.Time
	// frame and body are kept, with failover, until the reply: the
	// packet's frame (or its prefix, when body follows it), sent again on
	// a new primary as it is, since nothing in it names the primary.
	frame, body *buffer.Buf
	crcEnd      uint32 // the stream's CRC32C through the packet
	// resume marks the RESUME a failover sent in place of the packets the
	// new primary already holds; its reply stands for the header's when
	// that was not answered yet (standsFor).
	resume    bool
	standsFor *pendingPacket
}

var pendingPool = sync.Pool{New: func() any { return &pendingPacket{pooled: true} }}

// free returns a pooled packet to the pool. Only pooled packets may be
// freed: the others belong to the caller that holds their future.
func (p *pendingPacket) free() {
	p.letGo()
	*p = pendingPacket{pooled: true}
	pendingPool.Put(p)
}

// Stream opens a stream whose header request carries a copy of message
// (say, the name of the blob), and returns once the header is sent;
// HeaderFuture reports the peers' answer. ctx governs the whole stream:
// cancelling it before the stream is committed fails the stream and aborts
// it on every peer. A ctx cancelled after CLOSE was sent leaves the
// commit's outcome unknown.
func (c *Client) Stream(ctx context.Context, message []byte, opts ...StreamOption) (*Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var so streamOptions
	for _, opt := range opts {
		opt(&so)
	}
	// Without WithPrimary the stream goes to the first peer that answers
	// the dial, in the group's order, so that one peer down does not stop
	// writes (the peers route around it, within the write quorum).
	candidates := c.peers
	if so.primary != "" {
		p, ok := c.peer(so.primary)
		if !ok {
			return nil, fmt.Errorf("datastream: primary %q is not a peer of the group", so.primary)
		}
		candidates = []group.Member{p}
	} else if so.routing != nil {
		candidates = c.peers[:1] // a table names its primary's place
	}
	var (
		primary group.Member
		cn      *conn
		errs    []error
	)
	for _, cand := range candidates {
		ids := []string{cand.ID}
		for _, p := range c.peers {
			if p.ID != cand.ID {
				ids = append(ids, p.ID)
			}
		}
		if so.routing != nil {
			if err := so.routing.Validate(cand.ID, ids); err != nil {
				// Refused here, before a dial, as the primary would
				// refuse it after one.
				return nil, fmt.Errorf("datastream: %w: %w", ErrBadRouting, err)
			}
		}
		var err error
		if cn, err = c.connFor(ctx, cand); err == nil {
			primary = cand
			if so.routing == nil {
				so.routing = pb.Chain(ids...)
			}
			break
		}
		if ctx.Err() != nil || errors.Is(err, ErrClosed) {
			return nil, err
		}
		errs = append(errs, err)
	}
	if cn == nil {
		return nil, errors.Join(errs...)
	}
	o := &Output{
		c: c, cn: cn, id: c.callID.Add(1),
		raft:  new(Future[*pb.RaftClientReply]),
		space: make(chan struct{}, 1),
		ctx:   ctx, retain: c.failsOver(), primary: primary.ID, table: so.routing,
	}
	o.req = &pb.RaftClientRequest{
		ClientId:     c.id,
		CallId:       o.id,
		GroupId:      so.group,
		ServerId:     primary.ID,
		Type:         pb.RaftClientRequest_STREAM,
		Message:      bytes.Clone(message),
		RoutingTable: so.routing,
	}
	// The request is marshaled into a pooled scratch buffer, which send
	// copies into the frame.
	scratch := bytebufferpool.Get()
	defer bytebufferpool.Put(scratch)
	body, err := (proto.MarshalOptions{}).MarshalAppend(scratch.B[:0], o.req)
	if err != nil {
		return nil, fmt.Errorf("datastream: encode header: %w", err)
	}
	scratch.B = body
	if err := cn.add(o); err != nil {
		return nil, err
	}
	o.mu.Lock()
	if !o.ended { // the connection may have died already
		o.stopCtx = context.AfterFunc(ctx, func() {
			o.fail(fmt.Errorf("datastream: stream aborted: %w", context.Cause(ctx)), true)
		})
	}
	o.mu.Unlock()
	o.header = o.send(ctx, pb.DataStreamPacketHeader_STREAM_HEADER, body, nil, int64(len(body)), 0, false, false)
	if err := o.header.failedNow(); err != nil {
		o.fail(err, false)
		return nil, err
	}
	return o, nil
}

// ID returns the stream id (the header request's call id).
func (o *Output) ID() uint64 { return o.id }

// Request returns the stream's header request, as first sent: after a
// failover the stream's primary is another peer (Reply.Server names it).
func (o *Output) Request() *pb.RaftClientRequest { return o.req }

// HeaderFuture completes when the primary and its successors opened the
// stream.
func (o *Output) HeaderFuture() *Future[*Reply] { return o.header }

// RaftClientReplyFuture completes once the stream is closed and committed,
// or fails with the stream. It does not close the stream.
func (o *Output) RaftClientReplyFuture() *Future[*pb.RaftClientReply] { return o.raft }

// WriteAsync sends data as one packet with the given options and returns
// the future of its reply. data may be reused as soon as WriteAsync
// returns. It waits while the stream's or the client's window is full; if
// ctx ends meanwhile, the packet is not sent, the future fails with ctx's
// error, and the stream carries on. A packet over the frame limit fails
// with ErrTooLarge, likewise without touching the stream.
func (o *Output) WriteAsync(ctx context.Context, data []byte, opts ...WriteOption) *Future[*Reply] {
	return o.send(ctx, pb.DataStreamPacketHeader_STREAM_DATA, data, nil, int64(len(data)), optionBits(opts), false, false)
}

// WriteBufAsync is WriteAsync for a pooled buffer: b is sent as the
// packet's body without a copy. It takes over the caller's reference, on
// every path, and releases it once the bytes are on the wire.
func (o *Output) WriteBufAsync(ctx context.Context, b *buffer.Buf, opts ...WriteOption) *Future[*Reply] {
	return o.send(ctx, pb.DataStreamPacketHeader_STREAM_DATA, nil, b, int64(b.Len()), optionBits(opts), false, false)
}

// Send is WriteBufAsync for a caller that does not wait on each packet: it
// returns once b is queued, or with the reason it was not. A packet that
// fails later fails the stream, which the next Send, Err and Close report.
// It allocates nothing, where WriteBufAsync allocates the future it
// returns. With the Close option it waits for nothing either; Close then
// returns the future of the commit.
func (o *Output) Send(ctx context.Context, b *buffer.Buf, opts ...WriteOption) error {
	return o.send(ctx, pb.DataStreamPacketHeader_STREAM_DATA, nil, b, int64(b.Len()), optionBits(opts), false, true).failedNow()
}

// Close sends CLOSE and returns the future of its reply, which carries the
// RaftClientReply once the stream is committed. Calling it again, or after
// a write with the Close option, returns the same future; on a failed
// stream it returns the stream's error.
func (o *Output) Close(ctx context.Context) *Future[*Reply] {
	o.mu.Lock()
	f := o.closeF
	o.mu.Unlock()
	if f != nil {
		return f
	}
	return o.send(ctx, pb.DataStreamPacketHeader_STREAM_DATA, nil, nil, 0, uint32(Close), true, false)
}

// Err returns the error the stream failed with, or nil.
func (o *Output) Err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

func optionBits(opts []WriteOption) uint32 {
	var bits uint32
	for _, opt := range opts {
		bits |= uint32(opt)
	}
	return bits
}

// send queues one packet of n bytes: data is copied into the frame, or
// body (a *buffer.Buf or a transport.FileRegion, whose reference send takes
// over) follows the frame's prefix without a copy. closeCall marks Close,
// which returns the CLOSE already sent rather than failing. Without
// future, a packet that is queued returns a nil future, whose failedNow is
// nil: its pendingPacket comes from the pool.
func (o *Output) send(ctx context.Context, typ pb.DataStreamPacketHeader_Type, data []byte, body any, n int64, opts uint32, closeCall, noFuture bool) *Future[*Reply] {
	if n > maxPayload {
		pipeline.Release(body)
		return failedFuture[*Reply](fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, n, maxPayload))
	}
	// A done ctx fails the write even when the window has room.
	if err := ctx.Err(); err != nil {
		pipeline.Release(body)
		return failedFuture[*Reply](err)
	}
	if err := o.acquire(ctx, n); err != nil {
		pipeline.Release(body)
		return failedFuture[*Reply](err)
	}
	if err := o.c.acquireSlot(ctx, n); err != nil {
		o.releaseWindow(n)
		pipeline.Release(body)
		return failedFuture[*Reply](err)
	}

	o.mu.Lock()
	f, err := o.closeF, o.err
	if err == nil && f != nil && !closeCall {
		err = fmt.Errorf("%w: write after Close", ErrClosed)
	}
	crc := o.crc
	if err == nil && f == nil && typ == pb.DataStreamPacketHeader_STREAM_DATA && !o.c.opts.noChecksums {
		opts |= uint32(pb.DataStreamPacketHeader_CHECKSUM)
		crc, err = updateCRC(crc, data, body)
	}
	if err == nil && f == nil {
		h := &o.hdr
		h.ClientId, h.Type, h.StreamId = o.c.id, typ, o.id
		h.StreamOffset, h.DataLength, h.Options = o.offset, uint64(n), opts
		h.Crc32C = crc
		var frame *buffer.Buf
		if body == nil && len(data) > buffer.MaxPooled-1<<10 {
			// A frame this large would not come from the pool; the
			// body alone may.
			body = buffer.Copy(data)
		}
		if body != nil {
			frame, err = dscodec.EncodePacketPrefix(h, int(n))
		} else {
			frame, err = dscodec.EncodePacket(h, data)
		}
		if err == nil {
			o.crc = crc
			return o.queueLocked(frame, body, typ, n, opts, crc, noFuture)
		}
	}
	o.releaseWindowLocked(n)
	o.mu.Unlock()
	o.c.releaseSlot(n)
	pipeline.Release(body)
	if err == nil {
		return f // a second Close
	}
	return failedFuture[*Reply](err)
}

// queueLocked records the packet as pending and writes it. Writing under
// o.mu keeps the stream's packets in offset order on the wire. It unlocks
// o.mu.
func (o *Output) queueLocked(frame *buffer.Buf, body any, typ pb.DataStreamPacketHeader_Type, n int64, opts, crc uint32, noFuture bool) *Future[*Reply] {
	closing := opts&uint32(Close) != 0
	var p *pendingPacket
	if noFuture && !closing { // Close's future is the stream's
		p = pendingPool.Get().(*pendingPacket)
	} else {
		p = new(pendingPacket)
	}
	p.typ, p.offset, p.length, p.close, p.sentAt = typ, o.offset, n, closing, time.Now()
	p.crcEnd = crc
	if o.retain && typ == pb.DataStreamPacketHeader_STREAM_DATA {
		p.frame = frame.Retain()
		if b, ok := body.(*buffer.Buf); ok {
			p.body = b.Retain()
		}
	}
	o.pending.Push(p)
	o.flight += n
	o.peak = max(o.peak, o.flight)
	if typ == pb.DataStreamPacketHeader_STREAM_DATA {
		o.offset += uint64(n)
	}
	if p.close {
		o.closeF = &p.f
	}
	pooled := p.pooled
	cn := o.cn
	var err error
	if o.moving || o.resuming {
		// The failover sends it, with the packets before it, once the
		// stream's new primary has taken the resume.
		frame.Release()
		pipeline.Release(body)
	} else {
		err = cn.send(frame, body)
		if closing {
			o.closedOn = cn
		}
	}
	o.mu.Unlock()
	if err != nil {
		o.lost(cn, fmt.Errorf("%w: %s: %v", ErrConnectionLost, cn.peer.ID, err), false)
	}
	if pooled {
		// p may be answered and back in the pool already.
		if err != nil {
			if e := o.Err(); e != nil { // else failing over
				return failedFuture[*Reply](e)
			}
		}
		return nil
	}
	return &p.f
}
