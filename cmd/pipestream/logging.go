package main

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
)

// shutdownNoise is a slog.Handler that, once told that this process is
// shutting its peers down, logs hashicorp/raft's records at debug level.
// Raft does not know that the shutdown is wanted: its transport reports
// each inbound connection the shutdown closes as an error,
//
//	level=ERROR msg="failed to decode incoming command" logger=raft.transport error="... use of closed network connection"
//
// and a leader whose followers stop first reports every heartbeat it can
// no longer send. Errors of the shutdown itself are returned by
// peer.Shutdown, not logged. Other records pass through unchanged.
type shutdownNoise struct {
	slog.Handler
	closing *atomic.Bool
}

// newLogger returns a logger writing through h and a function that marks
// the start of a shutdown.
func newLogger(h slog.Handler) (*slog.Logger, func()) {
	n := &shutdownNoise{Handler: h, closing: new(atomic.Bool)}
	return slog.New(n), func() { n.closing.Store(true) }
}

func (n *shutdownNoise) Handle(ctx context.Context, r slog.Record) error {
	if n.closing.Load() && r.Level > slog.LevelDebug && fromRaft(r) {
		if !n.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return n.Handler.Handle(ctx, r)
}

func (n *shutdownNoise) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &shutdownNoise{Handler: n.Handler.WithAttrs(attrs), closing: n.closing}
}

func (n *shutdownNoise) WithGroup(name string) slog.Handler {
	return &shutdownNoise{Handler: n.Handler.WithGroup(name), closing: n.closing}
}

// fromRaft reports whether hashicorp/raft logged r: package raft names
// its loggers "raft" and "raft.<part>".
func fromRaft(r slog.Record) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "logger" {
			return true
		}
		name := a.Value.String()
		found = name == "raft" || strings.HasPrefix(name, "raft.")
		return false
	})
	return found
}
