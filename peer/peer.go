package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
	"github.com/pipestream/pipestream/repair"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

// Errors of a Peer's life cycle.
var (
	// ErrStarted is returned by Start on a Peer already started.
	ErrStarted = errors.New("peer: already started")
	// ErrClosed is returned once the Peer has been shut down.
	ErrClosed = errors.New("peer: shut down")
)

// Peer is one member of a group: its stream server, Raft node and state
// machine. Its methods are safe for concurrent use.
type Peer struct {
	cfg   Config
	sm    statemachine.StateMachine
	files *statemachine.FileStore // the FileStore New opened; nil otherwise
	srv   *server.Server
	node  *raft.Node

	// keepFiles, the Repairer and the scrubber run from Start until
	// release.
	keepStop context.CancelFunc
	keepWG   sync.WaitGroup
	repairer *repair.Repairer // nil without a FileStore of New's
	scrubber *repair.Scrubber
	source   *memberSource // the Repairer's reads from the others

	// memberMu guards members: the group as Start was given it, then as
	// each membership the Raft node applies sets it.
	memberMu    sync.Mutex
	members     []Member
	removed     chan struct{} // closed when a membership no longer lists this peer
	removedOnce sync.Once

	mu       sync.Mutex
	started  bool
	shutdown bool
	done     chan struct{} // closed when Shutdown has finished
	shutErr  error
}

// New checks cfg, opens the state machine and the Raft stores, binds every
// address and returns the Peer. It takes no part in the group until Start.
// ctx bounds the binding only.
func New(ctx context.Context, cfg Config) (_ *Peer, err error) {
	if cfg, err = cfg.withDefaults(); err != nil {
		return nil, err
	}
	p := &Peer{cfg: cfg, sm: cfg.StateMachine, done: make(chan struct{}), removed: make(chan struct{})}
	p.source = &memberSource{opts: []datastream.Option{datastream.WithTransport(cfg.Transport, cfg.TransportOptions...),
		datastream.WithLogger(cfg.Logger.With("peer", cfg.ID, "part", "repair"))}}
	if cfg.PeerTLS != nil {
		p.source.opts = append(p.source.opts, datastream.WithTLS(cfg.PeerTLS))
	}
	defer func() {
		if err != nil {
			p.release(context.Background())
		}
	}()
	raftDir := ""
	if cfg.DataDir != "" {
		raftDir = filepath.Join(cfg.DataDir, "raft")
	}
	if p.sm == nil {
		if cfg.DataDir == "" {
			p.sm = statemachine.NewMemory()
		} else {
			p.files, err = statemachine.NewFileStore(filepath.Join(cfg.DataDir, "files"),
				statemachine.WithLogger(cfg.Logger.With("peer", cfg.ID)))
			if err != nil {
				return nil, fmt.Errorf("peer %s: %w", cfg.ID, err)
			}
			p.sm = p.files
		}
	}

	p.srv, err = server.Listen(ctx, server.Config{
		ID:               cfg.ID,
		Addr:             cfg.StreamAddr,
		Peers:            cfg.Peers,
		StateMachine:     p.sm,
		Committer:        starting{},
		Policy:           cfg.Policy,
		Limits:           cfg.Limits,
		Timeouts:         cfg.Timeouts,
		Transport:        cfg.Transport,
		TransportOptions: cfg.TransportOptions,
		TLS:              cfg.TLS,
		PeerTLS:          cfg.PeerTLS,
		AuthorizePeer:    cfg.AuthorizePeer,
		Pipeline:         cfg.Pipeline,
		Events:           cfg.Events,
		Logger:           cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", cfg.ID, err)
	}
	p.node, err = raft.New(raft.Config{
		ID:         cfg.ID,
		RaftAddr:   cfg.RaftAddr,
		CommitAddr: cfg.CommitAddr,
		Join:       cfg.Join,
		OnMembers:  p.membersChanged,
		Dir:        raftDir,
		Linker:     p.srv.Streams(),
		Logger:     cfg.Logger,
		Tuning:     cfg.Raft,
		TLS:        peersOnly(cfg.TLS, cfg.AuthorizePeer),
		PeerTLS:    cfg.PeerTLS,
		Status:     p.status,
	})
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", cfg.ID, err)
	}
	p.srv.SetCommitter(p.node)
	return p, nil
}

// starting stands in for the Raft node while New builds it. The stream
// server listens first, since the node links through its Streams; until
// the node takes over, a stream that closes is not committed (without a
// committer the server would link it standalone, outside Raft) and a read
// is refused as one that has not caught up, since the state machine may
// hold versions older than the group's.
type starting struct{}

func (starting) Commit(context.Context, statemachine.StreamInfo) (*pb.RaftClientReply, error) {
	return nil, errors.New("peer: starting, its Raft node is not in place yet")
}

func (starting) Fresh() bool { return false }

// Start is New followed by Peer.Start with cfg.Peers, which must then give
// every address of every member, this peer's as it binds them.
func Start(ctx context.Context, cfg Config) (*Peer, error) {
	p, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := p.Start(ctx, cfg.Peers); err != nil {
		return nil, errors.Join(err, p.Shutdown(context.Background()))
	}
	return p, nil
}

