package datastream_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/internal/testkit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// TestFailover fails a stream's primary at several points of a 4 MiB
// stream, by shutting its server down or by cutting the client's
// connection to it, with packets unacknowledged (held back by the last
// peer of the chain): the client resumes the stream on the next peer, the
// CLOSE commits there, and every peer left holds the bytes; the failed
// primary never links its copy.
func TestFailover(t *testing.T) {
	const (
		size   = 4 << 20
		packet = 128 << 10
	)
	for _, fault := range []string{"stop", "cut"} {
		for _, at := range []int{0, 1 << 20, 3<<20 + 5, size} {
			t.Run(fmt.Sprintf("%s/at-%d", fault, at), func(t *testing.T) {
				buffertest.Check(t)
				g, last, lc := failoverGroup(t, 0)
				c := g.client(t, datastream.WithPacketSize(packet))
				ctx := testCtx(t)
				data := testkit.RandomBytes(uint64(at)+7, size)
				out, err := c.Stream(ctx, []byte("moved"))
				if err != nil {
					t.Fatal(err)
				}
				// The first part is acknowledged everywhere; the rest,
				// CLOSE included when at is the end, waits on the
				// paused peer when the primary fails.
				acked := at / packet * packet
				if err := sendAll(ctx, out, data[:acked], 0, packet); err != nil {
					t.Fatal(err)
				}
				if _, err := out.WriteAsync(ctx, nil, datastream.Flush).Wait(ctx); err != nil {
					t.Fatal(err)
				}
				last.pause()
				if err := sendAll(ctx, out, data, acked, packet); err != nil {
					t.Fatal(err)
				}
				var closed *datastream.Future[*datastream.Reply]
				if at == size {
					closed = out.Close(ctx)
				}
				if n, kept := datastream.Retained(out); acked < size && (n == 0 || kept < int64(size-acked)) {
					t.Fatalf("%d packets keep %d bytes for a replay, want the %d unacknowledged", n, kept, size-acked)
				}
				var failed string
				switch fault {
				case "stop":
					failed = g.peers[0].ID
					lc.stop(g, 0)
				case "cut":
					failed = datastream.CutPrimary(out)
				}
				if at == size {
					// The CLOSE stays held until the new primary took the
					// resume, which fences the old one off: released
					// before, it could complete and commit through the old
					// primary before that noticed its client was gone,
					// with the reply lost on the cut connection (an
					// outcome the client cannot know).
					eventually(t, "the new primary to take the resume", func() bool {
						st := g.servers[1].Streams().Lookup(key(c, out))
						return st != nil && st.IsPrimary()
					})
				}
				last.resume()
				if closed == nil {
					closed = out.Close(ctx)
				}
				reply, err := closed.Wait(ctx)
				if err != nil {
					t.Fatalf("CLOSE after the primary failed: %v", err)
				}
				if reply.Server == failed || datastream.Primary(out) == failed {
					t.Errorf("committed by %s (primary %s), the failed primary", reply.Server, datastream.Primary(out))
				}
				if reply.BytesWritten() != size {
					t.Errorf("CLOSE wrote %d bytes, want %d", reply.BytesWritten(), size)
				}
				k := key(c, out)
				for i := 1; i < 3; i++ {
					if got, ok := g.memory(i).Sum(k); !ok || got != sha(data) {
						t.Errorf("%s: committed=%v, bytes equal=%v", g.peers[i].ID, ok, got == sha(data))
					}
				}
				// The failed primary is not among the holders: it
				// drops its copy and, where it applies the entry, records
				// it missing (to be repaired), never links it.
				eventually(t, "the failed primary to drop its copy", func() bool {
					return g.servers[0].Streams().Active() == 0 && g.servers[0].Streams().Pending() == 0 && g.memory(0).Open() == 0
				})
				if _, ok := g.memory(0).Sum(k); ok {
					t.Errorf("the failed primary %s linked its copy", failed)
				}
				if fault == "cut" && g.memory(0).Missing() != 1 {
					t.Errorf("the failed primary %s recorded %d copies missing, want its own", failed, g.memory(0).Missing())
				}
			})
		}
	}
}

