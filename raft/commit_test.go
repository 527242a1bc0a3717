package raft_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
	"github.com/pipestream/pipestream/statemachine"
)

func TestCommitFromLeaderAndFollower(t *testing.T) {
	c := newCluster(t, 3, false, nil)
	li := c.leader()
	fi := c.follower(li)

	streams := []statemachine.StreamInfo{streamInfo("client-a", 1), streamInfo("client-b", 1), streamInfo("client-a", 2)}
	var replies []*pb.RaftClientReply
	for i, s := range streams {
		from := li
		if i%2 == 1 {
			from = fi // forwarded to the leader
		}
		replies = append(replies, c.commit(from, s))
	}
	for i := 1; i < len(replies); i++ {
		if replies[i].GetLogIndex() <= replies[i-1].GetLogIndex() {
			t.Errorf("reply %d at index %d, after %d", i, replies[i].GetLogIndex(), replies[i-1].GetLogIndex())
		}
	}

	// A follower's Commit returned after its own FSM linked the entry.
	if got := c.linkers[fi].linked(); len(got) < 2 {
		t.Errorf("follower linked %d entries when its Commit returned, want at least 2", len(got))
	}
	c.checkLinked(t, streams, replies)
	if st := c.nodes[fi].Stats(); st.Streams != 3 || st.Keys != 3 || st.LastIndex != replies[2].GetLogIndex() {
		t.Errorf("follower stats %+v", st)
	}
}

func TestCommitDuplicateLinksOnce(t *testing.T) {
	c := newCluster(t, 3, false, nil)
	li := c.leader()
	fi := c.follower(li)
	s := streamInfo("client", 7)

	first := c.commit(li, s)
	for _, from := range []int{li, fi} {
		again := c.commit(from, s)
		if again.GetLogIndex() != first.GetLogIndex() || again.GetTerm() != first.GetTerm() {
			t.Errorf("duplicate from %s at %d/%d, want the original %d/%d", c.cfgs[from].ID,
				again.GetLogIndex(), again.GetTerm(), first.GetLogIndex(), first.GetTerm())
		}
	}
	// A later stream proves the duplicates were applied everywhere before it.
	next := c.commit(li, streamInfo("client", 8))
	c.waitFor("the later stream applied everywhere", func() bool {
		for _, n := range c.nodes {
			if n.Stats().LastIndex < next.GetLogIndex() {
				return false
			}
		}
		return true
	})
	entries := c.sameEntries()
	if len(entries) != 2 || entries[0].Key != s.Key || entries[1].Index != next.GetLogIndex() {
		t.Errorf("linked %v, want the stream once and then the next one", entries)
	}
	// Every peer remembers the entry, as a resume of the stream is told.
	for i, n := range c.nodes {
		index, term, ok := n.CommittedEntry(s.Key)
		if !ok || index != first.GetLogIndex() || term != first.GetTerm() || term == 0 {
			t.Errorf("%s remembers %d/%d (%v), want %d/%d", c.cfgs[i].ID, index, term, ok, first.GetLogIndex(), first.GetTerm())
		}
		if idx, ok := n.Committed(s.Key); !ok || idx != index {
			t.Errorf("%s: Committed %d (%v), CommittedEntry %d", c.cfgs[i].ID, idx, ok, index)
		}
	}
}

func TestCommitForgetsKeysBeyondMaxDedupKeys(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *raft.Config) { cfg.MaxDedupKeys = 2 })
	li := c.leader()
	first := c.commit(li, streamInfo("c", 1))
	c.commit(li, streamInfo("c", 2))
	c.commit(li, streamInfo("c", 3)) // forgets stream 1
	again := c.commit(li, streamInfo("c", 1))
	if again.GetLogIndex() <= first.GetLogIndex() {
		t.Errorf("forgotten stream recommitted at %d, want a new index after %d", again.GetLogIndex(), first.GetLogIndex())
	}
	c.waitLinked(4)
	c.sameEntries()
	if st := c.nodes[li].Stats(); st.Keys != 2 {
		t.Errorf("leader remembers %d keys, want 2", st.Keys)
	}
}

func TestCommitSurvivesLeaderLoss(t *testing.T) {
	c := newCluster(t, 3, false, nil)
	li := c.leader()
	before := c.commit(li, streamInfo("client", 1))
	oldID := c.cfgs[li].ID
	c.stop(li)

	// No sleep: the follower's Commit is issued while the election has not
	// even started, and retries until a new leader takes it.
	fi := c.follower(li)
	s := streamInfo("client", 2)
	rep := c.commit(fi, s)
	if rep.GetLogIndex() <= before.GetLogIndex() || rep.GetTerm() <= before.GetTerm() {
		t.Errorf("committed at %d/%d, want after %d/%d in a later term",
			rep.GetLogIndex(), rep.GetTerm(), before.GetLogIndex(), before.GetTerm())
	}
	if id, _ := c.nodes[fi].Leader(); id == oldID {
		t.Errorf("leader is still %s", id)
	}
	c.waitLinked(2)
	entries := c.sameEntries()
	if len(entries) != 2 {
		t.Fatalf("linked %v, want 2 entries", entries)
	}
	checkEntry(t, entries[1], s, rep)
}

func TestCommitWithoutQuorumReportsNotLeader(t *testing.T) {
	c := newCluster(t, 3, false, nil)
	li := c.leader()
	oldID := c.cfgs[li].ID
	fi := c.follower(li)
	for i := range c.nodes {
		if i != fi {
			c.stop(i)
		}
	}
	ctx, cancel := context.WithTimeout(c.ctx, 500*time.Millisecond)
	defer cancel()
	rep, err := c.nodes[fi].Commit(ctx, streamInfo("client", 1))
	if !errors.Is(err, raft.ErrNoLeader) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Commit without quorum: %v, want ErrNoLeader and the deadline", err)
	}
	if rep.GetSuccess() || rep.GetErrorCode() != pb.ErrorCode_NOT_LEADER || rep.GetLeaderHint() != oldID {
		t.Errorf("reply %v, want NOT_LEADER hinting at %s", rep, oldID)
	}
}

func TestCommitReportsLinkError(t *testing.T) {
	c := newCluster(t, 3, false, nil)
	li := c.leader()
	fi := c.follower(li)
	boom := errors.New("disk full")
	c.linkers[fi].failWith(boom)

	rep, err := c.nodes[fi].Commit(c.ctx, streamInfo("client", 1))
	var le *raft.LinkError
	if !errors.As(err, &le) || !errors.Is(err, boom) {
		t.Fatalf("Commit: %v, want a LinkError wrapping %v", err, boom)
	}
	// The entry is committed: the reply says so, and its commit info for
	// the follower names what became of its copy.
	if !rep.GetSuccess() || rep.GetErrorCode() != pb.ErrorCode_ERROR_NONE ||
		rep.GetLogIndex() != le.Index || le.Index == 0 {
		t.Errorf("reply %v with %+v, want success naming the committed entry", rep, le)
	}
	infos := rep.GetCommitInfos()
	if len(infos) != 3 {
		t.Fatalf("commit infos %v, want one per peer", infos)
	}
	for _, ci := range infos {
		own := ci.GetServerId() == c.cfgs[fi].ID
		if own != strings.Contains(ci.GetLinkError(), "disk full") {
			t.Errorf("commit info %v: link error on the wrong peer", ci)
		}
		if own && ci.GetAppliedIndex() < le.Index {
			t.Errorf("commit info %v: applied index before the entry %d", ci, le.Index)
		}
	}
	// The leader linked the entry fine.
	c.waitLinked(1)
}
