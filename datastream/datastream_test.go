package datastream_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

func ids(g *group) []string {
	out := make([]string, len(g.peers))
	for i, p := range g.peers {
		out[i] = p.ID
	}
	return out
}

// TestStream streams through three peers on both transports and both
// routing shapes, reusing the caller's buffer after every WriteAsync, and
// checks every reply and what each peer committed.
func TestStream(t *testing.T) {
	for _, tc := range []struct {
		name  string
		kind  transport.Kind
		table func(ids []string) *pb.RoutingTable
	}{
		{"gnet/chain", transport.Gnet, nil},
		{"netconn/chain", transport.NetConn, nil},
		{"gnet/star", transport.Gnet, func(ids []string) *pb.RoutingTable { return pb.Star(ids[0], ids[1:]...) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			g := startGroup(t, 3, groupOpts{kind: tc.kind})
			c := g.client(t, datastream.WithTransport(tc.kind))
			ctx := testCtx(t)
			var opts []datastream.StreamOption
			if tc.table != nil {
				opts = append(opts, datastream.WithRoutingTable(tc.table(ids(g))))
			}
			out, err := c.Stream(ctx, []byte("blob"), opts...)
			if err != nil {
				t.Fatal(err)
			}
			data := randomBytes(1, 300<<10+7)
			const packet = 64 << 10
			scratch := make([]byte, packet)
			var futures []*datastream.Future[*datastream.Reply]
			var ends []uint64
			for off := 0; off < len(data); off += packet {
				n := copy(scratch, data[off:])
				var wo []datastream.WriteOption
				if off+n == len(data) {
					wo = append(wo, datastream.Sync)
				}
				futures = append(futures, out.WriteAsync(ctx, scratch[:n], wo...))
				ends = append(ends, uint64(off+n))
				copy(scratch, bytes.Repeat([]byte{0xee}, packet)) // the caller may reuse its bytes at once
			}
			reply, err := out.Close(ctx).Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if reply.BytesWritten() != uint64(len(data)) || !reply.RaftClientReply.GetSuccess() || reply.RaftClientReply.GetLogIndex() == 0 {
				t.Fatalf("close reply: %+v, %v", reply, reply.RaftClientReply)
			}
			if h, err := out.HeaderFuture().Wait(ctx); err != nil || h.Offset != 0 || h.Server != g.peers[0].ID {
				t.Fatalf("header: %v, %v", h, err)
			}
			for i, f := range futures {
				r, err := f.Wait(ctx)
				if err != nil || r.BytesWritten() != ends[i] {
					t.Fatalf("packet %d: %v, %v; want %d bytes written", i, r, err, ends[i])
				}
			}
			if rcr, err := out.RaftClientReplyFuture().Wait(ctx); err != nil || rcr.GetLogIndex() != reply.RaftClientReply.GetLogIndex() {
				t.Fatalf("RaftClientReplyFuture: %v, %v", rcr, err)
			}
			if err := out.Err(); err != nil {
				t.Fatalf("Err after commit: %v", err)
			}
			g.checkCommitted(t, c, out, data)
			for i := range g.servers {
				if n := g.memory(i).Syncs(); n != 1 {
					t.Errorf("%s synced %d times, want 1", g.peers[i].ID, n)
				}
			}
		})
	}
}

func writeTemp(t testing.TB, data []byte) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// TestWriteFile streams a file region in several packets: with sendfile on
// net.Conn and with pooled reads on gnet. The file is closed as soon as
// WriteFile returns, which its contract allows.
func TestWriteFile(t *testing.T) {
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		t.Run(kind.String(), func(t *testing.T) {
			buffertest.Check(t)
			g := startGroup(t, 3, groupOpts{kind: kind, sm: func(int) statemachine.StateMachine { return statemachine.NewMemoryHashing() }})
			c := g.client(t, datastream.WithTransport(kind), datastream.WithPacketSize(256<<10))
			ctx := testCtx(t)
			data := randomBytes(2, 3<<20+13)
			f := writeTemp(t, data)
			out, err := c.Stream(ctx, []byte("file"))
			if err != nil {
				t.Fatal(err)
			}
			const pos = 1000
			count := int64(len(data) - 2*pos)
			last := out.WriteFile(ctx, f, pos, count, datastream.Flush)
			_ = f.Close()
			if r, err := last.Wait(ctx); err != nil || r.BytesWritten() != uint64(count) {
				t.Fatalf("last packet: %v, %v", r, err)
			}
			if _, err := out.Close(ctx).Wait(ctx); err != nil {
				t.Fatal(err)
			}
			g.checkCommitted(t, c, out, data[pos:pos+count])
		})
	}
}

