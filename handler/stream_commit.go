package handler

import (
	"context"
	"slices"
	"strings"
	"time"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// holdersLocked returns the peers that hold the whole stream: this one
// and those its live successors named in their replies to CLOSE. st.mu
// must be held.
func (st *Stream) holdersLocked() []string {
	h := []string{st.s.cfg.ID}
	for _, l := range st.links {
		if !l.dropped {
			h = append(h, l.holders...)
		}
	}
	slices.Sort(h)
	return slices.Compact(h)
}

// missingFrom names the group's peers not in holders, for an error.
func (s *Streams) missingFrom(holders []string) string {
	var out []string
	for _, id := range s.members() {
		if !slices.Contains(holders, id) {
			out = append(out, id)
		}
	}
	return strings.Join(out, ", ")
}

// finishClose runs once the stream is closed here and on every peer
// downstream. The stream waits for its entry among the parked ones; the
// primary then commits it, if enough peers hold it. Without a Committer
// every peer links at once under a local index.
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
	st.mu.Lock()
	aborted := st.aborted
	st.mu.Unlock()
	switch c := st.s.commitHook(); {
	case aborted:
		// Its predecessor failed it while it closed here (abortFrom).
		err = errorf(pb.ErrorCode_CANCELLED, "stream %v aborted by its predecessor before its commit", st.Key)
		st.s.discard(st)
	case st.IsPrimary() && st.unasked:
		// Nobody asked for this commit any more: the client lost its
		// connection first, and either moves the stream to another peer,
		// whose commit this copy (left out of its holders) must not
		// race, or reports it failed. It stays parked until the entry
		// comes from the new primary or the link timeout sweeps it.
		err = errorf(pb.ErrorCode_CANCELLED, "the client went away before stream %v closed; not committed here", st.Key)
	case st.IsPrimary() && len(st.holders) < st.s.quorum():
		err = errorf(pb.ErrorCode_NOT_ENOUGH_PEERS, "stream held by %d of %d peers (%s), the write quorum is %d; missing %s",
			len(st.holders), len(st.s.members()), strings.Join(st.holders, ", "), st.s.quorum(), st.s.missingFrom(st.holders))
		// Never to be committed: its copies need not wait for the link
		// timeout.
		st.s.discard(st)
	case c == nil:
		reply, err = st.s.linkLocal(st)
	case st.IsPrimary():
		reply, err = st.commitVia(c)
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
			ev.Stream(StreamEvent{Kind: StreamFailed, Key: st.Key, Primary: st.IsPrimary(), Bytes: st.length, Duration: time.Since(st.opened), Code: p.err.Code})
		}
	}
	if st.IsPrimary() {
		p.reply = reply // on failure, replyFor keeps its hint and entry
	}
	st.mu.Unlock()
	st.partDone(p)
}

// commitVia commits the stream through c. On error the stream stays
// parked: a commit that timed out may still be applied, and then its data
// must be there to link. The link timeout sweeps it otherwise.
func (st *Stream) commitVia(c statemachine.Committer) (*pb.RaftClientReply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), st.s.cfg.CommitTimeout)
	defer cancel()
	st.mu.Lock()
	info := statemachine.StreamInfo{Key: st.Key, Request: st.Request, Length: st.length,
		Checksum: st.checksum, Checksummed: st.summed, Holders: st.holders, Epoch: st.epoch}
	st.mu.Unlock()
	if len(info.Holders) == len(st.s.members()) {
		info.Holders = nil // every peer: the entry stays as before quorums
	}
	reply, err := c.Commit(ctx, info)
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
	return reply, err
}
