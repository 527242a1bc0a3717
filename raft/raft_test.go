package raft_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
	"github.com/pipestream/pipestream/statemachine"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait of a test; a healthy run takes far less.
const testTimeout = 30 * time.Second

// recorder is a Linker that records what it is asked to link.
type recorder struct {
	mu      sync.Mutex
	entries []statemachine.Entry
	err     error // returned by Link when set
}

func (r *recorder) Link(_ context.Context, e statemachine.Entry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, e)
	return r.err
}

func (r *recorder) linked() []statemachine.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.entries)
}

func (r *recorder) failWith(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

// sink is a DataSink that keeps what it gets.
type sink struct {
	mu      sync.Mutex
	entries [][]byte
}

func (s *sink) WriteEntry(_ uint64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries = append(s.entries, slices.Clone(data))
	return nil
}

func (s *sink) got() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.entries)
}

// cluster is a group of Nodes on loopback.
type cluster struct {
	t       testing.TB
	ctx     context.Context
	cfgs    []raft.Config
	peers   []raft.Peer
	nodes   []*raft.Node
	linkers []*recorder
	sinks   []*sink
}

// testConfig is a peer config with timeouts for loopback tests.
func testConfig(id string) raft.Config {
	return raft.Config{
		ID:                 id,
		RaftAddr:           "127.0.0.1:0",
		CommitAddr:         "127.0.0.1:0",
		HeartbeatTimeout:   200 * time.Millisecond,
		ElectionTimeout:    200 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
	}
}

// newCluster starts size peers, on disk under t.TempDir() if onDisk, and
// waits for a leader. edit, if not nil, adjusts each config.
func newCluster(t testing.TB, size int, onDisk bool, edit func(*raft.Config)) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	c := &cluster{t: t, ctx: ctx}
	t.Cleanup(c.shutdown)
	for i := range size {
		cfg := testConfig(fmt.Sprintf("n%d", i))
		if onDisk {
			cfg.Dir = t.TempDir()
		}
		rec, snk := &recorder{}, &sink{}
		cfg.Linker, cfg.DataSink = rec, snk
		if edit != nil {
			edit(&cfg)
		}
		n, err := raft.New(cfg)
		if err != nil {
			t.Fatalf("New(%s): %v", cfg.ID, err)
		}
		// Pin the bound addresses, so a restart binds the same ones.
		cfg.RaftAddr, cfg.CommitAddr = n.Addr().RaftAddr, n.Addr().CommitAddr
		c.cfgs = append(c.cfgs, cfg)
		c.nodes = append(c.nodes, n)
		c.linkers = append(c.linkers, rec)
		c.sinks = append(c.sinks, snk)
		c.peers = append(c.peers, n.Addr())
	}
	// Every transport is bound, so every address is known: bootstrap.
	for _, n := range c.nodes {
		if err := n.Start(ctx, c.peers); err != nil {
			t.Fatalf("Start: %v", err)
		}
	}
	c.leader()
	return c
}

func (c *cluster) shutdown() {
	for _, n := range c.nodes {
		if n != nil {
			if err := n.Shutdown(); err != nil {
				c.t.Errorf("Shutdown: %v", err)
			}
		}
	}
}

// stop shuts node i down.
func (c *cluster) stop(i int) {
	c.t.Helper()
	if err := c.nodes[i].Shutdown(); err != nil {
		c.t.Fatalf("Shutdown(%d): %v", i, err)
	}
	c.nodes[i] = nil
}

// restart starts node i again on its addresses and directory, with a fresh
// Linker.
func (c *cluster) restart(i int) {
	c.t.Helper()
	c.linkers[i] = &recorder{}
	cfg := c.cfgs[i]
	cfg.Linker = c.linkers[i]
	n, err := raft.New(cfg)
	if err != nil {
		c.t.Fatalf("New(%s) again: %v", cfg.ID, err)
	}
	if err := n.Start(c.ctx, c.peers); err != nil {
		c.t.Fatalf("Start(%s) again: %v", cfg.ID, err)
	}
	c.nodes[i] = n
}

