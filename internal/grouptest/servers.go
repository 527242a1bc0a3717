package grouptest

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// ServerOptions configures a loopback group of stream servers without
// Raft (StartServers). The zero value starts gnet servers s1, s2, ...
// with the default write quorum, a statemachine.Memory each and no log.
type ServerOptions struct {
	// ID names server i; nil names it s1, s2 and so on.
	ID func(i int) string
	// Kind is the servers' transport.
	Kind transport.Kind
	// Quorum is the servers' WriteQuorum; 0 is the default majority.
	Quorum int
	// StateMachine returns server i's state machine; nil gives each a
	// statemachine.NewMemory.
	StateMachine func(i int) statemachine.StateMachine
	// Logger is the servers' logger; nil discards.
	Logger *slog.Logger
	// Config, if set, edits server i's configuration last.
	Config func(i int, cfg *server.Config)
	// Dial, if set, returns the address server from dials to reach server
	// to, which listens at addr: a proxy's, say, to cut that connection.
	// It is called once per pair, after every server listens.
	Dial func(from, to int, addr string) string
}

// ServerConfig returns the configuration StartServers gives server i of
// members, whose StreamAddrs may be empty. It calls o.StateMachine, so
// each call has a state machine of its own.
func ServerConfig(i int, members []group.Member, o ServerOptions) server.Config {
	cfg := server.Config{ID: members[i].ID, Peers: members, Transport: o.Kind, Logger: o.Logger}
	cfg.WriteQuorum = o.Quorum
	if o.StateMachine != nil {
		cfg.StateMachine = o.StateMachine(i)
	} else {
		cfg.StateMachine = statemachine.NewMemory()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Config != nil {
		o.Config(i, &cfg)
	}
	return cfg
}

// StartServers starts n stream servers on loopback, tells each the
// others' addresses and waits until each reaches the others. It returns
// them, the group as a client reaches it and their state machines, in
// the order of their indexes. The test's cleanup shuts the servers down,
// so a test that means to may shut one down before.
func StartServers(t testing.TB, ctx context.Context, n int, o ServerOptions) ([]*server.Server, []group.Member, []statemachine.StateMachine) {
	t.Helper()
	members := make([]group.Member, n)
	for i := range members {
		if o.ID != nil {
			members[i].ID = o.ID(i)
		} else {
			members[i].ID = fmt.Sprintf("s%d", i+1)
		}
	}
	servers := make([]*server.Server, n)
	sms := make([]statemachine.StateMachine, n)
	bound := make([]group.Member, n)
	for i := range n {
		cfg := ServerConfig(i, members, o)
		servers[i], sms[i] = ListenServer(t, ctx, cfg), cfg.StateMachine
		bound[i] = group.Member{ID: cfg.ID, StreamAddr: servers[i].Addr().String()}
	}
	for i, s := range servers {
		for j, m := range bound {
			addr := m.StreamAddr
			if o.Dial != nil {
				addr = o.Dial(i, j, addr)
			}
			s.SetPeerAddr(m.ID, addr)
		}
	}
	WaitServers(t, ctx, servers)
	return servers, bound, sms
}

// ListenServer starts a server from cfg and has the test's cleanup shut
// it down. It does not wait for the server to reach its peers.
func ListenServer(t testing.TB, ctx context.Context, cfg server.Config) *server.Server {
	t.Helper()
	s, err := server.Listen(ctx, cfg)
	if err != nil {
		t.Fatalf("listen %s: %v", cfg.ID, err)
	}
	t.Cleanup(func() {
		// The test's own ctx may be done by now.
		sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := s.Shutdown(sctx); err != nil {
			t.Errorf("shutdown %s: %v", s.ID(), err)
		}
	})
	return s
}

// WaitServers waits until each of servers has a live connection to every
// other member it knows.
func WaitServers(t testing.TB, ctx context.Context, servers []*server.Server) {
	t.Helper()
	for _, s := range servers {
		if err := s.WaitPeers(ctx); err != nil {
			t.Fatalf("%s: %v", s.ID(), err)
		}
	}
}

// Link links the committed entry e on each of servers, as their log
// appliers would, for tests that stand in for Raft. A server that cannot
// link it fails the test, and the others link it all the same.
func Link(t testing.TB, ctx context.Context, servers []*server.Server, e statemachine.Entry) {
	t.Helper()
	for _, s := range servers {
		if err := s.Streams().Link(ctx, e); err != nil {
			t.Errorf("link %v on %s: %v", e.Key, s.ID(), err)
		}
	}
}
