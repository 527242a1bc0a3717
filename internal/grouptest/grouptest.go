// Package grouptest starts groups of pipestream peers on loopback for
// tests: a stream server, a Raft node and a state machine per peer (a
// peer.Peer), each bound to port 0, told the others' addresses, and
// waited for until ready. StartServers starts the stream servers alone,
// without Raft, for the tests of the layers below package peer.
//
// The functions work on the caller's slices of configurations, peers and
// addresses rather than on a type of their own, so that a package's tests
// keep their own group type with the helpers particular to them (their
// state machines, their files) and grow it as they like, adding or
// replacing peers. A nil entry in peers is a peer that is down.
//
// Every function fails the test on an error and bounds its waits by ctx.
package grouptest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/peer"
)

// Config returns the configuration of peer id in a loopback group of the
// peers ids: timeouts short enough for tests on one machine, and Peers
// listing every id with no address, for Start to fill in. Its addresses
// are port 0 and its state machine in memory; the caller sets a DataDir,
// a transport, a logger and whatever else it tests.
func Config(id string, ids []string) peer.Config {
	cfg := peer.Config{
		ID: id,
		Timeouts: handler.Timeouts{
			CommitTimeout:  10 * time.Second,
			LinkTimeout:    20 * time.Second,
			SweepInterval:  50 * time.Millisecond,
			RedialInterval: 50 * time.Millisecond,
		},
		Raft: peer.RaftTuning{
			HeartbeatTimeout:   200 * time.Millisecond,
			ElectionTimeout:    200 * time.Millisecond,
			LeaderLeaseTimeout: 100 * time.Millisecond,
			CommitTimeout:      5 * time.Millisecond,
		},
	}
	for _, id := range ids {
		cfg.Peers = append(cfg.Peers, peer.Member{ID: id})
	}
	return cfg
}

// Start creates a peer for each of cfgs, starts each with the bound
// addresses of all, and waits until every one is ready. It returns the
// peers and their addresses in the order of cfgs. The caller shuts the
// peers down, with Stop or Peer.Shutdown; peers created before a failure
// are shut down here.
func Start(t testing.TB, ctx context.Context, cfgs []peer.Config) ([]*peer.Peer, []peer.Member) {
	t.Helper()
	var (
		peers   []*peer.Peer
		members []peer.Member
		ok      bool
	)
	defer func() {
		if !ok {
			for _, p := range peers {
				Stop(t, ctx, p)
			}
		}
	}()
	for _, cfg := range cfgs {
		p, err := peer.New(ctx, cfg)
		if err != nil {
			t.Fatalf("New(%s): %v", cfg.ID, err)
		}
		peers = append(peers, p)
		members = append(members, p.Addrs())
	}
	for _, p := range peers {
		if err := p.Start(ctx, members); err != nil {
			t.Fatalf("Start(%s): %v", p.ID(), err)
		}
	}
	WaitReady(t, ctx, peers)
	ok = true
	return peers, members
}

// WaitReady waits until every running peer of peers is ready.
func WaitReady(t testing.TB, ctx context.Context, peers []*peer.Peer) {
	t.Helper()
	for _, p := range peers {
		if p == nil {
			continue
		}
		if err := p.WaitReady(ctx); err != nil {
			t.Fatalf("%s: %v", p.ID(), err)
		}
	}
}

// Stop shuts p down, reporting an error without stopping the test.
func Stop(t testing.TB, ctx context.Context, p *peer.Peer) {
	t.Helper()
	if err := p.Shutdown(ctx); err != nil {
		t.Errorf("shutdown %s: %v", p.ID(), err)
	}
}

// Restart starts peer i, which is down, again from cfg on the Raft and
// commit addresses it had, and sets peers[i] and members[i]. It does not
// wait for the peer to be ready.
//
// The stream server gets a new port, which the running peers are told:
// the gnet listener does not set SO_REUSEADDR, so the old port stays taken
// while the connections it closed linger in TIME_WAIT.
func Restart(t testing.TB, ctx context.Context, cfg peer.Config, i int, peers []*peer.Peer, members []peer.Member) {
	t.Helper()
	if peers[i] != nil {
		t.Fatalf("restart %s: it is running", cfg.ID)
	}
	m := members[i]
	cfg.StreamAddr, cfg.RaftAddr, cfg.CommitAddr = "127.0.0.1:0", m.RaftAddr, m.CommitAddr
	p, err := peer.New(ctx, cfg)
	if err != nil {
		t.Fatalf("restart %s: %v", cfg.ID, err)
	}
	peers[i] = p
	members[i] = p.Addrs()
	for _, o := range peers {
		if o != nil && o != p {
			o.Server().SetPeerAddr(m.ID, members[i].StreamAddr)
		}
	}
	if err := p.Start(ctx, members); err != nil {
		t.Fatalf("restart %s: %v", cfg.ID, err)
	}
}

// Leader returns the index in peers of the peer every running peer agrees
// leads, polling every 10ms until they do, ctx is done or a thousand polls
// have failed.
func Leader(t testing.TB, ctx context.Context, peers []*peer.Peer, members []peer.Member) int {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for range 1000 {
		if i := agreedLeader(peers, members); i >= 0 {
			return i
		}
		select {
		case <-ctx.Done():
			t.Fatal("no leader all peers agree on")
		case <-tick.C:
		}
	}
	t.Fatal("no leader all peers agree on")
	return -1
}

// agreedLeader returns the index of the running peer every running peer
// names as the leader, or -1.
func agreedLeader(peers []*peer.Peer, members []peer.Member) int {
	id := ""
	for _, p := range peers {
		if p == nil {
			continue
		}
		m, ok := p.Leader()
		if !ok || (id != "" && m.ID != id) {
			return -1
		}
		id = m.ID
	}
	i := slices.IndexFunc(members, func(m peer.Member) bool { return m.ID == id })
	if id == "" || i < 0 || peers[i] == nil {
		return -1
	}
	return i
}
