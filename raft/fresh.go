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
	return n.fresh.Load() && n.inTouch()
}

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
			n.fresh.Store(false)
			continue
		}
		if n.fresh.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, settleTimeout+statusTimeout)
		ok, _ := n.CaughtUp(ctx)
		cancel()
		// A leader elected while the question was out clears fresh
		// again; this answer may predate it.
		if ok && n.inTouch() {
			n.fresh.CompareAndSwap(false, true)
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
