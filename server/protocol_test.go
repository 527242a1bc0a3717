package server_test

// The tests in this file check docs/protocol.md statement by statement: each
// speaks raw bytes to a real server over loopback, as a client written from
// the page alone would, and asserts what the page promises.

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// unhex decodes the hex dumps of docs/protocol.md, which may have spaces
// and newlines.
func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readFrame reads one whole frame, as bytes, or returns the read error.
func (r *raw) readFrame() ([]byte, error) {
	_ = r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var n [4]byte
	if _, err := io.ReadFull(r.c, n[:]); err != nil {
		return nil, err
	}
	b := make([]byte, 4+binary.BigEndian.Uint32(n[:]))
	copy(b, n[:])
	if _, err := io.ReadFull(r.c, b[4:]); err != nil {
		return nil, err
	}
	return b, nil
}

func (r *raw) write(b []byte) {
	r.t.Helper()
	_ = r.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// open opens stream id on r, naming primary, and checks the reply.
func (r *raw) open(id uint64, primary string) {
	r.t.Helper()
	r.header(id, r.request(id, primary, nil))
	if h, _ := r.reply(); !h.GetSuccess() {
		r.t.Fatalf("stream %d: header refused: %v", id, h)
	}
}

// onEachTransport runs test as a subtest on each transport kind a server
// can listen with, checking that it leaves no buffer held.
func onEachTransport(t *testing.T, test func(t *testing.T, kind transport.Kind)) {
	for _, kind := range transport.Kinds() {
		t.Run(kind.String(), func(t *testing.T) {
			buffertest.Check(t)
			test(t, kind)
		})
	}
}

// The frames of "Example bytes", exactly as the page prints them.
const (
	docHeaderFrame = `
00 00 00 41  00 00 00 18
0a 10 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff
10 01
18 07
28 25
0a 10 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff
10 07
1a 02 67 31
22 02 73 31
28 02
32 05 61 2e 74 78 74`
	docHeaderReply = `
00 00 00 24  00 00 00 20
0a 18
0a 10 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff 10 01 18 07 28 25
18 01
3a 02 73 31`
	docDataFrame = `
00 00 00 23  00 00 00 1a
0a 10 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff
10 02
18 07
28 05
30 01
68 65 6c 6c 6f`
	docDataReply = `
00 00 00 28  00 00 00 24
0a 1a
0a 10 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff 10 02 18 07 28 05 30 01
10 05
18 01
3a 02 73 31`
)

// TestProtocolExampleBytes sends the page's example frames to a peer "s1"
// of group "g1" and expects the page's reply bytes, byte for byte; then it
// closes the stream and expects the committed RaftClientReply.
func TestProtocolExampleBytes(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 1, groupOpts{sm: func(int) statemachineSM { return newMemory() }, tweak: func(c *server.Config) {
		c.ID, c.Peers, c.GroupID = "s1", []group.Member{{ID: "s1"}}, []byte("g1")
	}})
	r := dialRaw(t, g.peers[0].StreamAddr)
	r.client = unhex(t, "00112233445566778899aabbccddeeff")
	hf := unhex(t, docHeaderFrame)
	if len(hf) != 69 {
		t.Fatalf("the page's header frame has %d bytes, it says 69", len(hf))
	}
	for _, step := range []struct{ name, send, want string }{
		{"header", docHeaderFrame, docHeaderReply},
		{"data", docDataFrame, docDataReply},
	} {
		r.write(unhex(t, step.send))
		got, err := r.readFrame()
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if want := unhex(t, step.want); !bytes.Equal(got, want) {
			t.Fatalf("%s: reply\n% x\nwant the page's\n% x", step.name, got, want)
		}
	}
	r.data(7, 5, nil, pb.DataStreamPacketHeader_CLOSE)
	h, rcr := r.reply()
	if !h.GetSuccess() || h.GetBytesWritten() != 5 || h.GetServerId() != "s1" {
		t.Fatalf("close: %v", h)
	}
	if !rcr.GetSuccess() || rcr.GetLogIndex() == 0 || rcr.GetCallId() != 7 || !bytes.Equal(rcr.GetClientId(), r.client) {
		t.Fatalf("close: RaftClientReply %v, want a successful one for call 7 with its log index", rcr)
	}
	k := statemachine.StreamKey{ClientID: string(r.client), StreamID: 7}
	if got, ok := g.memory(0).Data(k); !ok || string(got) != "hello" {
		t.Fatalf("stored %q (%v), want hello", got, ok)
	}
}

