package handler

import (
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/valyala/bytebufferpool"
	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// writeReply sends r from the tail, so that it passes the encoder and any
// outbound stage a user added. A reply that cannot be queued, because the
// peer stopped reading and the connection's outbound bound is reached or it
// is closed, leaves that connection unusable: it is closed, which fails its
// streams, instead of holding their replies in memory.
func writeReply(p *pipeline.Pipeline, r *Reply) {
	if err := p.Write(r); err != nil {
		_ = p.Close()
	}
}

// errorReply answers h, or with h nil a frame that has no usable header,
// with e, from peer id.
func errorReply(p *pipeline.Pipeline, id string, h *pb.DataStreamPacketHeader, e *pb.Error) {
	r := newReply(h)
	r.hdr.ErrorCode, r.hdr.ErrorMessage, r.hdr.ServerId = e.Code, e.Message, id
	writeReply(p, r)
	_ = p.Flush()
}

// Router maps each packet to its stream. A STREAM_HEADER opens the stream
// on this peer (and, through the later stages, on its successors); data
// must follow in order. It runs on the connection's event loop and must not
// block. A Router belongs to one connection.
type Router struct {
	Streams *Streams
	conn    connState
	graves  graveyard // why this connection's streams failed
}

// connState is what one connection's streams count against its limits.
// A peer connection carries what its predecessor forwards for all of that
// peer's clients, each already held to these limits there, so only the
// per-peer stream limit applies to it.
type connState struct {
	streams  atomic.Int32 // open streams
	inflight atomic.Int64 // body bytes admitted and not yet answered

	// Owned by the event loop. A client connection is bound to the client
	// id of its first stream; a peer connection opens with a PING and
	// carries the streams of every client it forwards.
	client string
	peer   bool
	seen   bool
}

// ChannelRead implements pipeline.ReadHandler.
func (r *Router) ChannelRead(ctx *pipeline.Context, msg any) {
	p, ok := msg.(*Packet)
	if !ok {
		ctx.FireChannelRead(msg)
		return
	}
	if !r.conn.seen {
		r.conn.seen = true
		r.conn.peer = p.Header.GetType() == pb.DataStreamPacketHeader_PING
	}
	if p.Header.GetType() == pb.DataStreamPacketHeader_PING {
		reply := newReply(p.Header)
		reply.hdr.Success, reply.hdr.ServerId = true, r.Streams.cfg.ID
		writeReply(ctx.Pipeline(), reply)
		_ = ctx.Pipeline().Flush()
		p.Release()
		return
	}
	st, e := r.route(ctx.Pipeline(), p)
	if e == answered {
		p.Release()
		return
	}
	if st == nil {
		errorReply(ctx.Pipeline(), r.Streams.cfg.ID, p.Header, e)
		p.Release()
		return
	}
	// A packet refused for a stream that exists (and has now failed) still
	// takes its place in the stream's reply order, so the client sees the
	// replies of earlier packets first.
	p.err, p.refused = e, e != nil
	p.up, p.conn = ctx.Pipeline(), &r.conn
	r.conn.inflight.Add(int64(p.Header.GetDataLength()))
	st.touch()
	p.Stream = st
	p.parts.Store(1) // the pipeline pass; the Replier ends it
	p.inPass.Store(true)
	st.enqueue(p)
	ctx.FireChannelRead(p)
}

// route finds or opens p's stream. A nil stream comes with an error; a
// stream may come with one too, when p is refused: the stream failed, or,
// for a duplicate header, p only takes its place in the open stream's
// reply order.
func (r *Router) route(up *pipeline.Pipeline, p *Packet) (*Stream, *pb.Error) {
	c := &r.conn
	if len(p.Header.GetClientId()) == 0 {
		return nil, errorf(pb.ErrorCode_BAD_HEADER, "%v packet without a client id", p.Header.GetType())
	}
	if !c.peer {
		if c.client == "" {
			c.client = string(p.Header.GetClientId())
		} else if c.client != string(p.Header.GetClientId()) {
			return nil, errorf(pb.ErrorCode_FORBIDDEN, "this connection belongs to another client")
		}
	}
	if unknown := p.Header.GetOptions() &^ pb.KnownOptions; unknown != 0 {
		// An option this peer does not know may change what the packet
		// means: its stream cannot go on.
		e := errorf(pb.ErrorCode_BAD_HEADER, "unknown option bits %#x", unknown)
		if p.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
			if st := r.Streams.get(p.Key()); st != nil && st.ownedBy(up) {
				st.fail(e)
				return st, e
			}
		}
		return nil, e
	}
	switch p.Header.GetType() {
	case pb.DataStreamPacketHeader_STREAM_HEADER:
		if e := r.checkBytes(p); e != nil {
			return nil, e
		}
		return r.open(up, p)
	case pb.DataStreamPacketHeader_STREAM_DATA:
		st, e := r.data(up, p)
		if e == nil {
			e = r.checkBytes(p)
		}
		if st != nil && e != nil {
			st.fail(e)
		}
		return st, e
	}
	return nil, errorf(pb.ErrorCode_BAD_HEADER, "unknown packet type %v", p.Header.GetType())
}

