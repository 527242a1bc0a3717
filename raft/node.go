package raft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/statemachine"
)

// Node is one peer of a Raft group: a hashicorp/raft instance, its stores
// and transport, the FSM that links committed streams, and the listener for
// forwarded commits. New binds its addresses, Start joins the group, and
// Shutdown stops everything it started.
type Node struct {
	cfg    Config
	log    *slog.Logger
	hclog  hclog.Logger
	layer  *streamLayer
	trans  *hraft.NetworkTransport
	commit *net.TCPListener
	logs   hraft.LogStore
	stable hraft.StableStore
	snaps  hraft.SnapshotStore
	bolt   *raftboltdb.BoltStore // nil in memory mode
	fsm    *fsm

	lastLeader atomic.Value // string: the last leader id seen, for hints
	// leaders counts the leader changes raft has reported; freshAt is
	// one more than the count at which the watcher last found the FSM
	// caught up, 0 when it found it behind or out of touch. Fresh needs
	// the two to agree, so that an answer from before a change never
	// counts after it. See Fresh.
	leaders atomic.Uint64
	freshAt atomic.Uint64

	ctx    context.Context // canceled at Shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines the Node started itself

	// pmu guards the members as this Node knows them: the list Start was
	// given, replaced by each membership entry the FSM applies (which may
	// happen inside Start, as raft restores a snapshot, while mu is held).
	pmu   sync.Mutex
	peers map[string]group.Member
	start []group.Member // the list Start was given
	// changeMu serializes the membership changes this Node leads.
	changeMu sync.Mutex

	mu       sync.Mutex
	raft     *hraft.Raft
	closed   bool
	srvConns map[net.Conn]struct{} // accepted commit connections
	idle     map[string][]net.Conn // pooled forwarding connections by address
}

var (
	_ statemachine.Committer = (*Node)(nil)
	_ statemachine.Freshness = (*Node)(nil)
)

// transportTimeout is the I/O deadline of Raft's own RPCs.
const transportTimeout = 10 * time.Second

// New checks cfg, binds the Raft and commit addresses and opens the stores.
// The Node does not take part in the group until Start.
func New(cfg Config) (_ *Node, err error) {
	if cfg, err = cfg.withDefaults(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{
		cfg:      cfg,
		log:      log.With("raft_id", cfg.ID),
		hclog:    newHCLogger(cfg.Logger, "raft").With("raft_id", cfg.ID),
		srvConns: make(map[net.Conn]struct{}),
		idle:     make(map[string][]net.Conn),
	}
	if err := hraft.ValidateConfig(n.raftConfig()); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	defer func() {
		if err != nil {
			n.closeResources()
		}
	}()
	if n.layer, err = listenStream(cfg.RaftAddr, cfg.TLS, cfg.PeerTLS); err != nil {
		return nil, err
	}
	if n.commit, err = listenTCP(cfg.CommitAddr); err != nil {
		return nil, err
	}
	if err = n.openStores(); err != nil {
		return nil, err
	}
	n.trans = hraft.NewNetworkTransportWithConfig(&hraft.NetworkTransportConfig{
		Stream:  n.layer,
		MaxPool: 3,
		Timeout: transportTimeout,
		Logger:  n.hclog.Named("transport"),
	})
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.fsm = newFSM(n.ctx, cfg, n.log)
	n.fsm.onMembers = n.membersApplied
	return n, nil
}

func (n *Node) openStores() error {
	if n.cfg.Dir == "" {
		mem := hraft.NewInmemStore()
		n.logs, n.stable, n.snaps = mem, mem, hraft.NewInmemSnapshotStore()
		return nil
	}
	if err := os.MkdirAll(n.cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(n.cfg.Dir, "raft.db")})
	if err != nil {
		return fmt.Errorf("raft: open log store: %w", err)
	}
	n.bolt, n.logs, n.stable = bolt, bolt, bolt
	snaps, err := hraft.NewFileSnapshotStoreWithLogger(n.cfg.Dir, 2, n.hclog.Named("snapshots"))
	if err != nil {
		return fmt.Errorf("raft: open snapshot store: %w", err)
	}
	n.snaps = snaps
	return nil
}

// closeResources releases what New acquired, for a New that failed.
func (n *Node) closeResources() {
	if n.layer != nil {
		n.layer.Close()
	}
	if n.commit != nil {
		n.commit.Close()
	}
	if n.bolt != nil {
		n.bolt.Close()
	}
}

// Addr returns this peer as the others must list it: its id and the
// addresses it is bound to, with any port 0 resolved.
func (n *Node) Addr() group.Member {
	return group.Member{ID: n.cfg.ID, RaftAddr: n.layer.Addr().String(), CommitAddr: n.commit.Addr().String()}
}

