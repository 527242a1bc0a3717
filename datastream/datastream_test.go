package datastream_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/testkit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

func ids(g *cluster) []string {
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
			data := testkit.RandomBytes(1, 300<<10+7)
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
			data := testkit.RandomBytes(2, 3<<20+13)
			f := testkit.TempFile(t, data)
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
	f := testkit.TempFile(t, []byte("0123456789"))
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
	data := testkit.RandomBytes(3, 50<<10+1)
	for _, tc := range []struct {
		name string
		src  func(t *testing.T) io.Reader
	}{
		{"file", func(t *testing.T) io.Reader { return testkit.TempFile(t, data) }},
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
			data := testkit.RandomBytes(uint64(i), 100+i*7)
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
		g.checkCommitted(t, c, out, testkit.RandomBytes(uint64(i), 100+i*7))
	}
}

func TestNewClientErrors(t *testing.T) {
	ok := []group.Member{{ID: "a", StreamAddr: "127.0.0.1:1"}}
	for _, tc := range []struct {
		name  string
		peers []group.Member
		opts  []datastream.Option
	}{
		{"no peers", nil, nil},
		{"peer without address", []group.Member{{ID: "a"}}, nil},
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
	c2, err := datastream.NewClient([]group.Member{{ID: "gone", StreamAddr: dead}}, datastream.WithLogger(testkit.QuietLogger()))
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
