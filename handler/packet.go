package handler

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Stage names of the server pipeline, head to tail.
const (
	StageFrame   = "frame"
	StagePacket  = "packet"
	StageRouter  = "router"
	StageWrite   = "write"
	StageForward = "forward"
	StageReply   = "reply"
	StageEncode  = "encode"
)

// Packet is one decoded DataStream packet. Packets are pooled: once
// released, a packet and its Header belong to the next frame.
type Packet struct {
	// Header is the packet header; its ClientId aliases Frame.
	Header *pb.DataStreamPacketHeader
	// Frame is the whole frame as received; the forwarder sends it on
	// unchanged.
	Frame *buffer.Buf
	// Body is a view of Frame holding the packet's data.
	Body *buffer.Buf
	// Stream is set by the router.
	Stream *Stream

	// parts counts what must finish before the reply: the pipeline pass
	// itself, the local write, and one per successor.
	parts atomic.Int32
	// inPass is set by the router and cleared by the Replier: a Release
	// in between is a stage dropping a packet it must pass on (see
	// Release).
	inPass  atomic.Bool
	written uint64    // stream bytes written locally after this packet
	sentAt  time.Time // when it was forwarded to the successors
	err     *pb.Error // guarded by the stream's mutex once routed
	// refused is set by the router, before other goroutines see p, when
	// the packet is answered with an error without being written or
	// forwarded.
	refused bool
	reply   *pb.RaftClientReply

	// Set by the router: the connection p came from, where its reply
	// goes, and its counters; the stream's attachment p was routed under
	// (see Stream.gen); a header's decoded request.
	up   *pipeline.Pipeline
	conn *connState
	gen  uint64
	req  *pb.RaftClientRequest
	// origin marks a resume this peer sends in a recovery: no upstream
	// waits for its reply, and it answers for standsFor, the stream's
	// header, when the failed successor had not acknowledged that yet.
	origin    bool
	standsFor *Packet
	crcStart  uint32 // the stream's CRC32C up to p, as forwarded

	hdr pb.DataStreamPacketHeader // what Header points to
}

var packets = sync.Pool{New: func() any { p := new(Packet); p.Header = &p.hdr; return p }}

// Release drops the packet's buffers and returns it to the pool. The
// Replier calls it once the reply is written; a stage that consumes a
// packet without passing it on calls it. Nothing may use p afterwards.
//
// A stage between the router and the Replier may observe a packet or fail
// its stream, but not drop it: the stream waits for its reply. Released
// there, the packet is not freed; its stream fails with INTERNAL, naming
// the rule, and the packet is answered with that error in its turn.
func (p *Packet) Release() {
	if p.inPass.CompareAndSwap(true, false) {
		p.Stream.droppedInPass(p)
		return
	}
	if p.Body != nil {
		p.Body.Release()
	}
	if p.Frame != nil {
		p.Frame.Release()
	}
	p.Frame, p.Body, p.Stream = nil, nil, nil
	p.written, p.sentAt, p.err, p.refused, p.reply = 0, time.Time{}, nil, false, nil
	p.up, p.conn, p.gen, p.req, p.origin, p.standsFor, p.crcStart = nil, nil, 0, nil, false, nil, 0
	p.hdr.ClientId = nil
	packets.Put(p)
}

// Key returns the packet's stream key.
func (p *Packet) Key() StreamKey {
	return StreamKey{ClientID: string(p.Header.GetClientId()), StreamID: p.Header.GetStreamId()}
}

// Has reports whether the packet carries option o.
func (p *Packet) Has(o pb.DataStreamPacketHeader_Option) bool { return p.Header.HasOption(o) }

// plainData reports whether p is data and nothing more: no SYNC or CLOSE,
// which call into the state machine beyond Write.
func (p *Packet) plainData() bool {
	return p.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA &&
		!p.Has(pb.DataStreamPacketHeader_SYNC) && !p.Has(pb.DataStreamPacketHeader_CLOSE)
}

// PacketDecoder turns frames into packets. A frame whose header does not
// decode, does not agree with the frame or is over the limits cannot be
// attributed to a stream: the decoder answers it with one reply that has no
// packet header, saying why, and closes the connection, which fails every
// stream on it (docs/protocol.md, Framing). Frames already read behind it
// are dropped.
type PacketDecoder struct {
	MaxHeader int
	// MaxBody, if positive, bounds a packet's data.
	MaxBody int
	// ID is this peer's id, for the reply's server_id.
	ID string

	failed bool // owned by the event loop
}

// ChannelRead implements pipeline.ReadHandler.
func (d *PacketDecoder) ChannelRead(ctx *pipeline.Context, msg any) {
	frame, ok := msg.(*buffer.Buf)
	if !ok {
		ctx.FireChannelRead(msg)
		return
	}
	if d.failed {
		frame.Release()
		return
	}
	p := packets.Get().(*Packet)
	p.Frame = frame
	off, err := dscodec.DecodePacketInto(frame.Bytes(), d.MaxHeader, p.Header)
	if err == nil && d.MaxBody > 0 && frame.Len()-off > d.MaxBody {
		err = fmt.Errorf("%w: %d bytes of data, more than the limit of %d", dscodec.ErrBadPacket, frame.Len()-off, d.MaxBody)
	}
	if err != nil {
		p.Release()
		d.failed = true
		errorReply(ctx.Pipeline(), d.ID, nil, pb.Errorf(pb.ErrorCode_BAD_HEADER, "%v; closing the connection", err))
		_ = ctx.Pipeline().Close()
		return
	}
	p.Body = frame.Slice(off, frame.Len())
	ctx.FireChannelRead(p)
}
