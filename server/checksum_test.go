package server_test

import (
	"errors"
	"hash/crc32"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checked sends a data packet with the CHECKSUM option and crc.
func (r *raw) checked(stream, offset uint64, body []byte, crc uint32, opts ...pb.DataStreamPacketHeader_Option) {
	r.t.Helper()
	bits := uint32(pb.DataStreamPacketHeader_CHECKSUM)
	for _, o := range opts {
		bits |= uint32(o)
	}
	r.sendFrame(&pb.DataStreamPacketHeader{
		ClientId: r.client, Type: pb.DataStreamPacketHeader_STREAM_DATA,
		StreamId: stream, StreamOffset: offset, DataLength: uint64(len(body)), Options: bits, Crc32C: crc,
	}, body)
}

// Each packet carries the stream's CRC32C through its end: a right one is
// taken, a wrong one is CHECKSUM and fails the stream with nothing stored,
// and a stream cannot drop checksums half way.
func TestChecksumChecked(t *testing.T) {
	for _, every := range []bool{false, true} {
		t.Run(map[bool]string{false: "leaves", true: "every-peer"}[every], func(t *testing.T) {
			testChecksumChecked(t, every)
		})
	}
}

func testChecksumChecked(t *testing.T, everyPeer bool) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{tweak: func(c *server.Config) { c.VerifyEveryPeer = everyPeer }})
	r := dialRaw(t, g.peers[0].StreamAddr)
	a, b := []byte("first packet "), []byte("second packet")

	r.open(1, g.peers[0].ID)
	r.checked(1, 0, a, crc32.Checksum(a, castagnoli))
	r.checked(1, uint64(len(a)), b, crc32.Update(crc32.Checksum(a, castagnoli), castagnoli, b), pb.DataStreamPacketHeader_CLOSE)
	r.expect("first", 1, 0, pb.ErrorCode_ERROR_NONE)
	if h := r.expect("close", 1, uint64(len(a)), pb.ErrorCode_ERROR_NONE); h.GetBytesWritten() != uint64(len(a)+len(b)) {
		t.Fatalf("close wrote %d", h.GetBytesWritten())
	}

	r.open(2, g.peers[0].ID)
	// Each first packet is answered before the next goes: a failure also
	// answers the packets still waiting before it.
	r.checked(2, 0, a, crc32.Checksum(a, castagnoli))
	r.expect("first", 2, 0, pb.ErrorCode_ERROR_NONE)
	// b's checksum alone, not the stream's through b: as if a were lost.
	r.checked(2, uint64(len(a)), b, crc32.Checksum(b, castagnoli))
	// The primary forwards to the leaves of its star, which verify; with
	// VerifyEveryPeer it finds the fault itself.
	h := r.expect("wrong checksum", 2, uint64(len(a)), pb.ErrorCode_CHECKSUM)
	if !strings.Contains(h.GetErrorMessage(), "CRC32C") {
		t.Errorf("error message %q does not say what was wrong", h.GetErrorMessage())
	}
	if fromSuccessor := strings.Contains(h.GetErrorMessage(), "successor"); fromSuccessor == everyPeer {
		t.Errorf("error message %q: found by the wrong peer", h.GetErrorMessage())
	}

	r.open(3, g.peers[0].ID)
	r.checked(3, 0, a, crc32.Checksum(a, castagnoli))
	r.expect("first", 3, 0, pb.ErrorCode_ERROR_NONE)
	r.data(3, uint64(len(a)), b)
	r.expect("checksum dropped half way", 3, uint64(len(a)), pb.ErrorCode_BAD_HEADER)

	g.waitClean(t)
	for i := range g.servers {
		if got := len(g.memory(i).Committed()); got != 1 {
			t.Errorf("%s committed %d streams, want only the first", g.peers[i].ID, got)
		}
	}
}

// A byte flipped on the way from the primary to its successor is caught
// by the successor: the stream fails, nothing is committed anywhere, and
// the next stream goes through on the same connections.
func TestChecksumCatchesCorruptionOnTheWire(t *testing.T) {
	buffertest.Check(t)
	g, proxies := startGroupVia(t, 3, groupOpts{}, edge{0, 1})
	c := g.client(t)
	ctx := t.Context()
	table := pb.Chain(g.peers[0].ID, g.peers[1].ID, g.peers[2].ID)
	out, err := c.Stream(ctx, []byte("corrupted"), datastream.WithRoutingTable(table))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.HeaderFuture().Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// Well inside the first packet's data, past its frame header.
	proxies[edge{0, 1}].CorruptAt(512 << 10)
	data := randomBytes(5, 2<<20)
	out.WriteAsync(ctx, data[:1<<20])
	out.WriteAsync(ctx, data[1<<20:])
	_, err = out.Close(ctx).Wait(ctx)
	if !errors.Is(err, datastream.ErrChecksum) || !strings.Contains(err.Error(), g.peers[1].ID) {
		t.Fatalf("close: %v, want CHECKSUM from the successor", err)
	}
	g.waitClean(t)
	for i := range g.servers {
		if got := len(g.memory(i).Committed()); got != 0 {
			t.Errorf("%s committed %d streams", g.peers[i].ID, got)
		}
	}

	out, err = c.Stream(ctx, []byte("clean"), datastream.WithRoutingTable(table))
	if err != nil {
		t.Fatal(err)
	}
	out.WriteAsync(ctx, data)
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		t.Fatalf("the stream after the corruption: %v", err)
	}
}
