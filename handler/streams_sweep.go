package handler

import (
	"time"

	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// PeerDown recovers every stream that forwards to peer id around it, or
// fails it where the write quorum does not allow going on without it: its
// connection is gone, so their packets will never be acknowledged.
func (s *Streams) PeerDown(id string, cause error) {
	e := errorf(pb.ErrorCode_SUCCESSOR_FAILED, "connection to successor %s lost: %v", id, cause)
	for _, st := range s.snapshot() {
		st.mu.Lock()
		l := st.linkTo(id)
		st.mu.Unlock()
		if l != nil {
			st.linkFailed(l, e)
		}
	}
}

// UpstreamClosed handles the end of connection up, over which a
// predecessor or a client forwarded streams. Where the write
// quorum allows recovery, its streams are orphaned, waiting for a resume:
// a predecessor's from another predecessor or from their client, a
// client's (whose primary is here) from the client, which moves the
// stream to another peer and so fences this one off. Otherwise they fail,
// since they can never be completed, and the primary aborts them
// downstream.
func (s *Streams) UpstreamClosed(up *pipeline.Pipeline) {
	for _, st := range s.snapshot() {
		if st.ownedBy(up) {
			st.orphan(s.recovers())
		}
	}
}

// Sweep fails streams whose successors have not answered within the reply
// timeout and cleans up closed streams whose entry never came. Servers call
// it on a tick, since gnet has no deadlines.
func (s *Streams) Sweep(now time.Time) {
	for _, st := range s.snapshot() {
		// Stamped on every sweep, whichever case follows, so that a mark
		// waits for no more than one sweep.
		idle := st.idleFor(now)
		l, since := st.oldestUnanswered()
		switch {
		case l != nil && now.Sub(since) > s.cfg.ReplyTimeout:
			st.linkFailed(l, errorf(pb.ErrorCode_TIMEOUT, "no reply from successor %s within %v", l.id, s.cfg.ReplyTimeout))
		case st.orphanedFor(now) > s.cfg.ReplyTimeout:
			st.fail(errorf(pb.ErrorCode_CANCELLED, "upstream connection closed, and no peer resumed the stream within %v", s.cfg.ReplyTimeout))
		default:
			if idle > s.cfg.IdleTimeout && !st.waitingForReplies() {
				st.fail(errorf(pb.ErrorCode_TIMEOUT, "no packet for %v", s.cfg.IdleTimeout))
			}
		}
	}
	var stale []*Stream
	s.mu.Lock()
	for k, st := range s.closed {
		if now.Sub(st.parkedAt) > s.cfg.LinkTimeout {
			delete(s.closed, k)
			stale = append(stale, st)
		}
	}
	s.mu.Unlock()
	for _, st := range stale {
		s.cfg.Logger.Warn("handler: closed stream was never committed; cleaning up", "stream", st.Key)
		st.setState(stateDiscarded)
		st.cleanUp()
	}
}
