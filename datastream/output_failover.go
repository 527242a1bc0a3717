package datastream

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Failover (WithFailover; docs/protocol.md, "Pipeline recovery"): when a
// stream's primary fails, the client resumes the stream on another peer
// of its routing table, as the peers themselves resume a successor's
// successors. A stream on the client is then
//
//	sending ──primary lost──▶ moving ──resume sent──▶ resuming ──resume answered──▶ sending
//	                            │                        │
//	                            └── no peer left ──▶ failed ◀── refused, by every peer left
//
// While it is moving or resuming, writes queue in the window unsent.
// Resuming, the new primary has been sent a RESUME header at the last
// offset every peer acknowledged; once it answers, every packet after that
// offset is sent again, and the stream goes on. A refusal, or the loss of
// the new primary, moves the stream on to the next peer. Each peer is
// tried once per stream.

// errFailed is resumeOn's answer for a stream that failed meanwhile: there
// is nothing left to move.
var errFailed = errors.New("datastream: stream failed during its failover")

// primaryFailed reports whether a primary's error reply says that the
// primary itself failed, so that another peer may take the stream: it is
// shutting down. (A primary whose storage fails aborts the stream on its
// successors, and a successor's STATE_MACHINE comes back through the
// primary with that code: neither leaves anything to resume.)
func primaryFailed(c pb.ErrorCode) bool { return c == pb.ErrorCode_CANCELLED }

// letGo releases the bytes a packet kept for a replay.
func (p *pendingPacket) letGo() {
	if p.frame != nil {
		p.frame.Release()
		p.frame = nil
	}
	if p.body != nil {
		p.body.Release()
		p.body = nil
	}
}

// lost handles the failure of the stream's primary, whose connection is cn:
// with failover the stream moves to another peer, else it fails with cause
// (and, with abort, is aborted on the primary).
func (o *Output) lost(cn *conn, cause error, abort bool) {
	o.mu.Lock()
	if o.err != nil || o.committed || o.moving || cn != o.cn {
		o.mu.Unlock()
		return // failed, or already moving, or moved
	}
	o.resuming = false
	if !o.retain || errors.Is(cause, ErrClosed) {
		o.mu.Unlock()
		o.fail(cause, abort)
		return
	}
	if o.closedOn == cn && o.mayHave == "" {
		o.mayHave = cn.peer.ID
	}
	o.moving = true
	o.tried = append(o.tried, cn.peer.ID)
	o.causes = append(o.causes, cause)
	o.mu.Unlock()
	cn.remove(o)
	o.c.opts.logger.Warn("datastream: primary failed; moving the stream", "stream", o.id, "peer", cn.peer.ID, "err", cause)
	if !o.c.startFailover(o) {
		o.fail(ErrClosed, false)
	}
}

// failover moves the stream to the next peer that takes it, or fails it
// when none is left.
func (o *Output) failover() {
	defer o.c.wg.Done()
	for {
		o.mu.Lock()
		if o.err != nil {
			o.mu.Unlock()
			return
		}
		next, ok := o.candidateLocked()
		o.mu.Unlock()
		if !ok {
			o.fail(o.exhausted(), false)
			return
		}
		cn, err := o.c.connFor(o.ctx, next)
		if err == nil {
			if err = cn.add(o); err == nil {
				if err = o.resumeOn(cn); err != nil {
					cn.remove(o)
				}
			}
		}
		switch {
		case err == nil, errors.Is(err, errFailed):
			return
		case errors.Is(err, ErrClosed) || o.ctx.Err() != nil:
			o.fail(err, false)
			return
		}
		o.mu.Lock()
		o.tried = append(o.tried, next.ID)
		o.causes = append(o.causes, err)
		o.mu.Unlock()
	}
}

// candidateLocked returns the next peer to try: the first of the stream's
// routing table, in the table's order, that was not tried yet.
func (o *Output) candidateLocked() (group.Member, bool) {
	for _, id := range tablePeers(o.table, o.primary, o.c.peers) {
		if !slices.Contains(o.tried, id) {
			if p, ok := o.c.peer(id); ok {
				return p, true
			}
		}
	}
	return group.Member{}, false
}

// exhausted is the error of a stream that no peer could take over: it
// names every peer tried, with why, and wraps every cause.
func (o *Output) exhausted() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	verb := "%w"
	if o.mayHave != "" {
		verb = "%v" // fail says why the outcome is unknown, and wraps only the first cause
	}
	format := "datastream: stream %d: no peer could take it over (tried %s)"
	args := []any{o.id, strings.Join(o.tried, ", ")}
	for i, err := range o.causes {
		format += "; %s: " + verb
		args = append(args, o.tried[i], err)
	}
	return fmt.Errorf(format, args...)
}

