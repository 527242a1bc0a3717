package datastream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec"
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

// Reply is a peer's answer to one packet.
type Reply struct {
	Header *pb.DataStreamReplyHeader
	// RaftClientReply is set on the reply to CLOSE: the commit's log
	// index and term.
	RaftClientReply *pb.RaftClientReply
}

// BytesWritten returns the stream length on every peer after the packet.
func (r *Reply) BytesWritten() uint64 { return r.Header.GetBytesWritten() }

type streamOptions struct {
	primary string
	routing *pb.RoutingTable
	group   []byte
}

// StreamOption configures a stream.
type StreamOption func(*streamOptions)

// WithPrimary sends the stream to peer id; the default is the first peer.
func WithPrimary(id string) StreamOption { return func(o *streamOptions) { o.primary = id } }

// WithRoutingTable sets how peers forward the stream. The default is a
// chain through the group's peers, primary first.
func WithRoutingTable(t *pb.RoutingTable) StreamOption {
	return func(o *streamOptions) { o.routing = t }
}

// WithGroupID sets the Raft group id in the header request.
func WithGroupID(id []byte) StreamOption { return func(o *streamOptions) { o.group = id } }

// Output is one open stream. Its methods are safe for concurrent use;
// packets are sent in the order their writes are called.
type Output struct {
	c   *Client
	cn  *conn
	id  uint64
	req *pb.RaftClientRequest

	header  *Future[*Reply]
	raft    *Future[*pb.RaftClientReply]
	stopCtx func() bool

	mu       sync.Mutex
	offset   uint64
	pending  []*pendingPacket
	err      error
	closeF   *Future[*Reply]
	inBytes  int64
	inPkts   int
	peak     int64
	space    chan struct{} // closed and replaced when the window frees
	finished bool
	ended    bool // finished or failed; stopCtx has been called
}

type pendingPacket struct {
	f      *Future[*Reply]
	typ    pb.DataStreamPacketHeader_Type
	offset uint64
	length int64
	close  bool
	sentAt time.Time
}

// Stream opens a stream whose header request carries message, and returns
// once the header is sent. ctx governs the whole stream: cancelling it
// before the stream is committed aborts the stream on every peer.
func (c *Client) Stream(ctx context.Context, message []byte, opts ...StreamOption) (*Output, error) {
	so := streamOptions{primary: c.peers[0].ID}
	for _, opt := range opts {
		opt(&so)
	}
	primary, ok := c.peer(so.primary)
	if !ok {
		return nil, fmt.Errorf("datastream: primary %q is not a peer of the group", so.primary)
	}
	if so.routing == nil {
		ids := []string{primary.ID}
		for _, p := range c.peers {
			if p.ID != primary.ID {
				ids = append(ids, p.ID)
			}
		}
		so.routing = pb.Chain(ids...)
	}
	cn, err := c.connFor(ctx, primary)
	if err != nil {
		return nil, err
	}
	o := &Output{
		c: c, cn: cn, id: c.callID.Add(1),
		raft:  newFuture[*pb.RaftClientReply](),
		space: make(chan struct{}),
	}
	o.req = &pb.RaftClientRequest{
		ClientId:     c.id,
		CallId:       o.id,
		GroupId:      so.group,
		ServerId:     primary.ID,
		Type:         pb.RaftClientRequest_STREAM,
		Message:      message,
		RoutingTable: so.routing,
	}
	body, err := proto.Marshal(o.req)
	if err != nil {
		return nil, fmt.Errorf("datastream: encode header: %w", err)
	}
	if err := cn.add(o); err != nil {
		return nil, err
	}
	o.header = o.send(ctx, pb.DataStreamPacketHeader_STREAM_HEADER, body, nil, 0)
	if _, err, done := o.header.Result(); done && err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		o.fail(fmt.Errorf("datastream: stream aborted: %w", context.Cause(ctx)), true)
	})
	o.mu.Lock()
	if o.ended {
		stop()
	} else {
		o.stopCtx = stop
	}
	o.mu.Unlock()
	return o, nil
}

// ID returns the stream id (the header request's call id).
func (o *Output) ID() uint64 { return o.id }

// Request returns the stream's header request.
func (o *Output) Request() *pb.RaftClientRequest { return o.req }

// HeaderFuture completes when the primary and its successors opened the
// stream.
func (o *Output) HeaderFuture() *Future[*Reply] { return o.header }

// RaftClientReplyFuture completes once the stream is closed and committed.
// It does not close the stream.
func (o *Output) RaftClientReplyFuture() *Future[*pb.RaftClientReply] { return o.raft }

// WriteAsync sends data as one packet with the given options and returns
// the future of its reply. data may be reused as soon as WriteAsync
// returns. It waits while the stream's window is full, up to ctx.
func (o *Output) WriteAsync(ctx context.Context, data []byte, opts ...WriteOption) *Future[*Reply] {
	return o.send(ctx, pb.DataStreamPacketHeader_STREAM_DATA, data, nil, optionBits(opts))
}

