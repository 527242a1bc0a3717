package dscodec_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/internal/testkit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// headerBytes is the header EncodePacket put in a frame, or its error.
func headerBytes(t *testing.T, m proto.Message) ([]byte, error) {
	t.Helper()
	frame, err := dscodec.EncodePacket(m, []byte("body"))
	if err != nil {
		return nil, err
	}
	defer frame.Release()
	b := frame.Bytes()
	hl := int(b[4])<<24 | int(b[5])<<16 | int(b[6])<<8 | int(b[7])
	if got, want := len(b), 8+hl+4; got != want {
		t.Fatalf("frame of %d bytes, want %d for a %d-byte header", got, want, hl)
	}
	if string(b[8+hl:]) != "body" {
		t.Fatalf("frame body %q", b[8+hl:])
	}
	return append([]byte(nil), b[8:8+hl]...), nil
}

// sameAsProto checks that EncodePacket encodes m exactly as proto.Marshal
// does, or fails exactly when it does.
func sameAsProto(t *testing.T, m proto.Message) {
	t.Helper()
	want, werr := proto.Marshal(m)
	got, gerr := headerBytes(t, m)
	switch {
	case werr != nil:
		if !errors.Is(gerr, codec.ErrBadMessage) {
			t.Fatalf("proto.Marshal refuses %v (%v); EncodePacket: %v, want ErrBadMessage", m, werr, gerr)
		}
	case gerr != nil:
		t.Fatalf("EncodePacket(%v): %v", m, gerr)
	case !bytes.Equal(got, want):
		t.Fatalf("EncodePacket(%v) header\n %x\nproto.Marshal\n %x", m, got, want)
	}
}

func TestEncodeHeadersAsProto(t *testing.T) {
	ph := &pb.DataStreamPacketHeader{
		ClientId: []byte("0123456789abcdef"), Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: 1 << 62,
		StreamOffset: 1 << 40, DataLength: 4096, Options: uint32(pb.DataStreamPacketHeader_SYNC | pb.DataStreamPacketHeader_CHECKSUM),
		Crc32C: 0xdeadbeef, Epoch: 3,
	}
	withUnknown := proto.Clone(ph).(*pb.DataStreamPacketHeader)
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 5))
	for _, tc := range []struct {
		name string
		m    proto.Message
	}{
		{"empty packet header", &pb.DataStreamPacketHeader{}},
		{"full packet header", ph},
		{"negative enum", &pb.DataStreamPacketHeader{Type: -1}},
		{"packet header with an unknown field", withUnknown},
		{"empty reply", &pb.DataStreamReplyHeader{}},
		{"empty nested header", &pb.DataStreamReplyHeader{PacketHeader: &pb.DataStreamPacketHeader{}}},
		{"data ack", &pb.DataStreamReplyHeader{PacketHeader: ph, BytesWritten: 1<<40 + 4096, Success: true, ServerId: "p2"}},
		{"error reply", &pb.DataStreamReplyHeader{
			PacketHeader: ph, ErrorCode: pb.ErrorCode_NOT_ENOUGH_PEERS, ErrorMessage: "1 of 3 peers reachable", ServerId: "p1",
		}},
		{"read reply", &pb.DataStreamReplyHeader{Success: true, ReadOffset: 1 << 33, Last: true}},
		{"holders, one empty", &pb.DataStreamReplyHeader{Success: true, Holders: []string{"p1", "", "p3"}}},
		{"reply with an unknown nested field", &pb.DataStreamReplyHeader{PacketHeader: withUnknown}},
		{"commit infos (through proto)", &pb.DataStreamReplyHeader{
			Success: true, CommitInfos: []*pb.CommitInfo{{ServerId: "p1", CommitIndex: 9}}, Holders: []string{"p1"},
		}},
		{"file (through proto)", &pb.DataStreamReplyHeader{File: &pb.FileInfo{Name: "a"}}},
		{"invalid UTF-8 server id", &pb.DataStreamReplyHeader{ServerId: "\xff"}},
		{"invalid UTF-8 holder", &pb.DataStreamReplyHeader{Holders: []string{"p1", "\xfe"}}},
		{"other message", &pb.RaftClientReply{Success: true, LogIndex: 7}},
	} {
		t.Run(tc.name, func(t *testing.T) { sameAsProto(t, tc.m) })
	}
}