// TestFailoverDisabled: with WithFailover(false) the stream fails with the
// primary, and no peer commits it.
func TestFailoverDisabled(t *testing.T) {
	buffertest.Check(t)
	g, last, _ := failoverGroup(t, 0)
	c := g.client(t, datastream.WithFailover(false))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("stays"))
	if err != nil {
		t.Fatal(err)
	}
	last.pause()
	data := testkit.RandomBytes(3, 1<<20)
	if err := sendAll(ctx, out, data, 0, 64<<10); err != nil {
		t.Fatal(err)
	}
	if n, kept := datastream.Retained(out); n != 0 || kept != 0 {
		t.Errorf("without failover %d packets keep %d bytes", n, kept)
	}
	datastream.CutPrimary(out)
	last.resume()
	_, err = out.Close(ctx).Wait(ctx)
	if !errors.Is(err, datastream.ErrConnectionLost) || !strings.Contains(err.Error(), g.peers[0].ID) {
		t.Fatalf("CLOSE without failover: %v, want ErrConnectionLost naming %s", err, g.peers[0].ID)
	}
	g.waitClean(t)
}

// TestFailoverNoPeerLeft: when no other peer can take the stream, it fails
// with an error naming every peer tried, and nothing is committed.
func TestFailoverNoPeerLeft(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) {
		buffertest.Check(t)
		g, _, _ := failoverGroup(t, 0)
		// The client reaches only the primary; the peers reach each other.
		peers := append([]group.Member(nil), g.peers...)
		for i := 1; i < len(peers); i++ {
			peers[i].StreamAddr = closedAddr(t)
		}
		c, err := datastream.NewClient(peers, datastream.WithLogger(testkit.QuietLogger()), datastream.WithDialTimeout(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		ctx := testCtx(t)
		out, err := c.Stream(ctx, []byte("stranded"))
		if err != nil {
			t.Fatal(err)
		}
		if err := sendAll(ctx, out, testkit.RandomBytes(4, 1<<20), 0, 64<<10); err != nil {
			t.Fatal(err)
		}
		// No CLOSE: sent to a primary that fails, it would leave the
		// outcome unknown, and the error would say so.
		datastream.CutPrimary(out)
		eventually(t, "the stream to fail", func() bool { return out.Err() != nil })
		err = out.Err()
		if !errors.Is(err, datastream.ErrConnectionLost) {
			t.Fatalf("stream with no peer left: %v, want ErrConnectionLost", err)
		}
		for _, p := range g.peers {
			if !strings.Contains(err.Error(), p.ID) {
				t.Errorf("the error does not name %s: %v", p.ID, err)
			}
		}
		g.waitClean(t)
	})
	// With a write quorum of every peer no stream can go on without its
	// primary: each peer refuses the resume.
	t.Run("quorum", func(t *testing.T) {
		buffertest.Check(t)
		g, _, _ := failoverGroup(t, handler.QuorumAll)
		c := g.client(t)
		ctx := testCtx(t)
		out, err := c.Stream(ctx, []byte("short"))
		if err != nil {
			t.Fatal(err)
		}
		if err := sendAll(ctx, out, testkit.RandomBytes(5, 1<<20), 0, 64<<10); err != nil {
			t.Fatal(err)
		}
		datastream.CutPrimary(out)
		eventually(t, "the stream to fail", func() bool { return out.Err() != nil })
		err = out.Err()
		if !errors.Is(err, datastream.ErrConnectionLost) || !errors.Is(err, datastream.ErrNotEnoughPeers) {
			t.Fatalf("stream below the write quorum: %v, want ErrConnectionLost and ErrNotEnoughPeers", err)
		}
		if _, cerr := out.Close(ctx).Wait(ctx); cerr != err {
			t.Errorf("CLOSE of the failed stream: %v, want its error", cerr)
		}
		for _, p := range g.peers {
			if !strings.Contains(err.Error(), p.ID) {
				t.Errorf("the error does not name %s: %v", p.ID, err)
			}
		}
		g.waitClean(t)
	})
}

