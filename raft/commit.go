package raft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// Commit retry backoff while there is no leader to take the entry.
const (
	minRetryBackoff = 10 * time.Millisecond
	maxRetryBackoff = 200 * time.Millisecond
)

// Commit commits the stream s through Raft and returns once this peer's
// FSM has applied the entry, that is once its Linker has linked the data.
//
// The leader appends the entry itself; a follower forwards it to the
// leader's commit address and then waits for its own FSM. While no leader
// is known or reachable Commit retries until ctx expires, then returns
// ErrNoLeader and a reply with ErrorCode NOT_LEADER and the last leader it
// knew. A stream already committed is not committed again, as long as the
// FSM remembers its key (Config.MaxDedupKeys): the reply names the original
// entry. If the entry committed but this peer's Linker failed, the reply
// is a success (the entry is committed) whose commit info for this peer
// names the link error, and the error is a *LinkError. A successful reply
// carries every reachable peer's commit info. A reply is returned with
// every error.
//
// An error does not prove that the entry did not commit: a timeout may
// strike after the leader appended it. Committing the same key again is
// safe and returns the original entry.
func (n *Node) Commit(ctx context.Context, s statemachine.StreamInfo) (*pb.RaftClientReply, error) {
	r, err := n.started()
	if err != nil {
		return n.failure(s, pb.ErrorCode_CANCELLED, "", err)
	}
	entry := &pb.StreamEntry{
		ClientId: []byte(s.Key.ClientID),
		StreamId: s.Key.StreamID,
		Message:  s.Request.GetMessage(),
		Length:   s.Length,
		Holders:  s.Holders,
		Epoch:    s.Epoch,
	}
	if s.Checksummed {
		entry.Crc32C = &s.Checksum
	}
	data, err := proto.Marshal(entry)
	if err != nil {
		return n.failure(s, pb.ErrorCode_INTERNAL, "", fmt.Errorf("raft: encode entry: %w", err))
	}
	if len(data) > MaxMessageSize {
		return n.failure(s, pb.ErrorCode_LIMIT_EXCEEDED, "", fmt.Errorf("%w: entry of %d bytes", ErrTooLarge, len(data)))
	}
	ctx, stop := n.bind(ctx)
	defer stop()

	// Watch before submitting: the entry may be applied here before the
	// leader's reply arrives, and an earlier attempt that looked failed may
	// still commit.
	applied, unwatch := n.fsm.watch(s.Key)
	defer unwatch()

	backoff := minRetryBackoff
	timer := time.NewTimer(backoff)
	timer.Stop() // armed by Reset below
	defer timer.Stop()
	for {
		leaderAddr, leaderID := r.LeaderWithID()
		switch {
		case leaderAddr == "":
			// Election in progress: wait below.
		case leaderID == hraft.ServerID(n.cfg.ID):
			res, err := n.applyStream(ctx, r, data)
			if err == nil {
				return n.success(ctx, s, res)
			}
			if code, final := classify(err); final {
				return n.failure(s, code, "", err)
			}
			n.log.Debug("raft: commit retry", "key", s.Key, "err", err)
		default:
			if rep, err := n.forward(ctx, n.commitAddr(string(leaderID)), data); err != nil {
				n.log.Debug("raft: forward failed", "leader", leaderID, "err", err)
			} else if rep.GetSuccess() {
				return n.awaitApplied(ctx, s, applied, rep)
			} else if rep.GetErrorCode() != pb.ErrorCode_NOT_LEADER {
				return n.failure(s, rep.GetErrorCode(), "",
					fmt.Errorf("%w: leader %s: %s", ErrCommitFailed, leaderID, rep.GetErrorMessage()))
			}
		}

		timer.Reset(backoff)
		select {
		case res := <-applied:
			return n.success(ctx, s, res)
		case <-ctx.Done():
			if n.ctx.Err() != nil {
				return n.failure(s, pb.ErrorCode_CANCELLED, "", ErrClosed)
			}
			return n.failure(s, pb.ErrorCode_NOT_LEADER, n.leaderHint(), fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err()))
		case <-timer.C:
		}
		backoff = min(2*backoff, maxRetryBackoff)
	}
}

