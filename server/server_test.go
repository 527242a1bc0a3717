package server_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

func protoMarshal(m proto.Message) ([]byte, error) { return proto.Marshal(m) }

// TestReplicate streams 50 concurrent streams of random sizes up to 64 MiB,
// in random packet sizes from 4 KiB to 1 MiB, through three peers, and checks
// that every peer committed the same bytes.
func TestReplicate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		table  func(ids ...string) *pb.RoutingTable
		inline bool // server.Config.InlineWrites: Memory's Write never blocks
	}{
		{"chain", pb.Chain, false},
		{"star", func(ids ...string) *pb.RoutingTable { return pb.Star(ids[0], ids[1:]...) }, false},
		{"chain-inline", pb.Chain, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			g := startGroup(t, 3, groupOpts{tweak: func(c *server.Config) { c.InlineWrites = tc.inline }})
			c := g.client(t)
			ids := []string{g.peers[0].ID, g.peers[1].ID, g.peers[2].ID}
			const streams = 50
			rng := rand.New(rand.NewPCG(1, uint64(len(tc.name))))
			sizes := make([]int, streams)
			for i := range sizes {
				// Log-uniform sizes from 1 byte to 64 MiB, so that most
				// streams are small and a few are large; one is always
				// near the top.
				sizes[i] = int(float64(1) * pow2(rng.Float64()*26))
			}
			sizes[0] = 64<<20 - 12345
			var wg sync.WaitGroup
			type result struct {
				key  statemachine.StreamKey
				sum  [32]byte
				size int
			}
			results := make([]result, streams)
			for i := 0; i < streams; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
					defer cancel()
					data := randomBytes(uint64(i), sizes[i])
					out, err := c.Stream(ctx, []byte(fmt.Sprintf("stream-%d", i)), datastream.WithRoutingTable(tc.table(ids...)))
					if err != nil {
						t.Error(err)
						return
					}
					prng := rand.New(rand.NewPCG(uint64(i), 7))
					for off := 0; off < len(data); {
						n := min(len(data)-off, 4<<10+prng.IntN(1<<20-4<<10+1))
						out.WriteAsync(ctx, data[off:off+n])
						off += n
					}
					reply, err := out.Close(ctx).Wait(ctx)
					if err != nil {
						t.Errorf("stream %d (%d bytes): %v", i, len(data), err)
						return
					}
					if reply.RaftClientReply.GetLogIndex() == 0 || !reply.RaftClientReply.GetSuccess() {
						t.Errorf("stream %d: reply %v", i, reply.RaftClientReply)
					}
					results[i] = result{key(c, out), sum(data), len(data)}
				}()
			}
			wg.Wait()
			for i, r := range results {
				for p := range g.servers {
					got, ok := g.memory(p).Sum(r.key)
					if !ok || got != r.sum {
						t.Errorf("stream %d (%d bytes) on %s: committed=%v, checksum match=%v", i, r.size, g.peers[p].ID, ok, got == r.sum)
					}
				}
			}
			for p := range g.servers {
				if n := g.memory(p).Open(); n != 0 {
					t.Errorf("%s has %d streams neither committed nor cleaned up", g.peers[p].ID, n)
				}
			}
		})
	}
}

func pow2(x float64) float64 {
	r := 1.0
	for x >= 1 {
		r *= 2
		x--
	}
	return r * (1 + x*0.6931471805599453) // close enough for a size spread
}

// TestReplicateNetConn runs one stream through the net.Conn transport, so
// that both transports carry the same stages.
func TestReplicateNetConn(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{kind: transport.NetConn})
	c := g.client(t, datastream.WithTransport(transport.NetConn))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	data := randomBytes(99, 5<<20+7)
	out := openStream(t, ctx, c, "netconn")
	if _, err := out.Writer(ctx).Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for p := range g.servers {
		if got, ok := g.memory(p).Sum(key(c, out)); !ok || got != sum(data) {
			t.Errorf("%s: committed=%v, checksum match=%v", g.peers[p].ID, ok, got == sum(data))
		}
	}
}

func TestUnknownStreamAndDataBeforeHeader(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	r := dialRaw(t, g.peers[0].StreamAddr)

	r.data(7, 0, []byte("no header was sent"))
	h, _ := r.reply()
	if h.GetSuccess() || h.GetErrorCode() != pb.ErrorCode_UNKNOWN_STREAM {
		t.Fatalf("reply = %v, want UNKNOWN_STREAM", h)
	}
	// The connection still serves a proper stream.
	r.open(8, g.peers[0].ID)
	r.data(8, 0, []byte("hello"), pb.DataStreamPacketHeader_CLOSE)
	h, rcr := r.reply()
	if !h.GetSuccess() || h.GetBytesWritten() != 5 || !rcr.GetSuccess() {
		t.Fatalf("close reply = %v, %v", h, rcr)
	}
}

