package handler

import (
	"errors"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// ErrPeerClosed reports that the connection to a successor ended.
var ErrPeerClosed = errors.New("handler: connection to successor closed")

var errorf = pb.Errorf

// codeOf returns err as a *pb.Error, with code def unless it is one.
func codeOf(err error, def pb.ErrorCode) *pb.Error {
	var e *pb.Error
	if errors.As(err, &e) {
		return e
	}
	return &pb.Error{Code: def, Message: err.Error()}
}