// resumeOn makes the peer at the end of cn the stream's primary: it sends
// a RESUME header at the offset every peer acknowledged, naming that peer
// the primary, with a routing table without the peers that failed, then
// every packet not acknowledged again. The RESUME's reply, which comes
// first, stands for the header's if that was not answered. It fails only
// when cn cannot send.
func (o *Output) resumeOn(cn *conn) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return errFailed
	}
	table := reroot(o.table, o.primary, cn.peer.ID, o.tried, o.c.peers)
	req := proto.Clone(o.req).(*pb.RaftClientRequest)
	req.ServerId, req.RoutingTable = cn.peer.ID, table
	body, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	opts := uint32(pb.DataStreamPacketHeader_RESUME)
	if !o.c.opts.noChecksums {
		opts |= uint32(pb.DataStreamPacketHeader_CHECKSUM)
	}
	h := &pb.DataStreamPacketHeader{
		ClientId: o.c.id, Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: o.id,
		StreamOffset: o.acked, DataLength: uint64(len(body)), Options: opts,
		Crc32C: o.crcAcked, Epoch: o.epoch + 1,
	}
	frame, err := dscodec.EncodePacket(h, body)
	if err != nil {
		return err
	}

	// The packets to send again: every data packet not answered, in
	// order; the header, or an earlier resume, gives way to this one.
	now := time.Now()
	mark := &pendingPacket{typ: pb.DataStreamPacketHeader_STREAM_HEADER, offset: o.acked, resume: true, sentAt: now}
	var replay []*pendingPacket
	for _, p := range o.pending.Take() {
		switch {
		case p.resume:
			mark.standsFor = p.standsFor
		case p.typ == pb.DataStreamPacketHeader_STREAM_HEADER:
			mark.standsFor = p
		default:
			p.sentAt = now
			replay = append(replay, p)
		}
	}
	o.pending.Push(mark)
	for _, p := range replay {
		o.pending.Push(p)
	}
	o.cn, o.primary, o.table = cn, cn.peer.ID, table
	if err := cn.send(frame, nil); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrConnectionLost, cn.peer.ID, err)
	}
	o.epoch++
	o.moving, o.resuming = false, true
	o.lastReply = now
	o.c.opts.logger.Info("datastream: resuming the stream on another primary",
		"stream", o.id, "peer", cn.peer.ID, "offset", o.acked, "unacknowledged", len(replay))
	return nil
}

// alreadyCommitted ends the stream whose resume on cn was answered
// ALREADY_COMMITTED: the peer holds an entry committed for the stream's
// key, whose index and term rcr carries. o.mu is held; it unlocks it.
//
// Only a CLOSE commits, so that answer to a resume sent after the CLOSE
// means that a primary that failed committed the stream before its reply
// came: the stream completes as committed, every packet still pending
// with it. A primary commits a stream only once its CLOSE has reached it
// with every byte before it (each packet at the offset where the last
// ended) and every peer of the write quorum has written them all, so the
// entry for this key holds the whole stream: every pending packet is
// answered as written, the CLOSE with the stream's full length. Before
// the CLOSE was sent no peer can have committed the stream, so the same
// answer then fails it.
func (o *Output) alreadyCommitted(cn *conn, h *dscodec.ReplyView, rcr *pb.RaftClientReply) {
	cause := replyError(h, rcr)
	switch {
	case o.closedOn == nil:
		o.mu.Unlock()
		o.fail(fmt.Errorf("datastream: stream %d: %s says it was committed, but its CLOSE was never sent: %w", o.id, cn.peer.ID, cause), false)
		return
	case rcr.GetLogIndex() == 0:
		o.mu.Unlock()
		o.fail(fmt.Errorf("datastream: stream %d: %s says it was committed, without the entry's index: %w", o.id, cn.peer.ID, cause), false)
		return
	}
	commit := &pb.RaftClientReply{
		ClientId: o.c.id, CallId: o.id, ServerId: cn.peer.ID, Success: true,
		LogIndex: rcr.GetLogIndex(), Term: rcr.GetTerm(),
	}
	pending := o.takePendingLocked()
	o.acked, o.crcAcked = o.offset, o.crc
	o.moving, o.resuming, o.committed = false, false, true
	o.lastReply = time.Now()
	failed := o.mayHave
	o.mu.Unlock()
	o.c.opts.logger.Info("datastream: the stream was committed before its primary failed",
		"stream", o.id, "peer", cn.peer.ID, "index", commit.LogIndex, "failed", failed)
	o.settle(pending, func(p *pendingPacket) (*Reply, error) {
		p.reply = Reply{Offset: p.offset, Length: uint64(p.length), Server: cn.peer.ID}
		if p.typ == pb.DataStreamPacketHeader_STREAM_DATA {
			p.reply.bytesWritten = p.offset + uint64(p.length)
		}
		if p.close {
			p.reply.RaftClientReply = commit
		}
		return &p.reply, nil
	})
	o.raft.complete(commit, nil)
	o.done()
}

