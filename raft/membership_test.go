package raft_test

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
)

// seen records what OnMembers was called with.
type seen struct {
	mu    sync.Mutex
	calls [][]group.Member
}

func (s *seen) record(ps []group.Member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, ps)
}

func (s *seen) last() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.calls) == 0 {
		return nil
	}
	var ids []string
	for _, p := range s.calls[len(s.calls)-1] {
		ids = append(ids, p.ID)
	}
	slices.Sort(ids)
	return ids
}

// A tool changes the group through any member's commit address, as
// pipestream join, leave and transfer-leader do: the request is forwarded
// to the leader, every node (the new one too) is told the new members, and
// the leader's errors come back as the same errors.
func TestMembershipOverRPC(t *testing.T) {
	var seens []*seen
	c := newCluster(t, 3, false, func(cfg *raft.Config) {
		s := &seen{}
		seens = append(seens, s)
		cfg.OnMembers = s.record
	})
	li := c.leader()
	via := c.peers[c.follower(li)].CommitAddr

	cfg := testConfig("n3")
	cfg.Join = true
	joined := &seen{}
	cfg.OnMembers = joined.record
	n3, err := raft.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n3.Shutdown()
	p3 := n3.Addr()
	p3.StreamAddr = "127.0.0.1:9" // carried, not used by raft
	if err := n3.Start(c.ctx, append(slices.Clone(c.peers), p3)); err != nil {
		t.Fatal(err)
	}

	m, err := raft.RequestChange(c.ctx, via, nil, &pb.MembershipRequest{Op: pb.MembershipRequest_ADD, Member: &pb.Member{
		Id: p3.ID, StreamAddr: p3.StreamAddr, RaftAddr: p3.RaftAddr, CommitAddr: p3.CommitAddr}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"n0", "n1", "n2", "n3"}
	if v := slices.Sorted(slices.Values(m.Voters)); !slices.Equal(v, want) || len(m.Members) != 4 || m.Index == 0 {
		t.Fatalf("after the add: %+v", m)
	}
	for _, s := range append(seens, joined) {
		c.waitFor("OnMembers with four members", func() bool { return slices.Equal(s.last(), want) })
	}
	got, err := raft.QueryMembership(c.ctx, p3.CommitAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if mp, ok := got.Member("n3"); !ok || mp != p3 {
		t.Errorf("n3 knows itself as %+v, want %+v", mp, p3)
	}

	for _, tc := range []struct {
		req  *pb.MembershipRequest
		want error
	}{
		{&pb.MembershipRequest{Op: pb.MembershipRequest_ADD, Member: &pb.Member{Id: "n3", StreamAddr: "127.0.0.1:8", RaftAddr: p3.RaftAddr, CommitAddr: p3.CommitAddr}}, raft.ErrMemberExists},
		{&pb.MembershipRequest{Op: pb.MembershipRequest_REMOVE, Id: "nope"}, raft.ErrUnknownMember},
		{&pb.MembershipRequest{Op: pb.MembershipRequest_TRANSFER_LEADER, Id: "nope"}, raft.ErrUnknownMember},
	} {
		if _, err := raft.RequestChange(c.ctx, via, nil, tc.req); !errors.Is(err, tc.want) {
			t.Errorf("%v: %v, want %v", tc.req, err, tc.want)
		}
	}

	m, err = raft.RequestChange(c.ctx, via, nil, &pb.MembershipRequest{Op: pb.MembershipRequest_TRANSFER_LEADER, Id: "n3"})
	if err != nil || m.Leader != "n3" {
		t.Fatalf("transfer to n3: leader %q, %v", m.Leader, err)
	}
	gone := c.peers[li]
	if _, err := n3.RemoveMember(c.ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	_, err = raft.RequestChange(c.ctx, p3.CommitAddr, nil, &pb.MembershipRequest{Op: pb.MembershipRequest_ADD, Member: &pb.Member{
		Id: gone.ID, StreamAddr: "127.0.0.1:7", RaftAddr: "127.0.0.1:5", CommitAddr: "127.0.0.1:6"}})
	if !errors.Is(err, raft.ErrIDRemoved) {
		t.Errorf("adding removed %s again: %v, want ErrIDRemoved", gone.ID, err)
	}
}
