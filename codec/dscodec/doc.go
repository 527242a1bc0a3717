// Package dscodec encodes and decodes the frames of the DataStream protocol
// (docs/protocol.md): a request packet's header and body, and a reply's
// header and RaftClientReply.
//
// Every DataStream frame, both directions, is
//
//	uint32 frame length (what follows it) | uint32 header length | header | body
//
// The outer length is the generic framing of package codec; this package
// adds what is particular to DataStream: the header length, the protobuf
// headers, and the checks that a header agrees with its frame. The hot
// path decodes headers by hand, without allocating (DecodePacketInto,
// DecodeReplyView); DecodePacket and DecodeReply are the plain versions.
//
// The package is called dscodec, not datastream, so that the DataStream
// client (package datastream) and the server, which import both, need no
// renamed import.
package dscodec
