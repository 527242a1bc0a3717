package peer_test

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/testkit"
	"github.com/pipestream/pipestream/peer"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
	"github.com/pipestream/pipestream/transport"
)

// launch starts a new peer with Config.Join and empty stores, on disk like
// the others, and appends it to the group. Its member list is the group's
// and its own entry; it is not a member until someone adds it.
func (g *group) launch(id string, edit func(*peer.Config)) int {
	g.t.Helper()
	var ids []string
	for _, m := range g.members {
		ids = append(ids, m.ID)
	}
	cfg := testConfig(id, append(ids, id))
	cfg.Transport = g.cfgs[0].Transport
	cfg.DataDir = g.t.TempDir()
	cfg.Join = true
	if edit != nil {
		edit(&cfg)
	}
	p, err := peer.New(g.ctx, cfg)
	if err != nil {
		g.t.Fatalf("New(%s): %v", id, err)
	}
	g.cfgs = append(g.cfgs, cfg)
	g.peers = append(g.peers, p)
	g.members = append(g.members, p.Addrs())
	if err := p.Start(g.ctx, g.members); err != nil {
		g.t.Fatalf("Start(%s): %v", id, err)
	}
	return len(g.peers) - 1
}

// clientOf returns a client of the running peers among is.
func (g *group) clientOf(is ...int) *datastream.Client {
	g.t.Helper()
	var peers []peer.Member
	for _, i := range is {
		peers = append(peers, g.members[i])
	}
	c, err := datastream.NewClient(peers, datastream.WithLogger(testkit.QuietLogger()))
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { _ = c.Close() })
	return c
}

// memberIDs returns the ids of peer i's members.
func (g *group) memberIDs(i int) []string {
	var out []string
	for _, m := range g.peers[i].Members() {
		out = append(out, m.ID)
	}
	slices.Sort(out)
	return out
}

// committedFile is a put the test checks on every peer.
type committedFile struct {
	name string
	data []byte
	rep  *pb.RaftClientReply
}

func (g *group) putAll(c *datastream.Client, primary string, files ...committedFile) []committedFile {
	g.t.Helper()
	for i := range files {
		rep, err := putFile(g, c, primary, files[i].name, files[i].data)
		if err != nil {
			g.t.Fatalf("put %s: %v", files[i].name, err)
		}
		files[i].rep = rep
	}
	return files
}

// holdsAll waits until peer i holds every file, none missing, then checks
// each byte for byte at its committed index.
func (g *group) holdsAll(i int, files []committedFile) {
	g.t.Helper()
	fs := g.files(i)
	g.eventually(fmt.Sprintf("%s holds all %d files", g.members[i].ID, len(files)), func() bool {
		for _, f := range files {
			if sf, ok := fs.Lookup(f.name); !ok || sf.Missing || sf.Index != f.rep.GetLogIndex() {
				return false
			}
		}
		return fs.Missing() == 0
	})
	for _, f := range files {
		g.checkFile(i, f.name, f.data, f.rep.GetLogIndex(), f.rep.GetTerm())
	}
}

// A fourth peer, started empty with Join, is added through a follower (the
// request is forwarded to the leader). Every peer learns its addresses; it
// catches up through the log, records each earlier stream missing and
// repairs it; a stream through it as primary reaches all four.
func TestAddMember(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{onDisk: true})
	leader := g.leader()
	c := g.client()
	files := g.putAll(c, g.members[leader].ID,
		committedFile{name: "a", data: randomBytes(1, 300<<10)},
		committedFile{name: "b", data: randomBytes(2, 1<<20+3)})

	n := g.launch("p3", nil)
	if err := g.peers[g.other(leader, n)].AddMember(g.ctx, g.members[n]); err != nil {
		t.Fatal(err)
	}
	g.waitReady()
	want := []string{"p0", "p1", "p2", "p3"}
	for i := range g.peers {
		g.eventually(g.members[i].ID+" knows four members", func() bool { return slices.Equal(g.memberIDs(i), want) })
		var m raft.Membership
		g.eventually(g.members[i].ID+" has four voters", func() bool {
			var err error
			if m, err = g.peers[i].Membership(); err != nil {
				t.Fatal(err)
			}
			return slices.Equal(slices.Sorted(slices.Values(m.Voters)), want)
		})
		if p3, _ := m.Member("p3"); p3.StreamAddr != g.members[n].StreamAddr {
			t.Errorf("%s: p3 at %+v, want %+v", g.members[i].ID, p3, g.members[n])
		}
	}
	g.holdsAll(n, files)

	// Adding it again is a no-op; its stream goes to all four.
	if err := g.peers[leader].AddMember(g.ctx, g.members[n]); err != nil {
		t.Errorf("adding p3 again: %v", err)
	}
	more := g.putAll(g.clientOf(0, 1, 2, 3), "p3", committedFile{name: "c", data: randomBytes(3, 200<<10)})
	for i := range g.peers {
		g.holdsAll(i, append(files, more...))
	}
	if got := g.peers[n].Repairer().Stats().Repaired; got != 2 {
		t.Errorf("p3 repaired %d copies, want 2 (a and b; c came by stream)", got)
	}
}

