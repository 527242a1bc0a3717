package handler

import (
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Pipeline recovery (docs/protocol.md, "Pipeline recovery"), as HDFS's
// DataStreamer recovers a block's pipeline: when a successor fails (its
// connection is lost, it answers with an error, or it does not answer
// within the reply timeout) and the write quorum allows going on without
// it, its predecessor drops it, takes its successors as its own, and sends
// each a RESUME header at the offset of the oldest packet the failed peer
// had not acknowledged, followed by every such packet again. A peer that
// takes a RESUME cuts its copy back to that offset, passes the RESUME on
// to its own successors, and goes on; packets from the upstream it had
// before are refused from then on (the attachment generation, gen), and
// the commit's holders leave the dropped peer out, so that whatever it
// holds is never linked.

// maxRecoveries bounds the recoveries one peer makes for one stream.
func (s *Streams) maxRecoveries() uint64 { return uint64(len(s.members())) }

// linkFailed recovers the stream around failed successor l.
func (st *Stream) linkFailed(l *link, cause *pb.Error) {
	st.fwd.Lock()
	defer st.fwd.Unlock()
	st.recoverLocked(l, cause)
}

// recoverLocked drops l and reconnects the stream to l's successors, or
// fails the stream if it cannot go on without l. st.fwd must be held.
func (st *Stream) recoverLocked(l *link, cause *pb.Error) {
	st.mu.Lock()
	if l.dropped || st.failed != nil {
		st.mu.Unlock()
		return
	}
	if st.state == stateOrphaned && st.s.recovers() {
		// Nobody upstream to answer: whoever resumes the stream (another
		// predecessor, or its client moving it to a new primary) gives
		// it its tree, and a resume of this peer's own could take
		// successors back from the new one. Failures here are those of
		// this peer being fenced off, most of the time. The link is
		// dropped and the stream waits for its resume or its timeout.
		l.dropped = true
		pending := l.awaiting.Take()
		st.mu.Unlock()
		for _, q := range pending {
			st.letGo(q)
		}
		return
	}
	if !st.s.recovers() || st.epoch >= st.s.maxRecoveries() {
		st.mu.Unlock()
		st.fail(cause)
		return
	}
	l.dropped = true
	pending := l.awaiting.Take()
	st.epoch++
	epoch := st.epoch
	st.mu.Unlock()
	st.verify.Store(true)
	st.s.cfg.Logger.Warn("handler: successor failed; recovering the pipeline around it",
		"stream", st.Key, "peer", l.id, "epoch", epoch, "unacknowledged", len(pending), "cause", cause.Message)
	if ev := st.s.cfg.Events; ev != nil {
		ev.Stream(StreamEvent{Kind: StreamRecovered, Key: st.Key, Primary: st.IsPrimary(), Peer: l.id, Code: cause.Code})
	}
	st.abort(l.c)

	children := st.table.Successors(l.id)
	st.table = adopt(st.table, st.s.cfg.ID, l.id)
	targets := st.reachable(children)

	// Where the replay starts: the failed peer's oldest unacknowledged
	// packet, or, with none, what was forwarded last.
	at, crc, header := st.forwarded, st.crcFwd, (*Packet)(nil)
	var replay []*Packet
	for i, q := range pending {
		switch {
		case q.origin && q.standsFor != nil:
			header = q.standsFor
		case q.Header.GetType() == pb.DataStreamPacketHeader_STREAM_HEADER && !q.Has(pb.DataStreamPacketHeader_RESUME):
			header = q
		case q.origin:
			// An earlier resume of ours, not yet answered: start there.
		default:
			replay = append(replay, q)
		}
		if i == 0 {
			at, crc = q.Header.GetStreamOffset(), q.crcStart
			if q.origin {
				crc = q.Header.GetCrc32C()
			}
		}
	}
	if header != nil {
		at, crc = 0, 0
	}
	for _, id := range targets {
		c, err := st.s.cfg.Dial(id)
		if err != nil {
			continue // reachable a moment ago; its subtree is lost with it
		}
		nl := &link{id: id, c: c}
		if !st.headerSent {
			// The successor failed between the router's open and the
			// forwarder's header: the header, next under fwd, opens the
			// stream on the new link. A resume now would open it too, and
			// the header would then be refused there as a duplicate.
			st.mu.Lock()
			st.links = append(st.links, nl)
			st.mu.Unlock()
			continue
		}
		marker, err := st.resumeFrame(at, crc, epoch)
		if err != nil {
			st.s.cfg.Logger.Error("handler: cannot encode a resume", "stream", st.Key, "err", err)
			continue
		}
		marker.standsFor = header
		st.mu.Lock()
		if st.failed != nil {
			st.mu.Unlock()
			marker.Release()
			break
		}
		if header != nil {
			header.parts.Add(1)
		}
		// The reply timeout counts from the replay: the new successor
		// has only now been asked.
		now := time.Now()
		marker.sentAt = now
		nl.awaiting.Push(marker)
		for _, q := range replay {
			q.parts.Add(1)
			q.sentAt = now
			nl.awaiting.Push(q)
		}
		st.links = append(st.links, nl)
		st.mu.Unlock()
		err = st.writeTo(nl, marker)
		for _, q := range replay {
			if err == nil {
				err = st.writeTo(nl, q)
			}
		}
		if err != nil {
			st.recoverLocked(nl, errorf(pb.ErrorCode_SUCCESSOR_FAILED, "resume on %s: %v", id, err))
		}
	}
	for _, q := range pending {
		st.letGo(q)
	}
}

// reachable returns ids with every peer this one has no connection to
// replaced by its successors in the stream's table, recursively, and
// takes those peers out of the table: the route around them.
func (st *Stream) reachable(ids []string) []string {
	var out []string
	for len(ids) > 0 {
		id := ids[0]
		ids = ids[1:]
		_, err := st.s.cfg.Dial(id)
		if err == nil {
			out = append(out, id)
			continue
		}
		st.s.cfg.Logger.Warn("handler: successor unreachable; routing the stream around it",
			"stream", st.Key, "peer", id, "err", err)
		ids = append(ids, st.table.Successors(id)...)
		st.table = adopt(st.table, st.s.cfg.ID, id)
	}
	return out
}

// adopt returns t without peer gone, whose successors become self's.
func adopt(t *pb.RoutingTable, self, gone string) *pb.RoutingTable {
	out := &pb.RoutingTable{}
	moved := t.Successors(gone)
	found := false
	for _, r := range t.GetRoutes() {
		if r.GetPeer() == gone {
			continue
		}
		succ := slices.DeleteFunc(slices.Clone(r.GetSuccessors()), func(s string) bool { return s == gone })
		if r.GetPeer() == self {
			succ, found = append(succ, moved...), true
		}
		out.Routes = append(out.Routes, &pb.Route{Peer: r.GetPeer(), Successors: succ})
	}
	if !found && len(moved) > 0 {
		out.Routes = append(out.Routes, &pb.Route{Peer: self, Successors: slices.Clone(moved)})
	}
	return out
}

// resumeFrame encodes a RESUME header at offset at, as a packet this peer
// sends (origin) whose answer no upstream waits for.
func (st *Stream) resumeFrame(at uint64, crc uint32, epoch uint64) (*Packet, error) {
	req := proto.Clone(st.Request).(*pb.RaftClientRequest)
	req.RoutingTable, req.ServerId = st.table, st.primaryID
	body, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	opts := uint32(pb.DataStreamPacketHeader_RESUME)
	if st.summedFwd {
		opts |= uint32(pb.DataStreamPacketHeader_CHECKSUM)
	}
	h := &pb.DataStreamPacketHeader{
		ClientId: []byte(st.Key.ClientID), Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: st.Key.StreamID,
		StreamOffset: at, DataLength: uint64(len(body)), Options: opts, Crc32C: crc, Epoch: epoch,
	}
	frame, err := dscodec.EncodePacket(h, body)
	if err != nil {
		return nil, err
	}
	p := packets.Get().(*Packet)
	p.Frame, p.origin = frame, true
	if _, err := dscodec.DecodePacketInto(frame.Bytes(), dscodec.DefaultMaxPacketHeader, p.Header); err != nil {
		p.Release()
		return nil, err
	}
	return p, nil
}

// resumeFrom attaches st to up, whose peer (or, for a new primary, client)
// resumes it with p at p's offset. The router calls it on up's event loop;
// p then goes through the stages like any packet: the executor cuts the
// copy back, the forwarder passes the resume on.
func (st *Stream) resumeFrom(up *pipeline.Pipeline, conn *connState, p *Packet, primary bool) *pb.Error {
	st.mu.Lock()
	defer st.mu.Unlock()
	at := p.Header.GetStreamOffset()
	switch {
	case st.failed != nil:
		return st.failed
	case at > st.received:
		return errorf(pb.ErrorCode_OFFSET_MISMATCH, "resume at offset %d, but this peer received only %d bytes of stream %v", at, st.received, st.Key)
	case st.IsPrimary() && up != st.upstream && !primary:
		return errorf(pb.ErrorCode_FORBIDDEN, "this peer is the primary of stream %v; a peer cannot resume it", st.Key)
	}
	if up != st.upstream {
		st.gen++
		if !st.ended.Load() {
			st.conn.streams.Add(-1)
			conn.streams.Add(1)
		}
		st.upstream, st.conn = up, conn
	}
	if st.state != stateOpen {
		st.setStateLocked(stateOpen)
	}
	st.received = at
	st.epoch = max(st.epoch, p.Header.GetEpoch())
	st.primary.Store(primary)
	p.gen = st.gen
	return nil
}

// applyResumeLocked takes the resumed stream's new tree: the successors it
// names for this peer (around those it cannot reach) replace the links it
// had, and forwarding goes on at the resume's offset. st.fwd must be
// held.
func (st *Stream) applyResumeLocked(p *Packet) {
	st.fwdGen = p.gen
	st.table, st.primaryID = p.req.GetRoutingTable(), p.req.GetServerId()
	st.forwarded, st.crcFwd = p.Header.GetStreamOffset(), p.Header.GetCrc32C()
	want := st.reachable(slices.Clone(st.s.successorsIn(st.table, st.primaryID)))
	st.mu.Lock()
	var gone []*link
	for _, l := range st.links {
		if !l.dropped && !slices.Contains(want, l.id) {
			l.dropped = true
			gone = append(gone, l)
		}
	}
	for _, id := range want {
		if st.linkTo(id) != nil {
			continue
		}
		if c, err := st.s.cfg.Dial(id); err == nil {
			st.links = append(st.links, &link{id: id, c: c})
		}
	}
	var released []*Packet
	for _, l := range gone {
		released = append(released, l.awaiting.Take()...)
	}
	st.mu.Unlock()
	for _, l := range gone {
		st.abort(l.c)
	}
	for _, q := range released {
		st.letGo(q)
	}
}

// orphan handles the loss of the stream's upstream connection: with
// recovery, the stream waits for a resume (Sweep fails it after the reply
// timeout); without, it fails.
func (st *Stream) orphan(recovers bool) {
	st.mu.Lock()
	if recovers && st.failed == nil && (st.state == stateOpen || st.state == stateClosing) {
		st.setStateLocked(stateOrphaned)
		st.orphanedAt = time.Now()
		st.mu.Unlock()
		return
	}
	st.mu.Unlock()
	st.fail(errorf(pb.ErrorCode_CANCELLED, "upstream connection closed"))
}

// orphanedFor returns how long the stream has waited for a resume, or 0.
func (st *Stream) orphanedFor(now time.Time) time.Duration {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.state != stateOrphaned {
		return 0
	}
	return now.Sub(st.orphanedAt)
}
