package handler

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/internal/fifo"
	"github.com/pipestream/pipestream/internal/serial"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// Stream is one open stream on one peer.
type Stream struct {
	Key     StreamKey
	Request *pb.RaftClientRequest
	// Primary is true on the peer the client sent the header to.
	Primary bool

	s        *Streams
	upstream *pipeline.Pipeline // replies go here
	conn     *connState         // the upstream connection's counters
	succIDs  []string
	succ     []Successor
	exec     *serial.Queue[task]

	// Owned by the upstream connection's event loop.
	received uint64
	closing  bool

	opened     time.Time
	lastActive atomic.Int64 // unix nanoseconds of the last packet
	ended      atomic.Bool  // the connection's stream count was given back

	// Owned by the executor.
	ch      statemachine.DataChannel
	written uint64
	sum     streamSum

	mu          sync.Mutex
	replies     fifo.Queue[*Packet]   // routed, not yet answered, in stream order
	awaiting    []fifo.Queue[*Packet] // per successor: forwarded, not yet acknowledged
	failed      *pb.Error
	commit      bool   // closed everywhere; finishClose has started
	length      uint64 // set with commit, as the stream's
	checksum    uint32 // CRC32C, when checksummed
	checksummed bool

	// Guarded by Streams.mu, while the stream is parked.
	parkedAt time.Time
	reopened bool // a header for its key came after it closed; see Streams.add
}

type taskKind uint8

const (
	taskWrite taskKind = iota
	taskCleanUp
	taskRelease
)

type task struct {
	kind taskKind
	p    *Packet
}

func newStream(s *Streams, key StreamKey, req *pb.RaftClientRequest, primary bool, up *pipeline.Pipeline, conn *connState, succIDs []string, succ []Successor) *Stream {
	st := &Stream{
		Key: key, Request: req, Primary: primary,
		s: s, upstream: up, conn: conn, succIDs: succIDs, succ: succ,
		awaiting: make([]fifo.Queue[*Packet], len(succ)),
	}
	st.exec = serial.New(st.run, &s.wg)
	st.opened = time.Now()
	st.lastActive.Store(st.opened.UnixNano())
	return st
}

// end gives the stream's place on its connection back, once.
func (st *Stream) end() {
	if st.ended.CompareAndSwap(false, true) {
		st.conn.streams.Add(-1)
	}
}

// Successors returns the ids of the peers this stream is forwarded to.
func (st *Stream) Successors() []string { return st.succIDs }

func (st *Stream) forwardsTo(id string) bool {
	for _, s := range st.succIDs {
		if s == id {
			return true
		}
	}
	return false
}

// Fail fails the stream with e, as the server's own stages do: every
// packet not yet answered gets e, successors are told to abort, and the
// local data is cleaned up. A user stage between the router and the
// replier calls it to refuse a stream mid-way (an auth or quota check) and
// then passes the packet on as usual, so that its reply keeps its place.
// It does nothing once the stream failed or closed on every peer.
func (st *Stream) Fail(e *pb.Error) { st.fail(e) }

// Err returns the stream's failure, or nil.
func (st *Stream) Err() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.failed == nil {
		return nil
	}
	return st.failed
}

// run is the stream's executor: local state-machine work, in order.
func (st *Stream) run(t task) {
	switch t.kind {
	case taskWrite:
		p := t.p
		if st.Err() == nil {
			ev := st.s.cfg.Events
			var start time.Time
			if ev != nil {
				start = time.Now()
			}
			if err := st.writeLocal(p); err != nil {
				e := codeOf(err, pb.ErrorCode_STATE_MACHINE)
				st.setErr(p, e)
				st.fail(e)
			} else if ev != nil && p.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
				ev.Packet(PacketEvent{Kind: PacketWritten, Key: st.Key, Bytes: p.Header.GetDataLength(), Duration: time.Since(start)})
			}
		}
		st.partDone(p)
	case taskCleanUp, taskRelease:
		if st.ch == nil {
			return
		}
		var err error
		if r, ok := st.ch.(statemachine.Releaser); ok && t.kind == taskRelease {
			err = r.Release()
		} else {
			err = st.ch.CleanUp()
		}
		if err != nil {
			st.s.cfg.Logger.Warn("handler: state machine clean-up failed", "stream", st.Key, "err", err)
		}
		st.ch = nil
	}
}