// TestFailoverAfterClose: a stream whose CLOSE went to the primary that
// failed may have committed there, so however its failover ends, its error
// proves nothing: it wraps the loss of the primary, not the refusals that
// came after (a refusal for want of a stream committed meanwhile, say).
func TestFailoverAfterClose(t *testing.T) {
	buffertest.Check(t)
	g, last, _ := failoverGroup(t, handler.QuorumAll)
	c := g.client(t)
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("unknown"))
	if err != nil {
		t.Fatal(err)
	}
	last.pause() // the CLOSE stays unanswered
	if err := sendAll(ctx, out, testkit.RandomBytes(8, 1<<20), 0, 64<<10); err != nil {
		t.Fatal(err)
	}
	closed := out.Close(ctx)
	failed := datastream.CutPrimary(out)
	last.resume()
	_, err = closed.Wait(ctx)
	var pe *pb.Error
	switch {
	case err == nil:
		t.Fatal("committed below the write quorum")
	case !errors.Is(err, datastream.ErrConnectionLost) || errors.As(err, &pe):
		t.Fatalf("CLOSE sent to %s before it failed: %v; want ErrConnectionLost and no code that proves the stream failed", failed, err)
	case !strings.Contains(err.Error(), "may have committed"):
		t.Errorf("the error does not say the outcome is unknown: %v", err)
	}
	g.waitClean(t)
}

// TestFailoverTwice: the primary and then the peer that took the stream
// over fail; the last peer commits it alone, above a write quorum of one.
func TestFailoverTwice(t *testing.T) {
	buffertest.Check(t)
	g, _, lc := failoverGroup(t, 1)
	c := g.client(t)
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("twice"))
	if err != nil {
		t.Fatal(err)
	}
	data := testkit.RandomBytes(6, 2<<20)
	half := len(data) / 2
	if err := sendAll(ctx, out, data[:half], 0, 64<<10); err != nil {
		t.Fatal(err)
	}
	lc.stop(g, 0)
	if err := sendAll(ctx, out, data, half, 64<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, nil, datastream.Flush).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if p := datastream.Primary(out); p != g.peers[1].ID {
		t.Fatalf("moved to %s, want %s", p, g.peers[1].ID)
	}
	lc.stop(g, 1)
	reply, err := out.Close(ctx).Wait(ctx)
	if err != nil {
		t.Fatalf("CLOSE after two failures: %v", err)
	}
	if reply.Server != g.peers[2].ID {
		t.Errorf("committed by %s, want %s", reply.Server, g.peers[2].ID)
	}
	if got, ok := g.memory(2).Sum(key(c, out)); !ok || got != sha(data) {
		t.Errorf("%s: committed=%v, bytes equal=%v", g.peers[2].ID, ok, got == sha(data))
	}
}

