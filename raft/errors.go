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
