package peer_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/grouptest"
	"github.com/pipestream/pipestream/internal/leaktest"
	"github.com/pipestream/pipestream/internal/testkit"
	"github.com/pipestream/pipestream/peer"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

// testTimeout bounds every wait of a test; a healthy run takes far less.
const testTimeout = 30 * time.Second

// group is peers started on loopback, each on port 0.
type group struct {
	t       testing.TB
	ctx     context.Context
	cfgs    []peer.Config
	peers   []*peer.Peer // nil while a peer is down
	members []peer.Member
}

type groupOpts struct {
	size   int  // default 3
	onDisk bool // a DataDir under t.TempDir() for each peer
	kind   transport.Kind
	edit   func(i int, cfg *peer.Config)
}

// testConfig is a peer config with timeouts for loopback tests.
func testConfig(id string, ids []string) peer.Config {
	cfg := grouptest.Config(id, ids)
	cfg.Logger = testkit.QuietLogger()
	return cfg
}

// startGroup starts the peers, hands each the bound addresses of all, and
// waits until every one is ready. Its cleanup shuts them down; call
// buffertest.Check before it.
func startGroup(t testing.TB, o groupOpts) *group {
	t.Helper()
	if o.size == 0 {
		o.size = 3
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	g := &group{t: t, ctx: ctx}
	t.Cleanup(g.shutdown)
	ids := make([]string, o.size)
	for i := range ids {
		ids[i] = fmt.Sprintf("p%d", i)
	}
	for i, id := range ids {
		cfg := testConfig(id, ids)
		cfg.Transport = o.kind
		if o.onDisk {
			cfg.DataDir = t.TempDir()
		}
		if o.edit != nil {
			o.edit(i, &cfg)
		}
		g.cfgs = append(g.cfgs, cfg)
	}
	g.peers, g.members = grouptest.Start(t, ctx, g.cfgs)
	return g
}

// waitReady waits until every running peer is ready.
func (g *group) waitReady() {
	g.t.Helper()
	grouptest.WaitReady(g.t, g.ctx, g.peers)
}

// stop shuts peer i down.
func (g *group) stop(i int) {
	g.t.Helper()
	grouptest.Stop(g.t, g.ctx, g.peers[i])
	g.peers[i] = nil
}

// restart starts peer i again on the Raft and commit addresses and the
// DataDir it had, with its config edited by edit if not nil, and a new
// stream port (see grouptest.Restart).
func (g *group) restart(i int, edit func(*peer.Config)) {
	g.t.Helper()
	cfg := g.cfgs[i]
	if edit != nil {
		edit(&cfg)
	}
	grouptest.Restart(g.t, g.ctx, cfg, i, g.peers, g.members)
}

func (g *group) shutdown() {
	for i, p := range g.peers {
		if p != nil {
			g.stop(i)
		}
	}
}

// leader returns the index of the peer every running peer agrees leads.
func (g *group) leader() int {
	g.t.Helper()
	return grouptest.Leader(g.t, g.ctx, g.peers, g.members)
}

// follower returns the index of a running peer other than those given.
func (g *group) other(not ...int) int {
	g.t.Helper()
	for i, p := range g.peers {
		if p != nil && !contains(not, i) {
			return i
		}
	}
	g.t.Fatal("no other peer")
	return -1
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func (g *group) client(opts ...datastream.Option) *datastream.Client {
	g.t.Helper()
	c, err := datastream.NewClient(g.members, append([]datastream.Option{datastream.WithLogger(testkit.QuietLogger())}, opts...)...)
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (g *group) files(i int) *statemachine.FileStore {
	g.t.Helper()
	switch sm := g.peers[i].StateMachine().(type) {
	case *statemachine.FileStore:
		return sm
	case *stallingStore:
		return sm.FileStore
	default:
		g.t.Fatalf("%s stores in a %T", g.peers[i].ID(), sm)
		return nil
	}
}

// tmpFiles lists the temporary stream files in peer i's FileStore.
func (g *group) tmpFiles(i int) []string {
	g.t.Helper()
	ents, err := os.ReadDir(filepath.Join(g.cfgs[i].DataDir, "files", "tmp"))
	if err != nil {
		g.t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// eventually polls cond until it holds, failing the test after
// testTimeout.
func (g *group) eventually(what string, cond func() bool) {
	g.t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			g.t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// put streams data to primary under name, in 64 KiB packets, and returns
// the commit's reply.
func put(ctx context.Context, c *datastream.Client, primary, name string, data []byte, opts ...datastream.StreamOption) (*pb.RaftClientReply, error) {
	out, err := c.Stream(ctx, []byte(name), append([]datastream.StreamOption{datastream.WithPrimary(primary)}, opts...)...)
	if err != nil {
		return nil, err
	}
	for off := 0; off < len(data); off += 64 << 10 {
		out.WriteAsync(ctx, data[off:min(off+64<<10, len(data))])
	}
	r, err := out.Close(ctx).Wait(ctx)
	if err != nil {
		return nil, err
	}
	return r.RaftClientReply, nil
}

// checkFile verifies that peer i holds name with exactly data, committed
// at the given index and term.
func (g *group) checkFile(i int, name string, data []byte, index, term uint64) {
	g.t.Helper()
	fs := g.files(i)
	sf, ok := fs.Lookup(name)
	if !ok {
		g.t.Errorf("%s: %q not listed; has %v", g.members[i].ID, name, names(fs.List()))
		return
	}
	if sf.Index != index || sf.Term != term {
		g.t.Errorf("%s: %q linked at index %d term %d, committed at %d term %d", g.members[i].ID, name, sf.Index, sf.Term, index, term)
	}
	// The client sent checksums; the entry carries the stream's, and the
	// store recorded it.
	if want := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)); !sf.Checksummed || sf.Checksum != want {
		g.t.Errorf("%s: %q recorded CRC32C %08x (%v), want %08x", g.members[i].ID, name, sf.Checksum, sf.Checksummed, want)
	}
	f, err := fs.Open(name)
	if err != nil {
		g.t.Error(err)
		return
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil {
		g.t.Error(err)
	}
	if !bytes.Equal(got, data) {
		g.t.Errorf("%s: %q holds %d bytes that differ from the %d streamed", g.members[i].ID, name, len(got), len(data))
	}
}

func names(files []statemachine.StoredFile) []string {
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.Name
	}
	return out
}

// randomBytes returns n bytes from a generator seeded with seed.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n+7)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}
