package handler

import (
	"time"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/internal/fifo"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// link is a stream's connection to one successor.
type link struct {
	id string
	c  Successor
	// Under the stream's mu.
	awaiting fifo.Queue[*Packet] // forwarded, not yet acknowledged
	dropped  bool                // failed and recovered around; never used again
	holders  []string            // from its reply to CLOSE
}

// liveLinksLocked returns the links not dropped. st.mu must be held.
func (st *Stream) liveLinksLocked() []*link {
	out := make([]*link, 0, len(st.links))
	for _, l := range st.links {
		if !l.dropped {
			out = append(out, l)
		}
	}
	return out
}

func (st *Stream) linkTo(id string) *link {
	for _, l := range st.links {
		if l.id == id && !l.dropped {
			return l
		}
	}
	return nil
}

// forward sends p's frame to every successor. It runs on the upstream
// connection's event loop, so a stream's frames leave in order; st.fwd
// keeps a recovery's replays from interleaving with them.
func (st *Stream) forward(p *Packet) {
	st.fwd.Lock()
	defer st.fwd.Unlock()
	if p.Has(pb.DataStreamPacketHeader_RESUME) {
		st.applyResumeLocked(p)
	}
	if p.gen != st.fwdGen {
		// Routed from an upstream a resume has replaced; see run.
		st.setErr(p, errorf(pb.ErrorCode_FORBIDDEN, "stream %v was resumed by another peer", st.Key))
		return
	}
	p.crcStart = st.crcFwd
	if h := p.Header; h.GetType() == pb.DataStreamPacketHeader_STREAM_HEADER {
		st.headerSent = true
	} else if h.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
		st.forwarded = h.GetStreamOffset() + h.GetDataLength()
		if p.Has(pb.DataStreamPacketHeader_CHECKSUM) {
			st.crcFwd, st.summedFwd = h.GetCrc32C(), true
		}
	}
	st.sendLocked(p, true)
}

// sendLocked queues p on every live link and writes its frame there. A
// link whose write fails is recovered around. st.fwd must be held.
func (st *Stream) sendLocked(p *Packet, events bool) {
	st.mu.Lock()
	if st.failed != nil {
		st.mu.Unlock()
		return
	}
	links := st.liveLinksLocked()
	if len(links) > 0 {
		p.sentAt = time.Now()
	}
	for _, l := range links {
		p.parts.Add(1)
		l.awaiting.Push(p)
	}
	st.mu.Unlock()
	for _, l := range links {
		if st.Err() != nil {
			// Failed by an earlier link: the abort is out, and a frame
			// sent after it would open the stream again there.
			return
		}
		if err := st.writeTo(l, p); err != nil {
			st.recoverLocked(l, errorf(pb.ErrorCode_SUCCESSOR_FAILED, "forward to %s: %v", l.id, err))
			continue
		}
		if ev := st.s.cfg.Events; ev != nil && events && p.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
			ev.Packet(PacketEvent{Kind: PacketForwarded, Key: st.Key, Peer: l.id, Bytes: p.Header.GetDataLength()})
		}
	}
}

func (st *Stream) writeTo(l *link, p *Packet) error {
	if err := l.c.Write(p.Frame.Retain()); err != nil {
		return err
	}
	return l.c.Flush()
}

// recoverable reports whether a successor's failure with code c can be
// recovered around by dropping it. Not when the data or the stream itself
// is at fault, which no other successor would take better, nor when this
// peer was fenced off by a newer predecessor of that successor.
func recoverable(c pb.ErrorCode) bool {
	switch c {
	case pb.ErrorCode_CHECKSUM, pb.ErrorCode_FORBIDDEN, pb.ErrorCode_BAD_HEADER, pb.ErrorCode_BAD_ROUTING,
		pb.ErrorCode_GROUP_MISMATCH, pb.ErrorCode_DUPLICATE_HEADER:
		return false
	}
	return true
}

