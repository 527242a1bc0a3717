package raft_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pipestream/pipestream/group"
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
	peers   []group.Member
	nodes   []*raft.Node
	linkers []*recorder
	sinks   []*sink
}

// testConfig is a peer config with timeouts for loopback tests.
func testConfig(id string) raft.Config {
	return raft.Config{
		ID:         id,
		RaftAddr:   "127.0.0.1:0",
		CommitAddr: "127.0.0.1:0",
		Tuning: raft.Tuning{
			HeartbeatTimeout:   200 * time.Millisecond,
			ElectionTimeout:    200 * time.Millisecond,
			LeaderLeaseTimeout: 100 * time.Millisecond,
			CommitTimeout:      5 * time.Millisecond,
		},
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

// checkLinked waits until every node linked as many entries as there
// are streams, the same ones, and checks each against its stream and the
// reply to its commit.
func (c *cluster) checkLinked(t *testing.T, streams []statemachine.StreamInfo, replies []*pb.RaftClientReply) {
	t.Helper()
	c.waitLinked(len(streams))
	entries := c.sameEntries()
	if len(entries) != len(streams) {
		t.Fatalf("linked %d entries, want %d", len(entries), len(streams))
	}
	for i, e := range entries {
		checkEntry(t, e, streams[i], replies[i])
	}
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