func (st *Stream) writeLocal(p *Packet) error {
	h := p.Header
	if h.GetType() == pb.DataStreamPacketHeader_STREAM_HEADER {
		ch, err := st.s.cfg.StateMachine.OpenStream(context.Background(), st.Key, st.Request)
		if err != nil {
			return fmt.Errorf("open stream: %w", err)
		}
		st.ch = ch
		return nil
	}
	if st.ch == nil {
		return errorf(pb.ErrorCode_INTERNAL, "stream has no data channel")
	}
	if err := st.sum.check(p, len(st.succ) == 0 || st.s.cfg.VerifyEveryPeer); err != nil {
		return err
	}
	if b := p.Body.Bytes(); len(b) > 0 {
		n, err := st.ch.Write(b)
		st.written += uint64(n)
		if err != nil {
			return fmt.Errorf("write at offset %d: %w", h.GetStreamOffset(), err)
		}
		if n != len(b) {
			return fmt.Errorf("short write at offset %d: %d of %d bytes", h.GetStreamOffset(), n, len(b))
		}
	}
	p.written = st.written
	if p.Has(pb.DataStreamPacketHeader_SYNC) {
		if err := st.ch.Sync(); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
	}
	if p.Has(pb.DataStreamPacketHeader_CLOSE) {
		if err := st.ch.Close(); err != nil {
			return fmt.Errorf("close: %w", err)
		}
	}
	return nil
}

func (st *Stream) setErr(p *Packet, e *pb.Error) {
	st.mu.Lock()
	if p.err == nil {
		p.err = e
	}
	st.mu.Unlock()
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

// forward sends p's frame to every successor. It runs on the upstream
// connection's event loop, so a stream's frames leave in order.
func (st *Stream) forward(p *Packet) {
	if len(st.succ) > 0 {
		p.sentAt = time.Now()
	}
	for i, c := range st.succ {
		p.parts.Add(1)
		st.mu.Lock()
		if st.failed != nil {
			st.mu.Unlock()
			p.parts.Add(-1)
			return
		}
		st.awaiting[i].Push(p)
		st.mu.Unlock()
		err := c.Write(p.Frame.Retain())
		if err == nil {
			err = c.Flush()
		}
		if err != nil {
			st.fail(errorf(pb.ErrorCode_SUCCESSOR_FAILED, "forward to %s: %v", st.succIDs[i], err))
			return
		}
		if ev := st.s.cfg.Events; ev != nil && p.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
			ev.Packet(PacketEvent{Kind: PacketForwarded, Key: st.Key, Peer: st.succIDs[i], Bytes: p.Header.GetDataLength()})
		}
	}
}