// expectFramingClose reads what the server sends after a frame it cannot
// attribute: at most one reply without a packet header (BAD_HEADER, with
// its reason), then the end of the connection.
func expectFramingClose(t *testing.T, r *raw, name string) {
	t.Helper()
	for i := 0; ; i++ {
		b, err := r.readFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("%s: the server did not close the connection", name)
			}
			return // EOF or reset: closed
		}
		h, _, err := dscodec.DecodeReply(b, dscodec.DefaultMaxPacketHeader)
		switch {
		case err != nil:
			t.Fatalf("%s: reply does not decode: %v", name, err)
		case i > 0 || h.GetPacketHeader() != nil || h.GetErrorCode() != pb.ErrorCode_BAD_HEADER || h.GetErrorMessage() == "":
			t.Fatalf("%s: reply %v; want one BAD_HEADER without a packet header, then the end", name, h)
		}
	}
}

// TestProtocolFramingErrorsClose: every frame the page lists as breaking
// the framing rules, or over the limits, ends the connection and fails the
// streams open on it; a frame at the limits is served.
func TestProtocolFramingErrorsClose(t *testing.T) {
	const (
		maxHeader = 64 << 10
		maxBody   = 16 << 20
		// The page: header_length + data_length at most 16 MiB + 64 KiB - 8.
		maxFrameLength = 4 + maxHeader + maxBody - 8
	)
	prefix := func(frameLength, headerLength uint32) []byte {
		return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, frameLength), headerLength)
	}
	client := []byte("raw-client-0001!")
	dataHeader := func(n int) *pb.DataStreamPacketHeader {
		return &pb.DataStreamPacketHeader{ClientId: client, Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: 1, DataLength: uint64(n)}
	}
	cases := []struct {
		name  string
		bytes func(t *testing.T) []byte
	}{
		{"frame_length < 4", func(*testing.T) []byte { return []byte{0, 0, 0, 2, 0, 0} }},
		{"header_length > frame_length - 4", func(*testing.T) []byte { return append(prefix(8, 9), 1, 2, 3, 4) }},
		{"header does not parse", func(*testing.T) []byte { return append(prefix(7, 3), 0xff, 0xff, 0xff) }},
		{"body shorter than data_length", func(t *testing.T) []byte {
			b := encodeRaw(t, dataHeader(5), []byte("abcde"))
			b = b[:len(b)-2]
			binary.BigEndian.PutUint32(b, uint32(len(b)-4))
			return b
		}},
		{"body longer than data_length", func(t *testing.T) []byte {
			b := encodeRaw(t, dataHeader(2), []byte("ab"))
			b = append(b, 'c')
			binary.BigEndian.PutUint32(b, uint32(len(b)-4))
			return b
		}},
		{"frame_length over the limit", func(*testing.T) []byte {
			return binary.BigEndian.AppendUint32(nil, maxFrameLength+1)
		}},
		{"header_length over 64 KiB", func(*testing.T) []byte {
			return append(prefix(4+maxHeader+1, maxHeader+1), make([]byte, maxHeader+1)...)
		}},
		{"data_length over 16 MiB", func(t *testing.T) []byte {
			return encodeRaw(t, dataHeader(maxBody+1), make([]byte, maxBody+1))
		}},
	}
	onEachTransport(t, func(t *testing.T, kind transport.Kind) {
		g := startGroup(t, 2, groupOpts{kind: kind})
		for i, tc := range cases {
			// Stream 1 of a connection and a client of its own: a
			// client never reuses a stream id.
			client = []byte(fmt.Sprintf("framing-client%02d", i))
			r := dialRaw(t, g.peers[0].StreamAddr)
			r.client = client
			r.open(1, g.peers[0].ID)
			r.write(tc.bytes(t))
			expectFramingClose(t, r, tc.name)
			// Every stream of the connection fails, on every peer.
			g.waitClean(t)
		}
		// At the limits: 16 MiB of data in one packet is served.
		r := dialRaw(t, g.peers[0].StreamAddr)
		r.open(1, g.peers[0].ID)
		r.data(1, 0, make([]byte, maxBody), pb.DataStreamPacketHeader_CLOSE)
		if h, _ := r.reply(); !h.GetSuccess() || h.GetBytesWritten() != maxBody {
			t.Fatalf("a packet of 16 MiB: %v", h)
		}
	})
}