// leader waits until every running node agrees on a leader that is itself
// leader, and returns its index.
func (c *cluster) leader() int {
	c.t.Helper()
	var li int
	c.waitFor("a leader all running nodes agree on", func() bool {
		li = -1
		var id string
		for i, n := range c.nodes {
			if n == nil {
				continue
			}
			lid, _ := n.Leader()
			if lid == "" || (id != "" && lid != id) {
				return false
			}
			id = lid
			if n.IsLeader() {
				li = i
			}
		}
		return li >= 0 && c.cfgs[li].ID == id
	})
	return li
}

// follower returns the index of a running node other than the leader li.
func (c *cluster) follower(li int) int {
	for i, n := range c.nodes {
		if i != li && n != nil {
			return i
		}
	}
	c.t.Fatal("no follower")
	return -1
}

// waitFor polls cond until it holds or the test's deadline passes.
func (c *cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-c.ctx.Done():
			c.t.Fatalf("timed out waiting for %s", what)
		case <-t.C:
		}
	}
}

// waitLinked waits until every running node linked want entries.
func (c *cluster) waitLinked(want int) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%d linked entries on every node", want), func() bool {
		for i, n := range c.nodes {
			if n != nil && len(c.linkers[i].linked()) < want {
				return false
			}
		}
		return true
	})
}

func streamInfo(client string, id uint64) statemachine.StreamInfo {
	return statemachine.StreamInfo{
		Key: statemachine.StreamKey{ClientID: client, StreamID: id},
		Request: &pb.RaftClientRequest{
			ClientId: []byte(client),
			CallId:   id,
			Type:     pb.RaftClientRequest_STREAM,
			Message:  fmt.Appendf(nil, "object-%s-%d", client, id),
		},
		Length: 1000 + id,
	}
}

// commit commits s from node i and checks the reply.
func (c *cluster) commit(i int, s statemachine.StreamInfo) *pb.RaftClientReply {
	c.t.Helper()
	rep, err := c.nodes[i].Commit(c.ctx, s)
	if err != nil {
		c.t.Fatalf("Commit(%v) on %s: %v", s.Key, c.cfgs[i].ID, err)
	}
	if !rep.GetSuccess() || rep.GetLogIndex() == 0 || rep.GetTerm() == 0 ||
		rep.GetCallId() != s.Key.StreamID || string(rep.GetClientId()) != s.Key.ClientID {
		c.t.Fatalf("Commit(%v) on %s: reply %v", s.Key, c.cfgs[i].ID, rep)
	}
	return rep
}

// checkEntry checks that e is the committed entry for s named by rep.
func checkEntry(t *testing.T, e statemachine.Entry, s statemachine.StreamInfo, rep *pb.RaftClientReply) {
	t.Helper()
	if e.Key != s.Key || e.Length != s.Length || e.Index != rep.GetLogIndex() || e.Term != rep.GetTerm() ||
		string(e.Request.GetMessage()) != string(s.Request.GetMessage()) ||
		e.Request.GetCallId() != s.Key.StreamID || e.Request.GetType() != pb.RaftClientRequest_STREAM {
		t.Errorf("linked %+v, want stream %v at %d/%d", e, s.Key, rep.GetLogIndex(), rep.GetTerm())
	}
}

// sameEntries checks that every running node linked the same entries.
func (c *cluster) sameEntries() []statemachine.Entry {
	c.t.Helper()
	var want []statemachine.Entry
	for i, n := range c.nodes {
		if n == nil {
			continue
		}
		got := c.linkers[i].linked()
		if want == nil {
			want = got
			continue
		}
		if !slices.EqualFunc(got, want, sameEntry) {
			c.t.Errorf("%s linked %v, others %v", c.cfgs[i].ID, got, want)
		}
	}
	return want
}

func sameEntry(a, b statemachine.Entry) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Key == b.Key && a.Length == b.Length &&
		string(a.Request.GetMessage()) == string(b.Request.GetMessage())
}

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
	c.waitLinked(len(streams))
	entries := c.sameEntries()
	if len(entries) != len(streams) {
		t.Fatalf("linked %d entries, want %d", len(entries), len(streams))
	}
	for i, e := range entries {
		checkEntry(t, e, streams[i], replies[i])
	}
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

