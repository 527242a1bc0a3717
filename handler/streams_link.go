package handler

import (
	"context"
	"time"

	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// park moves a stream closed on every peer to the table of streams waiting
// for their entry.
func (s *Streams) park(st *Stream) {
	s.mu.Lock()
	if s.active[st.Key] == st {
		delete(s.active, st.Key)
	}
	st.parkedAt = time.Now()
	s.closed[st.Key] = st
	s.mu.Unlock()
	st.setState(stateParked)
}

// parked returns the stream with key k if it is parked.
func (s *Streams) parked(k StreamKey) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed[k]
}

// discard drops parked stream st, which will never commit, here and on
// its successors.
func (s *Streams) discard(st *Stream) {
	s.mu.Lock()
	if s.closed[st.Key] != st {
		s.mu.Unlock()
		return
	}
	delete(s.closed, st.Key)
	s.mu.Unlock()
	st.setState(stateDiscarded)
	st.cleanUp()
	st.abortSuccessors()
}

// dropParked cleans up the parked stream k on an ABORT from its upstream.
// A stream parks here once its CLOSE is written on this peer and every
// successor; its predecessor aborts it only while it has not begun to
// commit (fail does nothing after that), so the entry will never come and
// the data need not wait for the link timeout. A primary never receives
// such an ABORT: its upstream is the client, whose aborts after CLOSE
// find the stream committing.
func (s *Streams) dropParked(k StreamKey, up *pipeline.Pipeline) bool {
	s.mu.Lock()
	st := s.closed[k]
	s.mu.Unlock()
	if st == nil || !st.ownedBy(up) || st.IsPrimary() {
		return false
	}
	s.mu.Lock()
	reopened := st.reopened
	s.mu.Unlock()
	if reopened {
		return false
	}
	// The successors below have parked it too: discard passes the abort
	// on.
	s.discard(st)
	return true
}

func (s *Streams) unpark(k StreamKey) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.closed[k]
	delete(s.closed, k)
	return st
}

// Link implements statemachine.Linker: it hands the committed entry and the
// stream's closed channel, if this peer holds one, to the state machine.
func (s *Streams) Link(ctx context.Context, e statemachine.Entry) error {
	st := s.unpark(e.Key)
	if st != nil {
		st.setState(stateLinked)
	}
	if st != nil && !e.Holds(s.cfg.ID) {
		// Dropped from the stream's pipeline: what this peer holds may
		// lack the bytes replayed after it was dropped, or hold bytes the
		// others cut back. It is recorded missing and repaired from a
		// holder.
		s.cfg.Logger.Warn("handler: committed without this peer's copy; it will be repaired", "stream", e.Key, "index", e.Index, "holders", e.Holders)
		st.cleanUp()
		st = nil
	}
	if st == nil {
		return s.cfg.StateMachine.Link(ctx, e, nil)
	}
	// The channel is closed and its executor idle: no task touches it
	// after the CLOSE write, so Link may use it from this goroutine.
	err := s.cfg.StateMachine.Link(ctx, e, st.ch)
	if ev := s.cfg.Events; ev != nil && err == nil {
		ev.Stream(StreamEvent{Kind: StreamCommitted, Key: st.Key, Primary: st.IsPrimary(),
			Bytes: e.Length, Duration: time.Since(st.opened)})
	}
	return err
}

// Catalog implements statemachine.Cataloger for Raft snapshots: the state
// machine's catalog, or nothing when it keeps none.
func (s *Streams) Catalog() []statemachine.Entry {
	if c, ok := s.cfg.StateMachine.(statemachine.Cataloger); ok {
		return c.Catalog()
	}
	return nil
}

// linkLocal is the standalone commit: a local index, linked at once.
func (s *Streams) linkLocal(st *Stream) (*pb.RaftClientReply, error) {
	idx := s.localIndex.Add(1)
	e := statemachine.Entry{Index: idx, Key: st.Key, Request: st.Request, Length: st.length, Holders: st.holders}
	if err := s.Link(context.Background(), e); err != nil {
		return nil, err
	}
	return &pb.RaftClientReply{
		ClientId: st.Request.GetClientId(), CallId: st.Request.GetCallId(),
		ServerId: s.cfg.ID, Success: true, LogIndex: idx,
	}, nil
}