// A region WriteFile cannot send fails before anything is sent, and the
// stream carries on; an empty region is an empty packet.
func TestWriteFileBadRegion(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 1, groupOpts{})
	c := g.client(t)
	ctx := testCtx(t)
	f := writeTemp(t, []byte("0123456789"))
	out, err := c.Stream(ctx, []byte("file"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ pos, count int64 }{{5, 6}, {-1, 2}, {0, -1}, {11, 0}} {
		if _, err := out.WriteFile(ctx, f, r.pos, r.count).Wait(ctx); err == nil {
			t.Errorf("WriteFile(%d, %d) succeeded", r.pos, r.count)
		}
	}
	if _, err := out.WriteFile(ctx, f, 2, 0).Wait(ctx); err != nil {
		t.Fatalf("empty region: %v", err)
	}
	if _, err := out.WriteFile(ctx, f, 2, 5, datastream.Close).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	g.checkCommitted(t, c, out, []byte("23456"))
}

// TestWriter feeds the io.WriteCloser view from several kinds of reader:
// io.Copy takes the file's and the reader's path through ReadFrom and the
// bytes.Reader's through Write.
func TestWriter(t *testing.T) {
	data := randomBytes(3, 50<<10+1)
	for _, tc := range []struct {
		name string
		src  func(t *testing.T) io.Reader
	}{
		{"file", func(t *testing.T) io.Reader { return writeTemp(t, data) }},
		{"bytes.Reader", func(*testing.T) io.Reader { return bytes.NewReader(data) }},
		{"one byte at a time", func(*testing.T) io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) }},
		{"data and EOF together", func(*testing.T) io.Reader { return iotest.DataErrReader(bytes.NewReader(data)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			g := startGroup(t, 3, groupOpts{})
			c := g.client(t, datastream.WithPacketSize(16<<10))
			ctx := testCtx(t)
			out, err := c.Stream(ctx, []byte("copy"))
			if err != nil {
				t.Fatal(err)
			}
			w := out.Writer(ctx)
			if n, err := io.Copy(w, tc.src(t)); err != nil || n != int64(len(data)) {
				t.Fatalf("io.Copy = %d, %v", n, err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			g.checkCommitted(t, c, out, data)
		})
	}
}

// A read error ends io.Copy with that error; the stream itself is fine.
func TestWriterReadError(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 1, groupOpts{})
	c := g.client(t)
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("copy"))
	if err != nil {
		t.Fatal(err)
	}
	broken := errors.New("broken reader")
	src := io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(broken))
	if _, err := io.Copy(out.Writer(ctx), src); !errors.Is(err, broken) {
		t.Fatalf("io.Copy: %v, want %v", err, broken)
	}
	if err := out.Writer(ctx).Close(); err != nil {
		t.Fatal(err)
	}
	g.checkCommitted(t, c, out, []byte("abc"))
}

// TestCloseSemantics covers the edges of closing: Close twice, Close from
// many goroutines, CLOSE as a write option, writes after Close, and a
// RaftClientReplyFuture that waits without closing.
func TestCloseSemantics(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	c := g.client(t)
	ctx := testCtx(t)

	out, err := c.Stream(ctx, []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, []byte("hello")).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-out.RaftClientReplyFuture().Done():
		t.Fatal("RaftClientReplyFuture completed on an open stream")
	default:
	}
	if n := g.servers[0].Streams().Active(); n != 1 {
		t.Fatalf("primary has %d open streams, want 1: asking for the future closed the stream", n)
	}
	futures := make([]*datastream.Future[*datastream.Reply], 8)
	var wg sync.WaitGroup
	for i := range futures {
		wg.Add(1)
		go func() {
			defer wg.Done()
			futures[i] = out.Close(ctx)
		}()
	}
	wg.Wait()
	for _, f := range futures[1:] {
		if f != futures[0] {
			t.Fatal("concurrent Close calls returned different futures")
		}
	}
	if _, err := futures[0].Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if out.Close(ctx) != futures[0] {
		t.Fatal("Close after commit returned a new future")
	}
	if _, err := out.RaftClientReplyFuture().Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, []byte("late")).Wait(ctx); !errors.Is(err, datastream.ErrClosed) {
		t.Fatalf("write after commit: %v, want ErrClosed", err)
	}
	if _, err := out.WriteBufAsync(ctx, buffer.Copy([]byte("late"))).Wait(ctx); !errors.Is(err, datastream.ErrClosed) {
		t.Fatalf("buffer write after commit: %v, want ErrClosed", err)
	}
	if err := out.Err(); err != nil {
		t.Fatalf("Err after commit: %v", err)
	}

	// CLOSE as the option of the last write; a write racing behind it.
	out2, err := c.Stream(ctx, []byte("b"))
	if err != nil {
		t.Fatal(err)
	}
	last := out2.WriteAsync(ctx, []byte("bye"), datastream.Close)
	if out2.Close(ctx) != last {
		t.Fatal("Close after a write with Close returned a new future")
	}
	if _, err := out2.WriteAsync(ctx, []byte("late")).Wait(ctx); !errors.Is(err, datastream.ErrClosed) {
		t.Fatalf("write after Close: %v, want ErrClosed", err)
	}
	if r, err := last.Wait(ctx); err != nil || r.BytesWritten() != 3 {
		t.Fatalf("close: %v, %v", r, err)
	}
	g.checkCommitted(t, c, out, []byte("hello"))
	g.checkCommitted(t, c, out2, []byte("bye"))
}