func (r *Router) checkBytes(p *Packet) *pb.Error {
	n, limit := r.conn.inflight.Load(), r.Streams.cfg.MaxConnBytes
	if !r.conn.peer && n+int64(p.Header.GetDataLength()) > limit {
		return errorf(pb.ErrorCode_LIMIT_EXCEEDED, "connection has %d bytes unanswered, its limit is %d", n, limit)
	}
	return nil
}

// ChannelInactive fails the streams whose packets came over this
// connection.
func (r *Router) ChannelInactive(ctx *pipeline.Context) {
	if ev := r.Streams.cfg.Events; ev != nil {
		ev.Conn(ConnEvent{Kind: ConnDown})
	}
	r.Streams.UpstreamClosed(ctx.Pipeline())
	ctx.FireChannelInactive()
}

func (r *Router) open(up *pipeline.Pipeline, p *Packet) (*Stream, *pb.Error) {
	s := r.Streams
	resume := p.Has(pb.DataStreamPacketHeader_RESUME)
	if opts := p.Header.GetOptions() &^ uint32(pb.DataStreamPacketHeader_RESUME|pb.DataStreamPacketHeader_CHECKSUM); !resume && (p.Header.GetStreamOffset() != 0 || p.Header.GetOptions() != 0) || opts != 0 {
		// SYNC, FLUSH, CLOSE and ABORT all act on a stream's data; on a
		// header none has a meaning, and an ABORT answered OK would leave
		// the client believing in a stream it meant to drop. Only a
		// resume starts past offset 0.
		return nil, errorf(pb.ErrorCode_BAD_HEADER, "a stream header must have offset 0 and no options, not offset %d and options %#x", p.Header.GetStreamOffset(), p.Header.GetOptions())
	}
	if p.Body.Len() > s.cfg.MaxHeader {
		return nil, errorf(pb.ErrorCode_LIMIT_EXCEEDED, "header request of %d bytes exceeds %d", p.Body.Len(), s.cfg.MaxHeader)
	}
	req := new(pb.RaftClientRequest)
	if err := proto.Unmarshal(p.Body.Bytes(), req); err != nil {
		return nil, errorf(pb.ErrorCode_BAD_HEADER, "header request does not decode: %v", err)
	}
	if req.GetCallId() != p.Header.GetStreamId() || string(req.GetClientId()) != string(p.Header.GetClientId()) {
		return nil, errorf(pb.ErrorCode_BAD_HEADER, "header request (client, call %d) does not match the packet's stream %d", req.GetCallId(), p.Header.GetStreamId())
	}
	if req.GetType() != pb.RaftClientRequest_STREAM {
		return nil, errorf(pb.ErrorCode_BAD_HEADER, "header request of type %v, want STREAM", req.GetType())
	}
	if g := s.cfg.GroupID; len(g) > 0 && string(req.GetGroupId()) != string(g) {
		return nil, errorf(pb.ErrorCode_GROUP_MISMATCH, "header request is for group %x, this peer serves %x", req.GetGroupId(), g)
	}
	primary := req.GetServerId()
	if primary == "" {
		return nil, errorf(pb.ErrorCode_BAD_ROUTING, "header request names no primary server")
	}
	if !r.conn.peer && primary != s.cfg.ID {
		// Only a predecessor forwards a stream whose primary is another
		// peer. Taken from a client, such a stream would never commit (only
		// its primary commits) and its CLOSE would be answered OK.
		return nil, errorf(pb.ErrorCode_BAD_ROUTING, "this peer is %q, but the header request names %q as the primary; a client sends a stream to the primary it names", s.cfg.ID, primary)
	}
	table, err := s.tableFor(req.GetRoutingTable(), primary, resume)
	if err != nil {
		return nil, errorf(pb.ErrorCode_BAD_ROUTING, "%v", err)
	}
	p.req = req
	if resume && r.committed(up, p) {
		return nil, answered
	}
	if resume && !r.conn.peer && primary == s.cfg.ID {
		// A client moves its stream here from a primary that failed:
		// without that peer, the stream must still reach the quorum.
		if !s.recovers() {
			return nil, errorf(pb.ErrorCode_NOT_ENOUGH_PEERS, "the write quorum is every peer; stream %v cannot go on without its failed primary", p.Key())
		}
		if e := s.checkQuorum(table); e != nil {
			return nil, e
		}
	}
	if resume {
		if st, e, done := r.resume(up, p, primary == s.cfg.ID); done {
			return st, e
		}
		// A resume at offset 0 of a stream this peer never saw: its
		// header was lost with the failed peer. It opens the stream.
	}
	if n := r.conn.streams.Load(); !r.conn.peer && int(n) >= s.cfg.MaxStreamsPerConn {
		return nil, errorf(pb.ErrorCode_LIMIT_EXCEEDED, "connection has %d open streams, its limit", n)
	}
	isPrimary := primary == s.cfg.ID
	if isPrimary {
		if e := s.checkQuorum(table); e != nil {
			return nil, e
		}
	}
	st := newStream(s, p.Key(), req, isPrimary, up, &r.conn, table)
	ids := st.table.Successors(s.cfg.ID) // without recovery, each must take it
	if s.recovers() {
		ids = st.reachable(slices.Clone(ids))
	}
	for _, id := range ids {
		c, err := s.cfg.Dial(id)
		if err != nil {
			return nil, errorf(pb.ErrorCode_SUCCESSOR_FAILED, "successor %s: %v", id, err)
		}
		st.links = append(st.links, &link{id: id, c: c})
	}
	st.verify.Store(len(st.links) == 0)
	if e := s.add(st); e != nil {
		if old := s.get(p.Key()); e.Code == pb.ErrorCode_DUPLICATE_HEADER && old != nil && old.upstream == up {
			// Answered in the open stream's order, after the replies its
			// client is waiting for; the stream is not affected.
			return old, e
		}
		return nil, e
	}
	r.conn.streams.Add(1)
	r.graves.opened(st, s)
	if ev := s.cfg.Events; ev != nil {
		ev.Stream(StreamEvent{Kind: StreamOpened, Key: st.Key, Primary: isPrimary})
	}
	return st, nil
}