// replayLocked sends every pending packet again on cn, whose peer has
// taken the stream's resume: a peer that refused it gets none. o.mu must
// be held.
func (o *Output) replayLocked(cn *conn) error {
	now := time.Now()
	for p := range o.pending.All() {
		p.sentAt = now
		var body any
		if p.body != nil {
			body = p.body.Retain()
		}
		if err := cn.send(p.frame.Retain(), body); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrConnectionLost, cn.peer.ID, err)
		}
		if p.close {
			o.closedOn = cn
		}
	}
	return nil
}

// outcomeLocked returns the error a stream that moved fails with: err,
// unless a primary that failed had been sent the stream's CLOSE. That
// primary may have committed the stream before it failed, so no later
// error proves that it did not: the error then says so, and wraps only
// the cause that made the stream leave it (ErrConnectionLost, say), which
// says nothing of a commit, not err's codes (a resume refused for want of
// a stream that was committed meanwhile, say).
func (o *Output) outcomeLocked(err error) error {
	if o.mayHave == "" || len(o.causes) == 0 {
		return err
	}
	return fmt.Errorf("%w; the stream may have committed there, since %s had been sent its CLOSE; then: %v", o.causes[0], o.mayHave, err)
}

// tablePeers lists the peers of routing table t, primary first, in the
// table's order; an empty table is the star over peers.
func tablePeers(t *pb.RoutingTable, primary string, peers []group.Member) []string {
	out := []string{primary}
	add := func(id string) {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	if len(t.GetRoutes()) == 0 {
		for _, p := range peers {
			add(p.ID)
		}
		return out
	}
	for _, r := range t.GetRoutes() {
		add(r.GetPeer())
		for _, id := range r.GetSuccessors() {
			add(id)
		}
	}
	return out
}

// reroot returns the tree of routing table t (rooted at primary) without
// the peers in gone, rooted at root: a peer that loses its predecessor
// goes under the predecessor's own, the path from root up to the top of
// its subtree is turned around, and the other subtrees that lost the old
// primary go under root. Every path of t that does not pass through a
// gone peer or the old root keeps its order.
func reroot(t *pb.RoutingTable, primary, root string, gone []string, peers []group.Member) *pb.RoutingTable {
	ids := make([]string, 0, len(peers))
	for _, p := range peers {
		ids = append(ids, p.ID)
	}
	t = t.OrStar(primary, ids)
	order := tablePeers(t, primary, peers)
	parent := map[string]string{}
	children := map[string][]string{}
	for _, r := range t.GetRoutes() {
		for _, s := range r.GetSuccessors() {
			parent[s] = r.GetPeer()
			children[r.GetPeer()] = append(children[r.GetPeer()], s)
		}
	}
	// Splice out the gone peers, their children taking their place.
	for _, g := range gone {
		if g == root {
			continue
		}
		up, hasUp := parent[g]
		kids := children[g]
		for _, k := range kids {
			if hasUp {
				parent[k] = up
			} else {
				delete(parent, k)
			}
		}
		if hasUp {
			i := slices.Index(children[up], g)
			children[up] = slices.Insert(slices.Delete(children[up], i, i+1), i, kids...)
		}
		delete(parent, g)
		delete(children, g)
	}
	// Turn the path from root up to the top of its subtree around.
	path := []string{root}
	for cur := root; ; {
		up, ok := parent[cur]
		if !ok {
			break
		}
		path = append(path, up)
		cur = up
	}
	for i := 0; i+1 < len(path); i++ {
		child, up := path[i], path[i+1]
		children[up] = slices.DeleteFunc(children[up], func(s string) bool { return s == child })
		children[child] = append(children[child], up)
	}
	for i := len(path) - 1; i > 0; i-- {
		parent[path[i]] = path[i-1]
	}
	delete(parent, root)
	// The other tops (peers left without a predecessor) go under root.
	for _, id := range order {
		if id == root || slices.Contains(gone, id) {
			continue
		}
		if _, ok := parent[id]; !ok {
			parent[id] = root
			children[root] = append(children[root], id)
		}
	}
	out := &pb.RoutingTable{}
	out.Routes = append(out.Routes, &pb.Route{Peer: root, Successors: slices.Clone(children[root])})
	for _, id := range order {
		if id == root || slices.Contains(gone, id) {
			continue
		}
		out.Routes = append(out.Routes, &pb.Route{Peer: id, Successors: slices.Clone(children[id])})
	}
	return out
}