func TestConfigErrors(t *testing.T) {
	good := raft.Peer{ID: "a", RaftAddr: "127.0.0.1:1", CommitAddr: "127.0.0.1:2"}
	newErrs := []struct {
		name string
		cfg  raft.Config
	}{
		{"no id", raft.Config{RaftAddr: "127.0.0.1:0", CommitAddr: "127.0.0.1:0"}},
		{"no commit address", raft.Config{ID: "a", RaftAddr: "127.0.0.1:0"}},
		{"wildcard raft address", raft.Config{ID: "a", RaftAddr: "0.0.0.0:0", CommitAddr: "127.0.0.1:0"}},
		{"wildcard commit address", raft.Config{ID: "a", RaftAddr: "127.0.0.1:0", CommitAddr: ":0"}},
		{"lease longer than heartbeat", raft.Config{ID: "a", RaftAddr: "127.0.0.1:0", CommitAddr: "127.0.0.1:0",
			HeartbeatTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: time.Second}},
	}
	for _, tc := range newErrs {
		t.Run("New/"+tc.name, func(t *testing.T) {
			n, err := raft.New(tc.cfg)
			if !errors.Is(err, raft.ErrConfig) {
				t.Errorf("New: %v, want ErrConfig", err)
			}
			if n != nil {
				n.Shutdown()
			}
		})
	}

	startErrs := []struct {
		name  string
		peers func(self raft.Peer) []raft.Peer
	}{
		{"no peers", func(raft.Peer) []raft.Peer { return nil }},
		{"self missing", func(raft.Peer) []raft.Peer { return []raft.Peer{good} }},
		{"self with other addresses", func(self raft.Peer) []raft.Peer {
			self.RaftAddr = "127.0.0.1:1"
			return []raft.Peer{self}
		}},
		{"duplicate id", func(self raft.Peer) []raft.Peer {
			other := good
			other.ID = self.ID
			return []raft.Peer{self, other}
		}},
		{"incomplete peer", func(self raft.Peer) []raft.Peer { return []raft.Peer{self, {ID: "b"}} }},
	}
	for _, tc := range startErrs {
		t.Run("Start/"+tc.name, func(t *testing.T) {
			n, err := raft.New(testConfig("self"))
			if err != nil {
				t.Fatal(err)
			}
			defer n.Shutdown()
			if err := n.Start(t.Context(), tc.peers(n.Addr())); !errors.Is(err, raft.ErrConfig) {
				t.Errorf("Start: %v, want ErrConfig", err)
			}
		})
	}
}

func TestNodeLifecycle(t *testing.T) {
	var logs bytes.Buffer
	cfg := testConfig("solo")
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n, err := raft.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := streamInfo("c", 1)
	if _, err := n.Commit(t.Context(), s); !errors.Is(err, raft.ErrNotStarted) {
		t.Errorf("Commit before Start: %v, want ErrNotStarted", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	if err := n.Start(ctx, []raft.Peer{n.Addr()}); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctx, []raft.Peer{n.Addr()}); err == nil {
		t.Error("second Start succeeded")
	}
	if id, err := n.WaitLeader(ctx); err != nil || id != "solo" {
		t.Fatalf("WaitLeader: %q, %v", id, err)
	}
	if rep, err := n.Commit(ctx, s); err != nil || !rep.GetSuccess() {
		t.Fatalf("Commit on a group of one: %v, %v", rep, err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	rep, err := n.Commit(ctx, s)
	if !errors.Is(err, raft.ErrClosed) || rep.GetErrorCode() != pb.ErrorCode_CANCELLED {
		t.Errorf("Commit after Shutdown: %v, %v; want ErrClosed, CANCELLED", rep, err)
	}
	if _, err := n.WaitLeader(ctx); !errors.Is(err, raft.ErrClosed) {
		t.Errorf("WaitLeader after Shutdown: %v", err)
	}
	// hashicorp/raft's own log went to the slog.Logger.
	if out := logs.String(); !strings.Contains(out, `msg="entering leader state"`) || !strings.Contains(out, "logger=raft") {
		t.Errorf("raft's log did not reach slog:\n%s", out)
	}
}

func TestShutdownLeavesNoGoroutines(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	c := newCluster(t, 3, true, nil)
	li := c.leader()
	fi := c.follower(li)
	c.commit(fi, streamInfo("c", 1)) // forwarding connections in use and pooled
	c.stop(li)
	c.commit(fi, streamInfo("c", 2))
	c.shutdown()
	clear(c.nodes)
	// hashicorp/raft's transport and the commit listener leave no goroutine
	// behind once Shutdown has returned.
	goleak.VerifyNone(t, ignore)
}