// A packet too large for a frame is refused without touching the stream.
func TestTooLarge(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 1, groupOpts{})
	c := g.client(t)
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("big"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, make([]byte, 16<<20+1)).Wait(ctx); !errors.Is(err, datastream.ErrTooLarge) {
		t.Fatalf("oversized write: %v, want ErrTooLarge", err)
	}
	if _, err := out.WriteBufAsync(ctx, buffer.Get(16<<20+1)).Wait(ctx); !errors.Is(err, datastream.ErrTooLarge) {
		t.Fatalf("oversized buffer: %v, want ErrTooLarge", err)
	}
	if _, err := out.WriteAsync(ctx, []byte("ok"), datastream.Close).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	g.checkCommitted(t, c, out, []byte("ok"))
}

// Many goroutines write to one Output; every packet lands once.
func TestConcurrentWriters(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	c := g.client(t, datastream.WithWindow(64<<10, 8))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("shared"))
	if err != nil {
		t.Fatal(err)
	}
	const writers, each, size = 4, 50, 1000
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte('a' + w)}, size)
			for i := 0; i < each; i++ {
				out.WriteAsync(ctx, p)
			}
		}()
	}
	wg.Wait()
	r, err := out.Close(ctx).Wait(ctx)
	if err != nil || r.BytesWritten() != writers*each*size {
		t.Fatalf("close: %v, %v", r, err)
	}
	data, ok := g.memory(2).Data(key(c, out))
	if !ok {
		t.Fatal("last peer has no data")
	}
	for w := 0; w < writers; w++ {
		if n := bytes.Count(data, []byte{byte('a' + w)}); n != each*size {
			t.Errorf("writer %d: %d bytes landed, want %d", w, n, each*size)
		}
	}
}

