package raft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	hraft "github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// changeTimeout bounds one membership change or leadership transfer that
// a peer leads for another or for a tool (a change the Node's own caller
// asks for is bounded by its context). Adding a voter waits for a quorum
// of the grown group, which may include the new peer.
const changeTimeout = 30 * time.Second

// AddMember adds p to the group: the leader records it in a membership
// entry, which every peer applies (so every peer learns its addresses),
// then makes it a voter of the Raft configuration. p must be running with
// empty stores and Config.Join (it answers at its CommitAddr as p.ID and
// has no Raft log of its own), and p.ID must never have been used in the
// group. A Node that is not the leader forwards the request to it. Adding
// a member that is already one with the same addresses completes a change
// that failed half way and is otherwise a no-op. It returns the group as
// the leader knows it afterwards.
func (n *Node) AddMember(ctx context.Context, p group.Member) (Membership, error) {
	return n.change(ctx, &pb.MembershipRequest{Op: pb.MembershipRequest_ADD, Member: memberPB(p)}, true)
}

// RemoveMember removes the member named id from the group: the leader
// records the group without it, so that no peer forwards to it any more,
// then removes it from the Raft configuration. The removed peer applies the
// first step too (Config.OnMembers no longer lists it); the id is never
// used again. A leader may remove itself: it steps down once the change is
// committed. The last voter cannot be removed.
func (n *Node) RemoveMember(ctx context.Context, id string) (Membership, error) {
	return n.change(ctx, &pb.MembershipRequest{Op: pb.MembershipRequest_REMOVE, Id: id}, true)
}

// TransferLeadership asks the leader to hand leadership to the voter to,
// or to the most up-to-date other voter if to is empty, and returns the id
// of the new leader once this Node knows it.
func (n *Node) TransferLeadership(ctx context.Context, to string) (string, error) {
	m, err := n.change(ctx, &pb.MembershipRequest{Op: pb.MembershipRequest_TRANSFER_LEADER, Id: to}, true)
	if err != nil {
		return "", err
	}
	ctx, stop := n.bind(ctx)
	defer stop()
	if err := n.awaitLeader(ctx, func(id string) bool { return id == m.Leader }); err != nil {
		return "", err
	}
	return m.Leader, nil
}

// awaitLeader waits until this Node knows a leader that ok accepts.
func (n *Node) awaitLeader(ctx context.Context, ok func(id string) bool) error {
	t := time.NewTicker(leaderPollInterval)
	defer t.Stop()
	for {
		if id, _ := n.Leader(); id != "" && ok(id) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: after a leadership transfer: %w", ErrNoLeader, ctx.Err())
		case <-t.C:
		}
	}
}

