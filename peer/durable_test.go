package peer_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/peer"
)

// A follower shut down cleanly while it holds a stream it acknowledged and
// has not applied yet (its log applier is held up by an earlier entry)
// keeps that copy: after the restart both entries are linked from the
// copies it kept, byte-equal.
func TestFollowerShutdownKeepsAcknowledgedCopies(t *testing.T) {
	buffertest.Check(t)
	g, primary, f, stall := startStallingFollower(t, "block")
	c := g.client()

	block := randomBytes(1, 150<<10)
	r1 := storeFile(t, g, c, primary, "block", block)
	<-stall.entered // the follower's FSM is stuck in this Link
	next := randomBytes(2, 150<<10)
	r2 := storeFile(t, g, c, primary, "next", next)
	if got := g.peers[f].Server().Streams().Pending(); got != 1 {
		t.Fatalf("follower holds %d closed streams waiting for their entry, want 1 (next)", got)
	}
	g.stop(f) // clean: SIGINT's path
	if err := stall.Close(); err != nil {
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
// version's index (never an older version), and then repairs every one
// from the others, byte-equal.
func TestWipedPeerCatchesUpAfterSnapshot(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{onDisk: true, edit: func(_ int, cfg *peer.Config) {
		cfg.Raft.TrailingLogs = 1 // a snapshot compacts the log
	}})
	leader := g.leader()
	f := g.other(leader)
	c := g.client()
	primary := g.members[leader].ID
	storeFile(t, g, c, primary, "a", randomBytes(1, 10<<10))
	b := randomBytes(2, 10<<10)
	rb := storeFile(t, g, c, primary, "b", b)
	a2 := randomBytes(3, 20<<10)
	ra2 := storeFile(t, g, c, primary, "a", a2) // a newer version of a
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
	g.eventually("the wiped peer repairs every copy", func() bool {
		l := fs.List()
		return len(l) == 2 && fs.Missing() == 0
	})
	if names := names(fs.List()); !slices.Equal(names, []string{"b", "a"}) {
		t.Fatalf("wiped peer lists %v, want [b a]", names)
	}
	g.checkFile(f, "a", a2, ra2.GetLogIndex(), ra2.GetTerm())
	g.checkFile(f, "b", b, rb.GetLogIndex(), rb.GetTerm())
	// It reported each copy missing, at the newest index, before it had it.
	log, err := os.ReadFile(filepath.Join(g.cfgs[f].DataDir, "files", "committed.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf(`{"index":%d,`, ra2.GetLogIndex()), fmt.Sprintf(`{"index":%d,`, rb.GetLogIndex()),
	} {
		lines := 0
		for _, l := range strings.Split(string(log), "\n") {
			if strings.HasPrefix(l, want) {
				lines++
				if lines == 1 && !strings.Contains(l, `"missing":true`) {
					t.Errorf("first record %s is not a missing one", l)
				}
			}
		}
		if lines != 2 {
			t.Errorf("%d records start %s, want a missing one and its repair:\n%s", lines, want, log)
		}
	}
	// The repairer counts a repair once the store has linked it.
	g.eventually("the repairer counts 2 repairs", func() bool { return g.peers[f].Repairer().Stats().Repaired == 2 })
}

// A follower that acknowledged a stream, stopped before it applied the
// entry and lost its kept copy (a replaced disk, say) records the copy
// missing when it applies the entry after its restart, and repairs it from
// the others with no client action.
func TestLostCopyIsRepaired(t *testing.T) {
	buffertest.Check(t)
	g, primary, f, stall := startStallingFollower(t, "lost")
	c := g.client()
	lost := randomBytes(9, 3<<20+5)
	r := storeFile(t, g, c, primary, "lost", lost)
	<-stall.entered
	g.stop(f)
	if err := stall.Close(); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(g.cfgs[f].DataDir, "files", "tmp")
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}

	g.restart(f, func(cfg *peer.Config) { cfg.StateMachine = nil })
	g.waitReady()
	g.eventually("the follower repairs its lost copy", func() bool {
		sf, ok := g.files(f).Lookup("lost")
		return ok && !sf.Missing
	})
	g.checkFile(f, "lost", lost, r.GetLogIndex(), r.GetTerm())
	g.eventually("the repairer counts the repair", func() bool { return g.peers[f].Repairer().Stats().Repaired == 1 })
}

// One byte flipped in a stored file is found by the scrubber, on its
// schedule or when asked (ScrubNow, serve's SIGUSR1), and the copy is
// repaired from another peer.
func TestScrubRepairsFlippedByte(t *testing.T) {
	for _, now := range []bool{false, true} {
		t.Run(map[bool]string{false: "scheduled", true: "now"}[now], func(t *testing.T) {
			testScrubRepairsFlippedByte(t, now)
		})
	}
}

func testScrubRepairsFlippedByte(t *testing.T, now bool) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{onDisk: true, edit: func(_ int, cfg *peer.Config) {
		cfg.Scrub.Interval = 200 * time.Millisecond
		if now {
			cfg.Scrub.Interval = -1 // only when asked
		}
	}})
	leader := g.leader()
	f := g.other(leader)
	c := g.client()
	data := randomBytes(4, 1<<20+77)
	r := storeFile(t, g, c, g.members[leader].ID, "scrubbed", data)
	g.eventually("the follower links the stream", func() bool {
		_, ok := g.files(f).Lookup("scrubbed")
		return ok
	})
	p := filepath.Join(g.cfgs[f].DataDir, "files", "data", "scrubbed")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if now {
		g.peers[f].ScrubNow()
	}
	g.eventually("the scrubber finds the flipped byte and the copy is repaired", func() bool {
		return g.peers[f].Repairer().Stats().Repaired == 1 && g.files(f).Missing() == 0
	})
	g.checkFile(f, "scrubbed", data, r.GetLogIndex(), r.GetTerm())
}
