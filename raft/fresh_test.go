package raft_test

import (
	"testing"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// TestFresh: a Node reports Fresh only once its FSM has applied what the
// group committed. A follower restarted after the group committed entries
// without it is fresh no sooner than it has applied them; a Node alone,
// out of touch with any leader, stops being fresh.
func TestFresh(t *testing.T) {
	c := newCluster(t, 3, true, nil)
	li := c.leader()
	for i, n := range c.nodes {
		if err := n.WaitFresh(c.ctx); err != nil {
			t.Fatalf("%s: %v", c.cfgs[i].ID, err)
		}
	}
	fi := c.follower(li)
	c.stop(fi)
	var last *pb.RaftClientReply
	for id := uint64(1); id <= 5; id++ {
		last = c.commit(li, streamInfo("fresh", id))
	}
	c.restart(fi)
	n := c.nodes[fi]
	c.waitFor("the restarted follower fresh", func() bool {
		if !n.Fresh() {
			return false
		}
		if st := n.Stats(); st.LastIndex < last.GetLogIndex() {
			t.Fatalf("fresh with its FSM at index %d, before the entry the group committed at %d", st.LastIndex, last.GetLogIndex())
		}
		return true
	})

	for i := range c.nodes {
		if i != fi {
			c.stop(i)
		}
	}
	c.waitFor("the node left alone no longer fresh", func() bool { return !n.Fresh() })
}