// change carries out req: here if this Node is the leader, otherwise on the
// leader, to which it is forwarded (if forward); while there is none it
// retries until ctx expires.
func (n *Node) change(ctx context.Context, req *pb.MembershipRequest, forward bool) (Membership, error) {
	r, err := n.started()
	if err != nil {
		return Membership{}, err
	}
	ctx, stop := n.bind(ctx)
	defer stop()
	body, err := proto.Marshal(req)
	if err != nil {
		return Membership{}, fmt.Errorf("raft: encode request: %w", err)
	}
	backoff := minRetryBackoff
	var last error
	for {
		leaderAddr, leaderID := r.LeaderWithID()
		switch {
		case leaderAddr == "":
			last = errors.New("no leader known")
		case leaderID == hraft.ServerID(n.cfg.ID):
			m, err := n.lead(ctx, r, req)
			if !errors.Is(err, ErrNotLeader) {
				return m, err
			}
			last = err
		case !forward:
			return Membership{}, fmt.Errorf("%w (the leader is %s)", ErrNotLeader, leaderID)
		default:
			rep, err := n.callTimeout(ctx, n.commitAddr(string(leaderID)), reqChangeLeader, body, changeTimeout)
			if err == nil {
				m, err := changeReply(rep)
				if !errors.Is(err, ErrNotLeader) {
					return m, err
				}
			}
			last = err
			n.log.Debug("raft: membership request to the leader failed", "leader", leaderID, "err", err)
		}
		select {
		case <-ctx.Done():
			if n.ctx.Err() != nil {
				return Membership{}, ErrClosed
			}
			return Membership{}, fmt.Errorf("%w: %v: %w", ErrNoLeader, last, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxRetryBackoff)
	}
}

// lead carries out req on this Node, the leader. Changes go one at a time.
func (n *Node) lead(ctx context.Context, r *hraft.Raft, req *pb.MembershipRequest) (Membership, error) {
	n.changeMu.Lock()
	defer n.changeMu.Unlock()
	// After the barrier this FSM has applied every entry committed before,
	// the last membership entry among them: the change starts from it.
	if err := n.await(ctx, r.Barrier(enqueueTimeout(ctx))); err != nil {
		return Membership{}, leaderErr(err)
	}
	cur, err := n.Membership()
	if err != nil {
		return Membership{}, err
	}
	if cur.Index == 0 {
		// The group never changed: its members are the configuration's,
		// with the addresses Start was given.
		if cur.Members, err = n.configMembers(r, cur); err != nil {
			return Membership{}, err
		}
	}
	switch req.GetOp() {
	case pb.MembershipRequest_ADD:
		err = n.leadAdd(ctx, r, cur, memberOf(req.GetMember()))
	case pb.MembershipRequest_REMOVE:
		err = n.leadRemove(ctx, r, cur, req.GetId())
	case pb.MembershipRequest_TRANSFER_LEADER:
		err = n.leadTransfer(ctx, r, cur, req.GetId())
	default:
		err = fmt.Errorf("%w: membership request with op %v", ErrBadEntry, req.GetOp())
	}
	if err != nil {
		return Membership{}, err
	}
	if req.GetOp() == pb.MembershipRequest_TRANSFER_LEADER && req.GetId() != n.cfg.ID {
		// Answer with the new leader.
		if err := n.awaitLeader(ctx, func(id string) bool { return id != n.cfg.ID }); err != nil {
			return Membership{}, err
		}
	}
	return n.Membership()
}

// configMembers returns the servers of r's configuration with the
// addresses of cur.Members (the Start list); a server the list lacks (its
// entry was dropped from the group file before it left) keeps the Raft
// address the configuration gives it and no other.
func (n *Node) configMembers(r *hraft.Raft, cur Membership) ([]group.Member, error) {
	conf := r.GetConfiguration()
	if err := conf.Error(); err != nil {
		return nil, fmt.Errorf("raft: configuration: %w", leaderErr(err))
	}
	var out []group.Member
	for _, s := range conf.Configuration().Servers {
		p, ok := cur.Member(string(s.ID))
		if !ok {
			n.log.Warn("raft: a server of the configuration is not in the member list this peer started with", "id", s.ID)
			p = group.Member{ID: string(s.ID), RaftAddr: string(s.Address)}
		}
		out = append(out, p)
	}
	return out, nil
}

func (n *Node) leadAdd(ctx context.Context, r *hraft.Raft, cur Membership, p group.Member) error {
	if p.ID == "" || p.StreamAddr == "" || p.RaftAddr == "" || p.CommitAddr == "" {
		return fmt.Errorf("%w: a new member needs an id and its stream, raft and commit addresses: %+v", ErrConfig, p)
	}
	if slices.Contains(cur.Removed, p.ID) {
		return fmt.Errorf("%w: %q; ids are never used again: give the new peer an id of its own", ErrIDRemoved, p.ID)
	}
	old, member := cur.Member(p.ID)
	if member && old != p {
		return fmt.Errorf("%w: %q is a member already, at stream %s, raft %s, commit %s", ErrMemberExists,
			p.ID, old.StreamAddr, old.RaftAddr, old.CommitAddr)
	}
	for _, o := range cur.Members {
		if o.ID == p.ID {
			continue
		}
		for _, a := range []string{p.StreamAddr, p.RaftAddr, p.CommitAddr} {
			if a == o.StreamAddr || a == o.RaftAddr || a == o.CommitAddr {
				return fmt.Errorf("%w: %s is an address of member %q", ErrMemberExists, a, o.ID)
			}
		}
	}
	voter := cur.IsVoter(p.ID) || slices.Contains(cur.Nonvoters, p.ID)
	if !voter {
		if err := n.probe(ctx, p, cur); err != nil {
			return err
		}
	}
	if !member {
		next := membership{members: append(slices.Clone(cur.Members), p), removed: cur.Removed}
		if err := n.applyMembers(ctx, r, next); err != nil {
			return err
		}
	}
	if !cur.IsVoter(p.ID) {
		f := r.AddVoter(hraft.ServerID(p.ID), hraft.ServerAddress(p.RaftAddr), 0, enqueueTimeout(ctx))
		if err := n.await(ctx, f); err != nil {
			return fmt.Errorf("raft: %q recorded as a member but not made a voter (add it again to finish): %w", p.ID, leaderErr(err))
		}
	}
	n.log.Info("raft: member added", "member", p.ID, "raft", p.RaftAddr, "stream", p.StreamAddr, "commit", p.CommitAddr)
	return nil
}

// probe checks that p answers at its commit address as itself and has no
// Raft log of its own: a peer started without Config.Join bootstraps a
// group of its own, whose first entry would clash with this group's.
func (n *Node) probe(ctx context.Context, p group.Member, cur Membership) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rep, err := n.call(pctx, p.CommitAddr, reqPeerStatus, nil)
	if err != nil {
		return fmt.Errorf("%w: %q does not answer at its commit address %s (start it first, to join): %v", ErrNotJoinable, p.ID, p.CommitAddr, err)
	}
	st := rep.GetPeerStatus()
	switch {
	case st.GetServerId() != p.ID:
		return fmt.Errorf("%w: %s answers as peer %q, not %q", ErrNotJoinable, p.CommitAddr, st.GetServerId(), p.ID)
	case st.GetTerm() > 0 && !cur.IsVoter(st.GetLeaderId()):
		return fmt.Errorf("%w: %q has a Raft log of its own (term %d, leader %q): it was started without joining and bootstrapped a group; stop it, empty its data directory and start it to join",
			ErrNotJoinable, p.ID, st.GetTerm(), st.GetLeaderId())
	}
	return nil
}

