package raft

import (
	"errors"
	"fmt"
)

var (
	// ErrConfig reports an invalid Config or peer list.
	ErrConfig = errors.New("raft: invalid configuration")
	// ErrNotStarted is returned by calls that need a started Node.
	ErrNotStarted = errors.New("raft: node not started")
	// ErrClosed is returned once the Node has been shut down.
	ErrClosed = errors.New("raft: node shut down")
	// ErrNoLeader is returned by Commit when no leader accepted the entry
	// before the context expired.
	ErrNoLeader = errors.New("raft: no leader")
	// ErrNotLeader is returned by ApplyData on a peer that is not the leader.
	ErrNotLeader = errors.New("raft: not the leader")
	// ErrTooLarge is returned for an entry or message over MaxMessageSize.
	ErrTooLarge = errors.New("raft: message too large")
	// ErrBadEntry reports a log entry or forwarded message that does not
	// decode.
	ErrBadEntry = errors.New("raft: malformed entry")
	// ErrCommitFailed is returned by Commit when the leader refused the
	// entry for a reason other than leadership.
	ErrCommitFailed = errors.New("raft: commit failed")

	// Errors of membership changes. A change that a peer forwards to the
	// leader fails with the leader's error, so errors.Is works on either.

	// ErrUnknownMember: the id names no member (or no voter, for a
	// leadership transfer).
	ErrUnknownMember = errors.New("raft: unknown member")
	// ErrMemberExists: the id is a member already, with other addresses,
	// or an address is another member's.
	ErrMemberExists = errors.New("raft: member exists")
	// ErrIDRemoved: the id was removed from the group, and ids are never
	// used again.
	ErrIDRemoved = errors.New("raft: id removed from the group")
	// ErrLastVoter: removing the member would leave no voter.
	ErrLastVoter = errors.New("raft: last voter")
	// ErrNotJoinable: the peer to add does not answer as itself at its
	// commit address, or has a Raft log of its own.
	ErrNotJoinable = errors.New("raft: peer cannot join")
	// ErrChangeFailed: the leader refused a membership change for another
	// reason.
	ErrChangeFailed = errors.New("raft: membership change failed")
)

// LinkError is returned by Commit when the entry committed but this peer's
// Linker failed to link it. The reply still names the committed entry.
type LinkError struct {
	Index, Term uint64
	Err         error
}

func (e *LinkError) Error() string {
	return fmt.Sprintf("raft: link failed for entry %d (term %d): %v", e.Index, e.Term, e.Err)
}

func (e *LinkError) Unwrap() error { return e.Err }
