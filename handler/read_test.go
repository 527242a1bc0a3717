package handler_test

import (
	"encoding/hex"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/codec"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// The example frames of docs/protocol.md's "Reading committed files" are
// what the messages encode to.
func TestReadExampleBytes(t *testing.T) {
	req, err := proto.Marshal(&pb.ReadRequest{Name: "a.txt", Length: 5})
	if err != nil {
		t.Fatal(err)
	}
	ph := &pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_READ, StreamId: 1, DataLength: uint64(len(req))}
	for _, tc := range []struct {
		name string
		h    proto.Message
		body []byte
		want string
	}{
		{"read", ph, req, "00000013000000061004180128090a05612e7478741805"},
		{"reply", &pb.DataStreamReplyHeader{PacketHeader: ph, Success: true, ServerId: "s1", Last: true,
			File: &pb.FileInfo{Name: "a.txt", Length: 5, Index: 3, Term: 1}}, []byte("hello"),
			"000000280000001f0a0610041801280918013a0273314801520d0a05612e74787410051803200168656c6c6f"},
		{"not found", &pb.DataStreamReplyHeader{PacketHeader: ph, ErrorCode: pb.ErrorCode_NOT_FOUND, ServerId: "s1", Last: true}, nil,
			"00000014000000100a0610041801280920103a0273314801"},
		{"list", &pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_LIST, StreamId: 2}, nil, "000000080000000410051802"},
	} {
		frame, err := codec.EncodePacket(tc.h, tc.body)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(frame.Bytes()); got != tc.want {
			t.Errorf("%s: %s, the doc says %s", tc.name, got, tc.want)
		}
		frame.Release()
	}
}
