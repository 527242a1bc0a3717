package raft

import (
	"context"
	"fmt"
	"time"

	hraft "github.com/hashicorp/raft"
)

// Fresh implements statemachine.Freshness: it reports whether this peer's
// FSM had applied every stream entry the group had committed when it last
// asked the leader (CaughtUp), with no leader elected since, and whether
// the peer is still in touch: it leads, or heard from its leader within
// the heartbeat timeout, after which a follower would call an election.
//
// A peer that starts is not fresh until it has caught up; nor is one when
// a new leader is elected (the new leader's FSM may not yet have applied
// what the old one committed) or when it loses touch, until it has caught
// up again. In touch and fresh, it lags its leader by the replication of
// the entries in flight only. The watcher started with the Node asks the
// leader while the Node is not fresh.
func (n *Node) Fresh() bool {
	return n.caughtUp() && n.inTouch()
}

// caughtUp reports whether the watcher found the FSM caught up since the
// last leader change.
func (n *Node) caughtUp() bool { return n.freshAt.Load() == n.leaders.Load()+1 }

// inTouch reports whether this Node leads, or heard from its leader within
// the heartbeat timeout.
func (n *Node) inTouch() bool {
	r, err := n.started()
	if err != nil {
		return false
	}
	switch r.State() {
	case hraft.Leader:
		return true
	case hraft.Follower:
		last := r.LastContact()
		return !last.IsZero() && time.Since(last) < n.cfg.HeartbeatTimeout
	}
	return false
}

// watchFreshness asks the leader whether this Node has caught up, every
// tenth of the heartbeat timeout while it is not fresh, until Shutdown.
func (n *Node) watchFreshness() {
	defer n.wg.Done()
	t := time.NewTicker(max(n.cfg.HeartbeatTimeout/10, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		if !n.inTouch() {
			n.freshAt.Store(0)
			continue
		}
		if n.caughtUp() {
			continue
		}
		// The answer holds for the leader asked: one elected while the
		// question was out moves leaders on, and freshAt then lags it.
		at := n.leaders.Load() + 1
		ctx, cancel := context.WithTimeout(n.ctx, settleTimeout+statusTimeout)
		ok, _ := n.CaughtUp(ctx)
		cancel()
		if ok && n.inTouch() {
			n.freshAt.Store(at)
		}
	}
}

// WaitFresh waits until the Node is fresh (see Fresh), or ctx is done.
func (n *Node) WaitFresh(ctx context.Context) error {
	t := time.NewTicker(max(n.cfg.HeartbeatTimeout/20, time.Millisecond))
	defer t.Stop()
	for !n.Fresh() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("raft: %s has not caught up with its group: %w", n.cfg.ID, context.Cause(ctx))
		case <-n.ctx.Done():
			return ErrClosed
		case <-t.C:
		}
	}
	return nil
}