// TestReroot checks the routing tables a failover sends: a tree over the
// peers left, rooted at the new primary.
func TestReroot(t *testing.T) {
	peers := []group.Member{{ID: "a"}, {ID: "b"}, {ID: "c"}, {ID: "d"}}
	ids := []string{"a", "b", "c", "d"}
	tree := &pb.RoutingTable{Routes: []*pb.Route{
		{Peer: "a", Successors: []string{"b", "c"}},
		{Peer: "b", Successors: []string{"d"}},
	}}
	for _, tc := range []struct {
		name  string
		table *pb.RoutingTable
		root  string
		gone  []string
		want  *pb.RoutingTable
	}{
		{"chain", pb.Chain(ids...), "b", []string{"a"}, pb.Chain("b", "c", "d")},
		{"chain/skip", pb.Chain(ids...), "c", []string{"a", "b"}, pb.Chain("c", "d")},
		{"star", nil, "b", []string{"a"}, &pb.RoutingTable{Routes: []*pb.Route{
			{Peer: "b", Successors: []string{"c", "d"}}, {Peer: "c"}, {Peer: "d"}}}},
		{"tree/deep", tree, "d", []string{"a"}, &pb.RoutingTable{Routes: []*pb.Route{
			{Peer: "d", Successors: []string{"b", "c"}}, {Peer: "b"}, {Peer: "c"}}}},
		{"tree/inner-gone", tree, "c", []string{"a", "b"}, &pb.RoutingTable{Routes: []*pb.Route{
			{Peer: "c", Successors: []string{"d"}}, {Peer: "d"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := datastream.Reroot(tc.table, "a", tc.root, tc.gone, peers)
			var left []string
			for _, id := range ids {
				if !contains(tc.gone, id) {
					left = append(left, id)
				}
			}
			if err := got.Validate(tc.root, left); err != nil {
				t.Fatalf("%v: %v", got, err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// cuttingCommitter is a logCommitter that remembers every key it
// committed, with the entry's index and term, as raft.Node does for
// deduplication, and runs cut, once, after it linked the first entry on
// every peer and before the primary can reply: the primary's reply to
// CLOSE is lost with the connection. It keeps the keys under its own
// lock: a server asks for them under its stream table's, which a link
// takes under the logCommitter's.
type cuttingCommitter struct {
	*logCommitter
	mu   sync.Mutex
	cut  func()
	keys map[statemachine.StreamKey]*pb.RaftClientReply
}

func (c *cuttingCommitter) Commit(ctx context.Context, s statemachine.StreamInfo) (*pb.RaftClientReply, error) {
	rep, err := c.logCommitter.Commit(ctx, s)
	c.mu.Lock()
	cut := c.cut
	c.cut = nil
	if err == nil {
		c.keys[s.Key] = rep
	}
	c.mu.Unlock()
	if err == nil && cut != nil {
		cut()
	}
	return rep, err
}

func (c *cuttingCommitter) CommittedEntry(k statemachine.StreamKey) (index, term uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rep, ok := c.keys[k]
	return rep.GetLogIndex(), rep.GetTerm(), ok
}

func (c *cuttingCommitter) Committed(k statemachine.StreamKey) (uint64, bool) {
	index, _, ok := c.CommittedEntry(k)
	return index, ok
}

// TestFailoverCommittedBeforeCut: the primary commits the stream, every
// peer links it, and the client's connection to the primary is lost
// before the reply to CLOSE comes. The client resumes the stream on the
// next peer, which knows the entry (ALREADY_COMMITTED): the CLOSE
// succeeds with the entry's index and term and the stream's whole length,
// where the outcome was once unknown.
func TestFailoverCommittedBeforeCut(t *testing.T) {
	const (
		size   = 1 << 20
		packet = 64 << 10
	)
	buffertest.Check(t)
	g, _, lc := failoverGroup(t, 0)
	cc := &cuttingCommitter{logCommitter: lc, keys: map[statemachine.StreamKey]*pb.RaftClientReply{}}
	for _, s := range g.servers {
		s.SetCommitter(cc)
	}
	c := g.client(t, datastream.WithPacketSize(packet))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("committed-then-cut"))
	if err != nil {
		t.Fatal(err)
	}
	// An earlier stream, so that the index is not 1 by chance.
	first, err := c.Stream(ctx, []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := first.Close(ctx).Wait(ctx); err != nil || r.RaftClientReply.GetLogIndex() != 1 {
		t.Fatalf("first stream: %v, %v", r, err)
	}
	data := testkit.RandomBytes(11, size)
	if err := sendAll(ctx, out, data[:size-packet], 0, packet); err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, nil, datastream.Flush).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	cut := make(chan string, 1)
	cc.mu.Lock()
	cc.cut = func() {
		// Closing the connection takes effect on its event loop: the
		// reply must wait until the client has moved the stream, after
		// which the old primary's replies go nowhere.
		failed := datastream.CutPrimary(out)
		for deadline := time.Now().Add(patience); datastream.Primary(out) == failed && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		cut <- failed
	}
	cc.mu.Unlock()
	// The last packet carries the CLOSE, and its data is acknowledged
	// only by the commit: the resume replays it.
	closed := out.WriteAsync(ctx, data[size-packet:], datastream.Close)
	reply, err := closed.Wait(ctx)
	if err != nil {
		t.Fatalf("CLOSE committed before the primary was cut off: %v", err)
	}
	if failed := <-cut; failed != g.peers[0].ID {
		t.Fatalf("the commit cut off %s, want the primary %s", failed, g.peers[0].ID)
	}
	rcr := reply.RaftClientReply
	if !rcr.GetSuccess() || rcr.GetLogIndex() != 2 || rcr.GetTerm() != 1 || rcr.GetCallId() != out.ID() {
		t.Errorf("CLOSE's RaftClientReply %v, want success at index 2, term 1", rcr)
	}
	if reply.BytesWritten() != size || reply.Offset != size-packet || reply.Length != packet {
		t.Errorf("CLOSE reply: offset %d, length %d, %d bytes written; want %d, %d, %d",
			reply.Offset, reply.Length, reply.BytesWritten(), size-packet, packet, size)
	}
	if reply.Server != g.peers[1].ID {
		t.Errorf("answered by %s, want %s, where the stream moved", reply.Server, g.peers[1].ID)
	}
	if got, err := out.RaftClientReplyFuture().Wait(ctx); err != nil || got.GetLogIndex() != 2 {
		t.Errorf("RaftClientReplyFuture: %v, %v; want index 2", got, err)
	}
	if err := out.Err(); err != nil {
		t.Errorf("committed stream has error %v", err)
	}
	k := key(c, out)
	for i := range g.servers {
		if got, ok := g.memory(i).Sum(k); !ok || got != sha(data) {
			t.Errorf("%s: committed=%v, bytes equal=%v", g.peers[i].ID, ok, got == sha(data))
		}
	}
	eventually(t, "every peer to let go of the stream", func() bool {
		for _, s := range g.servers {
			if s.Streams().Active() != 0 || s.Streams().Pending() != 0 {
				return false
			}
		}
		return true
	})
}

// claimingPeer listens as a peer that answers every RESUME it gets with
// ALREADY_COMMITTED, at index 5, term 2, and nothing else: a claim no
// correct peer makes for a stream whose CLOSE was never sent. It sends
// each RESUME's offset on resumes.
func claimingPeer(t *testing.T) (addr string, resumes <-chan uint64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan uint64, 8)
	done := make(chan struct{})
	var mu sync.Mutex
	var conn net.Conn
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		if conn != nil {
			_ = conn.Close()
		}
		mu.Unlock()
		<-done
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		mu.Lock()
		conn = c
		mu.Unlock()
		for {
			frame, err := readFrame(c)
			if err != nil {
				return
			}
			h, _, err := dscodec.DecodePacket(frame, dscodec.DefaultMaxPacketHeader)
			if err != nil || h.GetOptions()&uint32(pb.DataStreamPacketHeader_RESUME) == 0 {
				continue
			}
			got <- h.GetStreamOffset()
			msg := "stream was committed at index 5"
			body, _ := proto.Marshal(&pb.RaftClientReply{ClientId: h.GetClientId(), CallId: h.GetStreamId(),
				ErrorCode: pb.ErrorCode_ALREADY_COMMITTED, ErrorMessage: msg, LogIndex: 5, Term: 2})
			reply, err := dscodec.EncodePacket(&pb.DataStreamReplyHeader{PacketHeader: h,
				ErrorCode: pb.ErrorCode_ALREADY_COMMITTED, ErrorMessage: msg, ServerId: "claimer"}, body)
			if err != nil {
				return
			}
			_, err = c.Write(reply.Bytes())
			reply.Release()
			if err != nil {
				return
			}
		}
	}()
	return ln.Addr().String(), got
}

// TestFailoverCommittedBeforeClose: a peer that answers a RESUME sent
// before the stream's CLOSE with ALREADY_COMMITTED cannot be right about
// this stream, whose CLOSE alone could commit it: the stream fails, with
// an error that says so, and does not move on.
func TestFailoverCommittedBeforeClose(t *testing.T) {
	buffertest.Check(t)
	g, _, _ := failoverGroup(t, 0)
	// The client reaches the second peer at the claimer's address.
	addr, resumes := claimingPeer(t)
	peers := append([]group.Member(nil), g.peers...)
	peers[1].StreamAddr = addr
	c, err := datastream.NewClient(peers, datastream.WithLogger(testkit.QuietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("never-closed"))
	if err != nil {
		t.Fatal(err)
	}
	data := testkit.RandomBytes(12, 256<<10)
	if err := sendAll(ctx, out, data, 0, 64<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAsync(ctx, nil, datastream.Flush).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	datastream.CutPrimary(out)
	eventually(t, "the stream to fail", func() bool { return out.Err() != nil })
	if at := <-resumes; at != uint64(len(data)) {
		t.Errorf("resumed at %d, want %d", at, len(data))
	}
	err = out.Err()
	if !errors.Is(err, &pb.Error{Code: pb.ErrorCode_ALREADY_COMMITTED}) || !strings.Contains(err.Error(), "CLOSE was never sent") {
		t.Fatalf("stream told it committed before its CLOSE: %v; want ALREADY_COMMITTED, saying the CLOSE was never sent", err)
	}
	if _, cerr := out.Close(ctx).Wait(ctx); cerr != err {
		t.Errorf("CLOSE of the failed stream: %v, want its error", cerr)
	}
	if p := datastream.Primary(out); p != g.peers[1].ID {
		t.Errorf("the stream moved on to %s after the claim", p)
	}
}