// Start joins the group made of peers, which must include this Node as
// Addr reports it. A Node whose stores are empty bootstraps the group with
// peers as its voters; every peer may do so with the same list. With
// Config.Join it does not: it waits for the group's leader to add it
// (AddMember). A Node with state (a restart) keeps the membership it has
// and uses peers only until its FSM applies a membership entry (see
// Members). ctx bounds the start-up only. Raft uses the members' RaftAddr
// and CommitAddr; membership entries carry StreamAddr too, to every peer,
// for the layers above.
func (n *Node) Start(ctx context.Context, peers []group.Member) error {
	if err := checkPeers(peers, n.Addr()); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.closed:
		return ErrClosed
	case n.raft != nil:
		return fmt.Errorf("raft: %s already started", n.cfg.ID)
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	conf := n.raftConfig()
	servers := make([]hraft.Server, len(peers))
	for i, p := range peers {
		servers[i] = hraft.Server{Suffrage: hraft.Voter, ID: hraft.ServerID(p.ID), Address: hraft.ServerAddress(p.RaftAddr)}
	}
	n.pmu.Lock()
	n.start = slices.Clone(peers)
	n.peers = peerMap(peers)
	n.pmu.Unlock()
	if !n.cfg.Join {
		err := hraft.BootstrapCluster(conf, n.logs, n.stable, n.snaps, n.trans, hraft.Configuration{Servers: servers})
		if err != nil && !errors.Is(err, hraft.ErrCantBootstrap) {
			return fmt.Errorf("raft: bootstrap: %w", err)
		}
	}
	r, err := hraft.NewRaft(conf, n.fsm, n.logs, n.stable, n.snaps, n.trans)
	if err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	// A filter-only observer: raft calls it synchronously on each change,
	// and without a channel nothing is queued and no goroutine is needed.
	r.RegisterObserver(hraft.NewObserver(nil, false, func(o *hraft.Observation) bool {
		if lo, ok := o.Data.(hraft.LeaderObservation); ok {
			// A new leader may not have applied all its predecessor
			// committed: catch up with it again.
			n.leaders.Add(1)
			if lo.LeaderID != "" {
				n.lastLeader.Store(string(lo.LeaderID))
			}
		}
		return false
	}))
	n.raft = r
	n.wg.Add(2)
	go n.serveCommits()
	go n.watchFreshness()
	return nil
}

func (n *Node) raftConfig() *hraft.Config {
	conf := hraft.DefaultConfig()
	conf.LocalID = hraft.ServerID(n.cfg.ID)
	conf.Logger = n.hclog
	conf.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	conf.ElectionTimeout = n.cfg.ElectionTimeout
	conf.LeaderLeaseTimeout = n.cfg.LeaderLeaseTimeout
	conf.CommitTimeout = n.cfg.CommitTimeout
	conf.SnapshotInterval = n.cfg.SnapshotInterval
	conf.SnapshotThreshold = n.cfg.SnapshotThreshold
	conf.TrailingLogs = n.cfg.TrailingLogs
	return conf
}

// started returns the running raft instance.
func (n *Node) started() (*hraft.Raft, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.closed:
		return nil, ErrClosed
	case n.raft == nil:
		return nil, ErrNotStarted
	}
	return n.raft, nil
}

// IsLeader reports whether this Node is the leader.
func (n *Node) IsLeader() bool {
	r, err := n.started()
	return err == nil && r.State() == hraft.Leader
}

// Leader returns the id and Raft address of the leader as this Node knows
// it, or empty strings when it knows of none.
func (n *Node) Leader() (id, addr string) {
	r, err := n.started()
	if err != nil {
		return "", ""
	}
	a, i := r.LeaderWithID()
	return string(i), string(a)
}

// leaderHint returns the leader's id, or the last one seen while there is
// none, for NOT_LEADER replies.
func (n *Node) leaderHint() string {
	if id, _ := n.Leader(); id != "" {
		return id
	}
	id, _ := n.lastLeader.Load().(string)
	return id
}

// leaderPollInterval is how often WaitLeader looks for a leader.
const leaderPollInterval = 10 * time.Millisecond

// WaitLeader waits until this Node knows a leader and returns its id.
func (n *Node) WaitLeader(ctx context.Context) (string, error) {
	t := time.NewTicker(leaderPollInterval)
	defer t.Stop()
	for {
		if _, err := n.started(); err != nil {
			return "", err
		}
		if id, _ := n.Leader(); id != "" {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-t.C:
		}
	}
}

// Stats returns the FSM's counters.
func (n *Node) Stats() Stats { return n.fsm.stats() }

// RaftStats returns hashicorp/raft's own statistics (state, term,
// last_log_index, commit_index, applied_index, num_peers, last_contact,
// ...), or nil before Start.
func (n *Node) RaftStats() map[string]string {
	r, err := n.started()
	if err != nil {
		return nil
	}
	return r.Stats()
}

// Snapshot takes a snapshot now and compacts the log behind it, as raft
// does on its own every SnapshotInterval once SnapshotThreshold entries
// have accumulated.
func (n *Node) Snapshot() error {
	r, err := n.started()
	if err != nil {
		return err
	}
	if err := r.Snapshot().Error(); err != nil {
		return fmt.Errorf("raft: snapshot: %w", err)
	}
	return nil
}

// Shutdown stops the Node: it cancels Link calls in progress, stops
// serving and forwarding commits, shuts raft down and closes the transport
// and stores. It waits for every goroutine the Node or its transport
// started, and is safe to call more than once.
func (n *Node) Shutdown() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	r := n.raft
	for c := range n.srvConns {
		c.Close()
	}
	for addr, cs := range n.idle {
		for _, c := range cs {
			c.Close()
		}
		delete(n.idle, addr)
	}
	n.mu.Unlock()

	n.cancel()
	n.commit.Close()
	if r != nil {
		// Error waits for raft's goroutines, then closes the transport.
		r.Shutdown().Error()
	} else {
		n.trans.Close()
	}
	n.layer.wait()
	n.wg.Wait()
	if n.bolt != nil {
		if err := n.bolt.Close(); err != nil {
			return fmt.Errorf("raft: close log store: %w", err)
		}
	}
	return nil
}

// goTracked runs fn on a goroutine Shutdown waits for, unless the Node is
// already shut down.
func (n *Node) goTracked(fn func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fn()
	}()
	return true
}
