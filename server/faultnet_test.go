package server_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/internal/faultnet"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

// edge is the connection peer from opens to peer to, to forward streams.
type edge struct{ from, to int }

// startGroupVia is startGroup with the connections along some edges going
// through a faultnet proxy, one per edge, so that a test can pause, cut or
// truncate them. The proxies close before the servers shut down.
func startGroupVia(t testing.TB, n int, o groupOpts, via ...edge) (*cluster, map[edge]*faultnet.Proxy) {
	t.Helper()
	if o.sm == nil {
		o.sm = func(int) statemachine.StateMachine { return statemachine.NewMemoryHashing() }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g := &cluster{}
	var peers []group.Member
	for i := 0; i < n; i++ {
		peers = append(peers, group.Member{ID: peerID(i)})
	}
	for i := 0; i < n; i++ {
		cfg := server.Config{
			ID: peerID(i), Peers: peers, StateMachine: o.sm(i),
			Transport: o.kind, Logger: quietLogger(), Policy: handler.Policy{WriteQuorum: o.quorum},
		}
		if o.tweak != nil {
			o.tweak(&cfg)
		}
		g.listen(t, ctx, cfg)
	}
	proxies := make(map[edge]*faultnet.Proxy)
	for _, e := range via {
		proxies[e] = listenProxy(t, g.peers[e.to].StreamAddr)
	}
	for i, s := range g.servers {
		for j, p := range g.peers {
			if px := proxies[edge{i, j}]; px != nil {
				s.SetPeerAddr(p.ID, px.Addr())
			} else {
				s.SetPeerAddr(p.ID, p.StreamAddr)
			}
		}
	}
	for _, s := range g.servers {
		if err := s.WaitPeers(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for e, px := range proxies {
		if px.Stats().Accepted == 0 {
			t.Fatalf("%s reached %s without its proxy", peerID(e.from), peerID(e.to))
		}
	}
	return g, proxies
}

// listen starts one server of g and registers its shutdown.
func (g *cluster) listen(t testing.TB, ctx context.Context, cfg server.Config) *server.Server {
	t.Helper()
	s, err := server.Listen(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		if err := s.Shutdown(sctx); err != nil {
			t.Errorf("shutdown %s: %v", s.ID(), err)
		}
	})
	g.servers = append(g.servers, s)
	g.sms = append(g.sms, cfg.StateMachine)
	g.peers = append(g.peers, group.Member{ID: cfg.ID, StreamAddr: s.Addr().String()})
	return s
}

func listenProxy(t testing.TB, target string) *faultnet.Proxy {
	t.Helper()
	px, err := faultnet.Listen(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.Close() })
	return px
}

// kill shuts peer i down, as a crash that closes its sockets would.
func (g *cluster) kill(t testing.TB, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.servers[i].Shutdown(ctx); err != nil {
		t.Fatalf("shutdown %s: %v", g.peers[i].ID, err)
	}
}

// restart replaces peer i, which must be shut down, with a new server of
// the same id and a fresh state machine on a new port; the other peers
// learn its address and every peer waits until it reaches the others.
func (g *cluster) restart(t testing.TB, i int, o groupOpts) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var peers []group.Member
	for _, p := range g.peers {
		peers = append(peers, group.Member{ID: p.ID, StreamAddr: p.StreamAddr})
	}
	sm := statemachine.StateMachine(statemachine.NewMemoryHashing())
	if o.sm != nil {
		sm = o.sm(i)
	}
	cfg := server.Config{
		ID: g.peers[i].ID, Peers: peers, StateMachine: sm,
		Transport: o.kind, Logger: quietLogger(), Policy: handler.Policy{WriteQuorum: o.quorum},
	}
	if o.tweak != nil {
		o.tweak(&cfg)
	}
	s := g.listen(t, ctx, cfg)
	last := len(g.servers) - 1
	g.servers[i], g.sms[i], g.peers[i] = s, g.sms[last], g.peers[last]
	g.servers, g.sms, g.peers = g.servers[:last], g.sms[:last], g.peers[:last]
	for j, other := range g.servers {
		if j != i {
			other.SetPeerAddr(g.peers[i].ID, g.peers[i].StreamAddr)
		}
	}
	for _, s := range g.servers {
		if err := s.WaitPeers(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func (g *cluster) ids() []string {
	ids := make([]string, len(g.peers))
	for i, p := range g.peers {
		ids[i] = p.ID
	}
	return ids
}

// commitsEventually streams small streams through every peer of g, with
// routing table, until one commits on every peer with the right bytes, or
// fails the test after a bounded time. Attempts may fail only with an error
// that retryable accepts: a peer whose connection to a successor just
// ended learns it on its event loop, and redials with a backoff.
func (g *cluster) commitsEventually(t *testing.T, c *datastream.Client, table *pb.RoutingTable, retryable func(error) bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		data := randomBytes(uint64(1000+attempt), 100<<10+attempt)
		out, err := c.Stream(ctx, []byte(fmt.Sprintf("after-fault-%d", attempt)), datastream.WithRoutingTable(table))
		if err == nil {
			err = writeAll(ctx, out, data, 32<<10)
		}
		cancel()
		if err == nil {
			for p := range g.servers {
				if got, ok := g.memory(p).Sum(key(c, out)); !ok || got != sum(data) {
					t.Fatalf("stream after the fault on %s: committed=%v, checksum match=%v", g.peers[p].ID, ok, got == sum(data))
				}
			}
			return
		}
		if !retryable(err) {
			t.Fatalf("stream after the fault, attempt %d: %v", attempt, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stream committed within 15s after the fault; last attempt: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writeAll writes data in packets of at most pkt bytes and closes the
// stream; it returns the close's error, which a failed write also gives.
func writeAll(ctx context.Context, out *datastream.Output, data []byte, pkt int) error {
	for off := 0; off < len(data); off += pkt {
		out.WriteAsync(ctx, data[off:min(off+pkt, len(data))])
	}
	_, err := out.Close(ctx).Wait(ctx)
	return err
}

// waitFor polls cond until it holds, or fails the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// dataFrameLen is the length on the wire of a data packet of n bytes at
// offset off of stream out, as the client frames it and a primary
// forwards it unchanged.
func dataFrameLen(t testing.TB, c *datastream.Client, out *datastream.Output, off uint64, n int) int64 {
	t.Helper()
	prefix, err := dscodec.EncodePacketPrefix(&pb.DataStreamPacketHeader{
		ClientId: c.ID(), Type: pb.DataStreamPacketHeader_STREAM_DATA,
		StreamId: out.ID(), StreamOffset: off, DataLength: uint64(n),
	}, n)
	if err != nil {
		t.Fatal(err)
	}
	defer prefix.Release()
	return int64(prefix.Len() + n)
}

// isCode reports whether err is a server error with one of codes.
func isCode(err error, codes ...pb.ErrorCode) bool {
	var e *pb.Error
	if !errors.As(err, &e) {
		return false
	}
	for _, c := range codes {
		if e.Code == c {
			return true
		}
	}
	return false
}

// committedKeys returns the keys m linked, with or without data.
func committedKeys(m *statemachine.Memory) map[statemachine.StreamKey]bool {
	keys := make(map[statemachine.StreamKey]bool)
	for _, e := range m.Committed() {
		keys[e.Key] = true
	}
	return keys
}
