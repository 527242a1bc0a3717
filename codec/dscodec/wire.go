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

// fields reads a message's fields in turn, as bufio.Scanner reads
// lines: while next returns true, field is the one it read, its value
// decoded by wire type (varint and fixed32 values in x, a bytes value in
// b, aliasing the message; fields of the other wire types are only
// skipped). Once next returns false, err says why, nil at the message's
// end. It refuses field numbers past the largest valid one, as
// proto.Unmarshal does.
type fields struct {
	b     []byte // what is left to read
	what  string // names the message in errors
	field struct {
		num protowire.Number
		typ protowire.Type
		x   uint64
		b   []byte
	}
	err error
}

func (r *fields) next() bool {
	if len(r.b) == 0 || r.err != nil {
		return false
	}
	num, typ, n := protowire.ConsumeTag(r.b)
	if n >= 0 && !num.IsValid() {
		n = -1 // reported as a parse error
	}
	if n < 0 {
		r.err = fmt.Errorf("%w: %s: %v", ErrBadPacket, r.what, protowire.ParseError(n))
		return false
	}
	b := r.b[n:]
	f := &r.field
	f.num, f.typ = num, typ
	switch typ {
	case protowire.VarintType:
		f.x, n = protowire.ConsumeVarint(b)
	case protowire.Fixed32Type:
		var v uint32
		v, n = protowire.ConsumeFixed32(b)
		f.x = uint64(v)
	case protowire.BytesType:
		f.b, n = protowire.ConsumeBytes(b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, b)
	}
	if n < 0 {
		r.err = fmt.Errorf("%w: %s field %d: %v", ErrBadPacket, r.what, num, protowire.ParseError(n))
		return false
	}
	r.b = b[n:]
	return true
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
	r := fields{b: b, what: "packet header"}
	for r.next() {
		switch fd := &r.field; fd.typ {
		case protowire.BytesType:
			if fd.num == phClientID {
				f.clientID = fd.b
			}
		case protowire.VarintType:
			switch fd.num {
			case phType:
				f.typ = pb.DataStreamPacketHeader_Type(int32(fd.x))
			case phStreamID:
				f.streamID = fd.x
			case phOffset:
				f.offset = fd.x
			case phLength:
				f.length = fd.x
			case phOptions:
				f.options = uint32(fd.x)
			case phEpoch:
				f.epoch = fd.x
			}
		case protowire.Fixed32Type:
			if fd.num == phCRC32C {
				f.crc32c = uint32(fd.x)
			}
		}
	}
	return r.err
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
	r := fields{b: hb, what: "reply header"}
	for r.next() {
		switch fd := &r.field; fd.typ {
		case protowire.BytesType:
			switch fd.num {
			case rhPacketHeader:
				// A repeated embedded message merges into the first.
				if err := ph.merge(fd.b); err != nil {
					return err
				}
			case rhErrorMessage:
				v.ErrorMessage = fd.b
			case rhServerID:
				v.ServerID = fd.b
			case rhHolders:
				v.Holders = append(v.Holders, fd.b)
			}
		case protowire.VarintType:
			switch fd.num {
			case rhBytesWritten:
				v.BytesWritten = fd.x
			case rhSuccess:
				v.Success = fd.x != 0
			case rhErrorCode:
				v.ErrorCode = pb.ErrorCode(int32(fd.x))
			}
		}
	}
	return r.err
}