// ack takes successor peer's reply for the oldest packet forwarded to it.
func (st *Stream) ack(peer string, r *dscodec.ReplyView) {
	st.mu.Lock()
	l := st.linkTo(peer)
	if l == nil || l.awaiting.Len() == 0 {
		st.mu.Unlock()
		return // dropped, or the stream failed and let go of its packets
	}
	p := l.awaiting.Peek()
	var e *pb.Error
	h := p.Header
	want := h.GetStreamOffset() + h.GetDataLength()
	switch {
	case !r.Success && r.ErrorCode == pb.ErrorCode_FORBIDDEN:
		// Fenced off there: a newer upstream resumed the stream (its
		// client moved it to a new primary, say). A packet refused so is
		// answered at once, ahead of the replies still owed, whatever its
		// offset; recovering around the successor would take the stream
		// back from its new upstream.
		e = errorf(pb.ErrorCode_FORBIDDEN, "successor %s: %s", peer, r.ErrorMessage)
	case r.StreamOffset != h.GetStreamOffset() || r.Type != h.GetType():
		e = errorf(pb.ErrorCode_SUCCESSOR_FAILED, "successor %s answered %v at offset %d, expected %v at %d",
			peer, r.Type, r.StreamOffset, h.GetType(), h.GetStreamOffset())
	case !r.Success && r.ErrorCode == pb.ErrorCode_CHECKSUM:
		// The data arrived corrupt there, and so it is here too (a peer
		// verifies only at the leaves): the cause is the data's.
		e = errorf(pb.ErrorCode_CHECKSUM, "successor %s: %s", peer, r.ErrorMessage)
	case !r.Success:
		e = errorf(r.ErrorCode, "successor %s: %s: %s", peer, r.ErrorCode, r.ErrorMessage)
	case h.GetType() == pb.DataStreamPacketHeader_STREAM_DATA && r.BytesWritten != want:
		e = errorf(pb.ErrorCode_SUCCESSOR_FAILED, "successor %s wrote %d bytes, expected %d", peer, r.BytesWritten, want)
	}
	sent := p.sentAt
	if e == nil {
		l.awaiting.Pop()
		if p.Has(pb.DataStreamPacketHeader_CLOSE) {
			l.holders = l.holders[:0]
			for _, id := range r.Holders {
				l.holders = append(l.holders, string(id))
			}
			if len(l.holders) == 0 {
				l.holders = append(l.holders, peer) // a peer that names none holds its own
			}
		}
	}
	st.mu.Unlock()
	if ev := st.s.cfg.Events; ev != nil && h.GetType() == pb.DataStreamPacketHeader_STREAM_DATA && !p.origin {
		pe := PacketEvent{Kind: PacketAcknowledged, Key: st.Key, Peer: peer, Bytes: h.GetDataLength(), Duration: time.Since(sent)}
		if e != nil {
			pe.Code = e.Code
		}
		ev.Packet(pe)
	}
	if e != nil {
		if recoverable(e.Code) && st.s.recovers() {
			st.linkFailed(l, e)
			return
		}
		st.setErr(p, e)
		st.fail(e)
		return
	}
	st.letGo(p)
}

// letGo ends one link's part of p: a packet's, or for a resume this peer
// sent, the header it stands for.
func (st *Stream) letGo(p *Packet) {
	if !p.origin {
		st.partDone(p)
		return
	}
	if h := p.standsFor; h != nil {
		st.partDone(h)
	}
	p.Release()
}

func (st *Stream) oldestUnanswered() (*link, time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var (
		oldest time.Time
		which  *link
	)
	for _, l := range st.links {
		if q := &l.awaiting; !l.dropped && q.Len() > 0 && (oldest.IsZero() || q.Peek().sentAt.Before(oldest)) {
			oldest, which = q.Peek().sentAt, l
		}
	}
	return which, oldest
}

// abortSuccessors tells each successor to drop the stream. Their replies
// find no stream here and are dropped.
func (st *Stream) abortSuccessors() {
	st.mu.Lock()
	links := st.liveLinksLocked()
	st.mu.Unlock()
	for _, l := range links {
		st.abort(l.c)
	}
}

func (st *Stream) abort(c Successor) {
	frame, err := dscodec.EncodePacket(&pb.DataStreamPacketHeader{
		ClientId: []byte(st.Key.ClientID),
		Type:     pb.DataStreamPacketHeader_STREAM_DATA,
		StreamId: st.Key.StreamID,
		Options:  uint32(pb.DataStreamPacketHeader_ABORT),
	}, nil)
	if err != nil {
		return
	}
	if c.Write(frame) == nil {
		_ = c.Flush()
	}
}