// TestClientClose closes a client with packets in flight: every future
// fails with ErrClosed, the client refuses new streams, and the peers drop
// what they held.
func TestClientClose(t *testing.T) {
	buffertest.Check(t)
	sm, gates := gated(func(i int) bool { return i == 2 })
	g := startGroup(t, 3, groupOpts{sm: sm})
	t.Cleanup(func() { openAll(gates) })
	c := g.client(t)
	ctx := testCtx(t)
	var futures []*datastream.Future[*datastream.Reply]
	var outs []*datastream.Output
	for i := 0; i < 3; i++ {
		out, err := c.Stream(ctx, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, out)
		futures = append(futures, out.WriteAsync(ctx, []byte("pending")), out.WriteAsync(ctx, []byte("more")))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for i, f := range futures {
		if _, err := f.Wait(ctx); !errors.Is(err, datastream.ErrClosed) {
			t.Fatalf("future %d: %v, want ErrClosed", i, err)
		}
	}
	for _, out := range outs {
		if _, err := out.RaftClientReplyFuture().Wait(ctx); !errors.Is(err, datastream.ErrClosed) {
			t.Fatalf("RaftClientReplyFuture: %v, want ErrClosed", err)
		}
		if _, err := out.WriteAsync(ctx, []byte("late")).Wait(ctx); !errors.Is(err, datastream.ErrClosed) {
			t.Fatalf("write on a closed client: %v, want ErrClosed", err)
		}
	}
	if _, err := c.Stream(ctx, []byte("late")); !errors.Is(err, datastream.ErrClosed) {
		t.Fatalf("Stream on a closed client: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// No CLOSE was sent, so the peers can only drop the streams: they
	// lost their upstream.
	openAll(gates)
	g.waitClean(t)
}

// A ctx that is already done opens nothing.
func TestStreamContextDone(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	c := g.client(t)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Unix(1, 0))
	defer cancel2()
	for _, tc := range []struct {
		ctx  context.Context
		want error
	}{{cancelled, context.Canceled}, {expired, context.DeadlineExceeded}} {
		if out, err := c.Stream(tc.ctx, []byte("never")); !errors.Is(err, tc.want) || out != nil {
			t.Fatalf("Stream: %v, %v; want %v", out, err, tc.want)
		}
	}
	// The client is unharmed.
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("fine"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, []byte("ok"), datastream.Close).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range g.servers {
		if n := len(g.memory(i).Committed()); n != 1 {
			t.Errorf("%s committed %d streams, want 1", g.peers[i].ID, n)
		}
	}
}

// TestCancelAborts cancels a stream's ctx with packets in flight: every
// future fails with the cancellation, and the ABORT reaches every peer,
// which drops the stream and its data without committing.
func TestCancelAborts(t *testing.T) {
	buffertest.Check(t)
	sm, gates := gated(func(i int) bool { return i == 2 })
	g := startGroup(t, 3, groupOpts{sm: sm, tweak: func(c *server.Config) { c.ReplyTimeout = time.Hour }})
	t.Cleanup(func() { openAll(gates) })
	c := g.client(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	out, err := c.Stream(ctx, []byte("doomed"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.HeaderFuture().Wait(ctx); err != nil {
		t.Fatal(err)
	}
	var futures []*datastream.Future[*datastream.Reply]
	for i := 0; i < 4; i++ {
		futures = append(futures, out.WriteAsync(ctx, make([]byte, 10<<10)))
	}
	eventually(t, "the last peer to hold a write", func() bool { return gates[2].writes.Load() > 0 })
	cancel()
	wait := testCtx(t)
	for i, f := range futures {
		if _, err := f.Wait(wait); !errors.Is(err, context.Canceled) {
			t.Fatalf("future %d: %v, want context.Canceled", i, err)
		}
	}
	if err := out.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err: %v, want context.Canceled", err)
	}
	// The peers' own timeouts are an hour away and the connections stay
	// up, so only the ABORT can make the last peer drop the stream.
	openAll(gates)
	g.waitClean(t)
}

// TestPeerKilled kills a peer while packets wait for their replies, held
// back by the last peer of the chain: every pending future fails, with
// the error that names what happened.
func TestPeerKilled(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill int
		want error
	}{
		// The connection to the primary drops.
		{"primary", 0, datastream.ErrConnectionLost},
		// The primary loses its successor and says so.
		{"successor", 1, datastream.ErrSuccessorFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			sm, sms := gated(func(i int) bool { return i == 2 })
			// WriteQuorum all: a lost peer fails the stream, as this test
			// wants; recovery has its own tests in package server.
			g := startGroup(t, 3, groupOpts{sm: sm, tweak: func(c *server.Config) {
				c.ReplyTimeout, c.WriteQuorum = time.Hour, handler.QuorumAll
			}})
			t.Cleanup(func() { openAll(sms) })
			c := g.client(t)
			ctx := testCtx(t)
			out, err := c.Stream(ctx, []byte("victim"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := out.HeaderFuture().Wait(ctx); err != nil {
				t.Fatal(err)
			}
			const packets = 5
			var futures []*datastream.Future[*datastream.Reply]
			for i := 0; i < packets; i++ {
				futures = append(futures, out.WriteAsync(ctx, make([]byte, 4<<10)))
			}
			// Every packet has passed the middle peer, and the last one
			// holds them. (No CLOSE: one held at the last peer could
			// commit there once the gate opens, as standalone peers
			// link on their own.)
			eventually(t, "the packets to reach the last peer", func() bool {
				return sms[1].writes.Load() == packets && sms[2].writes.Load() > 0
			})
			g.stop(tc.kill)
			for i, f := range futures {
				if _, err := f.Wait(ctx); !errors.Is(err, tc.want) {
					t.Fatalf("future %d: %v, want %v", i, err, tc.want)
				}
			}
			if _, err := out.RaftClientReplyFuture().Wait(ctx); !errors.Is(err, tc.want) {
				t.Fatalf("RaftClientReplyFuture: %v, want %v", err, tc.want)
			}
			openAll(sms)
			g.waitClean(t)
		})
	}
}

// TestReplyTimeout streams to a peer that accepts and never answers: every
// pending future fails with ErrReplyTimeout, and since the peer has sent
// nothing at all, the client closes the connection.
func TestReplyTimeout(t *testing.T) {
	buffertest.Check(t)
	f := startFake(t, nil)
	c := f.client(t, datastream.WithReplyTimeout(200*time.Millisecond))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("void"))
	if err != nil {
		t.Fatal(err)
	}
	futures := []*datastream.Future[*datastream.Reply]{out.HeaderFuture()}
	for i := 0; i < 3; i++ {
		futures = append(futures, out.WriteAsync(ctx, []byte("anyone?")))
	}
	for i, fu := range futures {
		if _, err := fu.Wait(ctx); !errors.Is(err, datastream.ErrReplyTimeout) {
			t.Fatalf("future %d: %v, want ErrReplyTimeout", i, err)
		}
	}
	eventually(t, "the client to close the connection", func() bool { return f.ended.Load() == 1 })
}

// A peer that answers one stream and not another: only the silent stream
// times out, and it is aborted; the other carries on over the same
// connection.
func TestReplyTimeoutOneStream(t *testing.T) {
	buffertest.Check(t)
	var silent atomic.Uint64
	f := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
		if h.GetStreamId() != silent.Load() {
			success(c, h)
		}
	})
	c := f.client(t, datastream.WithReplyTimeout(200*time.Millisecond))
	ctx := testCtx(t)
	busy, err := c.Stream(ctx, []byte("busy"))
	if err != nil {
		t.Fatal(err)
	}
	silent.Store(busy.ID() + 1)
	quiet, err := c.Stream(ctx, []byte("quiet"))
	if err != nil || quiet.ID() != silent.Load() {
		t.Fatalf("second stream: id %d, %v", quiet.ID(), err)
	}
	pending := quiet.WriteAsync(ctx, []byte("hello?"))
	for i := 0; ; i++ {
		if _, err := busy.WriteAsync(ctx, []byte("tick")).Wait(ctx); err != nil {
			t.Fatalf("busy stream, write %d: %v", i, err)
		}
		select {
		case <-pending.Done():
		default:
			continue
		}
		break
	}
	if _, err := pending.Wait(ctx); !errors.Is(err, datastream.ErrReplyTimeout) {
		t.Fatalf("quiet stream: %v, want ErrReplyTimeout", err)
	}
	f.waitPacket(t, "an ABORT", func(h *pb.DataStreamPacketHeader) bool {
		return h.HasOption(pb.DataStreamPacketHeader_ABORT) && h.GetStreamId() == quiet.ID()
	})
	if _, err := busy.Close(ctx).Wait(ctx); err != nil {
		t.Fatalf("busy stream: %v", err)
	}
}

// TestPeerReplies answers a stream the way a broken or unhappy peer would.
func TestPeerReplies(t *testing.T) {
	isData := func(h *pb.DataStreamPacketHeader) bool {
		return h.GetType() == pb.DataStreamPacketHeader_STREAM_DATA && !h.HasOption(pb.DataStreamPacketHeader_ABORT)
	}
	for _, tc := range []struct {
		name   string
		answer func(c net.Conn, h *pb.DataStreamPacketHeader)
		want   error // nil: the stream commits
		abort  bool  // the client must abort the stream
		check  func(t *testing.T, err error)
	}{
		{name: "reply for an unknown stream is ignored", answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			other := &pb.DataStreamPacketHeader{ClientId: h.GetClientId(), Type: h.GetType(), StreamId: h.GetStreamId() + 1000}
			reply(c, &pb.DataStreamReplyHeader{PacketHeader: other, Success: true}, nil)
			success(c, h)
		}},
		{name: "reply for the wrong packet", abort: true, want: datastream.ErrInternal, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			if isData(h) {
				h.StreamOffset += 7
			}
			success(c, h)
		}},
		{name: "wrong bytes written", abort: true, want: datastream.ErrInternal, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			if isData(h) {
				reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, BytesWritten: 1, Success: true}, nil)
				return
			}
			success(c, h)
		}},
		{name: "close without a commit", abort: true, want: datastream.ErrInternal, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, BytesWritten: h.GetStreamOffset() + h.GetDataLength(), Success: true}, nil)
		}},
		{name: "not leader", want: datastream.ErrNotLeader, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			if h.HasOption(pb.DataStreamPacketHeader_CLOSE) {
				reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, ErrorCode: pb.ErrorCode_NOT_LEADER, ErrorMessage: "ask s9"},
					&pb.RaftClientReply{ErrorCode: pb.ErrorCode_NOT_LEADER, LeaderHint: "s9"})
				return
			}
			success(c, h)
		}, check: func(t *testing.T, err error) {
			var pe *pb.Error
			if !errors.As(err, &pe) || pe.Code != pb.ErrorCode_NOT_LEADER || !strings.Contains(err.Error(), "s9") {
				t.Errorf("error %v: want a *pb.Error NOT_LEADER naming the leader", err)
			}
		}},
		{name: "failure without a code", want: datastream.ErrInternal, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			reply(c, &pb.DataStreamReplyHeader{PacketHeader: h}, nil)
		}},
		{name: "garbage", want: datastream.ErrConnectionLost, answer: func(c net.Conn, h *pb.DataStreamPacketHeader) {
			if isData(h) {
				_, _ = c.Write([]byte{0, 0, 0, 2, 0, 0}) // shorter than a frame's prefix
				return
			}
			success(c, h)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			f := startFake(t, tc.answer)
			c := f.client(t)
			ctx := testCtx(t)
			out, err := c.Stream(ctx, []byte("s"))
			if err != nil {
				t.Fatal(err)
			}
			data := out.WriteAsync(ctx, []byte("data"))
			_, err = out.Close(ctx).Wait(ctx)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := data.Wait(ctx); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("close: %v, want %v", err, tc.want)
			}
			if _, err := out.RaftClientReplyFuture().Wait(ctx); !errors.Is(err, tc.want) {
				t.Fatalf("RaftClientReplyFuture: %v, want %v", err, tc.want)
			}
			if tc.check != nil {
				tc.check(t, err)
			}
			if tc.abort {
				f.waitPacket(t, "an ABORT", func(h *pb.DataStreamPacketHeader) bool {
					return h.HasOption(pb.DataStreamPacketHeader_ABORT)
				})
			}
		})
	}
}

