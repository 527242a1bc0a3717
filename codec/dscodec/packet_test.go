package dscodec_test

import (
	"bytes"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec/dscodec"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

func TestPacketRoundTrip(t *testing.T) {
	buffertest.Check(t)
	h := &pb.DataStreamPacketHeader{
		ClientId: []byte("0123456789abcdef"), Type: pb.DataStreamPacketHeader_STREAM_DATA,
		StreamId: 42, StreamOffset: 1 << 40, DataLength: 5, Options: uint32(pb.DataStreamPacketHeader_SYNC),
	}
	frame, err := dscodec.EncodePacket(h, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	defer frame.Release()
	got, off, err := dscodec.DecodePacket(frame.Bytes(), dscodec.DefaultMaxPacketHeader)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, h) || string(frame.Bytes()[off:]) != "hello" {
		t.Fatalf("decoded %v body %q", got, frame.Bytes()[off:])
	}

	// A prefix for a body sent separately decodes to the same frame.
	prefix, err := dscodec.EncodePacketPrefix(h, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer prefix.Release()
	joined := append(append([]byte(nil), prefix.Bytes()...), "hello"...)
	if !bytes.Equal(joined, frame.Bytes()) {
		t.Fatal("prefix + body differs from the whole frame")
	}
}

func TestReplyRoundTrip(t *testing.T) {
	buffertest.Check(t)
	rh := &pb.DataStreamReplyHeader{BytesWritten: 7, Success: true, ServerId: "p1"}
	rcr := &pb.RaftClientReply{Success: true, LogIndex: 9, Term: 2}
	body, _ := proto.Marshal(rcr)
	for _, tc := range []struct {
		name string
		body []byte
	}{{"bare", nil}, {"with RaftClientReply", body}} {
		frame, err := dscodec.EncodePacket(rh, tc.body)
		if err != nil {
			t.Fatal(err)
		}
		h, r, err := dscodec.DecodeReply(frame.Bytes(), dscodec.DefaultMaxPacketHeader)
		frame.Release()
		if err != nil || !proto.Equal(h, rh) || (tc.body == nil) != (r == nil) || (r != nil && !proto.Equal(r, rcr)) {
			t.Errorf("%s: %v %v %v", tc.name, h, r, err)
		}
	}
}

func TestDecodePacketErrors(t *testing.T) {
	good, _ := dscodec.EncodePacket(&pb.DataStreamPacketHeader{StreamId: 1, DataLength: 3}, []byte("abc"))
	defer good.Release()
	g := good.Bytes()
	cases := map[string][]byte{
		"short":               g[:5],
		"header past end":     append([]byte{0, 0, 0, 8, 0, 0, 1, 0}, 1, 2, 3, 4),
		"header not protobuf": {0, 0, 0, 7, 0, 0, 0, 3, 0xff, 0xff, 0xff},
		"data length differs": g[:len(g)-1],
		"header over limit":   {0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff},
	}
	for name, frame := range cases {
		if _, _, err := dscodec.DecodePacket(frame, dscodec.DefaultMaxPacketHeader); !errors.Is(err, dscodec.ErrBadPacket) {
			t.Errorf("%s: err = %v, want ErrBadPacket", name, err)
		}
		if _, _, err := dscodec.DecodeReply(frame, 16); err == nil && name != "data length differs" {
			t.Errorf("%s: reply decoded", name)
		}
	}
}

// FuzzDecodePacket checks that no frame makes the packet decoder panic,
// and that what it accepts re-encodes to a frame it decodes the same way.
func FuzzDecodePacket(f *testing.F) {
	for _, h := range []*pb.DataStreamPacketHeader{
		{ClientId: []byte("c"), Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: 1, DataLength: 2},
		{Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamOffset: 9, DataLength: 0, Options: 4},
		{Type: pb.DataStreamPacketHeader_PING},
	} {
		frame, err := dscodec.EncodePacket(h, make([]byte, h.GetDataLength()))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte(nil), frame.Bytes()...))
		frame.Release()
	}
	f.Add([]byte{0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, frame []byte) {
		h, off, err := dscodec.DecodePacket(frame, 1024)
		if err != nil {
			if !errors.Is(err, dscodec.ErrBadPacket) {
				t.Fatalf("error %v does not wrap ErrBadPacket", err)
			}
			return
		}
		if off > len(frame) || uint64(len(frame)-off) != h.GetDataLength() {
			t.Fatalf("body offset %d in a frame of %d with data length %d", off, len(frame), h.GetDataLength())
		}
		again, err := dscodec.EncodePacket(h, frame[off:])
		if err != nil {
			t.Fatal(err)
		}
		defer again.Release()
		h2, off2, err := dscodec.DecodePacket(again.Bytes(), 1024)
		if err != nil || !proto.Equal(h, h2) || !bytes.Equal(frame[off:], again.Bytes()[off2:]) {
			t.Fatalf("re-encoded packet decodes differently: %v %v", h2, err)
		}
	})
}

// FuzzDecodeReply checks that no frame makes the reply decoder panic.
func FuzzDecodeReply(f *testing.F) {
	rcr, _ := proto.Marshal(&pb.RaftClientReply{Success: true, LogIndex: 3})
	for _, body := range [][]byte{nil, rcr} {
		frame, err := dscodec.EncodePacket(&pb.DataStreamReplyHeader{Success: true, BytesWritten: 1}, body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte(nil), frame.Bytes()...))
		frame.Release()
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		h, r, err := dscodec.DecodeReply(frame, 1024)
		if err != nil {
			if !errors.Is(err, dscodec.ErrBadPacket) {
				t.Fatalf("error %v does not wrap ErrBadPacket", err)
			}
			return
		}
		if h == nil {
			t.Fatal("nil header without error")
		}
		_ = r
	})
}
