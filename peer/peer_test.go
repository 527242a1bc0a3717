package peer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/internal/testkit"
	"github.com/pipestream/pipestream/peer"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// TestCommitOnEveryPeer streams a file through each peer in turn as the
// primary, the leader and both followers, and checks that every peer
// linked every file with the same bytes at the index the client was told.
func TestCommitOnEveryPeer(t *testing.T) {
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		t.Run(kind.String(), func(t *testing.T) {
			buffertest.Check(t)
			g := startGroup(t, groupOpts{onDisk: true, kind: kind})
			c := g.client()
			type put struct {
				name        string
				data        []byte
				index, term uint64
			}
			var puts []put
			for i, m := range g.members {
				name := fmt.Sprintf("dir/file-%d", i)
				data := randomBytes(uint64(i), 300<<10+i)
				rep, err := putFile(g, c, m.ID, name, data)
				if err != nil {
					t.Fatalf("primary %s: %v", m.ID, err)
				}
				if !rep.GetSuccess() || rep.GetLogIndex() == 0 || rep.GetTerm() == 0 {
					t.Fatalf("primary %s: reply %v", m.ID, rep)
				}
				if rep.GetServerId() != m.ID {
					t.Errorf("reply from %s, the primary was %s", rep.GetServerId(), m.ID)
				}
				puts = append(puts, put{name, data, rep.GetLogIndex(), rep.GetTerm()})
			}
			for i := range g.peers {
				// A peer that was not the primary links a stream when
				// it applies the entry, which may be after the reply.
				g.eventually(g.members[i].ID+" links every stream", func() bool {
					return len(g.files(i).List()) == len(puts)
				})
				if got := names(g.files(i).List()); !slices.Equal(got, []string{"dir/file-0", "dir/file-1", "dir/file-2"}) {
					t.Errorf("%s lists %v", g.members[i].ID, got)
				}
				for _, p := range puts {
					g.checkFile(i, p.name, p.data, p.index, p.term)
				}
				if tmp := g.tmpFiles(i); len(tmp) != 0 {
					t.Errorf("%s keeps temporary files %v", g.members[i].ID, tmp)
				}
			}
		})
	}
}

func putFile(g *group, c *datastream.Client, primary, name string, data []byte, opts ...datastream.StreamOption) (*pb.RaftClientReply, error) {
	return put(g.ctx, c, primary, name, data, opts...)
}

