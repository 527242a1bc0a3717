package dscodec

import (
	"encoding/binary"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// The DataStream frame, both directions (docs/protocol.md):
//
//	uint32 frame length (what follows it) | uint32 header length | header | body
const (
	packetLengthSize = 4
	packetPrefixSize = 2 * packetLengthSize

	// DefaultMaxPacketHeader bounds a packet or reply header.
	DefaultMaxPacketHeader = 64 << 10
	// DefaultMaxPacketFrame bounds a DataStream frame: 16 MiB of body plus
	// header room.
	DefaultMaxPacketFrame = 16<<20 + DefaultMaxPacketHeader
)

// ErrBadPacket means a DataStream frame's header does not decode or does not
// agree with the frame.
var ErrBadPacket = errors.New("dscodec: bad packet")

// NewPacketFrameDecoder returns the frame decoder of the DataStream
// protocol. The length prefix stays in the frame so that a packet can be
// forwarded exactly as it arrived.
func NewPacketFrameDecoder(maxFrame int) (*codec.FrameDecoder, error) {
	return codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: packetLengthSize, MaxFrameLength: maxFrame})
}

// EncodePacket returns one pooled frame holding the header m and body.
func EncodePacket(m proto.Message, body []byte) (*buffer.Buf, error) {
	return encodePacket(m, len(body), body)
}

// EncodePacketPrefix returns the frame's prefix and header for a body of
// bodyLen bytes that the caller sends right after it, unchanged: the way to
// send a pooled body without copying it.
func EncodePacketPrefix(m proto.Message, bodyLen int) (*buffer.Buf, error) {
	return encodePacket(m, bodyLen, nil)
}

func encodePacket(m proto.Message, bodyLen int, body []byte) (*buffer.Buf, error) {
	hl, hand := handEncoded(m)
	if !hand {
		hl = proto.Size(m)
	}
	frameLen := packetPrefixSize + hl + bodyLen
	if frameLen-packetLengthSize > 1<<32-1 {
		return nil, fmt.Errorf("%w: %d bytes", codec.ErrFrameTooLong, frameLen)
	}
	buf := buffer.Get(frameLen - bodyLen + len(body))
	b := buf.Bytes()
	binary.BigEndian.PutUint32(b, uint32(frameLen-packetLengthSize))
	binary.BigEndian.PutUint32(b[packetLengthSize:], uint32(hl))
	if hand {
		if n := len(appendHand(b[packetPrefixSize:packetPrefixSize], m)); n != hl {
			panic(fmt.Sprintf("dscodec: hand encoder of %T wrote %d bytes, sized %d", m, n, hl))
		}
	} else if _, err := (proto.MarshalOptions{}).MarshalAppend(b[packetPrefixSize:packetPrefixSize], m); err != nil {
		buf.Release()
		return nil, fmt.Errorf("%w: %v", codec.ErrBadMessage, err)
	}
	copy(b[packetPrefixSize+hl:], body)
	return buf, nil
}

// splitPacket returns the header bytes and the body offset of a frame.
func splitPacket(b []byte, maxHeader int) (header []byte, bodyOff int, err error) {
	if len(b) < packetPrefixSize {
		return nil, 0, fmt.Errorf("%w: frame of %d bytes is shorter than its prefix", ErrBadPacket, len(b))
	}
	hl := binary.BigEndian.Uint32(b[packetLengthSize:])
	if uint64(hl) > uint64(maxHeader) || uint64(hl) > uint64(len(b)-packetPrefixSize) {
		return nil, 0, fmt.Errorf("%w: header length %d (frame %d bytes, limit %d)", ErrBadPacket, hl, len(b), maxHeader)
	}
	off := packetPrefixSize + int(hl)
	return b[packetPrefixSize:off], off, nil
}

// DecodePacket parses a request frame's header and checks that its data
// length matches the body, which starts at bodyOff.
func DecodePacket(frame []byte, maxHeader int) (h *pb.DataStreamPacketHeader, bodyOff int, err error) {
	h = new(pb.DataStreamPacketHeader)
	if bodyOff, err = DecodePacketInto(frame, maxHeader, h); err != nil {
		return nil, 0, err
	}
	return h, bodyOff, nil
}

// DecodePacketInto is DecodePacket without allocating: it decodes into h,
// whose ClientId then aliases frame.
func DecodePacketInto(frame []byte, maxHeader int, h *pb.DataStreamPacketHeader) (bodyOff int, err error) {
	hb, off, err := splitPacket(frame, maxHeader)
	if err != nil {
		return 0, err
	}
	if err := UnmarshalPacketHeader(hb, h); err != nil {
		return 0, err
	}
	if n := len(frame) - off; h.GetDataLength() != uint64(n) {
		return 0, fmt.Errorf("%w: data length %d but %d body bytes", ErrBadPacket, h.GetDataLength(), n)
	}
	return off, nil
}

// DecodeReply parses a reply frame: the reply header and, when the frame
// has a body, the RaftClientReply in it.
func DecodeReply(frame []byte, maxHeader int) (*pb.DataStreamReplyHeader, *pb.RaftClientReply, error) {
	hb, off, err := splitPacket(frame, maxHeader)
	if err != nil {
		return nil, nil, err
	}
	h := new(pb.DataStreamReplyHeader)
	if err := proto.Unmarshal(hb, h); err != nil {
		return nil, nil, fmt.Errorf("%w: reply header: %v", ErrBadPacket, err)
	}
	if off == len(frame) {
		return h, nil, nil
	}
	r := new(pb.RaftClientReply)
	if err := proto.Unmarshal(frame[off:], r); err != nil {
		return nil, nil, fmt.Errorf("%w: reply body: %v", ErrBadPacket, err)
	}
	return h, r, nil
}