// WriteBufAsync sends b as one packet without copying it, taking over the
// caller's reference.
func (o *Output) WriteBufAsync(ctx context.Context, b *buffer.Buf, opts ...WriteOption) *Future[*Reply] {
	return o.send(ctx, pb.DataStreamPacketHeader_STREAM_DATA, nil, b, optionBits(opts))
}

// WriteFile sends count bytes of f from position pos, in packets of the
// client's packet size read straight into pooled buffers, with opts on the
// last packet. It returns the future of the last packet, which fails if any
// packet fails.
func (o *Output) WriteFile(ctx context.Context, f *os.File, pos, count int64, opts ...WriteOption) *Future[*Reply] {
	if count == 0 {
		return o.WriteAsync(ctx, nil, opts...)
	}
	var last *Future[*Reply]
	for off := int64(0); off < count; {
		n := min(int64(o.c.opts.packetSize), count-off)
		b := buffer.Get(int(n))
		if _, err := f.ReadAt(b.Bytes(), pos+off); err != nil {
			b.Release()
			return failedFuture[*Reply](fmt.Errorf("datastream: read %s at %d: %w", f.Name(), pos+off, err))
		}
		off += n
		var bits uint32
		if off == count {
			bits = optionBits(opts)
		}
		last = o.send(ctx, pb.DataStreamPacketHeader_STREAM_DATA, nil, b, bits)
		if _, err, done := last.Result(); done && err != nil {
			return last
		}
	}
	return last
}

// Close sends CLOSE and returns the future of its reply, which carries the
// RaftClientReply once the stream is committed. Calling it again returns
// the same future.
func (o *Output) Close(ctx context.Context) *Future[*Reply] {
	o.mu.Lock()
	if f := o.closeF; f != nil {
		o.mu.Unlock()
		return f
	}
	o.mu.Unlock()
	return o.send(ctx, pb.DataStreamPacketHeader_STREAM_DATA, nil, nil, uint32(Close))
}

// Err returns the error the stream failed with, or nil.
func (o *Output) Err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

// InFlight returns the bytes and packets sent and not yet answered, and the
// most bytes that were ever in flight at once.
func (o *Output) InFlight() (bytes int64, packets int, peak int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.inBytes, o.inPkts, o.peak
}

func optionBits(opts []WriteOption) uint32 {
	var bits uint32
	for _, opt := range opts {
		bits |= uint32(opt)
	}
	return bits
}

// send queues one packet: data is copied into the frame, or buf is sent as
// the body without a copy.
func (o *Output) send(ctx context.Context, typ pb.DataStreamPacketHeader_Type, data []byte, buf *buffer.Buf, opts uint32) *Future[*Reply] {
	n := int64(len(data))
	if buf != nil {
		n = int64(buf.Len())
	}
	if err := o.acquire(ctx, n); err != nil {
		if buf != nil {
			buf.Release()
		}
		return failedFuture[*Reply](err)
	}
	if err := o.c.acquireSlot(ctx, n); err != nil {
		o.releaseWindow(n)
		if buf != nil {
			buf.Release()
		}
		return failedFuture[*Reply](err)
	}

	o.mu.Lock()
	err := o.err
	if err == nil && o.closeF != nil {
		err = fmt.Errorf("%w: write after Close", ErrClosed)
	}
	if err != nil {
		o.mu.Unlock()
		o.releaseWindow(n)
		o.c.releaseSlot(n)
		if buf != nil {
			buf.Release()
		}
		return failedFuture[*Reply](err)
	}
	h := &pb.DataStreamPacketHeader{
		ClientId:     o.c.id,
		Type:         typ,
		StreamId:     o.id,
		StreamOffset: o.offset,
		DataLength:   uint64(n),
		Options:      opts,
	}
	var prefix *buffer.Buf
	if buf != nil {
		prefix, err = codec.EncodePacketPrefix(h, buf.Len())
	} else {
		prefix, err = codec.EncodePacket(h, data)
	}
	if err != nil {
		o.mu.Unlock()
		o.releaseWindow(n)
		o.c.releaseSlot(n)
		if buf != nil {
			buf.Release()
		}
		return failedFuture[*Reply](err)
	}
	p := &pendingPacket{f: newFuture[*Reply](), typ: typ, offset: o.offset, length: n, close: opts&uint32(Close) != 0, sentAt: time.Now()}
	o.pending = append(o.pending, p)
	if typ == pb.DataStreamPacketHeader_STREAM_DATA {
		o.offset += uint64(n)
	}
	if p.close {
		o.closeF = p.f
	}
	// Sending under o.mu keeps this stream's packets in offset order.
	err = o.cn.send(prefix, buf)
	o.mu.Unlock()
	if err != nil {
		o.fail(fmt.Errorf("%w: %s: %v", ErrConnectionLost, o.cn.peer.ID, err), false)
	}
	return p.f
}