// Committed implements statemachine.KeyChecker: whether this peer's FSM
// has applied an entry for key, among the keys it remembers
// (Config.MaxDedupKeys).
func (n *Node) Committed(key statemachine.StreamKey) (uint64, bool) {
	index, _, ok := n.CommittedEntry(key)
	return index, ok
}

// CommittedEntry implements statemachine.TermChecker: Committed, with the
// entry's term.
func (n *Node) CommittedEntry(key statemachine.StreamKey) (index, term uint64, ok bool) {
	n.fsm.mu.Lock()
	defer n.fsm.mu.Unlock()
	c, ok := n.fsm.keys[key]
	return c.index, c.term, ok
}

// CaughtUp reports whether this peer's FSM has applied every stream entry
// the group had committed when it asked, and false while no leader is
// known. The leader answers after a barrier, which its FSM passes only
// once it has applied everything committed before (a new leader's commit
// index is stale until it commits in its own term, so that index would
// not do), with the last entry its FSM applied; a follower compares its
// FSM's own. Both count the entries the FSM applies, not raft's indexes,
// which also count what the FSM never sees (no-ops, barriers) and run
// ahead of it.
func (n *Node) CaughtUp(ctx context.Context) (bool, error) {
	r, err := n.started()
	if err != nil {
		return false, err
	}
	_, leaderID := r.LeaderWithID()
	switch {
	case leaderID == "":
		return false, nil
	case leaderID == hraft.ServerID(n.cfg.ID):
		rep := n.serveSettled()
		return rep.GetSuccess(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, settleTimeout+statusTimeout)
	defer cancel()
	rep, err := n.call(ctx, n.commitAddr(string(leaderID)), reqSettled, nil)
	if err != nil {
		return false, err
	}
	infos := rep.GetCommitInfos()
	if !rep.GetSuccess() || len(infos) != 1 || infos[0].GetServerId() != string(leaderID) {
		return false, nil // not the leader any more, or no barrier in time
	}
	return n.fsm.stats().LastIndex >= infos[0].GetAppliedIndex(), nil
}

// settleTimeout bounds the barrier of a reqSettled.
const settleTimeout = time.Second

// serveSettled answers reqSettled: on the leader, once a barrier has gone
// through, its CommitInfo, whose applied index is then the last entry
// committed before the barrier that the FSM applies; elsewhere NOT_LEADER.
func (n *Node) serveSettled() *pb.RaftClientReply {
	rep := &pb.RaftClientReply{ServerId: n.cfg.ID}
	r, err := n.started()
	if err == nil && r.State() != hraft.Leader {
		err = hraft.ErrNotLeader
	}
	if err == nil {
		err = r.Barrier(settleTimeout).Error()
	}
	if err != nil {
		rep.ErrorCode, _ = classify(err)
		rep.ErrorMessage = err.Error()
		return rep
	}
	rep.Success = true
	rep.CommitInfos = []*pb.CommitInfo{n.commitInfo()}
	return rep
}

// awaitApplied waits, after the leader committed a forwarded entry, until
// this peer's FSM has applied it too.
func (n *Node) awaitApplied(ctx context.Context, s statemachine.StreamInfo, applied <-chan applyResult, rep *pb.RaftClientReply) (*pb.RaftClientReply, error) {
	select {
	case res := <-applied:
		return n.success(ctx, s, res)
	case <-ctx.Done():
		code, err := pb.ErrorCode_TIMEOUT, fmt.Errorf("raft: entry %d committed but not applied here: %w", rep.GetLogIndex(), ctx.Err())
		if n.ctx.Err() != nil {
			code, err = pb.ErrorCode_CANCELLED, ErrClosed
		}
		reply, err := n.failure(s, code, "", err)
		reply.LogIndex, reply.Term = rep.GetLogIndex(), rep.GetTerm()
		return reply, err
	}
}

// classify maps an error from applying an entry on this peer to an error
// code, and says whether retrying is pointless. Leadership changes are
// worth a retry: the entry may be committed by the next leader, and if it
// was committed after all, the FSM recognises the duplicate.
func classify(err error) (pb.ErrorCode, bool) {
	switch {
	case errors.Is(err, hraft.ErrNotLeader), errors.Is(err, hraft.ErrLeadershipLost),
		errors.Is(err, hraft.ErrLeadershipTransferInProgress), errors.Is(err, hraft.ErrAbortedByRestore):
		return pb.ErrorCode_NOT_LEADER, false
	case errors.Is(err, ErrClosed), errors.Is(err, hraft.ErrRaftShutdown):
		return pb.ErrorCode_CANCELLED, true
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, hraft.ErrEnqueueTimeout):
		return pb.ErrorCode_TIMEOUT, true
	case errors.Is(err, context.Canceled):
		return pb.ErrorCode_CANCELLED, true
	default:
		return pb.ErrorCode_COMMIT_FAILED, true
	}
}