// resume resumes the stream p names, if this peer holds it: done reports
// whether p was taken (with the stream it goes to, or an error).
func (r *Router) resume(up *pipeline.Pipeline, p *Packet, primary bool) (*Stream, *pb.Error, bool) {
	s := r.Streams
	if st := s.get(p.Key()); st != nil {
		if e := st.resumeFrom(up, &r.conn, p, primary); e != nil {
			return nil, e, true
		}
		return st, nil, true
	}
	if st := s.parked(p.Key()); st != nil {
		return nil, st.resumeParked(up, p, primary), true
	}
	if p.Header.GetStreamOffset() == 0 {
		return nil, nil, false
	}
	return nil, errorf(pb.ErrorCode_UNKNOWN_STREAM, "no stream %v to resume at offset %d", p.Key(), p.Header.GetStreamOffset()), true
}

// committed answers a resume of a stream this peer no longer holds, open
// or parked, because it applied the stream's entry: the primary that
// failed committed it before its reply reached whoever resumes it. The
// answer is ALREADY_COMMITTED with the entry's index and term, at any
// offset (a committed key is never reopened) and before any check of the
// peers left, which a commit no longer needs.
func (r *Router) committed(up *pipeline.Pipeline, p *Packet) bool {
	s, k := r.Streams, p.Key()
	if s.get(k) != nil || s.parked(k) != nil {
		return false
	}
	index, term, ok := s.committedEntry(k)
	if !ok {
		return false
	}
	e := errorf(pb.ErrorCode_ALREADY_COMMITTED, "stream %v was committed at index %d", k, index)
	reply := newReply(p.Header)
	reply.hdr.ErrorCode, reply.hdr.ErrorMessage, reply.hdr.ServerId = e.Code, e.Message, s.cfg.ID
	reply.Body = &pb.RaftClientReply{
		ClientId: p.req.GetClientId(), CallId: p.req.GetCallId(), ServerId: s.cfg.ID,
		ErrorCode: e.Code, ErrorMessage: e.Message, LogIndex: index, Term: term,
	}
	writeReply(up, reply)
	_ = up.Flush()
	return true
}

func (r *Router) data(up *pipeline.Pipeline, p *Packet) (*Stream, *pb.Error) {
	if p.Has(pb.DataStreamPacketHeader_RESUME) {
		return nil, errorf(pb.ErrorCode_BAD_HEADER, "RESUME is an option of a stream header, not of data")
	}
	st := r.Streams.get(p.Key())
	if st == nil {
		if p.Has(pb.DataStreamPacketHeader_ABORT) && r.Streams.dropParked(p.Key(), up) {
			return nil, errorf(pb.ErrorCode_CANCELLED, "closed stream %v aborted before its commit", p.Key())
		}
		if e, done := r.Streams.replayParked(up, p); done {
			return nil, e
		}
		if e := r.graves.cause(p.Key(), r.Streams, time.Now()); e != nil {
			return nil, e
		}
		return nil, errorf(pb.ErrorCode_UNKNOWN_STREAM, "no open stream %v", p.Key())
	}
	if p.Has(pb.DataStreamPacketHeader_ABORT) {
		if !st.ownedBy(up) {
			return nil, errorf(pb.ErrorCode_FORBIDDEN, "stream %v belongs to another connection", p.Key())
		}
		if st.abortFrom(up) {
			return nil, errorf(pb.ErrorCode_CANCELLED, "closed stream %v aborted before its commit", p.Key())
		}
		return st, nil
	}
	if e := st.admit(up, p); e != nil {
		if e.Code == pb.ErrorCode_FORBIDDEN {
			return nil, e // another connection's stream: not this packet's to fail
		}
		return st, e
	}
	return st, nil
}