// ack takes successor i's reply for the oldest packet forwarded to it.
func (st *Stream) ack(i int, r *codec.ReplyView) {
	st.mu.Lock()
	if st.awaiting[i].Len() == 0 {
		st.mu.Unlock()
		return // the stream failed and let go of its packets
	}
	p := st.awaiting[i].Pop()
	var e *pb.Error
	h := p.Header
	want := h.GetStreamOffset() + h.GetDataLength()
	switch {
	case r.StreamOffset != h.GetStreamOffset() || r.Type != h.GetType():
		e = errorf(pb.ErrorCode_SUCCESSOR_FAILED, "successor %s answered %v at offset %d, expected %v at %d",
			st.succIDs[i], r.Type, r.StreamOffset, h.GetType(), h.GetStreamOffset())
	case !r.Success && r.ErrorCode == pb.ErrorCode_CHECKSUM:
		// The data arrived corrupt there, and so it is here too (a peer
		// verifies only at the leaves): the cause is the data's.
		e = errorf(pb.ErrorCode_CHECKSUM, "successor %s: %s", st.succIDs[i], r.ErrorMessage)
	case !r.Success:
		e = errorf(pb.ErrorCode_SUCCESSOR_FAILED, "successor %s: %s: %s", st.succIDs[i], r.ErrorCode, r.ErrorMessage)
	case h.GetType() == pb.DataStreamPacketHeader_STREAM_DATA && r.BytesWritten != want:
		e = errorf(pb.ErrorCode_SUCCESSOR_FAILED, "successor %s wrote %d bytes, expected %d", st.succIDs[i], r.BytesWritten, want)
	}
	if e != nil && p.err == nil {
		p.err = e
	}
	st.mu.Unlock()
	if ev := st.s.cfg.Events; ev != nil && h.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
		pe := PacketEvent{Kind: PacketAcknowledged, Key: st.Key, Peer: st.succIDs[i], Bytes: h.GetDataLength(), Duration: time.Since(p.sentAt)}
		if e != nil {
			pe.Code = e.Code
		}
		ev.Packet(pe)
	}
	if e != nil {
		st.fail(e)
	}
	st.partDone(p)
}

// waitingForReplies reports whether a packet of the stream is still to be
// answered: the client has sent what its window allows and waits, so the
// stream is not idle.
func (st *Stream) waitingForReplies() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.replies.Len() > 0
}

func (st *Stream) oldestUnanswered() (time.Time, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var oldest time.Time
	for i := range st.awaiting {
		if q := &st.awaiting[i]; q.Len() > 0 && (oldest.IsZero() || q.Peek().sentAt.Before(oldest)) {
			oldest = q.Peek().sentAt
		}
	}
	return oldest, !oldest.IsZero()
}

// fail ends the stream with e: every queued packet is answered with the
// error once its local part is done, successors are told to abort, and the
// local data is cleaned up after the writes already queued. The stream stays
// in the table until its queued replies are out, so that packets still
// arriving for it are answered in order, after them, with the same error.
func (st *Stream) fail(e *pb.Error) {
	st.mu.Lock()
	if st.failed != nil || st.commit {
		// Once every peer has closed the stream its fate is the commit's.
		st.mu.Unlock()
		return
	}
	st.failed = e
	var released []*Packet
	for i := range st.awaiting {
		released = append(released, st.awaiting[i].Take()...)
	}
	st.mu.Unlock()
	if ev := st.s.cfg.Events; ev != nil {
		ev.Stream(StreamEvent{Kind: StreamFailed, Key: st.Key, Primary: st.Primary, Duration: time.Since(st.opened), Code: e.Code})
	}

	st.end()
	st.abortSuccessors()
	st.exec.Submit(task{kind: taskCleanUp})
	st.exec.Close()
	for _, p := range released {
		st.partDone(p)
	}
	st.flushReplies()
}

// abortSuccessors tells each successor to drop the stream. Their replies
// find no stream here and are dropped.
func (st *Stream) abortSuccessors() {
	for _, c := range st.succ {
		frame, err := codec.EncodePacket(&pb.DataStreamPacketHeader{
			ClientId: []byte(st.Key.ClientID),
			Type:     pb.DataStreamPacketHeader_STREAM_DATA,
			StreamId: st.Key.StreamID,
			Options:  uint32(pb.DataStreamPacketHeader_ABORT),
		}, nil)
		if err != nil {
			continue
		}
		if c.Write(frame) == nil {
			_ = c.Flush()
		}
	}
}

// cleanUp discards the local data of a stream that will not be linked.
func (st *Stream) cleanUp() { st.exec.Submit(task{kind: taskCleanUp}) }

// release lets go of a closed stream at shutdown, keeping its data for a
// restart when the state machine can. It runs on the executor after
// whatever is queued, like cleanUp.
func (st *Stream) release() { st.exec.Submit(task{kind: taskRelease}) }