// A follower is lost with its disk. It is removed, and a new peer with an
// empty disk takes its place; the log is compacted, so the newcomer
// catches up from a snapshot (catalog, entries missing, repair) and ends
// up holding everything. The group's membership then survives a restart
// of a peer whose log was compacted too: the snapshot carries it.
func TestReplaceMember(t *testing.T) {
	buffertest.Check(t)
	// netconn: a restarted peer binds its old stream port again at once.
	g := startGroup(t, groupOpts{onDisk: true, kind: transport.NetConn, edit: func(_ int, cfg *peer.Config) {
		cfg.Raft.TrailingLogs = 1 // a snapshot compacts the log
	}})
	leader := g.leader()
	lost := g.other(leader)
	keep := g.other(leader, lost)
	files := g.putAll(g.client(), g.members[leader].ID,
		committedFile{name: "x", data: randomBytes(4, 500<<10)},
		committedFile{name: "y", data: randomBytes(5, 2<<20+1)})
	g.stop(lost)
	if err := os.RemoveAll(g.cfgs[lost].DataDir); err != nil {
		t.Fatal(err)
	}
	lostID := g.members[lost].ID

	if err := g.peers[keep].RemoveMember(g.ctx, lostID); err != nil {
		t.Fatal(err)
	}
	g.snapshot(leader, keep)
	n := g.launch("p3", func(cfg *peer.Config) { cfg.Raft.TrailingLogs = 1 })
	if err := g.peers[leader].AddMember(g.ctx, g.members[n]); err != nil {
		t.Fatal(err)
	}
	if err := g.peers[n].WaitReady(g.ctx); err != nil {
		t.Fatal(err)
	}
	g.holdsAll(n, files)
	want := []string{g.members[leader].ID, g.members[keep].ID, "p3"}
	slices.Sort(want)
	for _, i := range []int{leader, keep, n} {
		g.eventually(g.members[i].ID+" knows the new group", func() bool { return slices.Equal(g.memberIDs(i), want) })
	}

	// The old id is never used again.
	reuse := g.members[n]
	reuse.ID = lostID
	if err := g.peers[leader].AddMember(g.ctx, reuse); !errors.Is(err, raft.ErrIDRemoved) {
		t.Errorf("adding removed id %s again: %v, want ErrIDRemoved", lostID, err)
	}

	// Restarted on the member list it was first given (with lost, without
	// p3), keep knows the group at once from its snapshot.
	g.snapshot(leader, keep, n)
	g.stop(keep)
	g.restartOn(keep, slices.Clone(g.members[:3]))
	if got := g.memberIDs(keep); !slices.Equal(got, want) {
		t.Errorf("restarted %s knows %v, want %v", g.members[keep].ID, got, want)
	}
	if err := g.peers[keep].WaitReady(g.ctx); err != nil {
		t.Fatal(err)
	}
	more := g.putAll(g.clientOf(leader, keep, n), "p3", committedFile{name: "z", data: randomBytes(6, 100<<10)})
	for _, i := range []int{leader, keep, n} {
		g.holdsAll(i, append(files, more...))
	}
}

// snapshot takes a snapshot on each of the peers is, once raft allows it:
// not before it applied the latest configuration change.
func (g *group) snapshot(is ...int) {
	g.t.Helper()
	for _, i := range is {
		var err error
		g.eventually(g.members[i].ID+" takes a snapshot", func() bool {
			err = g.peers[i].Node().Snapshot()
			if err != nil && !strings.Contains(err.Error(), "configuration entry") {
				g.t.Fatalf("snapshot on %s: %v", g.members[i].ID, err)
			}
			return err == nil
		})
	}
}

// restartOn restarts peer i on its own addresses, stream address too (the
// netconn listener reuses it at once), with members as its Start list.
func (g *group) restartOn(i int, members []peer.Member) {
	g.t.Helper()
	cfg := g.cfgs[i]
	m := g.members[i]
	cfg.StreamAddr, cfg.RaftAddr, cfg.CommitAddr = m.StreamAddr, m.RaftAddr, m.CommitAddr
	p, err := peer.New(g.ctx, cfg)
	if err != nil {
		g.t.Fatalf("restart %s: %v", cfg.ID, err)
	}
	g.peers[i] = p
	if err := p.Start(g.ctx, members); err != nil {
		g.t.Fatalf("restart %s: %v", cfg.ID, err)
	}
}