// applyStream appends a stream entry on the leader and waits for this
// peer's FSM to apply it.
func (n *Node) applyStream(ctx context.Context, r *hraft.Raft, data []byte) (applyResult, error) {
	f := r.ApplyLog(hraft.Log{Data: data, Extensions: kindStream}, enqueueTimeout(ctx))
	if err := n.await(ctx, f); err != nil {
		return applyResult{}, err
	}
	switch v := f.Response().(type) {
	case applyResult:
		return v, nil
	case error:
		return applyResult{}, v
	default:
		return applyResult{}, fmt.Errorf("raft: unexpected FSM response %T", v)
	}
}

// ApplyData appends data as an ordinary Raft log entry and waits until it
// is committed and applied here: the path streaming avoids, kept as a
// baseline. Every peer's FSM hands the entry to its DataSink. ApplyData
// must be called on the leader, otherwise it returns ErrNotLeader; data
// must not be modified afterwards, since the log may keep it.
func (n *Node) ApplyData(ctx context.Context, data []byte) error {
	r, err := n.started()
	if err != nil {
		return err
	}
	if r.State() != hraft.Leader {
		return ErrNotLeader
	}
	ctx, stop := n.bind(ctx)
	defer stop()
	f := r.ApplyLog(hraft.Log{Data: data, Extensions: kindData}, enqueueTimeout(ctx))
	if err := n.await(ctx, f); err != nil {
		if errors.Is(err, hraft.ErrNotLeader) || errors.Is(err, hraft.ErrLeadershipLost) {
			return fmt.Errorf("%w: %w", ErrNotLeader, err)
		}
		return fmt.Errorf("raft: apply: %w", err)
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return err
	}
	return nil
}

// await waits for f or ctx. hashicorp/raft futures cannot be canceled, so
// the wait runs on a goroutine of its own; raft resolves every future by
// its Shutdown at the latest, which Node.Shutdown waits for.
func (n *Node) await(ctx context.Context, f hraft.Future) error {
	done := make(chan error, 1)
	if !n.goTracked(func() { done <- f.Error() }) {
		return ErrClosed
	}
	select {
	case err := <-done:
		if errors.Is(err, hraft.ErrRaftShutdown) {
			return ErrClosed
		}
		return err
	case <-ctx.Done():
		if n.ctx.Err() != nil {
			return ErrClosed
		}
		return ctx.Err()
	}
}

// enqueueTimeout is how long raft may take to accept an entry: the time
// left on ctx, or no limit.
func enqueueTimeout(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return 0
}

