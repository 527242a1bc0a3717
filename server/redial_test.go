package server_test

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/grouptest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/transport"
)

// TestRestartedPeerIsRedialedAtOnce: a peer that restarts connects to the
// others, and that connection must make them redial it at once rather
// than when their backoff ends; so must learning its new address. Until
// they redial, their streams route around it, and a group that the
// restart brought back to its write quorum would go on refusing writes.
// The survivor's backoff here is an hour, so only these wake-ups can
// bring the two together within the test's waits.
func TestRestartedPeerIsRedialedAtOnce(t *testing.T) {
	onEachTransport(t, func(t *testing.T, kind transport.Kind) {
		failed := new(dialFailures)
		o := groupOpts{kind: kind, tweak: func(c *server.Config) {
			c.RedialInterval = time.Hour
			if c.ID == peerID(0) {
				c.Logger = slog.New(failed)
			}
		}}
		g := startGroup(t, 2, o)
		a, b := g.servers[0], g.peers[1].ID
		server.SetFirstRedial(a, time.Hour)
		before := failed.n.Load()
		g.kill(t, 1)
		// a has lost b, tried to redial it and failed: it now waits out
		// its backoff.
		waitFor(t, 10*time.Second, "a failed redial of the stopped peer", func() bool { return failed.n.Load() > before })
		if a.PeerConnected(b) {
			t.Fatalf("%s still connected to the stopped %s", a.ID(), b)
		}

		// b comes back on a new port, which a does not know yet. Its
		// connection to a wakes a's loop, which redials the old address
		// and fails again.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		before = failed.n.Load()
		cfg := grouptest.ServerConfig(1, slices.Clone(g.peers), o.options())
		g.servers[1], g.sms[1] = grouptest.ListenServer(t, ctx, cfg), cfg.StateMachine
		g.peers[1].StreamAddr = g.servers[1].Addr().String()
		waitFor(t, 10*time.Second, "a redial woken by the restarted peer's connection", func() bool { return failed.n.Load() > before })
		if a.PeerConnected(b) {
			t.Fatalf("%s reached %s at an address it was never told", a.ID(), b)
		}
		// Told the new address, a dials it at once.
		a.SetPeerAddr(b, g.peers[1].StreamAddr)
		grouptest.WaitServers(t, ctx, g.servers)
		// Both hold the next stream: the write quorum of two is met.
		g.commitsEventually(t, g.client(t), pb.Chain(g.ids()...), func(error) bool { return false })
	})
}

// dialFailures is a slog.Handler that counts a server's failed dials of a
// peer.
type dialFailures struct{ n atomic.Int64 }

func (h *dialFailures) Enabled(context.Context, slog.Level) bool { return true }

func (h *dialFailures) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "server: peer not reachable yet" {
		h.n.Add(1)
	}
	return nil
}

func (h *dialFailures) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *dialFailures) WithGroup(string) slog.Handler      { return h }
