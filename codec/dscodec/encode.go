package dscodec

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// The headers of data packets and of their replies are encoded by hand too:
// every packet costs one packet header on the client and one reply header
// on each peer, and proto.Size plus proto.MarshalAppend walk the message
// twice through the generic coder. The encoders write the fields in field
// number order and omit zero values, as proto.Marshal does, so that their
// output is byte for byte proto.Marshal's; a test and a fuzz target hold
// them to it. A message they do not cover (a reply carrying commit infos or
// a file, any message with unknown fields, a string that is not UTF-8,
// which proto.Marshal refuses) goes through proto.

// handEncoded reports whether m has a hand encoder, and returns its size.
func handEncoded(m proto.Message) (size int, ok bool) {
	switch h := m.(type) {
	case *pb.DataStreamPacketHeader:
		if h == nil || len(h.ProtoReflect().GetUnknown()) != 0 {
			return 0, false
		}
		return sizePacketHeader(h), true
	case *pb.DataStreamReplyHeader:
		if h == nil || len(h.CommitInfos) != 0 || h.File != nil || len(h.ProtoReflect().GetUnknown()) != 0 ||
			!utf8.ValidString(h.ErrorMessage) || !utf8.ValidString(h.ServerId) {
			return 0, false
		}
		for _, s := range h.Holders {
			if !utf8.ValidString(s) {
				return 0, false
			}
		}
		if ph := h.PacketHeader; ph != nil && len(ph.ProtoReflect().GetUnknown()) != 0 {
			return 0, false
		}
		return sizeReplyHeader(h), true
	}
	return 0, false
}

// appendHand appends m, for which handEncoded returned true.
func appendHand(b []byte, m proto.Message) []byte {
	switch h := m.(type) {
	case *pb.DataStreamPacketHeader:
		return appendPacketHeader(b, h)
	case *pb.DataStreamReplyHeader:
		return appendReplyHeader(b, h)
	}
	panic("dscodec: appendHand of a message without a hand encoder")
}

func sizeVarintField(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func sizeBytesField(num protowire.Number, n int) int {
	if n == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func appendBytesField[T string | []byte](b []byte, num protowire.Number, v T) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(len(v)))
	return append(b, v...)
}

// enumValue is how protobuf encodes an enum: an int32 sign-extended to 64
// bits.
func enumValue(v int32) uint64 { return uint64(int64(v)) }

func boolValue(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

func sizePacketHeader(h *pb.DataStreamPacketHeader) int {
	n := sizeBytesField(phClientID, len(h.ClientId)) +
		sizeVarintField(phType, enumValue(int32(h.Type))) +
		sizeVarintField(phStreamID, h.StreamId) +
		sizeVarintField(phOffset, h.StreamOffset) +
		sizeVarintField(phLength, h.DataLength) +
		sizeVarintField(phOptions, uint64(h.Options)) +
		sizeVarintField(phEpoch, h.Epoch)
	if h.Crc32C != 0 {
		n += protowire.SizeTag(phCRC32C) + protowire.SizeFixed32()
	}
	return n
}

func appendPacketHeader(b []byte, h *pb.DataStreamPacketHeader) []byte {
	b = appendBytesField(b, phClientID, h.ClientId)
	b = appendVarintField(b, phType, enumValue(int32(h.Type)))
	b = appendVarintField(b, phStreamID, h.StreamId)
	b = appendVarintField(b, phOffset, h.StreamOffset)
	b = appendVarintField(b, phLength, h.DataLength)
	b = appendVarintField(b, phOptions, uint64(h.Options))
	if h.Crc32C != 0 {
		b = protowire.AppendTag(b, phCRC32C, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, h.Crc32C)
	}
	return appendVarintField(b, phEpoch, h.Epoch)
}

// Field numbers of DataStreamReplyHeader that only the encoder needs (the
// decoder in wire.go skips them).
const (
	rhReadOffset = 8
	rhLast       = 9
)

func sizeReplyHeader(h *pb.DataStreamReplyHeader) int {
	n := 0
	if ph := h.PacketHeader; ph != nil {
		n += protowire.SizeTag(rhPacketHeader) + protowire.SizeBytes(sizePacketHeader(ph))
	}
	n += sizeVarintField(rhBytesWritten, h.BytesWritten) +
		sizeVarintField(rhSuccess, boolValue(h.Success)) +
		sizeVarintField(rhErrorCode, enumValue(int32(h.ErrorCode))) +
		sizeBytesField(rhErrorMessage, len(h.ErrorMessage)) +
		sizeBytesField(rhServerID, len(h.ServerId)) +
		sizeVarintField(rhReadOffset, h.ReadOffset) +
		sizeVarintField(rhLast, boolValue(h.Last))
	for _, s := range h.Holders {
		n += protowire.SizeTag(rhHolders) + protowire.SizeBytes(len(s)) // every element, empty ones too
	}
	return n
}

func appendReplyHeader(b []byte, h *pb.DataStreamReplyHeader) []byte {
	if ph := h.PacketHeader; ph != nil {
		b = protowire.AppendTag(b, rhPacketHeader, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(sizePacketHeader(ph)))
		b = appendPacketHeader(b, ph)
	}
	b = appendVarintField(b, rhBytesWritten, h.BytesWritten)
	b = appendVarintField(b, rhSuccess, boolValue(h.Success))
	b = appendVarintField(b, rhErrorCode, enumValue(int32(h.ErrorCode)))
	b = appendBytesField(b, rhErrorMessage, h.ErrorMessage)
	b = appendBytesField(b, rhServerID, h.ServerId)
	b = appendVarintField(b, rhReadOffset, h.ReadOffset)
	b = appendVarintField(b, rhLast, boolValue(h.Last))
	for _, s := range h.Holders {
		b = protowire.AppendTag(b, rhHolders, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}
