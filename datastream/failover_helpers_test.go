package datastream_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/smtest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

// pausableSM is a Memory whose writes wait while it is paused, so that a
// test can keep packets unacknowledged when the primary fails.
type pausableSM struct {
	smtest.Wrapper
	gate atomic.Pointer[chan struct{}] // nil: not paused
}

func newPausable() *pausableSM {
	m := new(pausableSM)
	m.Wrapper = smtest.Wrapper{
		Memory: statemachine.NewMemory(),
		Wrap: func(ch statemachine.DataChannel) statemachine.DataChannel {
			return &pausableChannel{smtest.Channel{DataChannel: ch}, m}
		},
	}
	return m
}

func (m *pausableSM) pause() {
	ch := make(chan struct{})
	m.gate.Store(&ch)
}

func (m *pausableSM) resume() {
	if ch := m.gate.Swap(nil); ch != nil {
		close(*ch)
	}
}

type pausableChannel struct {
	smtest.Channel
	sm *pausableSM
}

func (c *pausableChannel) Write(p []byte) (int, error) {
	if ch := c.sm.gate.Load(); ch != nil {
		<-*ch
	}
	return c.DataChannel.Write(p)
}

// Close waits too, so that a CLOSE stays unacknowledged.
func (c *pausableChannel) Close() error {
	if ch := c.sm.gate.Load(); ch != nil {
		<-*ch
	}
	return c.DataChannel.Close()
}

func (c *pausableChannel) Truncate(n uint64) error {
	return c.DataChannel.(statemachine.Truncater).Truncate(n)
}

// logCommitter stands in for Raft: it commits a stream's entry by linking
// it on every peer not marked down, in log order, as each peer's log
// applier would; a key committed already gets its first entry back, as
// raft.Node's deduplication gives it.
type logCommitter struct {
	mu      sync.Mutex
	servers []*server.Server
	down    map[int]bool
	entries map[statemachine.StreamKey]statemachine.Entry
}

func (l *logCommitter) Commit(ctx context.Context, s statemachine.StreamInfo) (*pb.RaftClientReply, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[s.Key]
	if !ok {
		e = statemachine.Entry{Index: uint64(len(l.entries) + 1), Term: 1, Key: s.Key, Request: s.Request, Length: s.Length,
			Checksum: s.Checksum, Checksummed: s.Checksummed, Holders: s.Holders, Epoch: s.Epoch}
		l.entries[s.Key] = e
		for i, p := range l.servers {
			if l.down[i] {
				continue
			}
			if err := p.Streams().Link(ctx, e); err != nil {
				return nil, fmt.Errorf("link on %s: %w", p.ID(), err)
			}
		}
	}
	return &pb.RaftClientReply{ClientId: s.Request.GetClientId(), CallId: s.Request.GetCallId(),
		Success: true, LogIndex: e.Index, Term: e.Term}, nil
}

// stop marks peer i down in the log, then shuts it down.
func (l *logCommitter) stop(g *cluster, i int) {
	l.mu.Lock()
	l.down[i] = true
	l.mu.Unlock()
	g.stop(i)
}

// failoverGroup starts three peers that commit through a logCommitter, the
// last of which can be paused, with a reply timeout short enough that
// what a failed primary keeps is dropped within a test. The cleanup
// resumes the paused peer.
func failoverGroup(t *testing.T, quorum int) (*cluster, *pausableSM, *logCommitter) {
	last := newPausable()
	g := startGroup(t, 3, groupOpts{
		sm: func(i int) statemachine.StateMachine {
			if i == 2 {
				return last
			}
			return statemachine.NewMemory()
		},
		tweak: func(c *server.Config) {
			c.ReplyTimeout, c.SweepInterval, c.WriteQuorum = 3*time.Second, 20*time.Millisecond, quorum
		},
	})
	t.Cleanup(last.resume)
	lc := &logCommitter{servers: g.servers, down: map[int]bool{}, entries: map[statemachine.StreamKey]statemachine.Entry{}}
	for _, s := range g.servers {
		s.SetCommitter(lc)
	}
	return g, last, lc
}

// sendAll sends data in packets of size packet from offset from, and
// returns once they are queued.
func sendAll(ctx context.Context, out *datastream.Output, data []byte, from, packet int) error {
	for off := from; off < len(data); off += packet {
		if err := out.Send(ctx, buffer.Copy(data[off:min(off+packet, len(data))])); err != nil {
			return fmt.Errorf("send at %d: %w", off, err)
		}
	}
	return nil
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

func sha(b []byte) [32]byte { return sha256.Sum256(b) }

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
