package peer_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/statemachine"
)

// A follower shut down cleanly while it holds a stream it acknowledged and
// has not applied yet (its log applier is held up by an earlier entry)
// keeps that copy: after the restart both entries are linked from the
// copies it kept, byte-equal.
func TestFollowerShutdownKeepsAcknowledgedCopies(t *testing.T) {
	buffertest.Check(t)
	stalls := make([]*stallingStore, 3)
	g := startGroup(t, groupOpts{onDisk: true, edit: func(i int, cfg *peer.Config) {
		fs, err := statemachine.NewFileStore(filepath.Join(cfg.DataDir, "files"), statemachine.WithLogger(quietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fs.Close() })
		stalls[i] = &stallingStore{FileStore: fs, name: "block", entered: make(chan struct{})}
		cfg.StateMachine = stalls[i]
	}})
	leader := g.leader()
	f := g.other(leader)
	stalls[f].armed.Store(true)
	c := g.client()
	primary := g.members[leader].ID

	block := randomBytes(1, 150<<10)
	r1, err := putFile(g, c, primary, "block", block)
	if err != nil {
		t.Fatal(err)
	}
	<-stalls[f].entered // the follower's FSM is stuck in this Link
	next := randomBytes(2, 150<<10)
	r2, err := putFile(g, c, primary, "next", next)
	if err != nil {
		t.Fatal(err)
	}
	if got := g.peers[f].Server().Streams().Pending(); got != 1 {
		t.Fatalf("follower holds %d closed streams waiting for their entry, want 1 (next)", got)
	}
	g.stop(f) // clean: SIGINT's path
	if err := stalls[f].Close(); err != nil {
		t.Fatal(err)
	}

	g.restart(f, func(cfg *peer.Config) { cfg.StateMachine = nil })
	g.waitReady()
	g.eventually("the restarted follower applies the log", func() bool {
		return g.peers[f].Node().Stats().LastIndex >= r2.GetLogIndex()
	})
	g.checkFile(f, "block", block, r1.GetLogIndex(), r1.GetTerm())
	g.checkFile(f, "next", next, r2.GetLogIndex(), r2.GetTerm())
	if fs := g.files(f); fs.Missing() != 0 || fs.Orphans() != 0 {
		t.Errorf("missing %d, orphans %d after the replay", fs.Missing(), fs.Orphans())
	}
}

// A peer whose data directory is wiped, and that restores the group's
// state from a snapshot (the log it missed is compacted), knows every
// committed name and reports each copy it lacks as missing, at the newest
// version's index: it never reports nothing, and never an older version.
func TestWipedPeerReportsMissingAfterSnapshot(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{onDisk: true, edit: func(_ int, cfg *peer.Config) {
		cfg.Raft.TrailingLogs = 1 // a snapshot compacts the log
	}})
	leader := g.leader()
	f := g.other(leader)
	c := g.client()
	primary := g.members[leader].ID
	if _, err := putFile(g, c, primary, "a", randomBytes(1, 10<<10)); err != nil {
		t.Fatal(err)
	}
	rb, err := putFile(g, c, primary, "b", randomBytes(2, 10<<10))
	if err != nil {
		t.Fatal(err)
	}
	a2 := randomBytes(3, 20<<10)
	ra2, err := putFile(g, c, primary, "a", a2) // a newer version of a
	if err != nil {
		t.Fatal(err)
	}
	g.eventually("the follower links every stream", func() bool {
		sf, ok := g.files(f).Lookup("a")
		return ok && sf.Index == ra2.GetLogIndex()
	})
	g.stop(f)
	if err := os.RemoveAll(g.cfgs[f].DataDir); err != nil {
		t.Fatal(err)
	}
	for i, p := range g.peers {
		if p != nil {
			if err := p.Node().Snapshot(); err != nil {
				t.Fatalf("snapshot on %s: %v", g.members[i].ID, err)
			}
		}
	}

	g.restart(f, nil)
	g.waitReady()
	fs := g.files(f)
	g.eventually("the wiped peer restores the snapshot", func() bool { return fs.Missing() == 2 })
	got := fs.List()
	if names := names(got); !slices.Equal(names, []string{"b", "a"}) {
		t.Fatalf("wiped peer lists %v, want [b a]", names)
	}
	for _, sf := range got {
		want := map[string]uint64{"a": ra2.GetLogIndex(), "b": rb.GetLogIndex()}[sf.Name]
		if !sf.Missing || sf.Index != want {
			t.Errorf("%+v, want missing at index %d", sf, want)
		}
	}
	if _, err := fs.Open("a"); err == nil {
		t.Error("a wiped peer serves a")
	}
	// The others still hold the newest version.
	g.checkFile(leader, "a", a2, ra2.GetLogIndex(), ra2.GetTerm())
}