func TestDuplicateHeader(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	r := dialRaw(t, g.peers[0].StreamAddr)
	req := r.request(1, g.peers[0].ID, nil)
	r.header(1, req)
	if h, _ := r.reply(); !h.GetSuccess() {
		t.Fatalf("header reply = %v", h)
	}
	r.header(1, req)
	if h, _ := r.reply(); h.GetErrorCode() != pb.ErrorCode_DUPLICATE_HEADER {
		t.Fatalf("second header reply = %v, want DUPLICATE_HEADER", h)
	}
	// The first stream is unaffected.
	r.data(1, 0, []byte("abc"), pb.DataStreamPacketHeader_CLOSE)
	if h, _ := r.reply(); !h.GetSuccess() {
		t.Fatalf("close reply = %v", h)
	}
}

func TestBadHeaders(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	r := dialRaw(t, g.peers[0].StreamAddr)
	cases := []struct {
		name string
		send func()
		want pb.ErrorCode
	}{
		{"request does not decode", func() {
			r.sendFrame(&pb.DataStreamPacketHeader{ClientId: r.client, Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: 1, DataLength: 3}, []byte{0xff, 0xff, 0xff})
		}, pb.ErrorCode_BAD_HEADER},
		{"unknown primary", func() { r.header(2, r.request(2, "nobody", nil)) }, pb.ErrorCode_BAD_ROUTING},
		{"routing table with a loop", func() {
			ids := []string{g.peers[0].ID, g.peers[1].ID, g.peers[2].ID}
			tbl := pb.Chain(ids...)
			tbl.Routes[2].Successors = []string{ids[1]}
			r.header(3, r.request(3, ids[0], tbl))
		}, pb.ErrorCode_BAD_ROUTING},
		{"unknown option", func() {
			r.sendFrame(&pb.DataStreamPacketHeader{ClientId: r.client, Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: 4, Options: 1 << 20}, nil)
		}, pb.ErrorCode_BAD_HEADER},
	}
	for _, tc := range cases {
		tc.send()
		if h, _ := r.reply(); h.GetSuccess() || h.GetErrorCode() != tc.want {
			t.Errorf("%s: reply = %v, want %v", tc.name, h, tc.want)
		}
	}
	for p := range g.servers {
		if n := g.servers[p].Streams().Active(); n != 0 {
			t.Errorf("%s has %d open streams after refused headers", g.peers[p].ID, n)
		}
	}
}

func TestOffsetMismatch(t *testing.T) {
	for _, tc := range []struct {
		name   string
		offset uint64
	}{{"gap", 10}, {"overlap", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			g := startGroup(t, 3, groupOpts{sm: func(int) statemachine.StateMachine { return statemachine.NewMemory() }})
			r := dialRaw(t, g.peers[0].StreamAddr)
			r.header(1, r.request(1, g.peers[0].ID, nil))
			r.reply()
			r.data(1, 0, []byte("0123"))
			if h, _ := r.reply(); !h.GetSuccess() {
				t.Fatalf("first data reply = %v", h)
			}
			r.data(1, tc.offset, []byte("xyz"))
			if h, _ := r.reply(); h.GetErrorCode() != pb.ErrorCode_OFFSET_MISMATCH {
				t.Fatalf("reply = %v, want OFFSET_MISMATCH", h)
			}
			g.waitClean(t)
		})
	}
}

// waitClean waits until no peer holds an open stream or uncommitted data:
// failures release resources asynchronously, on executors and across
// peers, so the test waits for that state, bounded.
func (g *cluster) waitClean(t *testing.T) {
	t.Helper()
	g.waitCleanWithin(t, 10*time.Second)
}

