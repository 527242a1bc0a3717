package handler

import (
	"fmt"
	"sync"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// SuccessorReplies is the last stage of a connection to a successor: it
// hands each reply to the stream that forwarded the packet, and fails those
// streams when the connection ends.
type SuccessorReplies struct {
	Streams *Streams
	Peer    string // the successor's id
	// Pong, if not nil, is closed by the first answer to a PING: the
	// successor is really there.
	Pong     chan struct{}
	pongOnce sync.Once
	// OnPong, if not nil, is called on the connection's event loop for
	// every answer to a PING, for a keepalive.
	OnPong func()
	view   codec.ReplyView // decoded on the connection's event loop only
}

// ChannelRead implements pipeline.ReadHandler.
func (d *SuccessorReplies) ChannelRead(ctx *pipeline.Context, msg any) {
	frame, ok := msg.(*buffer.Buf)
	if !ok {
		ctx.FireChannelRead(msg)
		return
	}
	// The view aliases the frame, which is released once the reply has
	// been taken; ack copies what it keeps.
	defer frame.Release()
	v := &d.view
	if err := codec.DecodeReplyView(frame.Bytes(), d.Streams.cfg.MaxHeader, v); err != nil {
		// A successor that speaks garbage cannot be trusted with any
		// stream: drop the connection, which fails them all.
		ctx.FireError(fmt.Errorf("handler: from successor %s: %w", d.Peer, err))
		return
	}
	if v.Type == pb.DataStreamPacketHeader_PING {
		if d.Pong != nil {
			d.pongOnce.Do(func() { close(d.Pong) })
		}
		if d.OnPong != nil {
			d.OnPong()
		}
		return
	}
	st := d.Streams.get(StreamKey{ClientID: string(v.ClientID), StreamID: v.StreamID})
	if st == nil {
		return // an abort's reply, or the stream failed meanwhile
	}
	for i, id := range st.succIDs {
		if id == d.Peer {
			st.ack(i, v)
			return
		}
	}
}

// ChannelInactive fails the streams forwarded over this connection.
func (d *SuccessorReplies) ChannelInactive(ctx *pipeline.Context) {
	d.Streams.PeerDown(d.Peer, ErrPeerClosed)
	ctx.FireChannelInactive()
}

// ErrorCaught closes the connection on any error.
func (d *SuccessorReplies) ErrorCaught(ctx *pipeline.Context, err error) {
	d.Streams.cfg.Logger.Warn("handler: successor connection failed", "peer", d.Peer, "err", err)
	_ = ctx.Close()
}

// InstallSuccessor adds the stages of a connection to a successor.
// It returns the reply stage, whose Pong reports the answer to Ping.
func InstallSuccessor(p *pipeline.Pipeline, s *Streams, peer string, maxFrame int) (*SuccessorReplies, error) {
	frames, err := codec.NewPacketFrameDecoder(maxFrame)
	if err != nil {
		return nil, err
	}
	if err := p.AddLast(StageFrame, frames); err != nil {
		return nil, err
	}
	r := &SuccessorReplies{Streams: s, Peer: peer, Pong: make(chan struct{})}
	return r, p.AddLast("replies", r)
}

// Ping sends a PING on a connection to a successor; see SuccessorReplies.
func Ping(c Successor) error {
	frame, err := codec.EncodePacket(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}, nil)
	if err != nil {
		return err
	}
	if err := c.Write(frame); err != nil {
		return err
	}
	return c.Flush()
}
