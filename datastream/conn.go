package datastream

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
	"google.golang.org/protobuf/proto"
)

// conn is the client's connection to one peer, shared by the streams whose
// primary that peer is.
type conn struct {
	peerConn
	// ready is closed once the dial finished; ch is set then if it
	// succeeded, and never changes.
	ready chan struct{}
	ch    transport.Channel
	// sendfile is set with ch when the transport sends file regions with
	// sendfile(2) rather than reading them inside Write.
	sendfile bool

	// wmu keeps a frame's prefix and its body adjacent on the wire when
	// several streams write at once.
	wmu sync.Mutex
	// lastRead is when the peer last sent a reply (unix nanoseconds).
	lastRead atomic.Int64
	// view is the reply being handled, decoded on the connection's event
	// loop only.
	view dscodec.ReplyView

	streams map[uint64]*Output // guarded by mu
}

func newConn(c *Client, p group.Member) *conn {
	cn := &conn{
		peerConn: peerConn{c: c, peer: p, kind: "connection"},
		ready:    make(chan struct{}),
		streams:  make(map[uint64]*Output),
	}
	cn.lastRead.Store(time.Now().UnixNano())
	return cn
}

func (cn *conn) init(ch transport.Channel) {
	cn.initChannel(ch, "replies", (*replyHandler)(cn))
}

// ended reports whether the dial and, if it succeeded, the channel's
// goroutines have finished.
func (cn *conn) ended() bool {
	select {
	case <-cn.ready:
	default:
		return false
	}
	if cn.ch == nil {
		return true
	}
	select {
	case <-cn.ch.Done():
		return true
	default:
		return false
	}
}

func (cn *conn) add(o *Output) error {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.dead != nil {
		return cn.dead
	}
	cn.streams[o.id] = o
	return nil
}

func (cn *conn) remove(o *Output) {
	cn.mu.Lock()
	if cn.streams[o.id] == o {
		delete(cn.streams, o.id)
	}
	cn.mu.Unlock()
}

func (cn *conn) get(id uint64) *Output {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.streams[id]
}

// send writes one frame, or a prefix and its body, and flushes. It takes
// over the messages' references; body is a *buffer.Buf or a
// transport.FileRegion, or nil.
func (cn *conn) send(prefix *buffer.Buf, body any) error {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	err := cn.ch.Write(prefix)
	if body != nil {
		if err == nil {
			err = cn.ch.Write(body)
		} else {
			pipeline.Release(body)
		}
	}
	if err == nil {
		err = cn.ch.Flush()
	}
	if err != nil {
		// A prefix may have gone out without its body: nothing more can
		// be sent on this connection.
		_ = cn.ch.Close()
	}
	return err
}

// failAll fails every stream on the connection, or moves it to another
// primary (WithFailover), and refuses new ones.
func (cn *conn) failAll(err error) {
	for _, o := range endAll(&cn.peerConn, cn.streams, err) {
		o.lost(cn, err, false)
	}
}

// sweep fails the streams that have waited too long for a reply. If the
// peer has sent nothing at all for that long, the connection is closed
// too: a peer that has stopped reading may hold the transport's writer,
// and with it a WriteFile that waits for its regions, forever.
func (cn *conn) sweep(now time.Time, timeout time.Duration) {
	cn.mu.Lock()
	outs := slices.Collect(maps.Values(cn.streams))
	cn.mu.Unlock()
	var late []*Output
	for _, o := range outs {
		if at, ok := o.waitingSince(); ok && now.Sub(at) > timeout {
			late = append(late, o)
		}
	}
	if len(late) == 0 {
		return
	}
	err := fmt.Errorf("%w: %v waiting for %s", ErrReplyTimeout, timeout, cn.peer.ID)
	if now.Sub(time.Unix(0, cn.lastRead.Load())) > timeout {
		cn.failAll(err)
		_ = cn.ch.Close()
		return
	}
	for _, o := range late {
		o.lost(cn, err, true)
	}
}

// replyHandler is the last stage of a client connection.
type replyHandler conn

func (h *replyHandler) ChannelRead(ctx *pipeline.Context, msg any) {
	cn := (*conn)(h)
	frame, ok := msg.(*buffer.Buf)
	if !ok {
		ctx.FireChannelRead(msg)
		return
	}
	cn.lastRead.Store(time.Now().UnixNano())
	// The view aliases the frame, and is used before the frame goes back.
	defer frame.Release()
	v := &cn.view
	err := dscodec.DecodeReplyView(frame.Bytes(), dscodec.DefaultMaxPacketHeader, v)
	var rcr *pb.RaftClientReply
	if err == nil && v.Body != nil {
		rcr = new(pb.RaftClientReply)
		if e := proto.Unmarshal(v.Body, rcr); e != nil {
			err = fmt.Errorf("%w: reply body: %v", dscodec.ErrBadPacket, e)
		}
	}
	if err != nil {
		cn.badReply(ctx, err)
		return
	}
	// A reply for a stream that is not open here (an abort's, or one that
	// crossed a local failure) has nobody to go to.
	if o := cn.get(v.StreamID); o != nil {
		o.onReply(cn, v, rcr)
	}
}

func (h *replyHandler) ChannelInactive(ctx *pipeline.Context) {
	cn := (*conn)(h)
	cn.failAll(cn.lost())
	ctx.FireChannelInactive()
}

func (h *replyHandler) ErrorCaught(ctx *pipeline.Context, err error) {
	h.closeOnError(ctx, err)
}
