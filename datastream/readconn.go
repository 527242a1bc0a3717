package datastream

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
)

// readConn is a connection to one peer that carries reads only: a server
// serves STREAM_READ and STREAM_LIST on a connection that opens with one,
// and the write path's connections are left alone. Its calls are told
// apart by stream_id.
type readConn struct {
	peerConn
	ch transport.Channel

	// guarded by mu
	calls  map[uint64]*readCall
	nextID uint64
}

// dialRead connects to p for reads.
func (c *Client) dialRead(ctx context.Context, p group.Member) (*readConn, error) {
	if c.ctx.Err() != nil {
		return nil, ErrClosed
	}
	rc := &readConn{peerConn: peerConn{c: c, peer: p, kind: "read connection"}, calls: make(map[uint64]*readCall)}
	ctx, cancel := context.WithTimeout(ctx, c.opts.dialTimeout)
	defer cancel()
	ch, err := c.dialer.Dial(ctx, p.StreamAddr, rc.init)
	if err != nil {
		if c.ctx.Err() != nil {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("%w: connect to %s: %w", ErrConnectionLost, p.ID, err)
	}
	rc.ch = ch
	return rc, nil
}

func (rc *readConn) init(ch transport.Channel) {
	rc.initChannel(ch, "read-replies", (*readReplies)(rc))
}

// close closes the connection and waits until its goroutines are done.
func (rc *readConn) close() {
	_ = rc.ch.Close()
	<-rc.ch.Done()
}

// start sends a request of type t with body and returns its call.
func (rc *readConn) start(t pb.DataStreamPacketHeader_Type, body []byte, off, n int64) (*readCall, error) {
	rc.mu.Lock()
	if rc.dead != nil {
		rc.mu.Unlock()
		return nil, rc.dead
	}
	rc.nextID++
	call := &readCall{rc: rc, id: rc.nextID, off: off, n: n, next: off, signal: make(chan struct{}, 1)}
	rc.calls[call.id] = call
	rc.mu.Unlock()
	h := &pb.DataStreamPacketHeader{ClientId: rc.c.id, Type: t, StreamId: call.id, DataLength: uint64(len(body))}
	frame, err := dscodec.EncodePacket(h, body)
	if err == nil {
		// One frame per call: a Write is atomic, so calls need no lock.
		if err = rc.ch.Write(frame); err == nil {
			err = rc.ch.Flush()
		}
	}
	if err != nil {
		call.cancel()
		return nil, fmt.Errorf("%w: %s: %w", ErrConnectionLost, rc.peer.ID, err)
	}
	return call, nil
}

// startRead asks for n bytes of name from off; index, if not 0, is the
// entry the bytes must come from.
func (rc *readConn) startRead(name string, index uint64, off, n int64) (*readCall, error) {
	body, err := proto.Marshal(&pb.ReadRequest{Name: name, Offset: uint64(off), Length: uint64(n), Index: index})
	if err != nil {
		return nil, fmt.Errorf("datastream: encode read request: %w", err)
	}
	return rc.start(pb.DataStreamPacketHeader_STREAM_READ, body, off, n)
}

// failAll fails every call on the connection and refuses new ones.
func (rc *readConn) failAll(err error) {
	for _, c := range endAll(&rc.peerConn, rc.calls, err) {
		c.finish(err)
	}
}

// readCall is one request in flight and the replies it has received.
type readCall struct {
	rc   *readConn
	id   uint64
	off  int64 // the range asked for; the replies must cover it exactly
	n    int64
	next int64 // the offset the next reply must start at; event loop only

	mu     sync.Mutex
	chunks []*buffer.Buf // received and not yet taken
	done   bool          // the last reply came, or the call failed
	err    error
	info   *pb.FileInfo
	files  []*pb.FileInfo // a LIST's
	signal chan struct{}  // capacity 1: something changed
}

func (c *readCall) notify() {
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

// finish fails the call with err unless it is done.
func (c *readCall) finish(err error) {
	c.mu.Lock()
	if !c.done {
		c.done, c.err = true, err
	}
	c.mu.Unlock()
	c.notify()
}

// cancel forgets the call and drops what it received.
func (c *readCall) cancel() {
	c.rc.mu.Lock()
	delete(c.rc.calls, c.id)
	c.rc.mu.Unlock()
	c.mu.Lock()
	c.done = true
	if c.err == nil {
		c.err = ErrClosed
	}
	chunks := c.chunks
	c.chunks = nil
	c.mu.Unlock()
	for _, b := range chunks {
		b.Release()
	}
}

// take returns the next chunk of the call's data, which the caller then
// owns, or io.EOF once all of it was taken. It waits at most timeout for
// the peer's next reply.
func (c *readCall) take(ctx context.Context, timeout time.Duration) (*buffer.Buf, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		c.mu.Lock()
		switch {
		case len(c.chunks) > 0:
			b := c.chunks[0]
			c.chunks[0] = nil
			c.chunks = c.chunks[1:]
			c.mu.Unlock()
			return b, nil
		case c.err != nil:
			err := c.err
			c.mu.Unlock()
			return nil, err
		case c.done:
			c.mu.Unlock()
			return nil, io.EOF
		}
		c.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(timeout)
		} else {
			timer.Reset(timeout)
		}
		select {
		case <-c.signal:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-timer.C:
			return nil, fmt.Errorf("%w: %v waiting for %s", ErrReplyTimeout, timeout, c.rc.peer.ID)
		}
	}
}