// flushReplies answers the packets at the front of the queue whose parts
// are all done, in order. A successful CLOSE is held back until finishClose
// has committed (primary) or parked (other peers) the stream.
func (st *Stream) flushReplies() {
	st.mu.Lock()
	wrote := false
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
		if isClose && err == nil && !st.commit {
			// Commit and link may block on Raft and disk, and this may be
			// an event loop: finish the close on a goroutine of its own.
			st.commit = true
			st.length = p.written
			st.checksum, st.checksummed = st.sum.crc, st.sum.mode == sumOn
			p.parts.Add(1)
			st.s.wg.Add(1)
			go st.finishClose(p)
			break
		}
		st.replies.Pop()
		st.conn.inflight.Add(-int64(p.Header.GetDataLength()))
		writeReply(st.upstream, st.replyFor(p, err))
		p.Release()
		wrote = true
	}
	drained := st.failed != nil && st.replies.Len() == 0
	st.mu.Unlock()
	if drained {
		st.s.remove(st)
	}
	if wrote {
		// A client that waited for these replies was not idle.
		st.lastActive.Store(time.Now().UnixNano())
		_ = st.upstream.Flush()
	}
}

func (st *Stream) replyFor(p *Packet, err *pb.Error) *Reply {
	r := newReply(p.Header)
	h := r.Header
	h.BytesWritten, h.Success, h.ServerId = p.written, err == nil, st.s.cfg.ID
	r.Body = p.reply
	if err != nil {
		h.ErrorCode, h.ErrorMessage = err.Code, err.Message
		if p.Has(pb.DataStreamPacketHeader_CLOSE) && st.Primary {
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

// finishClose runs once the stream is closed here and on every peer
// downstream. The stream waits for its entry among the parked ones; the
// primary then commits it. Without a Committer every peer links at once
// under a local index.
func (st *Stream) finishClose(p *Packet) {
	defer st.s.wg.Done()
	st.s.park(st)
	st.end()
	// CLOSE was the stream's last write; a later clean-up runs on a
	// goroutine of its own.
	st.exec.Close()
	var (
		reply *pb.RaftClientReply
		err   error
	)
	switch c := st.s.commitHook(); {
	case c == nil:
		reply, err = st.s.linkLocal(st)
	case st.Primary:
		ctx, cancel := context.WithTimeout(context.Background(), st.s.cfg.CommitTimeout)
		reply, err = c.Commit(ctx, statemachine.StreamInfo{Key: st.Key, Request: st.Request, Length: st.length,
			Checksum: st.checksum, Checksummed: st.checksummed})
		cancel()
		switch {
		case reply.GetSuccess() && err != nil:
			// Committed, but this peer's state machine could not link its
			// copy: the stream is committed all the same, and the reply's
			// commit info says what became of this copy.
			st.s.cfg.Logger.Warn("handler: stream committed but not linked on this peer",
				"stream", st.Key, "index", reply.GetLogIndex(), "err", err)
			err = nil
		case err == nil && !reply.GetSuccess():
			err = errorf(reply.GetErrorCode(), "%s", reply.GetErrorMessage())
		}
		// On error the stream stays parked: a commit that timed out may
		// still be applied, and then its data must be there to link. The
		// link timeout sweeps it otherwise.
	}
	st.mu.Lock()
	if err != nil {
		// The committer's reply says why (NOT_LEADER, TIMEOUT, ...); its
		// error is often a plain one.
		code := pb.ErrorCode_COMMIT_FAILED
		if c := reply.GetErrorCode(); c != pb.ErrorCode_ERROR_NONE {
			code = c
		}
		p.err = codeOf(err, code)
		if hint := reply.GetLeaderHint(); hint != "" {
			p.err = errorf(p.err.Code, "%s; leader is %s", p.err.Message, hint)
		}
		if ev := st.s.cfg.Events; ev != nil {
			ev.Stream(StreamEvent{Kind: StreamFailed, Key: st.Key, Primary: st.Primary, Bytes: st.length, Duration: time.Since(st.opened), Code: p.err.Code})
		}
	}
	if st.Primary {
		p.reply = reply // on failure, replyFor keeps its hint and entry
	}
	st.mu.Unlock()
	st.partDone(p)
}