// A lost connection fails its streams; the next stream dials again.
func TestReconnect(t *testing.T) {
	buffertest.Check(t)
	var killed atomic.Bool
	f := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
		if killed.CompareAndSwap(false, true) {
			_ = c.Close() // the first connection dies at its first packet
			return
		}
		success(c, h)
	})
	c := f.client(t)
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("first"))
	if err == nil {
		_, err = out.Close(ctx).Wait(ctx)
	}
	if !errors.Is(err, datastream.ErrConnectionLost) {
		t.Fatalf("first stream: %v, want ErrConnectionLost", err)
	}
	eventually(t, "the connection to be seen dead", func() bool {
		out, err := c.Stream(ctx, []byte("again"))
		if err != nil {
			return false
		}
		_, err = out.WriteAsync(ctx, []byte("x"), datastream.Close).Wait(ctx)
		return err == nil
	})
}

// TestServerErrors checks that a server's refusal arrives as the matching
// sentinel and as a *pb.Error.
func TestServerErrors(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	c := g.client(t)
	ctx := testCtx(t)

	// The client checks a table against the peers it knows of; one that
	// knows only two of the three passes a table that leaves the third
	// out, which the server refuses.
	partial, err := datastream.NewClient(g.peers[:2], datastream.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	out, err := partial.Stream(ctx, []byte("short"), datastream.WithRoutingTable(pb.Chain(g.peers[0].ID, g.peers[1].ID)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = out.HeaderFuture().Wait(ctx)
	var pe *pb.Error
	if !errors.Is(err, datastream.ErrBadRouting) || !errors.As(err, &pe) || pe.Message == "" {
		t.Fatalf("header with a table missing a peer: %v, want BAD_ROUTING with a message", err)
	}
	if _, err := out.WriteAsync(ctx, []byte("x")).Wait(ctx); !errors.Is(err, datastream.ErrBadRouting) {
		t.Fatalf("write after a failed header: %v, want the header's error", err)
	}

	if _, err := c.Stream(ctx, []byte("x"), datastream.WithPrimary("nobody")); err == nil {
		t.Fatal("Stream to a primary outside the group succeeded")
	}

	// A stream with a different primary and the default chain.
	out, err = c.Stream(ctx, []byte("via s3"), datastream.WithPrimary(g.peers[2].ID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, []byte("fine"), datastream.Close).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	g.checkCommitted(t, c, out, []byte("fine"))
}

// TestWindow holds every reply back behind gated state machines: the
// writer fills the window and blocks instead of queueing more, and the
// bytes in flight never exceed the window.
func TestWindow(t *testing.T) {
	buffertest.Check(t)
	sm, gates := gated(func(int) bool { return true })
	g := startGroup(t, 3, groupOpts{sm: sm})
	t.Cleanup(func() { openAll(gates) })
	const window, packet, packets = 256 << 10, 48 << 10, 40
	c := g.client(t, datastream.WithWindow(window, 100))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("windowed"))
	if err != nil {
		t.Fatal(err)
	}
	data := randomBytes(4, packet*packets)
	done := make(chan error, 1)
	var sent atomic.Int32
	go func() {
		for i := 0; i < packets; i++ {
			out.WriteAsync(ctx, data[i*packet:(i+1)*packet])
			sent.Add(1)
		}
		_, err := out.Close(ctx).Wait(ctx)
		done <- err
	}()
	eventually(t, "the writer to block on the window", func() bool { return datastream.WindowWaits(out) > 0 })
	bytesIn, pkts, peak := out.InFlight()
	if bytesIn > window || peak > window || int(sent.Load()) > window/packet+1 {
		t.Fatalf("in flight: %d bytes in %d packets (peak %d, %d writes returned); window %d", bytesIn, pkts, peak, sent.Load(), window)
	}
	openAll(gates)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, _, peak := out.InFlight(); peak > window {
		t.Fatalf("peak in flight %d > window %d", peak, window)
	}
	g.checkCommitted(t, c, out, data)
}

// TestSend: packets sent without futures land like any other, a Close
// after them commits them all, and a failure reaches the next Send.
func TestSend(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	c := g.client(t, datastream.WithWindow(128<<10, 4))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("sent"))
	if err != nil {
		t.Fatal(err)
	}
	const packet, packets = 40 << 10, 30
	data := randomBytes(9, packet*packets)
	for i := range packets {
		if err := out.Send(ctx, buffer.Copy(data[i*packet:(i+1)*packet])); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	r, err := out.Close(ctx).Wait(ctx)
	if err != nil || r.BytesWritten() != packet*packets {
		t.Fatalf("close: %v, %v", r, err)
	}
	g.checkCommitted(t, c, out, data)
	if err := out.Send(ctx, buffer.Copy(data[:1])); !errors.Is(err, datastream.ErrClosed) {
		t.Fatalf("send after close: %v, want ErrClosed", err)
	}
}

// TestWindowWaiterCancelled: of two writers waiting for a full window, the
// one whose ctx ends returns its ctx's error and leaves nothing behind that
// keeps the other from being woken when the window frees.
func TestWindowWaiterCancelled(t *testing.T) {
	buffertest.Check(t)
	sm, gates := gated(func(int) bool { return true })
	g := startGroup(t, 3, groupOpts{sm: sm})
	t.Cleanup(func() { openAll(gates) })
	c := g.client(t, datastream.WithWindow(1<<20, 1))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("waiters"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.HeaderFuture().Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// This packet holds the only window slot until the gates open.
	held := out.WriteAsync(ctx, []byte("held"))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cancelled := make(chan error, 1)
	go func() {
		_, err := out.WriteAsync(cctx, []byte("never")).Wait(ctx)
		cancelled <- err
	}()
	eventually(t, "the first writer to wait", func() bool { return datastream.WindowWaits(out) >= 1 })
	waiting := make(chan error, 1)
	go func() {
		_, err := out.WriteAsync(ctx, []byte("later")).Wait(ctx)
		waiting <- err
	}()
	eventually(t, "the second writer to wait", func() bool { return datastream.WindowWaits(out) >= 2 })
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled writer: %v, want context.Canceled", err)
	}
	openAll(gates)
	if err := <-waiting; err != nil {
		t.Fatalf("waiting writer: %v", err)
	}
	if _, err := held.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := out.Close(ctx).Wait(ctx)
	if err != nil || r.BytesWritten() != uint64(len("held")+len("later")) {
		t.Fatalf("close: %v, %v", r, err)
	}
}

// TestManyStreams runs 1,000 small streams at once over one connection.
func TestManyStreams(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{sm: func(int) statemachine.StateMachine { return statemachine.NewMemoryHashing() }})
	c := g.client(t)
	ctx := testCtx(t)
	const streams = 1000
	outs := make([]*datastream.Output, streams)
	var wg sync.WaitGroup
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := c.Stream(ctx, []byte("small"))
			if err != nil {
				t.Error(err)
				return
			}
			data := randomBytes(uint64(i), 100+i*7)
			out.WriteAsync(ctx, data[:len(data)/2])
			if _, err := out.WriteAsync(ctx, data[len(data)/2:], datastream.Close).Wait(ctx); err != nil {
				t.Errorf("stream %d: %v", i, err)
				return
			}
			outs[i] = out
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, out := range outs {
		g.checkCommitted(t, c, out, randomBytes(uint64(i), 100+i*7))
	}
}

func TestNewClientErrors(t *testing.T) {
	ok := []datastream.Peer{{ID: "a", Addr: "127.0.0.1:1"}}
	for _, tc := range []struct {
		name  string
		peers []datastream.Peer
		opts  []datastream.Option
	}{
		{"no peers", nil, nil},
		{"peer without address", []datastream.Peer{{ID: "a"}}, nil},
		{"duplicate peer", append(ok, ok[0]), nil},
		{"zero window", ok, []datastream.Option{datastream.WithWindow(0, 1)}},
		{"zero window packets", ok, []datastream.Option{datastream.WithWindow(1, 0)}},
		{"zero outstanding", ok, []datastream.Option{datastream.WithMaxOutstanding(0, 1)}},
		{"packet over the frame limit", ok, []datastream.Option{datastream.WithPacketSize(17 << 20)}},
		{"zero reply timeout", ok, []datastream.Option{datastream.WithReplyTimeout(0)}},
		{"nil logger", ok, []datastream.Option{datastream.WithLogger(nil)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c, err := datastream.NewClient(tc.peers, tc.opts...); err == nil {
				_ = c.Close()
				t.Fatal("NewClient succeeded")
			}
		})
	}
}

// TestLateFailureInOrder has the primary lose its successor while its own
// write of the stream's first packet is slow, and keeps writing: the
// primary must answer every packet in order, so every future fails with
// the cause, SUCCESSOR_FAILED. A server that refuses the late packets at
// once (UNKNOWN_STREAM) answers them ahead of the first one and hides the
// cause. The late packets are paced until the primary has surely noticed
// the loss; the assertion holds for a correct server whatever the timing.
func TestLateFailureInOrder(t *testing.T) {
	buffertest.Check(t)
	sm, sms := gated(func(i int) bool { return i == 0 })
	g := startGroup(t, 2, groupOpts{sm: sm, tweak: func(c *server.Config) { c.ReplyTimeout = time.Hour }})
	t.Cleanup(func() { openAll(sms) })
	c := g.client(t, datastream.WithWindow(1<<20, 1000))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("late"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.HeaderFuture().Wait(ctx); err != nil {
		t.Fatal(err)
	}
	futures := []*datastream.Future[*datastream.Reply]{out.WriteAsync(ctx, []byte("first"))}
	eventually(t, "both peers to take the first packet", func() bool {
		return sms[0].writes.Load() == 1 && sms[1].writes.Load() == 1
	})
	g.stop(1)
	for i := 0; i < 100 && out.Err() == nil; i++ {
		futures = append(futures, out.WriteAsync(ctx, []byte("late")))
		time.Sleep(time.Millisecond)
	}
	openAll(sms)
	for i, f := range futures {
		if _, err := f.Wait(ctx); !errors.Is(err, datastream.ErrSuccessorFailed) {
			t.Fatalf("future %d of %d: %v, want SUCCESSOR_FAILED", i, len(futures), err)
		}
	}
	g.waitClean(t)
}

// TestClientWindow holds every reply back and has several streams write at
// once: the packets in flight over all of them stop at the client's bound.
func TestClientWindow(t *testing.T) {
	buffertest.Check(t)
	sm, sms := gated(func(int) bool { return true })
	g := startGroup(t, 3, groupOpts{sm: sm})
	t.Cleanup(func() { openAll(sms) })
	const limit, streams, each = 6, 4, 5
	c := g.client(t, datastream.WithMaxOutstanding(limit, 1<<20))
	ctx := testCtx(t)
	outs := make([]*datastream.Output, streams)
	for i := range outs {
		out, err := c.Stream(ctx, []byte("shared budget"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := out.HeaderFuture().Wait(ctx); err != nil {
			t.Fatal(err)
		}
		outs[i] = out
	}
	var wg sync.WaitGroup
	for _, out := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				out.WriteAsync(ctx, []byte("held"))
			}
		}()
	}
	inFlight := func() int {
		sum := 0
		for _, out := range outs {
			_, n, _ := out.InFlight()
			sum += n
		}
		return sum
	}
	eventually(t, "the client's budget to fill", func() bool {
		if n := inFlight(); n > limit {
			t.Fatalf("%d packets in flight, limit %d", n, limit)
		}
		return inFlight() == limit
	})
	openAll(sms)
	wg.Wait()
	for _, out := range outs {
		if r, err := out.Close(ctx).Wait(ctx); err != nil || r.BytesWritten() != each*4 {
			t.Fatalf("close: %v, %v", r, err)
		}
	}
}

// TestOneConnection opens many streams at once to one peer: they share a
// single connection, and a peer that cannot be reached fails Stream.
func TestOneConnection(t *testing.T) {
	buffertest.Check(t)
	f := startFake(t, success)
	c := f.client(t)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := c.Stream(ctx, []byte("s"))
			if err == nil {
				_, err = out.WriteAsync(ctx, []byte("x"), datastream.Close).Wait(ctx)
			}
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	f.mu.Lock()
	n := len(f.conns)
	f.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	c2, err := datastream.NewClient([]datastream.Peer{{ID: "gone", Addr: dead}}, datastream.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	for i := 0; i < 2; i++ { // a failed dial is not remembered
		if _, err := c2.Stream(ctx, []byte("s")); err == nil || !strings.Contains(err.Error(), "connect to gone") {
			t.Fatalf("Stream to a closed port: %v", err)
		}
	}
}

// A CLOSE answered with success but without a successful RaftClientReply
// (a peer that did not commit, or wrote the body wrong) is not a commit:
// the client fails the stream rather than report it committed.
func TestCloseWithoutRaftClientReplyFails(t *testing.T) {
	for _, body := range []string{"none", "failed"} {
		t.Run(body, func(t *testing.T) {
			buffertest.Check(t)
			f := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
				if !h.HasOption(pb.DataStreamPacketHeader_CLOSE) {
					success(c, h)
					return
				}
				var rcr *pb.RaftClientReply
				if body == "failed" {
					rcr = &pb.RaftClientReply{ClientId: h.GetClientId(), CallId: h.GetStreamId()}
				}
				reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, BytesWritten: h.GetStreamOffset() + h.GetDataLength(),
					Success: true, ServerId: "fake"}, rcr)
			})
			c := f.client(t)
			ctx := testCtx(t)
			out, err := c.Stream(ctx, []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			out.WriteAsync(ctx, []byte("data"))
			if r, err := out.Close(ctx).Wait(ctx); !errors.Is(err, datastream.ErrInternal) {
				t.Fatalf("Close = %+v, %v; want a failure (INTERNAL)", r, err)
			}
			if _, err := out.RaftClientReplyFuture().Wait(ctx); err == nil {
				t.Fatal("RaftClientReplyFuture completed without a commit")
			}
		})
	}
}
