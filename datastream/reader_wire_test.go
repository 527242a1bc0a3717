package datastream_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/internal/testkit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
)

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
	frame, err := readFrame(rc.c)
	if err != nil {
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
	rc := dialRaw(t, g.peers[0].StreamAddr)
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
	want := testkit.RandomBytes(11, size)
	put(t, c, "huge", want)
	rc := dialRaw(t, g.peers[0].StreamAddr)
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
