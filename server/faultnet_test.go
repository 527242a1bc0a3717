package server_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/faultnet"
	"github.com/pipestream/pipestream/internal/grouptest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// edge is the connection peer from opens to peer to, to forward streams.
type edge struct{ from, to int }

// startGroupVia is startGroup with the connections along some edges going
// through a faultnet proxy, one per edge, so that a test can pause, cut or
// truncate them. The proxies close before the servers shut down.
func startGroupVia(t testing.TB, n int, o groupOpts, via ...edge) (*cluster, map[edge]*faultnet.Proxy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	proxies := make(map[edge]*faultnet.Proxy)
	opts := o.options()
	opts.Dial = func(from, to int, addr string) string {
		e := edge{from, to}
		if !slices.Contains(via, e) {
			return addr
		}
		proxies[e] = listenProxy(t, addr)
		return proxies[e].Addr()
	}
	g := &cluster{}
	g.servers, g.peers, g.sms = grouptest.StartServers(t, ctx, n, opts)
	for e, px := range proxies {
		if px.Stats().Accepted == 0 {
			t.Fatalf("%s reached %s without its proxy", peerID(e.from), peerID(e.to))
		}
	}
	return g, proxies
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
	cfg := grouptest.ServerConfig(i, slices.Clone(g.peers), o.options())
	s := grouptest.ListenServer(t, ctx, cfg)
	g.servers[i], g.sms[i] = s, cfg.StateMachine
	g.peers[i].StreamAddr = s.Addr().String()
	for j, other := range g.servers {
		if j != i {
			other.SetPeerAddr(g.peers[i].ID, g.peers[i].StreamAddr)
		}
	}
	grouptest.WaitServers(t, ctx, g.servers)
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
