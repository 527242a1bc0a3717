package datastream_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/internal/testcert"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// fileGroup starts n peers, each storing into a FileStore of its own.
func fileGroup(t testing.TB, n int, kind transport.Kind) (*group, []*statemachine.FileStore) {
	t.Helper()
	stores := make([]*statemachine.FileStore, n)
	for i := range stores {
		fs, err := statemachine.NewFileStore(t.TempDir(), statemachine.WithLogger(quietLogger()), statemachine.WithSyncOnClose(false))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = fs.Close() })
		stores[i] = fs
	}
	g := startGroup(t, n, groupOpts{kind: kind, sm: func(i int) statemachine.StateMachine { return stores[i] }})
	return g, stores
}

// put stores data under name on every peer of the group.
func put(t testing.TB, c *datastream.Client, name string, data []byte) {
	t.Helper()
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte(name))
	if err != nil {
		t.Fatal(err)
	}
	w := out.Writer(ctx)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func open(t testing.TB, c *datastream.Client, name string, opts ...datastream.ReadOption) *datastream.Reader {
	t.Helper()
	r, err := c.Open(testCtx(t), name, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

var readSizes = []int{0, 1, 64<<10 - 1, 5<<20 + 3}

// TestRead reads files whole and by ranges, over both transports, with the
// default window and with one small enough that a file takes many
// requests, and checks every byte.
func TestRead(t *testing.T) {
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		t.Run(kind.String(), func(t *testing.T) {
			buffertest.Check(t)
			g, stores := fileGroup(t, 1, kind)
			c := g.client(t, datastream.WithTransport(kind))
			files := make(map[string][]byte)
			for i, n := range readSizes {
				name := fmt.Sprintf("dir/f%d", n)
				files[name] = randomBytes(uint64(100+i), n)
				put(t, c, name, files[name])
			}
			for _, window := range [][2]int{{datastream.DefaultReadRequest, datastream.DefaultReadWindow}, {64 << 10, 3}} {
				for name, want := range files {
					r := open(t, c, name, datastream.WithReadWindow(window[0], window[1]))
					sf, _ := stores[0].Lookup(name)
					if info := r.Info(); r.Size() != int64(len(want)) || info.Index != sf.Index || info.Peer != g.peers[0].ID ||
						!bytes.Equal(info.SHA256, sf.SHA256[:]) || info.Name != name || info.Missing {
						t.Fatalf("%s: info %+v, size %d; store has %+v", name, info, r.Size(), sf)
					}
					got, err := io.ReadAll(r)
					if err != nil || !bytes.Equal(got, want) {
						t.Fatalf("%s (window %v): read %d bytes, equal %v, err %v; want %d", name, window, len(got), bytes.Equal(got, want), err, len(want))
					}
					if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
						t.Fatalf("%s: Read after the end: %d, %v", name, n, err)
					}
					checkRanges(t, r, want)
					var buf bytes.Buffer
					w := open(t, c, name, datastream.WithReadWindow(window[0], window[1]))
					if n, err := io.Copy(&buf, w); n != int64(len(want)) || err != nil || !bytes.Equal(buf.Bytes(), want) {
						t.Fatalf("%s: WriteTo: %d bytes, %v", name, n, err)
					}
					w.Close()
					if err := r.Close(); err != nil {
						t.Fatal(err)
					}
					if _, err := r.Read(make([]byte, 1)); err == nil {
						t.Fatalf("%s: Read after Close succeeded", name)
					}
				}
			}
			list, err := c.List(testCtx(t), g.peers[0].ID)
			if err != nil || len(list) != len(files) {
				t.Fatalf("List: %v, %v", list, err)
			}
			for _, fi := range list {
				want, ok := files[fi.Name]
				if sum := sha256.Sum256(want); !ok || fi.Length != uint64(len(want)) || !bytes.Equal(fi.SHA256, sum[:]) || fi.Missing || fi.Index == 0 {
					t.Errorf("List entry %+v", fi)
				}
			}
		})
	}
}

// checkRanges reads random ranges of r with ReadAt, some of them past the
// end, and compares them with want.
func checkRanges(t testing.TB, r *datastream.Reader, want []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(len(want)), 7))
	size := len(want)
	for i := range 12 {
		off := rng.IntN(size + 1)
		n := rng.IntN(size-off+1) + rng.IntN(3) // sometimes past the end
		if i == 0 {
			off, n = 0, size
		}
		p := make([]byte, n)
		got, err := r.ReadAt(p, int64(off))
		wantN := min(n, size-off)
		if got != wantN || !bytes.Equal(p[:got], want[off:off+wantN]) {
			t.Fatalf("ReadAt(%d bytes at %d) of %d: got %d bytes, equal %v, err %v", n, off, size, got, bytes.Equal(p[:got], want[off:off+wantN]), err)
		}
		if wantErr := wantN < n; (err == io.EOF) != wantErr || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d bytes at %d) of %d: err %v", n, off, size, err)
		}
	}
	if n, err := r.ReadAt(make([]byte, 1), int64(size)+5); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt past the end: %d, %v", n, err)
	}
}

