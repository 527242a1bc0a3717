package handler

import (
	"sync/atomic"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec"
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

// Packet is one decoded DataStream packet.
type Packet struct {
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
	parts   atomic.Int32
	written uint64 // stream bytes written locally after this packet
	err     *pb.Error // guarded by the stream's mutex once routed
	// refused is set by the router, before other goroutines see p, when
	// the packet is answered with an error without being written or
	// forwarded.
	refused bool
	reply   *pb.RaftClientReply
}

// Release drops the packet's buffers. The Replier calls it once the reply is
// written; a stage that consumes a packet without passing it on calls it.
func (p *Packet) Release() {
	if p.Body != nil {
		p.Body.Release()
		p.Body = nil
	}
	if p.Frame != nil {
		p.Frame.Release()
		p.Frame = nil
	}
}

// Key returns the packet's stream key.
func (p *Packet) Key() StreamKey {
	return StreamKey{ClientID: string(p.Header.GetClientId()), StreamID: p.Header.GetStreamId()}
}

// Has reports whether the packet carries option o.
func (p *Packet) Has(o pb.DataStreamPacketHeader_Option) bool { return p.Header.HasOption(o) }

// PacketDecoder turns frames into packets. A frame whose header does not
// decode gets a BAD_HEADER reply; frame boundaries are intact, so the
// connection carries on.
type PacketDecoder struct {
	MaxHeader int
}

// ChannelRead implements pipeline.ReadHandler.
func (d *PacketDecoder) ChannelRead(ctx *pipeline.Context, msg any) {
	frame, ok := msg.(*buffer.Buf)
	if !ok {
		ctx.FireChannelRead(msg)
		return
	}
	h, off, err := codec.DecodePacket(frame.Bytes(), d.MaxHeader)
	if err != nil {
		frame.Release()
		errorReply(ctx.Pipeline(), nil, pb.Errorf(pb.ErrorCode_BAD_HEADER, "%v", err))
		return
	}
	if unknown := h.GetOptions() &^ pb.KnownOptions; unknown != 0 {
		frame.Release()
		errorReply(ctx.Pipeline(), h, pb.Errorf(pb.ErrorCode_BAD_HEADER, "unknown option bits %#x", unknown))
		return
	}
	ctx.FireChannelRead(&Packet{Header: h, Frame: frame, Body: frame.Slice(off, frame.Len())})
}
