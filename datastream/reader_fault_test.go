package datastream_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/testkit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
)

// A peer shut down in the middle of a read, with the Reader's window
// outstanding on it, is replaced by the next: Read and ReadAt complete
// with the right bytes.
func TestReadPeerKilled(t *testing.T) {
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		t.Run(kind.String(), func(t *testing.T) {
			buffertest.Check(t)
			g, _ := fileGroup(t, 3, kind)
			c := g.client(t, datastream.WithTransport(kind))
			want := testkit.RandomBytes(5, 5<<20+3)
			put(t, c, "big", want)
			ids := []string{g.peers[0].ID, g.peers[1].ID, g.peers[2].ID}
			r := open(t, c, "big", datastream.WithReadPeer(ids...), datastream.WithReadWindow(64<<10, 4))
			ra := open(t, c, "big", datastream.WithReadPeer(ids[1], ids[2], ids[0]), datastream.WithReadWindow(64<<10, 4))
			got := make([]byte, 1<<20)
			if _, err := io.ReadFull(r, got); err != nil {
				t.Fatal(err)
			}
			if n, err := ra.ReadAt(got[:1000], 77); n != 1000 || err != nil || !bytes.Equal(got[:1000], want[77:1077]) {
				t.Fatalf("ReadAt before the kill: %d, %v", n, err)
			}
			g.stop(0)
			g.stop(1)
			rest, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(rest, want[1<<20:]) {
				t.Fatalf("read after the kill: %d bytes, equal %v, %v", len(rest), bytes.Equal(rest, want[1<<20:]), err)
			}
			all := make([]byte, len(want))
			if n, err := ra.ReadAt(all, 0); n != len(want) || err != nil || !bytes.Equal(all, want) {
				t.Fatalf("ReadAt after the kill: %d, %v", n, err)
			}
			if p, pa := datastream.ReadPeer(r), datastream.ReadPeer(ra); p != ids[2] || pa != ids[2] {
				t.Fatalf("reading from %q and %q after the kill, want %q", p, pa, ids[2])
			}
		})
	}
}