func (n *Node) leadRemove(ctx context.Context, r *hraft.Raft, cur Membership, id string) error {
	_, member := cur.Member(id)
	voter := cur.IsVoter(id)
	inConf := voter || slices.Contains(cur.Nonvoters, id)
	switch {
	case !member && !inConf:
		return fmt.Errorf("%w: %q (members: %s)", ErrUnknownMember, id, strings.Join(ids(cur.Members), ", "))
	case voter && len(cur.Voters) == 1:
		return fmt.Errorf("%w: %q is the only voter; a group cannot go on without one", ErrLastVoter, id)
	}
	if member {
		next := membership{members: slices.DeleteFunc(slices.Clone(cur.Members), func(p group.Member) bool { return p.ID == id }),
			removed: append(slices.Clone(cur.Removed), id)}
		if err := n.applyMembers(ctx, r, next); err != nil {
			return err
		}
	}
	if inConf {
		if err := n.await(ctx, r.RemoveServer(hraft.ServerID(id), 0, enqueueTimeout(ctx))); err != nil {
			return fmt.Errorf("raft: %q no longer recorded as a member but still in the Raft configuration (remove it again to finish): %w", id, leaderErr(err))
		}
	}
	n.log.Info("raft: member removed", "member", id)
	return nil
}

func (n *Node) leadTransfer(ctx context.Context, r *hraft.Raft, cur Membership, to string) error {
	var f hraft.Future
	switch {
	case to == n.cfg.ID:
		return nil // the leader already
	case to == "":
		if len(cur.Voters) < 2 {
			return fmt.Errorf("%w: no other voter to hand leadership to", ErrUnknownMember)
		}
		f = r.LeadershipTransfer()
	default:
		if !cur.IsVoter(to) {
			return fmt.Errorf("%w: %q is not a voter (voters: %s)", ErrUnknownMember, to, strings.Join(cur.Voters, ", "))
		}
		p, _ := cur.Member(to)
		addr := p.RaftAddr
		conf := r.GetConfiguration()
		if err := conf.Error(); err == nil {
			for _, s := range conf.Configuration().Servers {
				if string(s.ID) == to {
					addr = string(s.Address)
				}
			}
		}
		f = r.LeadershipTransferToServer(hraft.ServerID(to), hraft.ServerAddress(addr))
	}
	if err := n.await(ctx, f); err != nil {
		return fmt.Errorf("raft: leadership transfer: %w", err)
	}
	n.log.Info("raft: leadership transferred", "to", to)
	return nil
}

