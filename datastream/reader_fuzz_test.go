package datastream_test

import (
	"encoding/binary"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// FuzzReadReplies feeds arbitrary reply frames to a read connection's
// reply stage with a read of [3, 13) pending. Nothing may panic, no buffer
// may leak, and a read may never get more bytes than it asked for, nor
// finish without all of them.
func FuzzReadReplies(f *testing.F) {
	ph := &pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_READ, StreamId: 1}
	var seed []byte
	for _, r := range []struct {
		h    *pb.DataStreamReplyHeader
		body string
	}{
		{&pb.DataStreamReplyHeader{PacketHeader: ph, Success: true, ReadOffset: 3, File: &pb.FileInfo{Name: "a", Length: 20}}, "0123"},
		{&pb.DataStreamReplyHeader{PacketHeader: ph, Success: true, ReadOffset: 7, Last: true}, "456789"},
		{&pb.DataStreamReplyHeader{PacketHeader: ph, ErrorCode: pb.ErrorCode_MISSING, Last: true}, ""},
	} {
		frame, err := dscodec.EncodePacket(r.h, []byte(r.body))
		if err != nil {
			f.Fatal(err)
		}
		seed = append(seed, frame.Bytes()...)
		frame.Release()
	}
	f.Add(seed, false)
	f.Add(seed, true)
	f.Add(seed[:40], false)
	f.Fuzz(func(t *testing.T, in []byte, list bool) {
		buffertest.Check(t)
		var frames [][]byte
		for len(in) > 0 {
			n := len(in)
			if len(in) >= 4 {
				n = min(n, 4+int(binary.BigEndian.Uint32(in)&0xffff))
			}
			frames = append(frames, in[:n])
			in = in[n:]
		}
		typ := pb.DataStreamPacketHeader_STREAM_READ
		if list {
			typ = pb.DataStreamPacketHeader_STREAM_LIST
		}
		data, done, err, _ := datastream.DeliverReadReplies(frames, typ, 3, 10)
		if len(data) > 10 {
			t.Fatalf("a read of 10 bytes got %d", len(data))
		}
		if done && err == nil && !list && len(data) != 10 {
			t.Fatalf("a read of 10 bytes finished with %d", len(data))
		}
	})
}