// Writer hands each packet to its stream's executor for the local
// state-machine write, so that disk I/O never runs on the event loop. With
// Config.InlineWrites a plain data packet is written on the spot when the
// executor is idle.
type Writer struct{}

// ChannelRead implements pipeline.ReadHandler.
func (Writer) ChannelRead(ctx *pipeline.Context, msg any) {
	if p, ok := msg.(*Packet); ok && p.Stream != nil && !p.refused && !p.Has(pb.DataStreamPacketHeader_ABORT) {
		p.parts.Add(1)
		t := task{kind: taskWrite, p: p}
		if p.Has(pb.DataStreamPacketHeader_RESUME) {
			t.kind = taskResume
		}
		if !p.Stream.s.cfg.InlineWrites || !p.plainData() || !p.Stream.exec.TryRun(t) {
			p.Stream.exec.Submit(t)
		}
	}
	ctx.FireChannelRead(msg)
}

// Forwarder sends each packet's frame, unchanged and without a copy, to the
// stream's successors.
type Forwarder struct{}

// ChannelRead implements pipeline.ReadHandler.
func (Forwarder) ChannelRead(ctx *pipeline.Context, msg any) {
	if p, ok := msg.(*Packet); ok && p.Stream != nil && !p.refused && !p.Has(pb.DataStreamPacketHeader_ABORT) {
		p.Stream.forward(p)
	}
	ctx.FireChannelRead(msg)
}

// Replier ends each packet's pass through the stages. The packet's reply,
// in the place the router gave it in its stream's order, goes upstream
// once this, the local write and every successor's reply are done.
type Replier struct{}

// ChannelRead implements pipeline.ReadHandler.
func (Replier) ChannelRead(ctx *pipeline.Context, msg any) {
	p, ok := msg.(*Packet)
	if !ok || p.Stream == nil {
		ctx.FireChannelRead(msg)
		return
	}
	if p.inPass.CompareAndSwap(true, false) {
		p.Stream.partDone(p)
	}
}

// ReplyEncoder turns outbound *Reply messages into frames.
type ReplyEncoder struct{}

// Write implements pipeline.WriteHandler.
func (ReplyEncoder) Write(ctx *pipeline.Context, msg any) error {
	r, ok := msg.(*Reply)
	if !ok {
		return ctx.Write(msg)
	}
	// The body is marshaled into a pooled scratch buffer (bytebufferpool
	// sizes its pool to what is usually needed) and copied into the frame.
	var body []byte
	if r.Body != nil {
		scratch := bytebufferpool.Get()
		defer bytebufferpool.Put(scratch)
		b, err := (proto.MarshalOptions{}).MarshalAppend(scratch.B[:0], r.Body)
		if err != nil {
			r.Release()
			return fmt.Errorf("handler: encode reply body: %w", err)
		}
		scratch.B, body = b, b
	}
	frame, err := dscodec.EncodePacket(r.Header, body)
	r.Release()
	if err != nil {
		return fmt.Errorf("handler: encode reply: %w", err)
	}
	return ctx.Write(frame)
}

// Install adds the server stages to a connection's pipeline under the Stage
// names.
func Install(p *pipeline.Pipeline, s *Streams, maxFrame int) error {
	frames, err := dscodec.NewPacketFrameDecoder(maxFrame)
	if err != nil {
		return err
	}
	stages := []struct {
		name string
		h    pipeline.Handler
	}{
		{StageFrame, frames},
		{StageRead, NewReadServer(s)},
		{StagePacket, &PacketDecoder{MaxHeader: s.cfg.MaxHeader, MaxBody: maxFrame - s.cfg.MaxHeader, ID: s.cfg.ID}},
		{StageRouter, &Router{Streams: s}},
		{StageWrite, Writer{}},
		{StageForward, Forwarder{}},
		{StageReply, Replier{}},
		{StageEncode, ReplyEncoder{}},
	}
	for _, st := range stages {
		if err := p.AddLast(st.name, st.h); err != nil {
			return err
		}
	}
	return nil
}
