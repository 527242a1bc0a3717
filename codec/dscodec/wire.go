package dscodec

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// The DataStream headers are decoded by hand, on the hot path, so that a
// packet costs no allocation: proto.Unmarshal copies every bytes field and
// allocates the message. The decoders follow protobuf's rules (the last of
// repeated scalar fields wins, unknown fields and fields of an unexpected
// wire type are skipped) and are fuzzed against proto.Unmarshal.

// Field numbers of DataStreamPacketHeader and DataStreamReplyHeader.
const (
	phClientID = 1
	phType     = 2
	phStreamID = 3
	phOffset   = 4
	phLength   = 5
	phOptions  = 6
	phCRC32C   = 7
	phEpoch    = 8

	rhPacketHeader = 1
	rhBytesWritten = 2
	rhSuccess      = 3
	rhErrorCode    = 4
	rhErrorMessage = 5
	rhServerID     = 7
	rhHolders      = 11
)

// consumeTag is protowire.ConsumeTag refusing field numbers past the
// largest valid one, as proto.Unmarshal does.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	num, typ, n := protowire.ConsumeTag(b)
	if n >= 0 && !num.IsValid() {
		return 0, 0, -1 // reported as a parse error
	}
	return num, typ, n
}

// packetFields are a DataStreamPacketHeader's fields, for decoding into.
type packetFields struct {
	clientID []byte
	typ      pb.DataStreamPacketHeader_Type
	streamID uint64
	offset   uint64
	length   uint64
	options  uint32
	crc32c   uint32
	epoch    uint64
}

// merge overwrites the fields that b holds, as protobuf merges a message.
func (f *packetFields) merge(b []byte) error {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: packet header: %v", ErrBadPacket, protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == phClientID && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return fmt.Errorf("%w: packet header client id: %v", ErrBadPacket, protowire.ParseError(m))
			}
			f.clientID, n = v, m
		case (num >= phType && num <= phOptions || num == phEpoch) && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return fmt.Errorf("%w: packet header field %d: %v", ErrBadPacket, num, protowire.ParseError(m))
			}
			n = m
			switch num {
			case phType:
				f.typ = pb.DataStreamPacketHeader_Type(int32(v))
			case phStreamID:
				f.streamID = v
			case phOffset:
				f.offset = v
			case phLength:
				f.length = v
			case phOptions:
				f.options = uint32(v)
			case phEpoch:
				f.epoch = v
			}
		case num == phCRC32C && typ == protowire.Fixed32Type:
			v, m := protowire.ConsumeFixed32(b)
			if m < 0 {
				return fmt.Errorf("%w: packet header crc32c: %v", ErrBadPacket, protowire.ParseError(m))
			}
			f.crc32c, n = v, m
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: packet header field %d: %v", ErrBadPacket, num, protowire.ParseError(n))
			}
		}
		b = b[n:]
	}
	return nil
}

// UnmarshalPacketHeader parses b into h without allocating. h is reset
// first; h.ClientId aliases b, so h is valid only while b is.
func UnmarshalPacketHeader(b []byte, h *pb.DataStreamPacketHeader) error {
	var f packetFields
	err := f.merge(b)
	if len(f.clientID) == 0 {
		f.clientID = nil // as proto.Unmarshal leaves an empty bytes field
	}
	h.ClientId, h.Type, h.StreamId, h.StreamOffset, h.DataLength, h.Options = f.clientID, f.typ, f.streamID, f.offset, f.length, f.options
	h.Crc32C, h.Epoch = f.crc32c, f.epoch
	return err
}

// ReplyView is a reply frame decoded without allocating: its byte slices
// alias the frame, so a view is valid only while the frame is. It holds
// what a sender needs to match a reply to its packet.
type ReplyView struct {
	ClientID     []byte
	Type         pb.DataStreamPacketHeader_Type
	StreamID     uint64
	StreamOffset uint64
	DataLength   uint64
	Options      uint32

	BytesWritten uint64
	Success      bool
	ErrorCode    pb.ErrorCode
	ErrorMessage []byte
	ServerID     []byte
	// Holders are the peers a successful CLOSE reply says hold the
	// stream; only such replies carry them, so only they allocate.
	Holders [][]byte
	// Body is the serialized RaftClientReply, if the frame has one.
	Body []byte
}

// DecodeReplyView parses a reply frame into v, which it resets first.
func DecodeReplyView(frame []byte, maxHeader int, v *ReplyView) error {
	*v = ReplyView{}
	var ph packetFields
	defer func() {
		v.ClientID, v.Type, v.StreamID, v.StreamOffset, v.DataLength, v.Options = ph.clientID, ph.typ, ph.streamID, ph.offset, ph.length, ph.options
	}()
	hb, off, err := splitPacket(frame, maxHeader)
	if err != nil {
		return err
	}
	if off < len(frame) {
		v.Body = frame[off:]
	}
	for b := hb; len(b) > 0; {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: reply header: %v", ErrBadPacket, protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == rhPacketHeader && typ == protowire.BytesType:
			sub, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return fmt.Errorf("%w: reply packet header: %v", ErrBadPacket, protowire.ParseError(m))
			}
			// A repeated embedded message merges into the first.
			if err := ph.merge(sub); err != nil {
				return err
			}
			n = m
		case (num == rhErrorMessage || num == rhServerID) && typ == protowire.BytesType:
			s, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return fmt.Errorf("%w: reply field %d: %v", ErrBadPacket, num, protowire.ParseError(m))
			}
			if num == rhErrorMessage {
				v.ErrorMessage = s
			} else {
				v.ServerID = s
			}
			n = m
		case num == rhHolders && typ == protowire.BytesType:
			s, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return fmt.Errorf("%w: reply holders: %v", ErrBadPacket, protowire.ParseError(m))
			}
			v.Holders = append(v.Holders, s)
			n = m
		case (num == rhBytesWritten || num == rhSuccess || num == rhErrorCode) && typ == protowire.VarintType:
			x, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return fmt.Errorf("%w: reply field %d: %v", ErrBadPacket, num, protowire.ParseError(m))
			}
			switch num {
			case rhBytesWritten:
				v.BytesWritten = x
			case rhSuccess:
				v.Success = x != 0
			case rhErrorCode:
				v.ErrorCode = pb.ErrorCode(int32(x))
			}
			n = m
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: reply field %d: %v", ErrBadPacket, num, protowire.ParseError(n))
			}
		}
		b = b[n:]
	}
	return nil
}
