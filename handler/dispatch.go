package handler

import (
	"fmt"
	"sync"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/internal/fifo"
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
	view   dscodec.ReplyView // decoded on the connection's event loop only
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
	if err := dscodec.DecodeReplyView(frame.Bytes(), d.Streams.cfg.MaxHeader, v); err != nil {
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
	if v.Options&uint32(pb.DataStreamPacketHeader_ABORT) != 0 {
		// No stream waits for the answer to an abort; it must not be
		// taken for the reply of a newer stream under the same key.
		return
	}
	st := d.Streams.get(StreamKey{ClientID: string(v.ClientID), StreamID: v.StreamID})
	if st == nil {
		return // the stream failed meanwhile
	}
	st.ack(d.Peer, v)
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
	frames, err := dscodec.NewPacketFrameDecoder(maxFrame)
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
	frame, err := dscodec.EncodePacket(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}, nil)
	if err != nil {
		return err
	}
	if err := c.Write(frame); err != nil {
		return err
	}
	return c.Flush()
}

// How many failed streams a connection remembers, and for how long: long
// enough for a client that paused past the idle timeout to come back and
// learn why its stream is gone.
const (
	maxGraves = 256
	graveTTL  = 10 * time.Minute
)

// graveyard remembers why a connection's streams failed, so that a packet
// arriving after its failed stream left the stream table (an idle stream
// swept while its client was away, say) is answered with the failure's code
// and message instead of UNKNOWN_STREAM. It belongs to one connection's
// Router and its event loop. It is bounded: at most maxGraves failures,
// each served for graveTTL after it was recorded, and it watches the
// connection's open streams plus at most as many again that ended.
type graveyard struct {
	watch  map[StreamKey]*Stream // opened here, their end not yet looked at
	live   int                   // watched streams still open at the last scan
	graves map[StreamKey]grave
	order  fifo.Queue[graveKey] // graves, oldest first
}

type grave struct {
	err *pb.Error
	at  time.Time
}

type graveKey struct {
	key StreamKey
	at  time.Time
}

// opened watches st, which was just opened on the connection.
func (g *graveyard) opened(st *Stream, s *Streams) {
	if g.watch == nil {
		g.watch = make(map[StreamKey]*Stream)
		g.graves = make(map[StreamKey]grave)
	}
	if len(g.watch) >= 2*g.live+64 {
		g.scan(s, time.Now())
	}
	g.watch[st.Key] = st
}

// scan records the failures of the watched streams that have left the
// table and stops watching them.
func (g *graveyard) scan(s *Streams, now time.Time) {
	g.live = 0
	for k, st := range g.watch {
		if s.get(k) == st {
			g.live++
			continue
		}
		g.ended(k, st, now)
	}
}

func (g *graveyard) ended(k StreamKey, st *Stream, now time.Time) {
	delete(g.watch, k)
	if err := st.Err(); err != nil {
		g.bury(k, codeOf(err, pb.ErrorCode_INTERNAL), now)
	}
}

func (g *graveyard) bury(k StreamKey, e *pb.Error, now time.Time) {
	for g.order.Len() > 0 && (g.order.Len() >= maxGraves || now.Sub(g.order.Peek().at) > graveTTL) {
		old := g.order.Pop()
		if gr, ok := g.graves[old.key]; ok && gr.at.Equal(old.at) {
			delete(g.graves, old.key)
		}
	}
	g.graves[k] = grave{err: e, at: now}
	g.order.Push(graveKey{key: k, at: now})
}

// cause returns why stream k, no longer in the table, failed, or nil if it
// did not fail (it closed) or is not remembered.
func (g *graveyard) cause(k StreamKey, s *Streams, now time.Time) *pb.Error {
	if st := g.watch[k]; st != nil && s.get(k) != st {
		g.ended(k, st, now)
	}
	gr, ok := g.graves[k]
	if !ok {
		return nil
	}
	if now.Sub(gr.at) > graveTTL {
		delete(g.graves, k)
		return nil
	}
	return errorf(gr.err.Code, "stream %v failed earlier: %s", k, gr.err.Message)
}
