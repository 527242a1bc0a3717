package handler

import (
	"log/slog"

	"github.com/pipestream/pipestream/statemachine"
)

// StreamKey identifies a stream: the client that opened it and its id.
type StreamKey = statemachine.StreamKey

// Successor is a connection to a peer that streams are forwarded to. Many
// streams share one; *pipeline.Pipeline implements it.
type Successor interface {
	Write(msg any) error
	Flush() error
}

// PeerDialer returns the connection to the peer with the given id. It must
// not block: the router calls it on an event loop, so an implementation
// keeps connections up in the background and fails fast when one is down.
type PeerDialer func(id string) (Successor, error)

// Config is what the stages of every connection of one server share. ID,
// Peers, Dial and StateMachine are required; the settings are in the
// embedded Policy, Limits and Timeouts, which server.Config and
// peer.Config embed too.
type Config struct {
	// ID is this peer's id in the group.
	ID string
	// Peers lists every peer id of the group, this one included. Routing
	// tables may only name these.
	Peers []string
	// Dial reaches successors.
	Dial PeerDialer
	// StateMachine stores the streams.
	StateMachine statemachine.StateMachine
	// Committer commits closed streams on the primary. Nil runs
	// standalone: each peer links its stream as soon as CLOSE succeeded
	// everywhere downstream, under a local index.
	Committer statemachine.Committer
	// Events, if set, is told of streams, packets and connections; see
	// Events for what an implementation may do.
	Events Events
	// Logger receives the log; nil means slog.Default().
	Logger *slog.Logger

	Policy
	Limits
	Timeouts
}