// wait waits until the call is done, for calls whose replies carry no
// data: a stat or a LIST.
func (c *readCall) wait(ctx context.Context, timeout time.Duration) error {
	for {
		b, err := c.take(ctx, timeout)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		b.Release()
	}
}

// DecodeReadReply parses a reply frame to STREAM_READ or STREAM_LIST: the
// header and the offset of the body, which holds file bytes or a ListReply.
func DecodeReadReply(frame []byte) (*pb.DataStreamReplyHeader, int, error) {
	if len(frame) < 8 {
		return nil, 0, fmt.Errorf("%w: frame of %d bytes", dscodec.ErrBadPacket, len(frame))
	}
	hl := binary.BigEndian.Uint32(frame[4:])
	if uint64(hl) > dscodec.DefaultMaxPacketHeader || uint64(hl) > uint64(len(frame)-8) {
		return nil, 0, fmt.Errorf("%w: header length %d in a frame of %d bytes", dscodec.ErrBadPacket, hl, len(frame))
	}
	off := 8 + int(hl)
	h := new(pb.DataStreamReplyHeader)
	if err := proto.Unmarshal(frame[8:off], h); err != nil {
		return nil, 0, fmt.Errorf("%w: reply header: %v", dscodec.ErrBadPacket, err)
	}
	return h, off, nil
}

// readReplies is the last stage of a read connection.
type readReplies readConn

func (h *readReplies) ChannelRead(ctx *pipeline.Context, msg any) {
	rc := (*readConn)(h)
	frame, ok := msg.(*buffer.Buf)
	if !ok {
		ctx.FireChannelRead(msg)
		return
	}
	defer frame.Release()
	rh, off, err := DecodeReadReply(frame.Bytes())
	if err != nil {
		rc.badReply(ctx, err)
		return
	}
	rc.mu.Lock()
	call := rc.calls[rh.GetPacketHeader().GetStreamId()]
	if call != nil && (rh.GetLast() || !rh.GetSuccess()) {
		delete(rc.calls, call.id)
	}
	rc.mu.Unlock()
	if call == nil {
		return // a call given up on
	}
	if err := call.deliver(rh, frame, off); err != nil {
		rc.badReply(ctx, err)
	}
}

// deliver hands a reply to the call. A reply that breaks the protocol
// fails the call and is returned, to close the connection.
func (c *readCall) deliver(rh *pb.DataStreamReplyHeader, frame *buffer.Buf, off int) error {
	defer c.notify()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil
	}
	if !rh.GetSuccess() {
		c.done = true
		code := rh.GetErrorCode()
		if code == pb.ErrorCode_ERROR_NONE {
			code = pb.ErrorCode_INTERNAL
		}
		c.err = &pb.Error{Code: code, Message: fmt.Sprintf("%s (peer %s)", rh.GetErrorMessage(), c.rc.peer.ID)}
		return nil
	}
	if fi := rh.GetFile(); fi != nil && c.info == nil {
		c.info = fi
	}
	body := frame.Bytes()[off:]
	var bad error
	switch rh.GetPacketHeader().GetType() {
	case pb.DataStreamPacketHeader_STREAM_LIST:
		var part pb.ListReply
		if err := proto.Unmarshal(body, &part); err != nil {
			bad = fmt.Errorf("%w: list reply: %v", dscodec.ErrBadPacket, err)
			break
		}
		c.files = append(c.files, part.Files...)
	case pb.DataStreamPacketHeader_STREAM_READ:
		if int64(rh.GetReadOffset()) != c.next || c.next+int64(len(body)) > c.off+c.n {
			bad = fmt.Errorf("%w: %d bytes at %d answering a read of [%d, %d) at %d",
				dscodec.ErrBadPacket, len(body), rh.GetReadOffset(), c.off, c.off+c.n, c.next)
			break
		}
		c.next += int64(len(body))
		if rh.GetLast() && c.next != c.off+c.n {
			bad = fmt.Errorf("%w: read of [%d, %d) ended at %d", dscodec.ErrBadPacket, c.off, c.off+c.n, c.next)
			break
		}
		if len(body) > 0 {
			c.chunks = append(c.chunks, frame.Slice(off, frame.Len()))
		}
	default:
		bad = fmt.Errorf("%w: reply for a %v", dscodec.ErrBadPacket, rh.GetPacketHeader().GetType())
	}
	if bad != nil {
		c.done, c.err = true, bad
		return bad
	}
	c.done = rh.GetLast()
	return nil
}

func (h *readReplies) ChannelInactive(ctx *pipeline.Context) {
	rc := (*readConn)(h)
	rc.failAll(rc.lost())
	ctx.FireChannelInactive()
}

func (h *readReplies) ErrorCaught(ctx *pipeline.Context, err error) {
	h.closeOnError(ctx, err)
}
