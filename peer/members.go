package peer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/raft"
)

// The group's membership lives in the Raft log (see package raft): every
// peer's Raft node calls membersChanged with the whole group each time it
// applies a membership entry or restores a snapshot holding one, and the
// peer hands the new list to the parts that reach the others: the stream
// server (connections, routing) and the repairer's client.

// AddMember adds m to the group, as raft.Node.AddMember does: m must be
// running, started with Config.Join and empty stores, and its id must be
// new to the group. Any member may be asked; one that is not the leader
// forwards the request. Every member then connects to m, and m catches up:
// Raft sends it the log or a snapshot, and its repairer fetches every copy
// it lacks from the others.
func (p *Peer) AddMember(ctx context.Context, m Member) error {
	if !complete(m) {
		return fmt.Errorf("%w: member %q lacks an address: %+v", ErrConfig, m.ID, m)
	}
	if _, err := p.node.AddMember(ctx, m); err != nil {
		return fmt.Errorf("peer %s: add %s: %w", p.cfg.ID, m.ID, err)
	}
	return nil
}

// RemoveMember removes the member named id from the group, as
// raft.Node.RemoveMember does. The removed peer, if it runs, sees Removed
// closed; its id is never used again.
func (p *Peer) RemoveMember(ctx context.Context, id string) error {
	if _, err := p.node.RemoveMember(ctx, id); err != nil {
		return fmt.Errorf("peer %s: remove %s: %w", p.cfg.ID, id, err)
	}
	return nil
}

// TransferLeadership hands Raft leadership to the voter to, or to another
// voter if to is empty, and returns the new leader's id once this peer
// knows it.
func (p *Peer) TransferLeadership(ctx context.Context, to string) (string, error) {
	id, err := p.node.TransferLeadership(ctx, to)
	if err != nil {
		return "", fmt.Errorf("peer %s: transfer leadership: %w", p.cfg.ID, err)
	}
	return id, nil
}

// Membership returns the group as this peer knows it: the members of the
// last membership entry it applied (or those it started with) and the
// voters of its Raft configuration.
func (p *Peer) Membership() (raft.Membership, error) { return p.node.Membership() }

// Removed returns a channel that is closed once this peer has applied a
// membership that no longer lists it: it was removed from the group.
func (p *Peer) Removed() <-chan struct{} { return p.removed }

// membersChanged is the Raft node's OnMembers. It runs on raft's FSM
// goroutine, possibly inside Start (a snapshot restored), and must not
// block: it takes memberMu only.
func (p *Peer) membersChanged(members []Member) {
	self := slices.ContainsFunc(members, func(m Member) bool { return m.ID == p.cfg.ID })
	p.memberMu.Lock()
	p.members = members
	p.memberMu.Unlock()
	p.srv.SetPeers(members)
	p.source.set(others(members, p.cfg.ID))
	if !self {
		p.removedOnce.Do(func() {
			p.cfg.Logger.Warn("peer: removed from the group", "peer", p.cfg.ID)
			close(p.removed)
		})
	}
}

// others returns the members other than id, as a client reaches them.
func others(members []Member, id string) []Member {
	var out []Member
	for _, m := range members {
		if m.ID != id {
			out = append(out, m)
		}
	}
	return out
}

// memberSource is the repairer's Source: a datastream client of the other
// members, made anew when they change. The client is made at the first
// Open, since a client needs a peer and a peer may start alone.
type memberSource struct {
	opts []datastream.Option

	mu     sync.Mutex
	peers  []Member
	c      *datastream.Client
	closed bool
	wg     sync.WaitGroup // closing old clients
}

var errNoOthers = errors.New("peer: no other member to read from")

func (s *memberSource) Open(ctx context.Context, name string, opts ...datastream.ReadOption) (*datastream.Reader, error) {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return nil, ErrClosed
	case len(s.peers) == 0:
		s.mu.Unlock()
		return nil, errNoOthers
	case s.c == nil:
		c, err := datastream.NewClient(s.peers, s.opts...)
		if err != nil {
			s.mu.Unlock()
			return nil, err
		}
		s.c = c
	}
	c := s.c
	s.mu.Unlock()
	return c.Open(ctx, name, opts...)
}

// ids returns the ids of the members read from.
func (s *memberSource) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, len(s.peers))
	for i, p := range s.peers {
		out[i] = p.ID
	}
	return out
}

// set replaces the members; the old client is closed in the background
// (reads still running on it fail, and their repairs are retried).
func (s *memberSource) set(peers []Member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || slices.Equal(s.peers, peers) {
		return
	}
	s.peers = peers
	if old := s.c; old != nil {
		s.c = nil
		s.wg.Go(func() { _ = old.Close() })
	}
}

func (s *memberSource) close() error {
	s.mu.Lock()
	s.closed = true
	c := s.c
	s.c = nil
	s.mu.Unlock()
	var err error
	if c != nil {
		err = c.Close()
	}
	s.wg.Wait()
	return err
}
