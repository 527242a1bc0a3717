package raft_test

import (
	"context"
	"errors"
	"net"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
)

// A peer status request answers with Raft's view of the peer and what its
// Config.Status adds, without taking the cheap status request's place:
// that one still carries the CommitInfo alone.
func TestPeerStatus(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *raft.Config) {
		id := cfg.ID
		cfg.Status = func() *pb.PeerStatus {
			// Raft's fields set here must be overwritten with the Node's.
			return &pb.PeerStatus{ServerId: "impostor", Term: 999, OpenStreams: 7,
				MissingCopies: proto.Uint64(uint64(len(id)))}
		}
	})
	li := c.leader()
	fi := c.follower(li)
	rep := c.commit(fi, streamInfo("st", 1))
	c.waitLinked(1)
	// The cluster settles: each follower has applied what the leader
	// committed.
	c.waitFor("followers caught up", func() bool {
		st, err := raft.QueryStatus(c.ctx, c.peers[li].CommitAddr, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range c.nodes {
			f, err := raft.QueryStatus(c.ctx, c.peers[i].CommitAddr, nil)
			if err != nil {
				t.Fatal(err)
			}
			if f.GetAppliedIndex() < st.GetCommitIndex() {
				return false
			}
		}
		return true
	})

	for i := range c.nodes {
		st, err := raft.QueryStatus(c.ctx, c.peers[i].CommitAddr, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantState := "Follower"
		if i == li {
			wantState = "Leader"
		}
		if st.GetServerId() != c.cfgs[i].ID || st.GetState() != wantState || st.GetLeaderId() != c.cfgs[li].ID ||
			st.GetTerm() != rep.GetTerm() || st.GetFsmAppliedIndex() != rep.GetLogIndex() ||
			st.GetAppliedIndex() < rep.GetLogIndex() || st.GetCommitIndex() < rep.GetLogIndex() {
			t.Errorf("%s: status %v, want a %s of leader %s in term %d that applied entry %d",
				c.cfgs[i].ID, st, wantState, c.cfgs[li].ID, rep.GetTerm(), rep.GetLogIndex())
		}
		if st.GetOpenStreams() != 7 || st.MissingCopies == nil || st.GetMissingCopies() != 2 || st.DataDirBytes != nil {
			t.Errorf("%s: status %v lacks what Config.Status added, or has what it did not", c.cfgs[i].ID, st)
		}
	}

	// By hand, on one connection: the peer status reply carries the
	// CommitInfo too, and the cheap status request gets no PeerStatus.
	conn := dialCommit(t, c.peers[fi].CommitAddr)
	full := mustCall(t, conn, []byte{3})
	if !full.GetSuccess() || full.GetPeerStatus().GetServerId() != c.cfgs[fi].ID ||
		len(full.GetCommitInfos()) != 1 || full.GetCommitInfos()[0].GetAppliedIndex() != rep.GetLogIndex() {
		t.Errorf("peer status reply %v", full)
	}
	cheap := mustCall(t, conn, []byte{2})
	if !cheap.GetSuccess() || cheap.GetPeerStatus() != nil || len(cheap.GetCommitInfos()) != 1 {
		t.Errorf("status reply %v, want the CommitInfo alone", cheap)
	}
	if bad, err := rawCall(t, conn, []byte{3, 0}); err != nil || bad.GetErrorCode() != pb.ErrorCode_BAD_HEADER {
		t.Errorf("peer status request with a body: %v, %v; want BAD_HEADER", bad, err)
	}
}

// QueryStatus fails with a clear error when nobody listens, when ctx has
// expired, and when the address is not a peer's commit address.
func TestQueryStatusErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := ln.Addr().String()
	ln.Close()
	if _, err := raft.QueryStatus(t.Context(), closedAddr, nil); err == nil {
		t.Error("QueryStatus of a closed port succeeded")
	}
	if _, err := raft.QueryStatus(t.Context(), "", nil); !errors.Is(err, raft.ErrConfig) {
		t.Errorf("QueryStatus without an address: %v, want ErrConfig", err)
	}

	// A listener that accepts and never answers: ctx ends the wait.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := silent.Accept(); err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		if c := <-accepted; c != nil {
			cancel()
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	if _, err := raft.QueryStatus(ctx, silent.Addr().String(), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("QueryStatus canceled: %v, want context.Canceled", err)
	}
	cancel()
}
