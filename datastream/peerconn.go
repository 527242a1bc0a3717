package datastream

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

// peerConn is what a write connection (conn) and a read connection
// (readConn) to a peer share: how their channel is set up, how its last
// stage reports a peer that breaks the protocol or goes away, and the
// error that ended the connection.
type peerConn struct {
	c    *Client
	peer group.Member
	// kind names the connection in the log.
	kind string

	// mu guards dead, and the table of what is open on the connection
	// that the embedding type keeps.
	mu sync.Mutex
	// dead is why the connection ended, once it has: nothing more is
	// opened on it then.
	dead error
}

func (pc *peerConn) isDead() bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.dead != nil
}

func (pc *peerConn) err() error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.dead
}

func (pc *peerConn) markDead(err error) {
	pc.mu.Lock()
	if pc.dead == nil {
		pc.dead = err
	}
	pc.mu.Unlock()
}

// endAll marks pc dead with err, unless it already is, and returns what is
// open on it, from its table open, for the caller to fail outside the lock:
// nothing is added to a dead connection, so nothing is missed.
func endAll[T any](pc *peerConn, open map[uint64]T, err error) []T {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.dead == nil {
		pc.dead = err
	}
	return slices.Collect(maps.Values(open))
}

// initChannel sets up a new channel: frames in, then last, the stage named
// name that takes the replies. A channel that cannot be set up is closed,
// which fails what waits on it.
func (pc *peerConn) initChannel(ch transport.Channel, name string, last pipeline.Handler) {
	frames, err := dscodec.NewPacketFrameDecoder(dscodec.DefaultMaxPacketFrame)
	if err == nil {
		err = ch.Pipeline().AddLast("frame", frames)
	}
	if err == nil {
		err = ch.Pipeline().AddLast(name, last)
	}
	if err != nil {
		pc.c.opts.logger.Error("datastream: cannot set up "+pc.kind, "err", err)
		_ = ch.Close()
	}
}

// lost is the error of what was open on the connection when it ended.
func (pc *peerConn) lost() error {
	return fmt.Errorf("%w: %s", ErrConnectionLost, pc.peer.ID)
}

// badReply passes on a reply that breaks the protocol, for closeOnError.
func (pc *peerConn) badReply(ctx *pipeline.Context, err error) {
	ctx.FireError(fmt.Errorf("datastream: from %s: %w", pc.peer.ID, err))
}

// closeOnError closes the connection: a peer that breaks the protocol
// cannot be trusted with anything more on it.
func (pc *peerConn) closeOnError(ctx *pipeline.Context, err error) {
	pc.c.opts.logger.Warn("datastream: "+pc.kind+" failed", "peer", pc.peer.ID, "err", err)
	_ = ctx.Close()
}