// bind returns a context that is also canceled when the Node shuts down.
func (n *Node) bind(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(n.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

func (n *Node) commitAddr(id string) string {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	return n.peers[id].CommitAddr
}

func (n *Node) reply(s statemachine.StreamInfo) *pb.RaftClientReply {
	return &pb.RaftClientReply{
		ClientId: []byte(s.Key.ClientID),
		CallId:   s.Key.StreamID,
		ServerId: n.cfg.ID,
	}
}

// success is the reply to a stream whose entry committed and was applied
// here. A failed link does not make it a failure: the entry is committed
// whatever this peer's state machine did with it (and a retry would only
// find it again), so the reply says success and names the link error in
// this peer's commit info, and the error returned is a *LinkError.
func (n *Node) success(ctx context.Context, s statemachine.StreamInfo, res applyResult) (*pb.RaftClientReply, error) {
	rep := n.reply(s)
	rep.LogIndex, rep.Term = res.index, res.term
	rep.Success = true
	own := n.commitInfo()
	var err error
	if res.err != nil {
		own.LinkError = res.err.Error()
		err = &LinkError{Index: res.index, Term: res.term, Err: res.err}
	}
	rep.CommitInfos = n.commitInfos(ctx, own)
	return rep, err
}

// statusTimeout bounds how long a commit waits for the other peers'
// indexes for its reply; a peer that does not answer in time is left out
// rather than holding up the client.
const statusTimeout = 250 * time.Millisecond

// commitInfo is this peer's progress: raft's commit index and the last
// entry the FSM applied (raft's own applied index runs ahead of the FSM).
func (n *Node) commitInfo() *pb.CommitInfo {
	info := &pb.CommitInfo{ServerId: n.cfg.ID, AppliedIndex: n.fsm.stats().LastIndex}
	if r, err := n.started(); err == nil {
		info.CommitIndex = r.CommitIndex()
	}
	return info
}

// peerStatus is this peer's answer to a peer status request: Raft's
// state, and what Config.Status adds.
func (n *Node) peerStatus() *pb.PeerStatus {
	var st *pb.PeerStatus
	if n.cfg.Status != nil {
		st = n.cfg.Status()
	}
	if st == nil {
		st = &pb.PeerStatus{}
	}
	st.ServerId = n.cfg.ID
	st.FsmAppliedIndex = n.fsm.stats().LastIndex
	st.State = hraft.Shutdown.String() // the commit address is served from Start to Shutdown
	if r, err := n.started(); err == nil {
		_, leader := r.LeaderWithID()
		st.State, st.LeaderId, st.Term = r.State().String(), string(leader), r.CurrentTerm()
		st.CommitIndex, st.AppliedIndex = r.CommitIndex(), r.AppliedIndex()
	}
	return st
}

// commitInfos returns own and what every other peer answers to a status
// request within statusTimeout, ordered by peer id.
func (n *Node) commitInfos(ctx context.Context, own *pb.CommitInfo) []*pb.CommitInfo {
	n.pmu.Lock()
	addrs := make(map[string]string, len(n.peers))
	for id, p := range n.peers {
		if id != n.cfg.ID {
			addrs[id] = p.CommitAddr
		}
	}
	n.pmu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		infos = []*pb.CommitInfo{own}
	)
	for id, addr := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := n.call(ctx, addr, reqStatus, nil)
			if err != nil || len(rep.GetCommitInfos()) != 1 || rep.GetCommitInfos()[0].GetServerId() != id {
				n.log.Debug("raft: no status from peer", "peer", id, "err", err)
				return
			}
			mu.Lock()
			infos = append(infos, rep.GetCommitInfos()[0])
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.SortFunc(infos, func(a, b *pb.CommitInfo) int { return strings.Compare(a.GetServerId(), b.GetServerId()) })
	return infos
}

func (n *Node) failure(s statemachine.StreamInfo, code pb.ErrorCode, hint string, err error) (*pb.RaftClientReply, error) {
	rep := n.reply(s)
	rep.ErrorCode = code
	rep.ErrorMessage = err.Error()
	rep.LeaderHint = hint
	return rep, err
}

var _ statemachine.TermChecker = (*Node)(nil)