// Addrs returns this peer as the others must list it: its id and the
// addresses it is bound to, any port 0 resolved.
func (p *Peer) Addrs() Member {
	r := p.node.Addr()
	return Member{ID: p.cfg.ID, StreamAddr: p.srv.Addr().String(), RaftAddr: r.RaftAddr, CommitAddr: r.CommitAddr}
}

// Start joins the group: it tells the stream server where the other
// members are and starts the Raft node, which bootstraps the group with
// members as its voters if its log is empty (every peer may do so with the
// same list; with Config.Join it waits to be added instead) and otherwise
// keeps the membership it has, which its log may have changed since.
// members must hold the same ids as Config.Peers, with every address, and
// this peer's entry must equal Addrs. ctx bounds the start only.
func (p *Peer) Start(ctx context.Context, members []Member) error {
	if err := p.checkMembers(members); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.shutdown:
		return ErrClosed
	case p.started:
		return ErrStarted
	}
	for _, m := range members {
		p.srv.SetPeerAddr(m.ID, m.StreamAddr)
	}
	// Set before the node starts: restoring a snapshot may replace them.
	p.memberMu.Lock()
	p.members = slices.Clone(members)
	p.memberMu.Unlock()
	p.source.set(others(members, p.cfg.ID))
	if err := p.node.Start(ctx, members); err != nil {
		return fmt.Errorf("peer %s: %w", p.cfg.ID, err)
	}
	p.started = true
	if p.files != nil {
		p.startRepair()
	}
	return nil
}

// startRepair starts what tends the FileStore: keepFiles, a Repairer that
// fetches missing copies from the other members, whoever they are at the
// time, and a scrubber.
func (p *Peer) startRepair() {
	ctx, cancel := context.WithCancel(context.Background())
	p.keepStop = cancel
	p.keepWG.Add(1)
	go p.keepFiles(ctx)
	log := p.cfg.Logger.With("peer", p.cfg.ID)
	rc := p.cfg.Repair
	if rc.Events == nil {
		rc.Events = p.cfg.Events
	}
	p.repairer = repair.New(rc, p.files, p.source, p.source.ids, log)
	p.scrubber = repair.NewScrubber(p.cfg.Scrub, p.files, p.repairer.Kick, log)
	p.keepWG.Add(2)
	go func() {
		defer p.keepWG.Done()
		p.repairer.Run(ctx)
	}()
	go func() {
		defer p.keepWG.Done()
		p.scrubber.Run(ctx)
	}()
}

// ScrubNow makes the peer reread every copy it stores now, and repair the
// bad ones, rather than at its next scheduled scrub. pipestream serve
// calls it on SIGUSR1. It does nothing on a peer without a Repairer.
func (p *Peer) ScrubNow() {
	if p.scrubber != nil {
		p.scrubber.Kick()
	}
}

// Repairer returns the peer's Repairer, or nil when it has no FileStore of
// its own (no DataDir, or Config.StateMachine).
func (p *Peer) Repairer() *repair.Repairer { return p.repairer }

// status is what the Raft node's answer to a peer status request adds to
// its own state (raft.Config.Status): streams, copies, repairs and the
// size of the data directory, which it walks each time.
func (p *Peer) status() *pb.PeerStatus {
	st := &pb.PeerStatus{
		OpenStreams:    uint64(p.srv.Streams().Active()),
		PendingStreams: uint64(p.srv.Streams().Pending()),
	}
	if p.files != nil {
		st.MissingCopies = proto.Uint64(uint64(p.files.Missing()))
	}
	p.mu.Lock()
	r := p.repairer
	p.mu.Unlock()
	if r != nil {
		rs := r.Stats()
		st.RepairsRunning, st.RepairsWaiting = proto.Uint64(uint64(rs.InProgress)), proto.Uint64(uint64(rs.Waiting))
	}
	if p.cfg.DataDir != "" {
		var size uint64
		// Files come and go while it walks (streams, snapshots): count what
		// is there.
		_ = filepath.WalkDir(p.cfg.DataDir, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					size += uint64(fi.Size())
				}
			}
			return nil
		})
		st.DataDirBytes = proto.Uint64(size)
	}
	return st
}

// keepFiles tends the FileStore's leftovers on the sweep tick:
// it retries links that could not be recorded, and removes the closed
// streams kept across a restart whose entry will never come, once this
// peer has applied what the group committed and they are older than the
// link timeout.
func (p *Peer) keepFiles(ctx context.Context) {
	defer p.keepWG.Done()
	every := p.cfg.SweepInterval
	if every <= 0 {
		every = time.Second // the server's tick is at most that too
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if p.files.Deferred() > 0 {
			p.files.RetryDeferred()
		}
		if p.files.Orphans() == 0 {
			continue
		}
		if ok, err := p.node.CaughtUp(ctx); !ok {
			if err != nil {
				p.cfg.Logger.Debug("peer: not sweeping kept streams yet", "peer", p.cfg.ID, "err", err)
			}
			continue
		}
		if _, err := p.files.SweepOrphans(time.Now().Add(-p.cfg.LinkTimeout)); err != nil {
			p.cfg.Logger.Warn("peer: sweep kept streams", "peer", p.cfg.ID, "err", err)
		}
	}
}

