package dscodec_test

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/codec/dscodec"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

func marshal(t testing.TB, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzUnmarshalPacketHeader checks the hand-written header decoder against
// proto.Unmarshal: the same bytes give the same header or both fail.
func FuzzUnmarshalPacketHeader(f *testing.F) {
	f.Add(marshal(f, &pb.DataStreamPacketHeader{ClientId: []byte("0123456789abcdef"), Type: 2, StreamId: 7, StreamOffset: 1 << 33, DataLength: 1 << 20, Options: 5}))
	f.Add(marshal(f, &pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}))
	f.Add([]byte{0x0a, 0x00, 0x10, 0x01, 0x10, 0x02, 0x58, 0x01}) // empty id, type twice, unknown field 11
	f.Add([]byte{0x12, 0x01, 0x00})                               // field 2 with the wrong wire type
	f.Fuzz(func(t *testing.T, b []byte) {
		want := new(pb.DataStreamPacketHeader)
		werr := proto.Unmarshal(b, want)
		var got pb.DataStreamPacketHeader
		gerr := dscodec.UnmarshalPacketHeader(b, &got)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("proto.Unmarshal: %v, UnmarshalPacketHeader: %v", werr, gerr)
		}
		if werr != nil {
			return
		}
		want.ProtoReflect().SetUnknown(nil)
		if !proto.Equal(want, &got) {
			t.Fatalf("got %v, want %v", &got, want)
		}
	})
}

// FuzzDecodeReplyView checks the reply view against proto.Unmarshal of the
// reply header. The view does not check that strings are UTF-8, so it may
// accept what proto refuses, never the other way round.
func FuzzDecodeReplyView(f *testing.F) {
	for _, h := range []*pb.DataStreamReplyHeader{
		{PacketHeader: &pb.DataStreamPacketHeader{ClientId: []byte("c"), Type: 2, StreamId: 3, StreamOffset: 4}, BytesWritten: 9, Success: true, ServerId: "p1"},
		{ErrorCode: pb.ErrorCode_OFFSET_MISMATCH, ErrorMessage: "offset 4, expected 0", CommitInfos: []*pb.CommitInfo{{ServerId: "x", CommitIndex: 1}}},
	} {
		frame, err := dscodec.EncodePacket(h, []byte("body"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte(nil), frame.Bytes()...))
		frame.Release()
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		var v dscodec.ReplyView
		verr := dscodec.DecodeReplyView(frame, 1024, &v)
		h, _, herr := dscodec.DecodeReply(frame, 1024)
		if herr != nil {
			return
		}
		if verr != nil {
			t.Fatalf("DecodeReply accepted what DecodeReplyView refused: %v", verr)
		}
		ph := h.GetPacketHeader()
		if !bytes.Equal(v.ClientID, ph.GetClientId()) || v.Type != ph.GetType() || v.StreamID != ph.GetStreamId() ||
			v.StreamOffset != ph.GetStreamOffset() || v.DataLength != ph.GetDataLength() || v.Options != ph.GetOptions() ||
			v.BytesWritten != h.GetBytesWritten() || v.Success != h.GetSuccess() || v.ErrorCode != h.GetErrorCode() ||
			string(v.ErrorMessage) != h.GetErrorMessage() || string(v.ServerID) != h.GetServerId() {
			t.Fatalf("view %+v differs from %v", v, h)
		}
	})
}

func BenchmarkDecodePacketInto(b *testing.B) {
	frame, _ := dscodec.EncodePacket(&pb.DataStreamPacketHeader{ClientId: []byte("0123456789abcdef"), Type: 2, StreamId: 7, StreamOffset: 1 << 33, DataLength: 4096}, make([]byte, 4096))
	defer frame.Release()
	var h pb.DataStreamPacketHeader
	b.ReportAllocs()
	b.SetBytes(int64(frame.Len()))
	for b.Loop() {
		if _, err := dscodec.DecodePacketInto(frame.Bytes(), 1024, &h); err != nil {
			b.Fatal(err)
		}
	}
}