// waitCleanWithin is waitClean with a bound of d.
func (g *cluster) waitCleanWithin(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		busy := ""
		for p, s := range g.servers {
			m, ok := g.sms[p].(*statemachine.Memory)
			switch {
			case s.Streams().Active() != 0:
				busy = fmt.Sprintf("%s has %d open streams", g.peers[p].ID, s.Streams().Active())
			case ok && m.Open() != 0:
				busy = fmt.Sprintf("%s holds %d uncommitted streams", g.peers[p].ID, m.Open())
			}
		}
		if busy == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(busy)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// failingSM fails writes once a stream has more than limit bytes.
type failingSM struct {
	*statemachine.Memory
	limit int
}

var errDiskFull = errors.New("disk full")

func (f *failingSM) OpenStream(ctx context.Context, k statemachine.StreamKey, req *pb.RaftClientRequest) (statemachine.DataChannel, error) {
	ch, err := f.Memory.OpenStream(ctx, k, req)
	return &failingChannel{DataChannel: ch, left: f.limit}, err
}

type failingChannel struct {
	statemachine.DataChannel
	left int
}

func (c *failingChannel) Write(p []byte) (int, error) {
	if len(p) > c.left {
		return 0, errDiskFull
	}
	c.left -= len(p)
	return c.DataChannel.Write(p)
}

// TestStateMachineFailure fails a stream's write on each peer in turn:
// the client hears of it, and no peer commits the stream. The peers run
// with a Committer, as with Raft, which links only a stream that closed on
// every peer; standalone, a peer after the failing one may link at its own
// CLOSE before the ABORT arrives (see TestFaultSuccessorKilled), and the
// faster a forward leaves, the likelier that is.
func TestStateMachineFailure(t *testing.T) {
	for failing := 0; failing < 3; failing++ {
		t.Run(peerID(failing), func(t *testing.T) {
			buffertest.Check(t)
			g := startGroup(t, 3, groupOpts{quorum: handler.QuorumAll, sm: func(i int) statemachine.StateMachine {
				if i == failing {
					return &failingSM{Memory: statemachine.NewMemory(), limit: 1 << 20}
				}
				return statemachine.NewMemory()
			}})
			g.commitByFanout()
			c := g.client(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out := openStream(t, ctx, c, "doomed")
			var last *datastream.Future[*datastream.Reply]
			for i := 0; i < 4; i++ {
				last = out.WriteAsync(ctx, make([]byte, 512<<10))
			}
			_, err := out.Close(ctx).Wait(ctx)
			if !errors.Is(err, datastream.ErrStateMachine) && !errors.Is(err, datastream.ErrSuccessorFailed) {
				t.Fatalf("close: %v, want a state machine or successor failure", err)
			}
			if _, err := last.Wait(ctx); err == nil {
				t.Fatal("a write after the failure succeeded")
			}
			g.waitClean(t)
			for p := range g.servers {
				if n := len(g.memory0(p).Committed()); n != 0 {
					t.Errorf("%s committed %d streams after a failure", g.peers[p].ID, n)
				}
			}
		})
	}
}

func (g *cluster) memory0(i int) *statemachine.Memory {
	switch sm := g.sms[i].(type) {
	case *failingSM:
		return sm.Memory
	default:
		return sm.(*statemachine.Memory)
	}
}

// TestOtherStreamsCarryOn fails one stream and completes another over the
// same connection at the same time.
func TestOtherStreamsCarryOn(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.header(1, r.request(1, g.peers[0].ID, nil))
	r.header(2, r.request(2, g.peers[0].ID, nil))
	r.reply()
	r.reply()
	r.data(1, 5, []byte("bad offset"))
	r.data(2, 0, []byte("good"), pb.DataStreamPacketHeader_CLOSE)
	got := map[uint64]*pb.DataStreamReplyHeader{}
	for i := 0; i < 2; i++ {
		h, _ := r.reply()
		got[h.GetPacketHeader().GetStreamId()] = h
	}
	if got[1].GetErrorCode() != pb.ErrorCode_OFFSET_MISMATCH || !got[2].GetSuccess() {
		t.Fatalf("replies = %v", got)
	}
}

// TestSuccessorDown refuses a stream whose successor is not connected, and
// fails a stream whose successor dies mid-stream, on every peer.
func TestSuccessorDies(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{quorum: handler.QuorumAll, sm: func(int) statemachine.StateMachine { return statemachine.NewMemory() }})
	c := g.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := openStream(t, ctx, c, "mid-stream")
	if _, err := out.WriteAsync(ctx, make([]byte, 64<<10)).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// The last peer of the chain goes away.
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := g.servers[2].Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	_, err := out.Close(ctx).Wait(ctx)
	if err == nil {
		t.Fatal("close succeeded with a dead successor")
	}
	g.servers, g.sms, g.peers = g.servers[:2], g.sms[:2], g.peers[:2]
	g.waitClean(t)
	for p := range g.servers {
		if n := len(g.memory(p).Committed()); n != 0 {
			t.Errorf("%s committed a stream whose successor died", g.peers[p].ID)
		}
	}
	// A new stream through the dead peer is refused at once.
	out2, err := c.Stream(ctx, []byte("after"))
	if err == nil {
		_, err = out2.HeaderFuture().Wait(ctx)
	}
	if !errors.Is(err, datastream.ErrSuccessorFailed) {
		t.Fatalf("stream through a dead peer: %v, want SUCCESSOR_FAILED", err)
	}
}

type statemachineSM = statemachine.StateMachine

func newMemory() *statemachine.Memory { return statemachine.NewMemory() }

// openStream starts a stream on c whose message is name, and fails the
// test if it cannot.
func openStream(t testing.TB, ctx context.Context, c *datastream.Client, name string, opts ...datastream.StreamOption) *datastream.Output {
	t.Helper()
	out, err := c.Stream(ctx, []byte(name), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestHeaderRequestChecks(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 1, groupOpts{tweak: func(c *server.Config) { c.GroupID = []byte("group-1") }})
	r := dialRaw(t, g.peers[0].StreamAddr)
	for _, tc := range []struct {
		name string
		edit func(*pb.RaftClientRequest)
		want pb.ErrorCode
	}{
		{"not a stream request", func(q *pb.RaftClientRequest) { q.Type = pb.RaftClientRequest_WRITE }, pb.ErrorCode_BAD_HEADER},
		{"another group", func(q *pb.RaftClientRequest) { q.GroupId = []byte("group-2") }, pb.ErrorCode_GROUP_MISMATCH},
		{"this group", func(*pb.RaftClientRequest) {}, pb.ErrorCode_ERROR_NONE},
	} {
		req := r.request(1, g.peers[0].ID, nil)
		req.GroupId = []byte("group-1")
		tc.edit(req)
		r.header(1, req)
		if h, _ := r.reply(); h.GetErrorCode() != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, h, tc.want)
		}
	}
}