// applyMembers appends a membership entry and waits until this Node's FSM
// has applied it.
func (n *Node) applyMembers(ctx context.Context, r *hraft.Raft, m membership) error {
	f := r.ApplyLog(hraft.Log{Data: m.marshal(), Extensions: kindMembers}, enqueueTimeout(ctx))
	if err := n.await(ctx, f); err != nil {
		return leaderErr(err)
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return err
	}
	return nil
}

// leaderErr maps raft's errors of a leadership lost on the way to
// ErrNotLeader, so that change retries on the next leader.
func leaderErr(err error) error {
	if code, _ := classify(err); code == pb.ErrorCode_NOT_LEADER {
		return fmt.Errorf("%w: %w", ErrNotLeader, err)
	}
	return err
}

// serveChange answers a membership request of the commit RPC; with
// forward, from a tool, this Node takes it to the leader if it is not the
// leader itself.
func (n *Node) serveChange(body []byte, forward bool) *pb.RaftClientReply {
	rep := &pb.RaftClientReply{ServerId: n.cfg.ID}
	var req pb.MembershipRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		rep.ErrorCode, rep.ErrorMessage = pb.ErrorCode_BAD_HEADER, fmt.Sprintf("%v: %v", ErrBadEntry, err)
		return rep
	}
	ctx, cancel := context.WithTimeout(n.ctx, changeTimeout)
	defer cancel()
	m, err := n.change(ctx, &req, forward)
	if err != nil {
		rep.ErrorCode, rep.ErrorMessage = changeCode(err), err.Error()
		if rep.ErrorCode == pb.ErrorCode_NOT_LEADER {
			rep.LeaderHint = n.leaderHint()
		}
		return rep
	}
	rep.Success = true
	rep.Message, _ = proto.Marshal(m.proto(n.cfg.ID))
	return rep
}

// serveMembers answers a membership query with this Node's view.
func (n *Node) serveMembers() *pb.RaftClientReply {
	rep := &pb.RaftClientReply{ServerId: n.cfg.ID}
	m, err := n.Membership()
	if err != nil {
		rep.ErrorCode, rep.ErrorMessage = changeCode(err), err.Error()
		return rep
	}
	rep.Success = true
	rep.Message, _ = proto.Marshal(m.proto(n.cfg.ID))
	return rep
}

// changeErrors travel by their text: a reply's error message starts with
// the error's, and the receiving side wraps the same error again.
var changeErrors = []error{ErrUnknownMember, ErrMemberExists, ErrIDRemoved, ErrLastVoter, ErrNotJoinable,
	ErrNotLeader, ErrNoLeader, ErrConfig, ErrClosed}

func changeCode(err error) pb.ErrorCode {
	switch {
	case errors.Is(err, ErrNotLeader):
		return pb.ErrorCode_NOT_LEADER
	case errors.Is(err, ErrUnknownMember):
		return pb.ErrorCode_NOT_FOUND
	case errors.Is(err, ErrMemberExists), errors.Is(err, ErrIDRemoved), errors.Is(err, ErrLastVoter),
		errors.Is(err, ErrNotJoinable), errors.Is(err, ErrConfig):
		return pb.ErrorCode_FORBIDDEN
	}
	code, _ := classify(err)
	return code
}

// changeReply decodes the reply to a membership request or query.
func changeReply(rep *pb.RaftClientReply) (Membership, error) {
	if !rep.GetSuccess() {
		msg := rep.GetErrorMessage()
		for _, e := range changeErrors {
			if rest, ok := strings.CutPrefix(msg, e.Error()); ok {
				return Membership{}, fmt.Errorf("%w%s", e, rest)
			}
		}
		if rep.GetErrorCode() == pb.ErrorCode_NOT_LEADER {
			return Membership{}, fmt.Errorf("%w: %s: %s", ErrNotLeader, rep.GetServerId(), msg)
		}
		return Membership{}, fmt.Errorf("%w: %s: %v %s", ErrChangeFailed, rep.GetServerId(), rep.GetErrorCode(), msg)
	}
	var pm pb.Membership
	if err := proto.Unmarshal(rep.GetMessage(), &pm); err != nil {
		return Membership{}, fmt.Errorf("%w: membership reply: %v", ErrBadEntry, err)
	}
	return membershipOf(&pm), nil
}