// A live member leaves: it sees Removed, the others stop forwarding to it
// and refuse routing tables that name it, and streams go on among the
// rest. The errors of changes that cannot be made name their cause.
func TestRemoveMember(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{onDisk: true})
	leader := g.leader()
	gone := g.other(leader)
	keep := g.other(leader, gone)
	goneID := g.members[gone].ID

	if err := g.peers[keep].RemoveMember(g.ctx, goneID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.peers[gone].Removed():
	case <-g.ctx.Done():
		t.Fatalf("%s never saw itself removed", goneID)
	}
	for _, i := range []int{leader, keep} {
		g.eventually(g.members[i].ID+" stops connecting to "+goneID, func() bool {
			return !g.peers[i].Server().PeerConnected(goneID) && len(g.peers[i].Members()) == 2
		})
	}
	c := g.clientOf(leader, keep)
	files := g.putAll(c, g.members[keep].ID, committedFile{name: "after", data: randomBytes(7, 100<<10)})
	g.holdsAll(leader, files)
	g.holdsAll(keep, files)

	// A client that still lists the removed peer has its routing table
	// through it refused by the group.
	_, err := put(g.ctx, g.client(), g.members[leader].ID, "via-gone", []byte("x"),
		datastream.WithRoutingTable(pb.Chain(g.members[leader].ID, goneID)))
	if pe := (*pb.Error)(nil); !errors.As(err, &pe) || pe.Code != pb.ErrorCode_BAD_ROUTING {
		t.Errorf("stream routed through removed %s: %v, want BAD_ROUTING", goneID, err)
	}

	if err := g.peers[leader].RemoveMember(g.ctx, "nobody"); !errors.Is(err, raft.ErrUnknownMember) {
		t.Errorf("removing an unknown id: %v, want ErrUnknownMember", err)
	}
	if err := g.peers[keep].RemoveMember(g.ctx, goneID); !errors.Is(err, raft.ErrUnknownMember) {
		t.Errorf("removing %s twice: %v, want ErrUnknownMember", goneID, err)
	}
	other := g.members[keep]
	other.StreamAddr = "127.0.0.1:1"
	if err := g.peers[leader].AddMember(g.ctx, other); !errors.Is(err, raft.ErrMemberExists) {
		t.Errorf("adding member %s with another address: %v, want ErrMemberExists", other.ID, err)
	}
	if err := g.peers[leader].RemoveMember(g.ctx, g.members[keep].ID); err != nil {
		t.Fatal(err)
	}
	if err := g.peers[leader].RemoveMember(g.ctx, g.members[leader].ID); !errors.Is(err, raft.ErrLastVoter) {
		t.Errorf("removing the last voter: %v, want ErrLastVoter", err)
	}
}

// A peer that is not running, or that bootstrapped a group of its own
// (started without Join), is refused before anything changes.
func TestAddMemberRefused(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{})
	leader := g.leader()
	down := peer.Member{ID: "p9", StreamAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2", CommitAddr: "127.0.0.1:3"}
	if err := g.peers[leader].AddMember(g.ctx, down); !errors.Is(err, raft.ErrNotJoinable) {
		t.Errorf("adding a peer that does not run: %v, want ErrNotJoinable", err)
	}
	rogue, err := peer.New(g.ctx, testConfig("p8", []string{"p8"}))
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Shutdown(g.ctx)
	if err := rogue.Start(g.ctx, []peer.Member{rogue.Addrs()}); err != nil { // a group of its own
		t.Fatal(err)
	}
	if _, err := rogue.Node().WaitLeader(g.ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.peers[leader].AddMember(g.ctx, rogue.Addrs()); !errors.Is(err, raft.ErrNotJoinable) {
		t.Errorf("adding a peer with a log of its own: %v, want ErrNotJoinable", err)
	}
	for i := range g.peers {
		if got := len(g.peers[i].Members()); got != 3 {
			t.Errorf("%s has %d members after refused adds", g.members[i].ID, got)
		}
	}
}

// Leadership moves to a named voter, asked from a follower, and to any
// other voter; an unknown id is refused.
func TestTransferLeadership(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{})
	leader := g.leader()
	from := g.other(leader)
	to := g.other(leader, from)
	id, err := g.peers[from].TransferLeadership(g.ctx, g.members[to].ID)
	if err != nil {
		t.Fatal(err)
	}
	if id != g.members[to].ID {
		t.Errorf("transfer to %s: new leader %s", g.members[to].ID, id)
	}
	if got := g.leader(); got != to {
		t.Errorf("the peers agree on %s, want %s", g.members[got].ID, g.members[to].ID)
	}
	id, err = g.peers[to].TransferLeadership(g.ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if id == g.members[to].ID {
		t.Errorf("transfer to any other voter kept %s", id)
	}
	if _, err := g.peers[to].TransferLeadership(g.ctx, "nobody"); !errors.Is(err, raft.ErrUnknownMember) {
		t.Errorf("transfer to an unknown id: %v, want ErrUnknownMember", err)
	}
	// The group still commits.
	storeFile(t, g, g.client(), g.members[from].ID, "after-transfer", randomBytes(8, 1000))
}