// A read whose every peer is gone fails once its attempts are spent, with
// the cause.
func TestReadAllPeersGone(t *testing.T) {
	buffertest.Check(t)
	g, _ := fileGroup(t, 2, transport.Gnet)
	c := g.client(t)
	put(t, c, "x", testkit.RandomBytes(3, 300<<10))
	r := open(t, c, "x", datastream.WithReadWindow(64<<10, 1), datastream.WithReadAttempts(3))
	if _, err := io.ReadFull(r, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	g.stop(0)
	g.stop(1)
	_, err := io.ReadAll(r)
	if !errors.Is(err, datastream.ErrConnectionLost) {
		t.Fatalf("read with no peer left: %v, want ErrConnectionLost", err)
	}
}

// A Reader that stops reading holds at most its window: its requests are
// answered, the server's accounted bytes drain to zero, and it asks for
// nothing more.
func TestReaderStopsReading(t *testing.T) {
	buffertest.Check(t)
	g, _ := fileGroup(t, 1, transport.Gnet)
	c := g.client(t)
	want := testkit.RandomBytes(12, 20<<20)
	put(t, c, "slow", want)
	const request, window = 64 << 10, 4
	r := open(t, c, "slow", datastream.WithReadWindow(request, window))
	p := make([]byte, 10)
	if _, err := io.ReadFull(r, p); err != nil || !bytes.Equal(p, want[:10]) {
		t.Fatal(err)
	}
	streams := g.servers[0].Streams()
	eventually(t, "the window is answered", func() bool {
		asked, buffered := datastream.ReadWindow(r)
		return streams.ReadBytesInFlight() == 0 && asked == buffered
	})
	if asked, buffered := datastream.ReadWindow(r); asked > request*window || buffered > request*window {
		t.Fatalf("reader asked for %d bytes and holds %d, window %d", asked, buffered, request*window)
	}
	rest, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(rest, want[10:]) {
		t.Fatalf("rest: %d bytes, %v", len(rest), err)
	}
}

// A peer that answers the stat and then goes silent is given up on after
// the read timeout; the read completes from the next peer, which serves
// the same entry.
func TestReadPeerHangs(t *testing.T) {
	buffertest.Check(t)
	g, stores := fileGroup(t, 1, transport.Gnet)
	want := testkit.RandomBytes(21, 1<<20+5)
	put(t, g.client(t), "h", want)
	sf, _ := stores[0].Lookup("h")
	var reads atomic.Int32
	fake := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
		if h.GetType() != pb.DataStreamPacketHeader_STREAM_READ || reads.Add(1) > 1 {
			return // silent
		}
		reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, Success: true, ServerId: "fake", Last: true,
			File: &pb.FileInfo{Name: "h", Length: sf.Length, Index: sf.Index, Term: sf.Term}}, nil)
	})
	peers := append(fake.peers(), g.peers...)
	c, err := datastream.NewClient(peers, datastream.WithLogger(testkit.QuietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := open(t, c, "h", datastream.WithReadPeer("fake", g.peers[0].ID), datastream.WithReadTimeout(200*time.Millisecond))
	if info := r.Info(); info.Peer != "fake" {
		t.Fatalf("stat answered by %q, want the fake", info.Peer)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read: %d bytes, equal %v, %v", len(got), bytes.Equal(got, want), err)
	}
	if p := datastream.ReadPeer(r); p != g.peers[0].ID || reads.Load() < 2 {
		t.Fatalf("read from %q after %d requests to the fake", p, reads.Load())
	}
}

// A read resumed on a peer that holds another version of the name gets
// NOT_FOUND there, never that version's bytes.
func TestReadResumeOtherVersion(t *testing.T) {
	buffertest.Check(t)
	g, stores := fileGroup(t, 1, transport.Gnet)
	put(t, g.client(t), "v", testkit.RandomBytes(22, 1000))
	sf, _ := stores[0].Lookup("v")
	var reads atomic.Int32
	fake := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
		if h.GetType() == pb.DataStreamPacketHeader_STREAM_READ && reads.Add(1) == 1 {
			// The stat: an entry newer than the real peer's, then silence.
			reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, Success: true, ServerId: "fake", Last: true,
				File: &pb.FileInfo{Name: "v", Length: sf.Length, Index: sf.Index + 1}}, nil)
		}
	})
	c, err := datastream.NewClient(append(fake.peers(), g.peers...), datastream.WithLogger(testkit.QuietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := open(t, c, "v", datastream.WithReadPeer("fake", g.peers[0].ID), datastream.WithReadAttempts(2),
		datastream.WithReadTimeout(200*time.Millisecond))
	got, err := io.ReadAll(r)
	if !errors.Is(err, datastream.ErrNotFound) || len(got) != 0 {
		t.Fatalf("read of another version: %d bytes, %v; want none and ErrNotFound", len(got), err)
	}
}

// A Reader left open when its client closes is closed with it: reads fail
// with ErrClosed and its connection is gone (the package's leak check
// would see it otherwise).
func TestReaderClientClosed(t *testing.T) {
	buffertest.Check(t)
	g, _ := fileGroup(t, 1, transport.Gnet)
	put(t, g.client(t), "cc", testkit.RandomBytes(23, 3<<20))
	c, err := datastream.NewClient(g.peers, datastream.WithLogger(testkit.QuietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Open(testCtx(t), "cc", datastream.WithReadWindow(64<<10, 2))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the reader to close", func() bool { return datastream.ReadPeer(r) == "" })
	if _, err := io.ReadAll(r); !errors.Is(err, datastream.ErrClosed) {
		t.Fatalf("read after the client closed: %v, want ErrClosed", err)
	}
	if _, err := c.Open(testCtx(t), "cc"); !errors.Is(err, datastream.ErrClosed) {
		t.Fatalf("Open on a closed client: %v, want ErrClosed", err)
	}
}