// TestProtocolHalfClose: the end of a client's input is the end of its
// connection; the streams without a final reply fail.
func TestProtocolHalfClose(t *testing.T) {
	onEachTransport(t, func(t *testing.T, kind transport.Kind) {
		g := startGroup(t, 2, groupOpts{kind: kind})
		r := dialRaw(t, g.peers[0].StreamAddr)
		r.open(1, g.peers[0].ID)
		r.data(1, 0, []byte("abc"))
		if h, _ := r.reply(); !h.GetSuccess() {
			t.Fatal(h)
		}
		if err := r.c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, r.c)
		g.waitClean(t)
	})
}

// TestProtocolHeaderOptions: options on a STREAM_HEADER are BAD_HEADER and
// open nothing, ABORT among them; the key stays free for a proper header.
func TestProtocolHeaderOptions(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	r := dialRaw(t, g.peers[0].StreamAddr)
	body, err := protoMarshal(r.request(1, g.peers[0].ID, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []uint32{
		uint32(pb.DataStreamPacketHeader_SYNC), uint32(pb.DataStreamPacketHeader_FLUSH),
		uint32(pb.DataStreamPacketHeader_CLOSE), uint32(pb.DataStreamPacketHeader_ABORT), 1 << 20,
	} {
		r.sendFrame(&pb.DataStreamPacketHeader{
			ClientId: r.client, Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: 1,
			DataLength: uint64(len(body)), Options: o,
		}, body)
		if h, _ := r.reply(); h.GetErrorCode() != pb.ErrorCode_BAD_HEADER || h.GetServerId() != g.peers[0].ID {
			t.Errorf("header with options %#x: %v, want BAD_HEADER from %s", o, h, g.peers[0].ID)
		}
		for p, s := range g.servers {
			if n := s.Streams().Active(); n != 0 {
				t.Fatalf("header with options %#x left %d streams open on %s", o, n, g.peers[p].ID)
			}
		}
	}
	r.open(1, g.peers[0].ID)
	r.data(1, 0, []byte("abc"), pb.DataStreamPacketHeader_CLOSE)
	if h, rcr := r.reply(); !h.GetSuccess() || !rcr.GetSuccess() {
		t.Fatalf("the stream after the refused headers: %v %v", h, rcr)
	}
}

// TestProtocolForeignPrimary: on a client's connection a header must name
// the peer it is sent to as the primary, with or without a routing table;
// on a predecessor's connection (one that opened with a PING) a header
// names another peer as a matter of course.
func TestProtocolForeignPrimary(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	ids := []string{g.peers[0].ID, g.peers[1].ID, g.peers[2].ID}
	r := dialRaw(t, g.peers[1].StreamAddr)
	for i, tbl := range []*pb.RoutingTable{nil, pb.Chain(ids...)} {
		id := uint64(i + 1)
		r.header(id, r.request(id, ids[0], tbl))
		h, _ := r.reply()
		if h.GetErrorCode() != pb.ErrorCode_BAD_ROUTING || !strings.Contains(h.GetErrorMessage(), ids[0]) || !strings.Contains(h.GetErrorMessage(), ids[1]) {
			t.Errorf("header naming %s sent to %s (table %v): %v, want BAD_ROUTING naming both", ids[0], ids[1], tbl, h)
		}
	}
	for p, s := range g.servers {
		if n := s.Streams().Active(); n != 0 {
			t.Fatalf("%s has %d streams open after refused headers", ids[p], n)
		}
	}
	// The peer itself as the primary is served on the same connection.
	r.open(3, ids[1])
	r.data(3, 0, []byte("mine"), pb.DataStreamPacketHeader_CLOSE)
	if h, rcr := r.reply(); !h.GetSuccess() || !rcr.GetSuccess() {
		t.Fatalf("a stream naming the peer it is sent to: %v %v", h, rcr)
	}

	// A predecessor's connection carries the chain a -> b -> c into b.
	fwd := dialRaw(t, g.peers[1].StreamAddr)
	fwd.sendFrame(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}, nil)
	if h, _ := fwd.reply(); !h.GetSuccess() {
		t.Fatalf("ping: %v", h)
	}
	fwd.header(1, fwd.request(1, ids[0], pb.Chain(ids...)))
	if h, _ := fwd.reply(); !h.GetSuccess() {
		t.Fatalf("a forwarded header on a peer connection: %v", h)
	}
	fwd.data(1, 0, nil, pb.DataStreamPacketHeader_ABORT)
	if h, _ := fwd.reply(); h.GetErrorCode() != pb.ErrorCode_CANCELLED {
		t.Fatalf("abort: %v, want CANCELLED", h)
	}
	g.waitClean(t)
}