func (p *Peer) checkMembers(members []Member) error {
	if len(members) != len(p.cfg.Peers) {
		return fmt.Errorf("%w: %d members given, the configuration has %d", ErrConfig, len(members), len(p.cfg.Peers))
	}
	self, err := findSelf(members, p.cfg.ID)
	if err != nil {
		return err
	}
	for _, m := range members {
		if !complete(m) {
			return fmt.Errorf("%w: member %q lacks an address: %+v", ErrConfig, m.ID, m)
		}
		if !slices.ContainsFunc(p.cfg.Peers, func(c Member) bool { return c.ID == m.ID }) {
			return fmt.Errorf("%w: member %q is not in the configuration", ErrConfig, m.ID)
		}
	}
	if addrs := p.Addrs(); self != addrs {
		return fmt.Errorf("%w: %q is listed as %+v but bound to %+v", ErrConfig, self.ID, self, addrs)
	}
	return nil
}

// WaitReady waits until this peer knows a Raft leader, has caught up
// with what the group committed (until then it refuses reads with
// NOT_CAUGHT_UP; see raft.Node.Fresh), and has a live stream connection
// to every other member, or ctx is done.
func (p *Peer) WaitReady(ctx context.Context) error {
	if _, err := p.node.WaitLeader(ctx); err != nil {
		return fmt.Errorf("peer %s: %w", p.cfg.ID, err)
	}
	if err := p.node.WaitFresh(ctx); err != nil {
		return fmt.Errorf("peer %s: %w", p.cfg.ID, err)
	}
	return p.srv.WaitPeers(ctx)
}

// ID returns the peer's id.
func (p *Peer) ID() string { return p.cfg.ID }

// Members returns the group as this peer knows it: as Start was given it,
// until the Raft node applies a membership entry (a member joined or left)
// or restores one from a snapshot; nil before Start.
func (p *Peer) Members() []Member {
	p.memberMu.Lock()
	defer p.memberMu.Unlock()
	return slices.Clone(p.members)
}

// Leader returns the member this peer knows as the Raft leader, and false
// while it knows of none.
func (p *Peer) Leader() (Member, bool) {
	id, _ := p.node.Leader()
	if id == "" {
		return Member{}, false
	}
	for _, m := range p.Members() {
		if m.ID == id {
			return m, true
		}
	}
	return Member{ID: id}, true
}

// IsLeader reports whether this peer is the Raft leader.
func (p *Peer) IsLeader() bool { return p.node.IsLeader() }

// StateMachine returns the state machine the peer stores streams in: a
// *statemachine.FileStore with a DataDir, a *statemachine.Memory without,
// or Config.StateMachine.
func (p *Peer) StateMachine() statemachine.StateMachine { return p.sm }

// Server returns the DataStream server.
func (p *Peer) Server() *server.Server { return p.srv }

// Node returns the Raft node.
func (p *Peer) Node() *raft.Node { return p.node }

// Shutdown stops the peer and waits for every goroutine it started, or for
// ctx. The Raft node goes first, which ends commits in progress at once;
// then the stream server fails open streams and discards the data of those
// waiting for their entry; last the state machine New opened is closed.
// It is safe to call more than once; later calls wait for the first.
func (p *Peer) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.shutdown {
		p.mu.Unlock()
		select {
		case <-p.done:
			return p.shutErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.shutdown = true
	p.mu.Unlock()
	p.shutErr = p.release(ctx)
	close(p.done)
	return p.shutErr
}

// release stops whatever New managed to start.
func (p *Peer) release(ctx context.Context) error {
	var errs []error
	if p.keepStop != nil {
		p.keepStop()
		p.keepWG.Wait()
	}
	if p.source != nil {
		errs = append(errs, p.source.close())
	}
	if p.node != nil {
		errs = append(errs, p.node.Shutdown())
	}
	if p.srv != nil {
		errs = append(errs, p.srv.Shutdown(ctx))
	}
	if p.files != nil {
		errs = append(errs, p.files.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("peer %s: shutdown: %w", p.cfg.ID, err)
	}
	return nil
}

// peersOnly returns the listening TLS config for Raft and commit traffic:
// c itself, or with authorize, a copy that refuses every certificate but a
// peer's, since clients of the same CA have no business there.
func peersOnly(c *tls.Config, authorize func(*x509.Certificate) bool) *tls.Config {
	if c == nil || authorize == nil {
		return c
	}
	c = c.Clone()
	verify := c.VerifyConnection
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || !authorize(cs.PeerCertificates[0]) {
			return errors.New("peer: not a peer certificate")
		}
		if verify != nil {
			return verify(cs)
		}
		return nil
	}
	return c
}