// Concurrent ReadAt calls on one Reader share its connection.
func TestReadAtConcurrent(t *testing.T) {
	buffertest.Check(t)
	g, _ := fileGroup(t, 1, transport.Gnet)
	c := g.client(t)
	want := randomBytes(9, 3<<20+11)
	put(t, c, "c", want)
	r := open(t, c, "c", datastream.WithReadWindow(100<<10, 2))
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			off := w * len(want) / 8
			p := make([]byte, len(want)/8)
			n, err := r.ReadAt(p, int64(off))
			if err == nil && !bytes.Equal(p[:n], want[off:off+n]) {
				err = fmt.Errorf("bytes at %d differ", off)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A name nobody stored is ErrNotFound from every peer; one whose newest
// entry has no copy is ErrMissing, and the older version it replaced is not
// served.
func TestReadNotFoundAndMissing(t *testing.T) {
	buffertest.Check(t)
	g, stores := fileGroup(t, 1, transport.Gnet)
	c := g.client(t)
	ctx := testCtx(t)
	if _, err := c.Open(ctx, "nope"); !errors.Is(err, datastream.ErrNotFound) {
		t.Fatalf("Open of an unknown name: %v, want ErrNotFound", err)
	}
	old := []byte("the old version")
	put(t, c, "m", old)
	sf, _ := stores[0].Lookup("m")
	// The group commits a newer version of "m" while this peer holds no
	// copy of it.
	newer := statemachine.Entry{
		Index: sf.Index + 10, Term: 1, Key: statemachine.StreamKey{ClientID: "other", StreamID: 1},
		Request: &pb.RaftClientRequest{Type: pb.RaftClientRequest_STREAM, Message: []byte("m")}, Length: 99,
	}
	if err := stores[0].Link(ctx, newer, nil); err != nil {
		t.Fatal(err)
	}
	r, err := c.Open(ctx, "m")
	if !errors.Is(err, datastream.ErrMissing) || r != nil {
		t.Fatalf("Open of a missing copy: %v, %v; want ErrMissing", r, err)
	}
	list, err := c.List(ctx, g.peers[0].ID)
	if err != nil || len(list) != 1 || !list[0].Missing || list[0].Index != newer.Index || len(list[0].SHA256) != 0 {
		t.Fatalf("List: %+v, %v", list, err)
	}
}

// A peer shut down in the middle of a read, with the Reader's window
// outstanding on it, is replaced by the next: Read and ReadAt complete
// with the right bytes.
func TestReadPeerKilled(t *testing.T) {
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		t.Run(kind.String(), func(t *testing.T) {
			buffertest.Check(t)
			g, _ := fileGroup(t, 3, kind)
			c := g.client(t, datastream.WithTransport(kind))
			want := randomBytes(5, 5<<20+3)
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
	put(t, c, "x", randomBytes(3, 300<<10))
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

// rawConn is a client that speaks the protocol by hand.
type rawConn struct {
	t testing.TB
	c net.Conn
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawConn{t: t, c: c}
}

func (rc *rawConn) send(typ pb.DataStreamPacketHeader_Type, id uint64, body []byte) {
	rc.t.Helper()
	frame, err := dscodec.EncodePacket(&pb.DataStreamPacketHeader{Type: typ, StreamId: id, DataLength: uint64(len(body))}, body)
	if err != nil {
		rc.t.Fatal(err)
	}
	defer frame.Release()
	if _, err := rc.c.Write(frame.Bytes()); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawConn) read(id uint64, req *pb.ReadRequest) {
	rc.t.Helper()
	body, err := proto.Marshal(req)
	if err != nil {
		rc.t.Fatal(err)
	}
	rc.send(pb.DataStreamPacketHeader_STREAM_READ, id, body)
}

// next returns the next reply and its body.
func (rc *rawConn) next() (*pb.DataStreamReplyHeader, []byte) {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(patience))
	var n [4]byte
	if _, err := io.ReadFull(rc.c, n[:]); err != nil {
		rc.t.Fatal(err)
	}
	frame := make([]byte, 4+binary.BigEndian.Uint32(n[:]))
	copy(frame, n[:])
	if _, err := io.ReadFull(rc.c, frame[4:]); err != nil {
		rc.t.Fatal(err)
	}
	h, off, err := datastream.DecodeReadReply(frame)
	if err != nil {
		rc.t.Fatal(err)
	}
	return h, frame[off:]
}

// Bad requests get a final error reply with a clear code, and the
// connection and the server carry on.
func TestReadBadRequests(t *testing.T) {
	buffertest.Check(t)
	g, _ := fileGroup(t, 1, transport.Gnet)
	c := g.client(t)
	put(t, c, "ok", []byte("0123456789"))
	rc := dialRaw(t, g.peers[0].Addr)
	for i, tc := range []struct {
		req  *pb.ReadRequest
		body []byte // instead of req
		typ  pb.DataStreamPacketHeader_Type
		code pb.ErrorCode
	}{
		{req: &pb.ReadRequest{Name: "../etc/passwd", Length: 1}, code: pb.ErrorCode_BAD_HEADER},
		{req: &pb.ReadRequest{Name: "", Length: 1}, code: pb.ErrorCode_BAD_HEADER},
		{req: &pb.ReadRequest{Name: "ok", Offset: 11, Length: 1}, code: pb.ErrorCode_OUT_OF_RANGE},
		{req: &pb.ReadRequest{Name: "ok", Length: handler.MaxReadLength + 1}, code: pb.ErrorCode_LIMIT_EXCEEDED},
		{req: &pb.ReadRequest{Name: "ok", Length: 1, Index: 999}, code: pb.ErrorCode_NOT_FOUND},
		{req: &pb.ReadRequest{Name: "nope", Length: 1}, code: pb.ErrorCode_NOT_FOUND},
		{body: []byte{0xff, 0xff}, code: pb.ErrorCode_BAD_HEADER},
		{body: []byte("x"), typ: pb.DataStreamPacketHeader_STREAM_LIST, code: pb.ErrorCode_BAD_HEADER},
		{body: []byte("x"), typ: pb.DataStreamPacketHeader_STREAM_DATA, code: pb.ErrorCode_FORBIDDEN},
	} {
		id := uint64(i + 1)
		if tc.req != nil {
			rc.read(id, tc.req)
		} else {
			typ := tc.typ
			if typ == pb.DataStreamPacketHeader_TYPE_UNSPECIFIED {
				typ = pb.DataStreamPacketHeader_STREAM_READ
			}
			rc.send(typ, id, tc.body)
		}
		h, body := rc.next()
		if h.GetSuccess() || h.GetErrorCode() != tc.code || !h.GetLast() || h.GetPacketHeader().GetStreamId() != id || len(body) != 0 || h.GetErrorMessage() == "" {
			t.Errorf("request %d: reply %v, body %d bytes; want %v", i, h, len(body), tc.code)
		}
	}
	// The same connection still serves, ranges clamped at the end.
	rc.read(100, &pb.ReadRequest{Name: "ok", Offset: 4, Length: 100})
	h, body := rc.next()
	if !h.GetSuccess() || !h.GetLast() || h.GetReadOffset() != 4 || string(body) != "456789" || h.GetFile().GetLength() != 10 {
		t.Fatalf("read after bad requests: %v %q", h, body)
	}
	r := open(t, c, "ok")
	if got, err := io.ReadAll(r); err != nil || string(got) != "0123456789" {
		t.Fatalf("Open after bad requests: %q, %v", got, err)
	}
}

// A connection that asks for more than the server's per-connection limit
// and reads nothing gets LIMIT_EXCEEDED for the excess, and the server's
// accounted read bytes stay within the limit; once the client reads, they
// drain to zero.
func TestReadServerBound(t *testing.T) {
	buffertest.Check(t)
	g, _ := fileGroup(t, 1, transport.Gnet)
	c := g.client(t)
	const size = 2 * handler.MaxConnReadBytes
	want := randomBytes(11, size)
	put(t, c, "huge", want)
	rc := dialRaw(t, g.peers[0].Addr)
	const n = handler.MaxReadLength
	reqs := size / n
	for i := range reqs {
		rc.read(uint64(i+1), &pb.ReadRequest{Name: "huge", Offset: uint64(i * n), Length: n})
	}
	streams := g.servers[0].Streams()
	// The server admitted what its limit allows and refused the rest; its
	// accounted bytes can only fall from here, as the kernel takes them.
	eventually(t, "the server admits its limit of reads", func() bool { return streams.ReadBytesInFlight() > 0 })
	if got := streams.ReadBytesInFlight(); got > handler.MaxConnReadBytes {
		t.Fatalf("server accounts %d read bytes in flight, limit %d", got, handler.MaxConnReadBytes)
	}
	got := make(map[uint64][]byte)
	refused := 0
	for done := 0; done < reqs; {
		h, body := rc.next()
		if inflight := streams.ReadBytesInFlight(); inflight > handler.MaxConnReadBytes {
			t.Fatalf("server accounts %d read bytes in flight, limit %d", inflight, handler.MaxConnReadBytes)
		}
		id := h.GetPacketHeader().GetStreamId()
		switch {
		case !h.GetSuccess():
			if h.GetErrorCode() != pb.ErrorCode_LIMIT_EXCEEDED {
				t.Fatalf("reply %v", h)
			}
			refused++
		default:
			got[id] = append(got[id], body...)
			if !h.GetLast() {
				continue
			}
			off := int(id-1) * n
			if !bytes.Equal(got[id], want[off:off+n]) {
				t.Fatalf("read %d: bytes differ", id)
			}
		}
		done++
	}
	// 64 MiB asked for at once is more than the limit and what the
	// sockets' buffers take, however large the kernel makes them.
	if refused == 0 || refused == reqs {
		t.Fatalf("%d of %d reads refused", refused, reqs)
	}
	eventually(t, "read bytes drain", func() bool { return streams.ReadBytesInFlight() == 0 })
}

// A Reader that stops reading holds at most its window: its requests are
// answered, the server's accounted bytes drain to zero, and it asks for
// nothing more.
func TestReaderStopsReading(t *testing.T) {
	buffertest.Check(t)
	g, _ := fileGroup(t, 1, transport.Gnet)
	c := g.client(t)
	want := randomBytes(12, 20<<20)
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

func TestReadOptions(t *testing.T) {
	g, _ := fileGroup(t, 1, transport.Gnet)
	c := g.client(t)
	ctx := testCtx(t)
	for _, opts := range [][]datastream.ReadOption{
		{datastream.WithReadPeer("zz")},
		{datastream.WithReadPeer()},
		{datastream.WithReadWindow(0, 1)},
		{datastream.WithReadWindow(1, 0)},
		{datastream.WithReadTimeout(0)},
		{datastream.WithReadAttempts(0)},
	} {
		if r, err := c.Open(ctx, "x", opts...); err == nil {
			r.Close()
			t.Errorf("Open with bad options succeeded")
		}
	}
	if _, err := c.List(ctx, "zz"); err == nil {
		t.Error("List of an unknown peer succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Open(cctx, "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with a cancelled context: %v", err)
	}
}

// A peer that answers the stat and then goes silent is given up on after
// the read timeout; the read completes from the next peer, which serves
// the same entry.
func TestReadPeerHangs(t *testing.T) {
	buffertest.Check(t)
	g, stores := fileGroup(t, 1, transport.Gnet)
	want := randomBytes(21, 1<<20+5)
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
	c, err := datastream.NewClient(peers, datastream.WithLogger(quietLogger()))
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
	put(t, g.client(t), "v", randomBytes(22, 1000))
	sf, _ := stores[0].Lookup("v")
	var reads atomic.Int32
	fake := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
		if h.GetType() == pb.DataStreamPacketHeader_STREAM_READ && reads.Add(1) == 1 {
			// The stat: an entry newer than the real peer's, then silence.
			reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, Success: true, ServerId: "fake", Last: true,
				File: &pb.FileInfo{Name: "v", Length: sf.Length, Index: sf.Index + 1}}, nil)
		}
	})
	c, err := datastream.NewClient(append(fake.peers(), g.peers...), datastream.WithLogger(quietLogger()))
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
	put(t, g.client(t), "cc", randomBytes(23, 3<<20))
	c, err := datastream.NewClient(g.peers, datastream.WithLogger(quietLogger()))
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

// Over TLS the server cannot sendfile: it reads each reply's bytes into a
// buffer off the event loop instead. The bytes are the same.
func TestReadTLS(t *testing.T) {
	buffertest.Check(t)
	ca := testcert.NewCA(t, "read-ca")
	fs, err := statemachine.NewFileStore(t.TempDir(), statemachine.WithLogger(quietLogger()), statemachine.WithSyncOnClose(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	g := startGroup(t, 1, groupOpts{sm: func(int) statemachine.StateMachine { return fs }, tweak: func(cfg *server.Config) {
		cert := ca.Peer(t, cfg.ID)
		cfg.Transport = transport.NetConn
		cfg.TLS, cfg.PeerTLS = ca.ServerConfig(cert), ca.ClientConfig(cert)
	}})
	c := g.client(t, datastream.WithTLS(ca.ClientConfig(ca.Client(t, "reader"))))
	want := randomBytes(31, 5<<20+3)
	put(t, c, "tls", want)
	r := open(t, c, "tls", datastream.WithReadWindow(300<<10, 3))
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read over TLS: %d bytes, equal %v, %v", len(got), bytes.Equal(got, want), err)
	}
	checkRanges(t, r, want)
	if n := g.servers[0].Streams().ReadBytesInFlight(); n != 0 {
		t.Fatalf("%d read bytes accounted after the reads", n)
	}
}