// acquire waits for room for n bytes and one packet in the window. A
// packet larger than the whole window goes alone.
func (o *Output) acquire(ctx context.Context, n int64) error {
	for {
		o.mu.Lock()
		if o.err != nil {
			err := o.err
			o.mu.Unlock()
			return err
		}
		if o.inPkts == 0 || o.inBytes+n <= o.c.opts.windowBytes && o.inPkts < o.c.opts.windowPackets {
			o.inBytes += n
			o.inPkts++
			o.peak = max(o.peak, o.inBytes)
			o.mu.Unlock()
			return nil
		}
		space := o.space
		o.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (o *Output) releaseWindow(n int64) {
	o.mu.Lock()
	o.releaseWindowLocked(n)
	o.mu.Unlock()
}

func (o *Output) releaseWindowLocked(n int64) {
	o.inBytes -= n
	o.inPkts--
	close(o.space)
	o.space = make(chan struct{})
}

// onReply completes the oldest pending packet. Replies for a stream come in
// order; one that does not match the oldest packet is a protocol error.
func (o *Output) onReply(h *pb.DataStreamReplyHeader, rcr *pb.RaftClientReply) {
	o.mu.Lock()
	if len(o.pending) == 0 {
		o.mu.Unlock()
		return // the stream already failed locally
	}
	p := o.pending[0]
	ph := h.GetPacketHeader()
	if ph.GetType() != p.typ || ph.GetStreamOffset() != p.offset {
		o.mu.Unlock()
		o.fail(pb.Errorf(pb.ErrorCode_INTERNAL, "reply for offset %d, expected %d", ph.GetStreamOffset(), p.offset), true)
		return
	}
	if !h.GetSuccess() {
		o.mu.Unlock()
		err := error(&pb.Error{Code: h.GetErrorCode(), Message: h.GetErrorMessage()})
		if rcr != nil && rcr.GetLeaderHint() != "" {
			err = fmt.Errorf("%w (leader hint %s)", err, rcr.GetLeaderHint())
		}
		// The peer has dropped the stream; no abort is needed.
		o.fail(err, false)
		return
	}
	o.pending = o.pending[1:]
	o.releaseWindowLocked(p.length)
	finished := p.close
	if finished {
		o.finished = true
		o.err = fmt.Errorf("%w: stream committed", ErrClosed)
	}
	o.mu.Unlock()
	o.c.releaseSlot(p.length)
	p.f.complete(&Reply{Header: h, RaftClientReply: rcr}, nil)
	if finished {
		o.raft.complete(rcr, nil)
		o.done()
	}
}

// fail fails the stream: every pending future and every later write get
// err. With abort, the peers are told to drop the stream.
func (o *Output) fail(err error, abort bool) {
	o.mu.Lock()
	if o.err != nil {
		o.mu.Unlock()
		return
	}
	o.err = err
	pending := o.pending
	o.pending = nil
	for _, p := range pending {
		o.releaseWindowLocked(p.length)
	}
	offset := o.offset
	o.mu.Unlock()
	for _, p := range pending {
		o.c.releaseSlot(p.length)
		p.f.complete(nil, err)
	}
	o.raft.complete(nil, err)
	if abort {
		h := &pb.DataStreamPacketHeader{
			ClientId: o.c.id, Type: pb.DataStreamPacketHeader_STREAM_DATA,
			StreamId: o.id, StreamOffset: offset, Options: uint32(pb.DataStreamPacketHeader_ABORT),
		}
		if frame, e := codec.EncodePacket(h, nil); e == nil {
			_ = o.cn.send(frame, nil)
		}
	}
	o.done()
}

func (o *Output) done() {
	o.cn.remove(o)
	o.mu.Lock()
	o.ended = true
	stop := o.stopCtx
	o.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func (o *Output) oldestSent() (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.pending) == 0 {
		return time.Time{}, false
	}
	return o.pending[0].sentAt, true
}

// Writer returns an io.WriteCloser view of the stream: Write sends p in
// packets of the client's packet size and returns once they are queued;
// Close closes the stream and waits for its commit. Errors of earlier
// packets surface on a later Write or on Close.
func (o *Output) Writer(ctx context.Context) io.WriteCloser { return &writer{o: o, ctx: ctx} }

type writer struct {
	o   *Output
	ctx context.Context
}

func (w *writer) Write(p []byte) (int, error) {
	if err := w.o.Err(); err != nil {
		return 0, err
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), w.o.c.opts.packetSize)
		f := w.o.WriteAsync(w.ctx, p[:n])
		if _, err, done := f.Result(); done && err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

func (w *writer) Close() error {
	_, err := w.o.Close(w.ctx).Wait(w.ctx)
	if errors.Is(err, ErrClosed) && w.o.finished0() {
		return nil
	}
	return err
}

func (o *Output) finished0() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.finished
}
