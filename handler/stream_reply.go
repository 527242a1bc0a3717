package handler

import (
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// ownedBy reports whether up is the stream's upstream connection.
func (st *Stream) ownedBy(up *pipeline.Pipeline) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.upstream == up
}

// admit checks that data packet p from up comes next on the stream and
// takes it: p is routed under the stream's present attachment.
func (st *Stream) admit(up *pipeline.Pipeline, p *Packet) *pb.Error {
	st.mu.Lock()
	defer st.mu.Unlock()
	p.gen = st.gen
	switch {
	case st.upstream != up:
		return errorf(pb.ErrorCode_FORBIDDEN, "stream %v belongs to another connection", p.Key())
	case st.failed != nil:
		return st.failed
	case st.state == stateClosing:
		return errorf(pb.ErrorCode_BAD_HEADER, "data after CLOSE")
	case p.Header.GetStreamOffset() != st.received:
		return errorf(pb.ErrorCode_OFFSET_MISMATCH, "offset %d, expected %d", p.Header.GetStreamOffset(), st.received)
	}
	st.received += p.Header.GetDataLength()
	if p.Has(pb.DataStreamPacketHeader_CLOSE) {
		st.setStateLocked(stateClosing)
	}
	return nil
}

// enqueue gives p its place in the stream's reply order. The router calls
// it as soon as p is routed, so that a failed stream is not taken out of
// the table while p is still on its way through the stages.
func (st *Stream) enqueue(p *Packet) {
	st.mu.Lock()
	st.replies.Push(p)
	st.mu.Unlock()
}

// partDone marks one part of p finished; the last one lets replies go.
func (st *Stream) partDone(p *Packet) {
	if p.parts.Add(-1) == 0 {
		st.flushReplies()
	}
}

// droppedInPass fails the stream of p, which a stage between the router
// and the Replier released instead of passing on, and ends p's pipeline
// pass so that p is answered, with the error, in its turn. Without it the
// stream would wait for a reply that cannot come until the idle timeout,
// or, had the stage dropped data, commit a copy with a hole in it.
func (st *Stream) droppedInPass(p *Packet) {
	e := errorf(pb.ErrorCode_INTERNAL, "a pipeline stage between %q and %q released the packet at offset %d of stream %v instead of passing it on; such a stage may observe a packet or fail its stream, not drop it",
		StageRouter, StageReply, p.Header.GetStreamOffset(), st.Key)
	st.s.cfg.Logger.Error("handler: " + e.Message)
	st.mu.Lock()
	if p.err == nil {
		p.err = e
	}
	st.mu.Unlock()
	st.fail(e)
	st.partDone(p)
}

// flushReplies answers the packets at the front of the queue whose parts
// are all done, in order, each on the connection it came from. A
// successful CLOSE is held back until finishClose has committed (primary)
// or parked (other peers) the stream.
func (st *Stream) flushReplies() {
	st.mu.Lock()
	// The connections written to: one, or two around a resume (the old
	// upstream's replies, then the new one's).
	var ups [2]*pipeline.Pipeline
	for st.replies.Len() > 0 {
		p := st.replies.Peek()
		if p.parts.Load() != 0 {
			break
		}
		err := p.err
		if err == nil {
			err = st.failed
		}
		isClose := p.Has(pb.DataStreamPacketHeader_CLOSE)
		if isClose && err == nil && p.gen != st.gen {
			// From an upstream a resume replaced: told that the stream
			// closed here, a failed primary that was only cut off would
			// commit, or link, a copy the stream has left behind.
			err = errorf(pb.ErrorCode_FORBIDDEN, "stream %v was resumed by another peer", st.Key)
		}
		// A CLOSE that a resume from the same upstream overtook (the
		// stream is open again) closes nothing: the resume's replay
		// brings the CLOSE again, and that one does.
		if isClose && err == nil && !st.commit && st.state != stateOpen {
			// Commit and link may block on Raft and disk, and this may be
			// an event loop: finish the close on a goroutine of its own.
			st.commit = true
			st.length = p.written
			st.checksum, st.summed = st.sum.crc, st.sum.mode == sumOn
			st.holders = st.holdersLocked()
			st.unasked = st.state == stateOrphaned
			p.parts.Add(1)
			st.s.wg.Add(1)
			go st.finishClose(p)
			break
		}
		st.replies.Pop()
		up := p.up
		p.conn.inflight.Add(-int64(p.Header.GetDataLength()))
		writeReply(up, st.replyFor(p, err))
		p.Release()
		switch {
		case ups[0] == nil || ups[0] == up:
			ups[0] = up
		case ups[1] == nil || ups[1] == up:
			ups[1] = up
		default:
			_ = up.Flush()
		}
	}
	drained := st.failed != nil && st.replies.Len() == 0 && st.state == stateFailed
	if drained {
		st.setStateLocked(stateDrained)
	}
	st.mu.Unlock()
	if drained {
		st.s.remove(st)
	}
	for _, up := range ups {
		if up != nil {
			// A client that waited for these replies was not idle.
			st.touch()
			_ = up.Flush()
		}
	}
}

func (st *Stream) replyFor(p *Packet, err *pb.Error) *Reply {
	r := newReply(p.Header)
	h := r.Header
	h.BytesWritten, h.Success, h.ServerId = p.written, err == nil, st.s.cfg.ID
	r.Body = p.reply
	if err == nil && p.Has(pb.DataStreamPacketHeader_CLOSE) {
		h.Holders = st.holders
	}
	if err != nil {
		h.ErrorCode, h.ErrorMessage = err.Code, err.Message
		if p.Has(pb.DataStreamPacketHeader_CLOSE) && st.IsPrimary() {
			r.Body = &pb.RaftClientReply{
				ClientId: st.Request.GetClientId(), CallId: st.Request.GetCallId(),
				ServerId: st.s.cfg.ID, ErrorCode: err.Code, ErrorMessage: err.Message,
				// From a failed commit: the leader to retry with, and the
				// entry if it committed but this peer could not link it.
				LeaderHint: p.reply.GetLeaderHint(),
				LogIndex:   p.reply.GetLogIndex(), Term: p.reply.GetTerm(),
			}
		}
	}
	return r
}

// waitingForReplies reports whether a packet of the stream is still to be
// answered: the client has sent what its window allows and waits, so the
// stream is not idle.
func (st *Stream) waitingForReplies() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.replies.Len() > 0
}
