package datastream

import (
	"fmt"
	"time"

	"github.com/pipestream/pipestream/codec/dscodec"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// onReply completes the oldest pending packet with a reply that came on
// cn. Replies for a stream come in order; a success that does not match
// the oldest packet is a protocol error.
func (o *Output) onReply(cn *conn, h *dscodec.ReplyView, rcr *pb.RaftClientReply) {
	o.mu.Lock()
	if o.pending.Len() == 0 || cn != o.cn {
		o.mu.Unlock()
		return // the stream failed locally, or moved to another primary
	}
	if !h.Success {
		resuming, moving := o.pending.Peek().resume, o.moving
		if resuming && !moving && h.ErrorCode == pb.ErrorCode_ALREADY_COMMITTED {
			o.alreadyCommitted(cn, h, rcr)
			return
		}
		o.mu.Unlock()
		err := replyError(h, rcr)
		switch {
		case moving:
			// The failover decides; the primary being left can only
			// say what it could not do.
		case resuming || primaryFailed(h.ErrorCode):
			// A peer that refuses the resume, or a primary that failed
			// by itself, leaves the stream to the next peer.
			o.lost(cn, fmt.Errorf("%s: %w", cn.peer.ID, err), false)
		default:
			// The peer has dropped the stream and aborted it downstream.
			// A failure fails the stream whichever packet it answers: a
			// peer that refuses a late packet of a failed stream at once
			// may do so ahead of the replies it still owes.
			o.fail(err, false)
		}
		return
	}
	p := o.pending.Peek()
	if h.Type != p.typ || h.StreamOffset != p.offset {
		o.mu.Unlock()
		o.fail(pb.Errorf(pb.ErrorCode_INTERNAL, "reply from %s for %v at offset %d, expected %v at %d",
			cn.peer.ID, h.Type, h.StreamOffset, p.typ, p.offset), true)
		return
	}
	if err := checkReply(p, h, rcr); err != nil {
		o.mu.Unlock()
		o.fail(err, true)
		return
	}
	o.pending.Pop()
	var replayErr error
	if p.resume {
		// The new primary holds the stream up to the resume's offset:
		// what came after goes to it again.
		o.resuming = false
		replayErr = o.replayLocked(cn)
		q := p.standsFor
		if q == nil {
			o.mu.Unlock()
			if replayErr != nil {
				o.lost(cn, replayErr, false)
			}
			return
		}
		p = q // the header, answered by the resume
	}
	if p.typ == pb.DataStreamPacketHeader_STREAM_DATA {
		o.acked, o.crcAcked = p.offset+uint64(p.length), p.crcEnd
	}
	o.flight -= p.length
	o.releaseWindowLocked(p.length)
	o.lastReply = time.Now()
	o.committed = p.close
	o.mu.Unlock()
	o.c.releaseSlot(p.length)
	if replayErr != nil {
		o.lost(cn, replayErr, false)
	}
	if p.pooled {
		p.free()
		return
	}
	p.letGo()
	p.reply = Reply{Offset: p.offset, Length: uint64(p.length), Server: cn.peer.ID, RaftClientReply: rcr, bytesWritten: h.BytesWritten}
	p.f.complete(&p.reply, nil)
	if p.close {
		o.raft.complete(rcr, nil)
		o.done()
	}
}

// checkReply checks a successful reply against the packet it answers.
func checkReply(p *pendingPacket, h *dscodec.ReplyView, rcr *pb.RaftClientReply) error {
	if want := p.offset + uint64(p.length); p.typ == pb.DataStreamPacketHeader_STREAM_DATA && h.BytesWritten != want {
		return pb.Errorf(pb.ErrorCode_INTERNAL, "peer %s wrote %d bytes, expected %d", h.ServerID, h.BytesWritten, want)
	}
	if p.close && !rcr.GetSuccess() {
		return pb.Errorf(pb.ErrorCode_INTERNAL, "peer %s answered CLOSE without a successful RaftClientReply", h.ServerID)
	}
	return nil
}

// replyError turns a failed reply into the error the stream fails with.
func replyError(h *dscodec.ReplyView, rcr *pb.RaftClientReply) error {
	code := h.ErrorCode
	if code == pb.ErrorCode_ERROR_NONE {
		code = pb.ErrorCode_INTERNAL // failed without saying why
	}
	err := error(&pb.Error{Code: code, Message: string(h.ErrorMessage)})
	if hint := rcr.GetLeaderHint(); hint != "" {
		err = fmt.Errorf("%w (leader hint %s)", err, hint)
	}
	if rcr != nil {
		err = &CloseError{Reply: rcr, Err: err}
	}
	return err
}

// fail fails the stream: every pending future and every later write get
// err. With abort, the peers are told to drop the stream. A committed
// stream cannot fail.
func (o *Output) fail(err error, abort bool) {
	o.mu.Lock()
	if o.err != nil || o.committed {
		o.mu.Unlock()
		return
	}
	err = o.outcomeLocked(err)
	o.err = err
	pending := o.takePendingLocked()
	o.flight = 0
	offset, cn, moving := o.offset, o.cn, o.moving
	o.mu.Unlock()
	o.settle(pending, func(*pendingPacket) (*Reply, error) { return nil, err })
	o.raft.complete(nil, err)
	if abort && !moving {
		h := &pb.DataStreamPacketHeader{
			ClientId: o.c.id, Type: pb.DataStreamPacketHeader_STREAM_DATA,
			StreamId: o.id, StreamOffset: offset, Options: uint32(pb.DataStreamPacketHeader_ABORT),
		}
		if frame, e := dscodec.EncodePacket(h, nil); e == nil {
			_ = cn.send(frame, nil)
		}
	}
	o.done()
}

// takePendingLocked empties the stream's pending packets, each out of
// flight with its window given back, and returns them; a resume that was
// to stand for the header's reply gives its place back to the header,
// which is answered in its stead. Nil entries are headers answered
// already. o.mu is held.
func (o *Output) takePendingLocked() []*pendingPacket {
	pending := o.pending.Take()
	for i, p := range pending {
		if p.resume {
			pending[i] = p.standsFor
		}
	}
	for _, p := range pending {
		if p != nil {
			o.flight -= p.length
			o.releaseWindowLocked(p.length)
		}
	}
	return pending
}

// settle ends the packets takePendingLocked took, with o.mu released:
// each gives its client-wide slot back, and a pooled one, whose caller
// holds no future, is freed; the others' futures get what answer says.
func (o *Output) settle(pending []*pendingPacket, answer func(p *pendingPacket) (*Reply, error)) {
	for _, p := range pending {
		if p == nil {
			continue
		}
		o.c.releaseSlot(p.length)
		if p.pooled {
			p.free()
			continue
		}
		p.letGo()
		p.f.complete(answer(p))
	}
}

// done lets go of a stream that committed or failed.
func (o *Output) done() {
	o.mu.Lock()
	o.ended = true
	cn, stop := o.cn, o.stopCtx
	o.mu.Unlock()
	cn.remove(o)
	if stop != nil {
		stop()
	}
}
