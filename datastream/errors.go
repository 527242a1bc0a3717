package datastream

import (
	"errors"
	"fmt"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Errors a stream fails with. Errors a server reports are *pb.Error values
// matched by code: errors.Is(err, ErrUnknownStream) holds for any
// UNKNOWN_STREAM reply, and errors.As(err, &e) with e *pb.Error gives its
// message. See docs/protocol.md for the codes.
var (
	ErrUnknownStream   error = &pb.Error{Code: pb.ErrorCode_UNKNOWN_STREAM}
	ErrDuplicateHeader error = &pb.Error{Code: pb.ErrorCode_DUPLICATE_HEADER}
	ErrOffsetMismatch  error = &pb.Error{Code: pb.ErrorCode_OFFSET_MISMATCH}
	ErrBadHeader       error = &pb.Error{Code: pb.ErrorCode_BAD_HEADER}
	ErrBadRouting      error = &pb.Error{Code: pb.ErrorCode_BAD_ROUTING}
	ErrStateMachine    error = &pb.Error{Code: pb.ErrorCode_STATE_MACHINE}
	ErrSuccessorFailed error = &pb.Error{Code: pb.ErrorCode_SUCCESSOR_FAILED}
	ErrTimeout         error = &pb.Error{Code: pb.ErrorCode_TIMEOUT}
	ErrCommitFailed    error = &pb.Error{Code: pb.ErrorCode_COMMIT_FAILED}
	ErrNotLeader       error = &pb.Error{Code: pb.ErrorCode_NOT_LEADER}
	ErrLimitExceeded   error = &pb.Error{Code: pb.ErrorCode_LIMIT_EXCEEDED}
	ErrForbidden       error = &pb.Error{Code: pb.ErrorCode_FORBIDDEN}
	ErrCancelled       error = &pb.Error{Code: pb.ErrorCode_CANCELLED}
	ErrGroupMismatch   error = &pb.Error{Code: pb.ErrorCode_GROUP_MISMATCH}
	ErrInternal        error = &pb.Error{Code: pb.ErrorCode_INTERNAL}
	// ErrChecksum: a packet's data did not match its CRC32C on some peer;
	// it was corrupted on the way and nothing of the stream is committed.
	ErrChecksum error = &pb.Error{Code: pb.ErrorCode_CHECKSUM}
	// ErrNotEnoughPeers: fewer peers than the group's write quorum could
	// hold the stream; the message names the missing ones.
	ErrNotEnoughPeers error = &pb.Error{Code: pb.ErrorCode_NOT_ENOUGH_PEERS}
)

// Client-side errors.
var (
	// ErrClosed is returned for writes on a stream that was closed or
	// committed, and fails every stream of a client that is closed.
	ErrClosed = errors.New("datastream: closed")
	// ErrConnectionLost fails every stream on a connection to a primary
	// that ended, or, with failover, is the first cause of a stream that
	// no other peer could take over.
	ErrConnectionLost = errors.New("datastream: connection to peer lost")
	// ErrReplyTimeout fails a stream that had packets in flight and got no
	// reply for longer than the reply timeout (WithReplyTimeout).
	ErrReplyTimeout = errors.New("datastream: no reply within timeout")
	// ErrTooLarge is returned for a packet larger than a frame may carry.
	// Nothing is sent and the stream carries on.
	ErrTooLarge = errors.New("datastream: packet too large")
)

// CloseError is the error of a stream whose failed reply carried a
// RaftClientReply, as a CLOSE whose commit failed does: Reply keeps what
// the primary knew (LeaderHint, and LogIndex and Term where the entry got
// that far), which a caller retrying on the leader wants. errors.Is sees
// through it to the code, errors.Is(err, ErrNotLeader) say; errors.As(err,
// &ce) with ce *CloseError gives the reply.
type CloseError struct {
	Reply *pb.RaftClientReply
	Err   error
}

func (e *CloseError) Error() string {
	if e.Reply.GetLogIndex() == 0 {
		return e.Err.Error()
	}
	return fmt.Sprintf("%v (log index %d, term %d)", e.Err, e.Reply.GetLogIndex(), e.Reply.GetTerm())
}

func (e *CloseError) Unwrap() error { return e.Err }
