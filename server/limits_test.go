package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/internal/smtest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

func TestStreamLimits(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 1, groupOpts{tweak: func(c *server.Config) {
		c.MaxStreamsPerConn = 2
		c.MaxStreams = 3
	}})
	a := dialRaw(t, g.peers[0].StreamAddr)
	for id := uint64(1); id <= 2; id++ {
		a.open(id, g.peers[0].ID)
	}
	a.header(3, a.request(3, g.peers[0].ID, nil))
	if h, _ := a.reply(); h.GetErrorCode() != pb.ErrorCode_LIMIT_EXCEEDED {
		t.Fatalf("third stream on one connection: %v, want LIMIT_EXCEEDED", h)
	}

	b := dialRaw(t, g.peers[0].StreamAddr)
	b.client = []byte("another-client!!")
	b.open(1, g.peers[0].ID)
	b.header(2, b.request(2, g.peers[0].ID, nil))
	if h, _ := b.reply(); h.GetErrorCode() != pb.ErrorCode_LIMIT_EXCEEDED {
		t.Fatalf("fourth stream on the peer: %v, want LIMIT_EXCEEDED", h)
	}

	// Closing a stream gives its place back.
	a.data(1, 0, nil, pb.DataStreamPacketHeader_CLOSE)
	if h, _ := a.reply(); !h.GetSuccess() {
		t.Fatalf("close: %v", h)
	}
	a.open(4, g.peers[0].ID)
}

func TestConnectionBoundToClient(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 1, groupOpts{})
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.header(1, r.request(1, g.peers[0].ID, nil))
	r.reply()

	other := []byte("intruder-client!")
	r.client, other = other, r.client
	r.header(2, r.request(2, g.peers[0].ID, nil))
	if h, _ := r.reply(); h.GetErrorCode() != pb.ErrorCode_FORBIDDEN {
		t.Fatalf("header for another client: %v, want FORBIDDEN", h)
	}
	r.data(1, 0, []byte("x"))
	if h, _ := r.reply(); h.GetErrorCode() != pb.ErrorCode_FORBIDDEN {
		t.Fatalf("data for another client's stream: %v, want FORBIDDEN", h)
	}

	// Nor can a second connection write to the first one's stream.
	r2 := dialRaw(t, g.peers[0].StreamAddr)
	r2.client = other
	r2.data(1, 0, []byte("x"))
	if h, _ := r2.reply(); h.GetErrorCode() != pb.ErrorCode_FORBIDDEN {
		t.Fatalf("data from another connection: %v, want FORBIDDEN", h)
	}
	r.client = other
	r.data(1, 0, []byte("mine"), pb.DataStreamPacketHeader_CLOSE)
	if h, _ := r.reply(); !h.GetSuccess() || h.GetBytesWritten() != 4 {
		t.Fatalf("the owner's close: %v", h)
	}
}

func TestConnectionByteLimit(t *testing.T) {
	buffertest.Check(t)
	hold := smtest.NewGate(0)
	g := startGroup(t, 1, groupOpts{
		sm:    func(int) statemachineSM { return hold.Hold(newMemory()) },
		tweak: func(c *server.Config) { c.MaxConnBytes = 1 << 20 },
	})
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.header(1, r.request(1, g.peers[0].ID, nil))
	r.reply()
	// The state machine holds the writes, so nothing is answered: the
	// second packet would put the connection over its limit.
	r.data(1, 0, make([]byte, 600<<10))
	r.data(1, 600<<10, make([]byte, 600<<10))
	// Refusing the second packet fails the stream; only then may the first
	// write finish.
	deadline := time.Now().Add(10 * time.Second)
	k := statemachine.StreamKey{ClientID: string(r.client), StreamID: 1}
	// A failed stream leaves the table once its replies are out; the
	// header was answered, so a missing stream has failed too.
	for st := g.servers[0].Streams().Lookup(k); st != nil && st.Err() == nil; st = g.servers[0].Streams().Lookup(k) {
		if time.Now().After(deadline) {
			t.Fatal("the stream is still open after a packet over the limit")
		}
		time.Sleep(time.Millisecond)
	}
	hold.Open()
	first, _ := r.reply()
	second, _ := r.reply()
	if second.GetErrorCode() != pb.ErrorCode_LIMIT_EXCEEDED {
		t.Fatalf("packet over the connection's limit: %v, want LIMIT_EXCEEDED", second)
	}
	if first.GetSuccess() {
		t.Fatalf("the stream went on after a refused packet: %v", first)
	}
	g.waitClean(t)
}

func TestIdleStreamTimesOut(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{tweak: func(c *server.Config) { c.IdleTimeout = 200 * time.Millisecond }})
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.open(1, g.peers[0].ID)
	// Nothing more is sent; every peer drops the stream on its own.
	g.waitClean(t)
	r.data(1, 0, []byte("late"))
	if h, _ := r.reply(); h.GetErrorCode() != pb.ErrorCode_TIMEOUT {
		t.Fatalf("data after the idle timeout: %v, want its cause, TIMEOUT", h)
	}
}

// slowStore is a Memory whose writes take longer than the idle timeout.
type slowStore struct {
	*statemachine.Memory
	delay time.Duration
}

func (s slowStore) OpenStream(ctx context.Context, k statemachine.StreamKey, req *pb.RaftClientRequest) (statemachine.DataChannel, error) {
	ch, err := s.Memory.OpenStream(ctx, k, req)
	return slowChannel{ch, s.delay}, err
}

type slowChannel struct {
	statemachine.DataChannel
	delay time.Duration
}

func (c slowChannel) Write(p []byte) (int, error) {
	time.Sleep(c.delay)
	return c.DataChannel.Write(p)
}

// A stream whose client waits for replies is not idle: a write that takes
// longer than the idle timeout does not fail it.
func TestSlowWriteIsNotIdle(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{
		tweak: func(c *server.Config) { c.IdleTimeout = 100 * time.Millisecond },
		sm: func(int) statemachine.StateMachine {
			return slowStore{statemachine.NewMemory(), 400 * time.Millisecond}
		},
	})
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.open(1, g.peers[0].ID)
	for i := range 2 {
		r.data(1, uint64(i*4), []byte("slow"))
		if h, _ := r.reply(); !h.GetSuccess() {
			t.Fatalf("packet %d: %v", i, h)
		}
	}
}

// A stream whose packets keep coming is not idle, however long it lasts:
// packets and their replies mark it active between sweeps, and the sweep
// that finds the mark restarts its idle time (handler's TestIdleFor has
// the bounds).
func TestSteadyStreamIsNotIdle(t *testing.T) {
	buffertest.Check(t)
	const idle = 500 * time.Millisecond
	g := startGroup(t, 3, groupOpts{tweak: func(c *server.Config) { c.IdleTimeout = idle }})
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.open(1, g.peers[0].ID)
	// Three idle timeouts in all, a packet every fifth of one.
	for i := range 15 {
		time.Sleep(idle / 5)
		r.data(1, uint64(i*6), []byte("steady"))
		if h, _ := r.reply(); !h.GetSuccess() {
			t.Fatalf("packet %d, %v into the stream: %v", i, time.Duration(i+1)*idle/5, h)
		}
	}
}
