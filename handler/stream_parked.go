package handler

import (
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// A parked stream is closed on this peer and every successor; a resume
// reaches one when the predecessor that failed had not passed the CLOSE
// reply on. Nothing is cut back or written again: the resume and the
// replayed packets are answered from what the stream holds, in order, as
// they come, and the CLOSE with the holders it recorded. A client that
// resumes on this peer as the new primary gets the commit.

// parkedReplay is where the replay of a resumed parked stream has got to.
type parkedReplay struct {
	at      uint64 // the next packet's offset
	primary bool   // the resume made this peer the primary
	closed  bool   // the CLOSE was replayed
}

// resumeParked takes a resume of parked stream st from up, answering it
// at once.
func (st *Stream) resumeParked(up *pipeline.Pipeline, p *Packet, primary bool) *pb.Error {
	st.mu.Lock()
	defer st.mu.Unlock()
	at := p.Header.GetStreamOffset()
	if at > st.length {
		return errorf(pb.ErrorCode_OFFSET_MISMATCH, "resume at offset %d of closed stream %v, which holds %d bytes", at, st.Key, st.length)
	}
	if st.IsPrimary() && !primary {
		return errorf(pb.ErrorCode_FORBIDDEN, "this peer is the primary of stream %v; a peer cannot resume it", st.Key)
	}
	st.upstream, st.replayed = up, &parkedReplay{at: at, primary: primary}
	st.epoch = max(st.epoch, p.Header.GetEpoch())
	st.primary.Store(primary)
	// Answered here: the stream holds these bytes already.
	p.written = at
	writeReply(up, st.replyFor(p, nil))
	_ = up.Flush()
	return answered
}

// answered is what the router's helpers return for a packet they answered
// themselves: it goes no further.
var answered = &pb.Error{Message: "answered"}

// replayParked answers a packet that a resume replays onto a parked
// stream; done reports whether p was one.
func (s *Streams) replayParked(up *pipeline.Pipeline, p *Packet) (*pb.Error, bool) {
	st := s.parked(p.Key())
	if st == nil {
		return nil, false
	}
	st.mu.Lock()
	r := st.replayed
	if r == nil || st.upstream != up {
		st.mu.Unlock()
		return nil, false
	}
	h := p.Header
	end := h.GetStreamOffset() + h.GetDataLength()
	var e *pb.Error
	switch {
	case r.closed:
		e = errorf(pb.ErrorCode_BAD_HEADER, "data after CLOSE")
	case h.GetStreamOffset() != r.at:
		e = errorf(pb.ErrorCode_OFFSET_MISMATCH, "offset %d, expected %d", h.GetStreamOffset(), r.at)
	case end > st.length:
		e = errorf(pb.ErrorCode_OFFSET_MISMATCH, "replay past the end (%d bytes) of closed stream %v", st.length, st.Key)
	case p.Has(pb.DataStreamPacketHeader_CLOSE) && end != st.length:
		e = errorf(pb.ErrorCode_OFFSET_MISMATCH, "CLOSE at %d of a stream closed at %d", end, st.length)
	case p.Has(pb.DataStreamPacketHeader_CLOSE) && st.summed && h.GetCrc32C() != st.checksum:
		e = errorf(pb.ErrorCode_CHECKSUM, "replayed stream has CRC32C %08x, this peer holds %08x", h.GetCrc32C(), st.checksum)
	}
	if e != nil {
		st.mu.Unlock()
		return e, true
	}
	p.written = end
	r.at = end
	closing := p.Has(pb.DataStreamPacketHeader_CLOSE)
	r.closed = closing
	commit := closing && r.primary
	if !commit {
		r := st.replyFor(p, nil)
		st.mu.Unlock()
		writeReply(up, r)
		_ = up.Flush()
		return answered, true
	}
	st.mu.Unlock()
	// The new primary commits the stream; committing a key again returns
	// the entry that committed it, if the old primary got that far.
	reply := newReply(p.Header)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		var (
			rcr *pb.RaftClientReply
			err error
		)
		if c := s.commitHook(); c != nil {
			rcr, err = st.commitVia(c)
		} else {
			rcr, err = s.linkLocal(st)
		}
		h := reply.Header
		h.BytesWritten, h.Success, h.ServerId, reply.Body = end, err == nil, s.cfg.ID, rcr
		if err != nil {
			e := codeOf(err, pb.ErrorCode_COMMIT_FAILED)
			h.ErrorCode, h.ErrorMessage = e.Code, e.Message
		} else {
			h.Holders = st.holders
		}
		writeReply(up, reply)
		_ = up.Flush()
	}()
	return answered, true
}
