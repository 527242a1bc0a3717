package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/transport"
)

// TestKeepaliveAcrossPartition black-holes the link from a peer to its
// successor, with no reset: the peer must report the successor down by
// keepalive alone, redial it in the background once the link heals, and
// the first stream after that must commit on both, with no stream failed.
func TestKeepaliveAcrossPartition(t *testing.T) {
	onEachTransport(t, func(t *testing.T, kind transport.Kind) {
		const (
			interval = 100 * time.Millisecond
			timeout  = 300 * time.Millisecond
		)
		g, proxies := startGroupVia(t, 2, groupOpts{kind: kind, tweak: func(c *server.Config) {
			c.KeepaliveInterval = interval
			c.KeepaliveTimeout = timeout
			c.HandshakeTimeout = 300 * time.Millisecond
			c.RedialInterval = 100 * time.Millisecond
		}}, edge{0, 1})
		px := proxies[edge{0, 1}]
		a, succ := g.servers[0], g.peers[1].ID
		if !a.PeerConnected(succ) {
			t.Fatalf("%s not connected to %s after WaitPeers", a.ID(), succ)
		}
		// Several intervals pass with the link up: pings answered
		// keep the connection.
		time.Sleep(5 * interval)
		if !a.PeerConnected(succ) || px.Stats().Accepted != 1 {
			t.Fatalf("healthy link: connected=%v, connections through the proxy %d; want one, kept", a.PeerConnected(succ), px.Stats().Accepted)
		}

		px.Pause()
		start := time.Now()
		waitFor(t, 20*time.Second, "black-holed successor reported down", func() bool { return !a.PeerConnected(succ) })
		t.Logf("successor down %v after the black hole (interval %v + timeout %v)", time.Since(start).Round(time.Millisecond), interval, timeout)
		px.Resume()

		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := a.WaitPeers(ctx); err != nil {
			t.Fatal(err)
		}
		c := g.client(t)
		table := pb.Chain(g.ids()...)
		data := randomBytes(11, 300<<10)
		out, err := c.Stream(ctx, []byte("after-the-partition"), datastream.WithRoutingTable(table))
		if err != nil {
			t.Fatalf("first stream after the partition: %v", err)
		}
		if err := writeAll(ctx, out, data, 64<<10); err != nil {
			t.Fatalf("first stream after the partition failed: %v", err)
		}
		for p := range g.servers {
			if got, ok := g.memory(p).Sum(key(c, out)); !ok || got != sum(data) {
				t.Fatalf("stream after the partition on %s: committed=%v, checksum match=%v", g.peers[p].ID, ok, got == sum(data))
			}
		}
	})
}