// A data packet's header and its ack are encoded with no allocation but
// the pooled frame's, which goes back to its pool.
func TestEncodeAllocatesNothing(t *testing.T) {
	if testkit.Race {
		t.Skip("the race detector allocates for itself; .ci/run runs this test without it")
	}
	ph := &pb.DataStreamPacketHeader{ClientId: []byte("0123456789abcdef"), Type: pb.DataStreamPacketHeader_STREAM_DATA, DataLength: 4096}
	rh := &pb.DataStreamReplyHeader{PacketHeader: ph, BytesWritten: 4096, Success: true, ServerId: "p2"}
	for _, m := range []proto.Message{ph, rh} {
		encode := func() {
			frame, err := dscodec.EncodePacketPrefix(m, 4096)
			if err != nil {
				t.Fatal(err)
			}
			frame.Release()
		}
		encode() // the pool's first buffer
		if n := testing.AllocsPerRun(1000, encode); n != 0 {
			t.Errorf("encoding a %T allocates %.2f times", m, n)
		}
	}
}

// FuzzEncodeReplyHeader holds the hand encoders to proto.Marshal's bytes.
func FuzzEncodeReplyHeader(f *testing.F) {
	f.Add([]byte("client"), int32(2), uint64(1), uint64(4096), uint64(4096), uint32(1), uint32(7), uint64(1),
		true, uint64(8192), true, int32(0), "", "p1", "p1,p2", uint64(0), false)
	f.Add([]byte(nil), int32(-3), uint64(0), uint64(0), uint64(0), uint32(0), uint32(0), uint64(0),
		false, uint64(0), false, int32(22), "\xffbad", "", "", uint64(1), true)
	f.Fuzz(func(t *testing.T, cid []byte, typ int32, sid, off, n uint64, opts, crc uint32, epoch uint64,
		nested bool, written uint64, success bool, code int32, msg, server, holders string, readOff uint64, last bool,
	) {
		ph := &pb.DataStreamPacketHeader{
			ClientId: cid, Type: pb.DataStreamPacketHeader_Type(typ), StreamId: sid, StreamOffset: off,
			DataLength: n, Options: opts, Crc32C: crc, Epoch: epoch,
		}
		sameAsProto(t, ph)
		rh := &pb.DataStreamReplyHeader{
			BytesWritten: written, Success: success, ErrorCode: pb.ErrorCode(code), ErrorMessage: msg,
			ServerId: server, ReadOffset: readOff, Last: last,
		}
		if nested {
			rh.PacketHeader = ph
		}
		if holders != "" {
			rh.Holders = strings.Split(holders, ",")
		}
		sameAsProto(t, rh)
	})
}

// BenchmarkEncodeReplyHeader compares a data ack's frame through
// EncodePacket with the same header through proto.Size and
// proto.MarshalAppend, the way EncodePacket encoded it before.
func BenchmarkEncodeReplyHeader(b *testing.B) {
	rh := &pb.DataStreamReplyHeader{
		PacketHeader: &pb.DataStreamPacketHeader{
			ClientId: []byte("0123456789abcdef"), Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: 7,
			StreamOffset: 1 << 30, DataLength: 4096,
		},
		BytesWritten: 1<<30 + 4096, Success: true, ServerId: "p2",
	}
	size := proto.Size(rh)
	b.Run("EncodePacket", func(b *testing.B) {
		b.SetBytes(int64(size))
		b.ReportAllocs()
		for b.Loop() {
			frame, err := dscodec.EncodePacket(rh, nil)
			if err != nil {
				b.Fatal(err)
			}
			frame.Release()
		}
	})
	b.Run("proto", func(b *testing.B) {
		b.SetBytes(int64(size))
		b.ReportAllocs()
		buf := make([]byte, 0, 2*size)
		for b.Loop() {
			if proto.Size(rh) != size {
				b.Fatal("size changed")
			}
			var err error
			if buf, err = (proto.MarshalOptions{}).MarshalAppend(buf[:0], rh); err != nil {
				b.Fatal(err)
			}
		}
	})
}
