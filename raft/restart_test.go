package raft_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/pipestream/pipestream/raft"
)

func TestRestartReplaysAfterSnapshot(t *testing.T) {
	c := newCluster(t, 3, true, nil)
	li := c.leader()
	fi := c.follower(li)
	a, b, late := streamInfo("c", 1), streamInfo("c", 2), streamInfo("c", 3)
	c.commit(li, a)
	repB := c.commit(fi, b)
	if err := c.nodes[fi].Snapshot(); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	repLate := c.commit(fi, late)
	before := c.linkers[fi].linked()

	c.stop(fi)
	c.restart(fi)
	// The snapshot is restored before Start returns...
	if st := c.nodes[fi].Stats(); st.LastIndex < repB.GetLogIndex() || st.Streams < 2 { // the late entry may be replayed already
		t.Errorf("after restart: %+v, want the snapshot's state (index >= %d, 2 streams)", st, repB.GetLogIndex())
	}
	// ...and the entry after it is replayed and linked again, unchanged.
	c.waitFor("the late entry replayed", func() bool {
		return c.nodes[fi].Stats().LastIndex >= repLate.GetLogIndex()
	})
	replayed := c.linkers[fi].linked()
	if len(replayed) != 1 || !sameEntry(replayed[0], before[2]) {
		t.Errorf("replayed %v, want only %v", replayed, before[2])
	}
	checkEntry(t, replayed[0], late, repLate)

	// The dedup keys survived in the snapshot.
	again := c.commit(fi, a)
	if again.GetLogIndex() != before[0].Index {
		t.Errorf("recommitted %v at %d, want the original %d", a.Key, again.GetLogIndex(), before[0].Index)
	}
	if st := c.nodes[fi].Stats(); st.Streams != 3 || st.Keys != 3 {
		t.Errorf("stats %+v, want 3 streams", st)
	}
}

func TestApplyData(t *testing.T) {
	c := newCluster(t, 3, false, nil)
	li := c.leader()
	fi := c.follower(li)
	payloads := [][]byte{[]byte("one"), make([]byte, 64<<10), []byte("three")}
	for _, p := range payloads {
		if err := c.nodes[li].ApplyData(c.ctx, p); err != nil {
			t.Fatalf("ApplyData: %v", err)
		}
	}
	if err := c.nodes[fi].ApplyData(c.ctx, []byte("x")); !errors.Is(err, raft.ErrNotLeader) {
		t.Errorf("ApplyData on a follower: %v, want ErrNotLeader", err)
	}
	c.waitFor("data on every node", func() bool {
		for _, s := range c.sinks {
			if len(s.got()) < len(payloads) {
				return false
			}
		}
		return true
	})
	for i, s := range c.sinks {
		if got := s.got(); !slices.EqualFunc(got, payloads, slices.Equal) {
			t.Errorf("%s got %d entries, want %d in order", c.cfgs[i].ID, len(got), len(payloads))
		}
	}
	if st := c.nodes[fi].Stats(); st.DataEntries != 3 || st.DataBytes != 3+64<<10+5 || st.Streams != 0 {
		t.Errorf("follower stats %+v", st)
	}
}