// storeFile is putFile for a file that must be stored: it fails the test
// on an error.
func storeFile(t testing.TB, g *group, c *datastream.Client, primary, name string, data []byte, opts ...datastream.StreamOption) *pb.RaftClientReply {
	t.Helper()
	rep, err := putFile(g, c, primary, name, data, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestFollowerPrimary streams through a follower: its commit is forwarded
// to the leader, and the follower answers only once it linked the stream
// itself.
func TestFollowerPrimary(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{onDisk: true})
	leader := g.leader()
	f := g.other(leader)
	c := g.client()
	data := randomBytes(7, 1<<20)
	rep := storeFile(t, g, c, g.members[f].ID, "via-follower", data)
	// The follower's own copy is linked when the reply arrives; no wait.
	g.checkFile(f, "via-follower", data, rep.GetLogIndex(), rep.GetTerm())
	if got := g.peers[leader].Node().Stats().Streams; got != 1 {
		t.Errorf("leader applied %d streams, want 1", got)
	}
	// The others link it when they apply the entry.
	for i := range g.peers {
		g.eventually(fmt.Sprintf("%s links the stream", g.members[i].ID), func() bool {
			_, ok := g.files(i).Lookup("via-follower")
			return ok
		})
		g.checkFile(i, "via-follower", data, rep.GetLogIndex(), rep.GetTerm())
	}
}

// TestMemoryPeer runs a group without a DataDir: Raft in memory and a
// statemachine.Memory per peer.
func TestMemoryPeer(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{})
	c := g.client()
	data := randomBytes(3, 200<<10)
	out, err := c.Stream(g.ctx, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	out.WriteAsync(g.ctx, data)
	r, err := out.Close(g.ctx).Wait(g.ctx)
	if err != nil {
		t.Fatal(err)
	}
	key := statemachine.StreamKey{ClientID: string(c.ID()), StreamID: out.ID()}
	for i, p := range g.peers {
		mem, ok := p.StateMachine().(*statemachine.Memory)
		if !ok {
			t.Fatalf("%s stores in a %T", p.ID(), p.StateMachine())
		}
		g.eventually(p.ID()+" links the stream", func() bool {
			_, ok := mem.Data(key)
			return ok
		})
		got, _ := mem.Data(key)
		if !bytes.Equal(got, data) {
			t.Errorf("%s holds different bytes", g.members[i].ID)
		}
		if e := mem.Committed(); len(e) != 1 || e[0].Index != r.RaftClientReply.GetLogIndex() {
			t.Errorf("%s committed %+v, the reply says index %d", p.ID(), e, r.RaftClientReply.GetLogIndex())
		}
	}
}

// TestLeaderLostBeforeClose loses the Raft leader while a stream is open,
// with its data on every peer, and closes the stream afterwards. The
// stream's primary is a follower and the chain runs through the leader.
//
//   - The whole leader peer stops: it is on the stream's route, so the
//     stream fails, and no peer keeps any of it. A stream cannot outlive a
//     peer it is routed through.
//   - Only its Raft node stops, the stream server stays: the stream closes
//     everywhere, and the primary's commit waits for the election and
//     commits on the two peers left in the Raft group.
func TestLeaderLostBeforeClose(t *testing.T) {
	for _, tc := range []struct {
		name      string
		stop      func(g *group, leader int)
		committed bool
	}{
		// With every peer required (WriteQuorum all): the stream cannot
		// go on without the leader's copy. With the default majority it
		// is recovered around the lost peer: see TestFollowerDown.
		{"peer", func(g *group, l int) { g.stop(l) }, false},
		{"raft", func(g *group, l int) {
			if err := g.peers[l].Node().Shutdown(); err != nil {
				g.t.Fatal(err)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			g := startGroup(t, groupOpts{onDisk: true, edit: func(_ int, c *peer.Config) { c.WriteQuorum = handler.QuorumAll }})
			leader := g.leader()
			primary := g.other(leader)
			last := g.other(leader, primary)
			c := g.client()
			before := storeFile(t, g, c, g.members[leader].ID, "before", []byte("in the first leader's term"))
			term := before.GetTerm()
			for i := range g.peers {
				g.eventually(g.members[i].ID+" links the first stream", func() bool {
					_, ok := g.files(i).Lookup("before")
					return ok
				})
			}
			ids := []string{g.members[primary].ID, g.members[leader].ID, g.members[last].ID}
			out, err := c.Stream(g.ctx, []byte("doomed"), datastream.WithPrimary(ids[0]), datastream.WithRoutingTable(pb.Chain(ids...)))
			if err != nil {
				t.Fatal(err)
			}
			data := randomBytes(11, 256<<10)
			if _, err := out.WriteAsync(g.ctx, data).Wait(g.ctx); err != nil {
				t.Fatal(err)
			}

			tc.stop(g, leader)
			r, err := out.Close(g.ctx).Wait(g.ctx)

			if !tc.committed {
				if err == nil {
					t.Fatalf("stream committed at %v without its leader peer", r.RaftClientReply)
				}
				for _, i := range []int{primary, last} {
					g.eventually(g.members[i].ID+" drops the stream", func() bool {
						s := g.peers[i].Server().Streams()
						return s.Active() == 0 && s.Pending() == 0 && len(g.tmpFiles(i)) == 0
					})
					if l := names(g.files(i).List()); !slices.Equal(l, []string{"before"}) {
						t.Errorf("%s lists %v, want [before]", g.members[i].ID, l)
					}
				}
				g.eventually("the others elect a new leader", func() bool {
					m, ok := g.peers[primary].Leader()
					return ok && m.ID != ids[1]
				})
				return
			}

			if err != nil {
				t.Fatalf("commit after the election: %v", err)
			}
			rep := r.RaftClientReply
			if rep.GetTerm() <= term {
				t.Errorf("committed in term %d, the lost leader's term was %d", rep.GetTerm(), term)
			}
			g.checkFile(primary, "doomed", data, rep.GetLogIndex(), rep.GetTerm())
			g.eventually(ids[2]+" links the stream", func() bool {
				_, ok := g.files(last).Lookup("doomed")
				return ok
			})
			g.checkFile(last, "doomed", data, rep.GetLogIndex(), rep.GetTerm())
			// The old leader has the data but no Raft node to link it.
			if l := names(g.files(leader).List()); !slices.Equal(l, []string{"before"}) {
				t.Errorf("%s without Raft lists %v, want [before]", ids[1], l)
			}
			// It acknowledged the stream, so it keeps its copy across the
			// shutdown, and links it once it applies the entry again.
			g.stop(leader)
			if tmp := g.tmpFiles(leader); len(tmp) != 1 || !strings.HasSuffix(tmp[0], ".closed") {
				t.Errorf("%s left %v after shutdown, want its closed copy", ids[1], tmp)
			}
			g.restart(leader, nil)
			g.eventually(ids[1]+" links the stream after its restart", func() bool {
				_, ok := g.files(leader).Lookup("doomed")
				return ok
			})
			g.checkFile(leader, "doomed", data, rep.GetLogIndex(), rep.GetTerm())
			if tmp := g.tmpFiles(leader); len(tmp) != 0 {
				t.Errorf("%s keeps %v after linking", ids[1], tmp)
			}
		})
	}
}

// stallingStore is a FileStore whose Link of one named stream, once
// armed, blocks until the Raft node shuts down, as if the peer died after
// closing its copy of the stream and before linking it.
type stallingStore struct {
	*statemachine.FileStore
	name    string
	armed   atomic.Bool
	entered chan struct{}
	once    sync.Once
}

func (s *stallingStore) Link(ctx context.Context, e statemachine.Entry, ch statemachine.DataChannel) error {
	if s.armed.Load() && string(e.Request.GetMessage()) == s.name {
		s.once.Do(func() { close(s.entered) })
		<-ctx.Done()
		return ctx.Err()
	}
	return s.FileStore.Link(ctx, e, ch)
}

// startStallingFollower starts three peers on disk, each storing in a
// stallingStore, and arms the store of a follower, f, so that its Link of
// the stream named name stalls. It returns the group, the leader's ID (the
// primary to stream through), f and f's store.
func startStallingFollower(t *testing.T, name string) (g *group, primary string, f int, stall *stallingStore) {
	t.Helper()
	stalls := make([]*stallingStore, 3)
	g = startGroup(t, groupOpts{onDisk: true, edit: func(i int, cfg *peer.Config) {
		fs, err := statemachine.NewFileStore(filepath.Join(cfg.DataDir, "files"), statemachine.WithLogger(testkit.QuietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fs.Close() })
		stalls[i] = &stallingStore{FileStore: fs, name: name, entered: make(chan struct{})}
		cfg.StateMachine = stalls[i]
	}})
	leader := g.leader()
	f = g.other(leader)
	stall = stalls[f]
	stall.armed.Store(true)
	return g, g.members[leader].ID, f, stall
}

// TestFollowerRestart stops a follower and starts it again on the same
// DataDir. It keeps the stream it had linked, links the stream it had
// acknowledged and stopped before linking from the copy it kept, and takes
// part in the streams that follow.
func TestFollowerRestart(t *testing.T) {
	buffertest.Check(t)
	g, primary, f, stall := startStallingFollower(t, "lost")
	c := g.client()

	kept := randomBytes(1, 200<<10)
	r1 := storeFile(t, g, c, primary, "kept", kept)
	g.eventually("the follower links the first stream", func() bool {
		_, ok := stall.Lookup("kept")
		return ok
	})

	// The follower closes its copy of "lost", the entry commits on the
	// others, and the follower stops before linking it.
	lost := randomBytes(2, 200<<10)
	r2 := storeFile(t, g, c, primary, "lost", lost)
	select {
	case <-stall.entered:
	case <-g.ctx.Done():
		t.Fatal("the follower never applied the entry")
	}
	g.stop(f)
	if err := stall.Close(); err != nil {
		t.Fatal(err)
	}

	g.restart(f, func(cfg *peer.Config) { cfg.StateMachine = nil }) // its own FileStore on DataDir/files
	g.waitReady()
	fs := g.files(f)
	// Raft replays both entries: "kept" is known, and "lost", which this
	// peer acknowledged, is linked from the copy it kept.
	g.eventually("the restarted follower applies the log", func() bool {
		return g.peers[f].Node().Stats().LastIndex >= r2.GetLogIndex()
	})
	if got := fs.Missing(); got != 0 {
		t.Errorf("Missing() = %d after the replay, want 0", got)
	}
	if got := names(fs.List()); !slices.Equal(got, []string{"kept", "lost"}) {
		t.Errorf("restarted follower lists %v, want [kept lost]", got)
	}
	g.checkFile(f, "kept", kept, r1.GetLogIndex(), r1.GetTerm())
	g.checkFile(f, "lost", lost, r2.GetLogIndex(), r2.GetTerm())
	if tmp := g.tmpFiles(f); len(tmp) != 0 {
		t.Errorf("restarted follower keeps temporary files %v", tmp)
	}

	after := randomBytes(3, 200<<10)
	r3 := storeFile(t, g, c, primary, "after", after)
	for i := range g.peers {
		g.eventually(g.members[i].ID+" links the last stream", func() bool {
			_, ok := g.files(i).Lookup("after")
			return ok
		})
		g.checkFile(i, "after", after, r3.GetLogIndex(), r3.GetTerm())
		g.checkFile(i, "kept", kept, r1.GetLogIndex(), r1.GetTerm())
		g.checkFile(i, "lost", lost, r2.GetLogIndex(), r2.GetTerm())
	}
}

// TestUncommittedStreamIsSwept closes a stream on every peer while the
// Raft group has no quorum, so its commit fails, and checks that every
// peer discards its copy once the link timeout has passed.
func TestUncommittedStreamIsSwept(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{onDisk: true, edit: func(_ int, cfg *peer.Config) {
		cfg.CommitTimeout = 200 * time.Millisecond
		cfg.LinkTimeout = 300 * time.Millisecond
	}})
	primary := 0
	for _, i := range []int{1, 2} {
		if err := g.peers[i].Node().Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	c := g.client()
	_, err := putFile(g, c, g.members[primary].ID, "orphan", randomBytes(5, 100<<10))
	var pe *pb.Error
	if !errors.As(err, &pe) {
		t.Fatalf("put without quorum: %v, want a *pb.Error", err)
	}
	// NOT_LEADER once no leader is left; TIMEOUT if the primary was the
	// leader and its entry was still waiting for a quorum.
	switch pe.Code {
	case pb.ErrorCode_NOT_LEADER, pb.ErrorCode_TIMEOUT:
	default:
		t.Errorf("put without quorum failed with %v, want NOT_LEADER or TIMEOUT", pe)
	}
	g.keepsNothing("sweeps the stream")
}

// keepsNothing waits until every peer has let go of its streams and their
// temporary files (doing says how, for a timeout's message), and checks
// that none lists a file.
func (g *group) keepsNothing(doing string) {
	g.t.Helper()
	for i := range g.peers {
		g.eventually(g.members[i].ID+" "+doing, func() bool {
			s := g.peers[i].Server().Streams()
			return s.Active() == 0 && s.Pending() == 0 && len(g.tmpFiles(i)) == 0
		})
		if l := g.files(i).List(); len(l) != 0 {
			g.t.Errorf("%s lists %v", g.members[i].ID, names(l))
		}
	}
}

// TestAbortedStreamLeavesNothing cancels a stream mid-way: every peer
// drops its data at once.
func TestAbortedStreamLeavesNothing(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{onDisk: true})
	c := g.client()
	ctx, cancel := context.WithCancel(g.ctx)
	out, err := c.Stream(ctx, []byte("aborted"), datastream.WithPrimary(g.members[1].ID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, randomBytes(9, 100<<10)).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	g.keepsNothing("drops the stream")
}
