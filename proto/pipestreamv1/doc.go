// Package pipestreamv1 holds the pipestream wire messages, generated from
// pipestream.proto, and a few hand-written helpers for them.
//
// A data-stream connection carries frames, each a packet header and a body.
// A client opens a stream with a STREAM_HEADER packet whose body is a
// RaftClientRequest, sends the data in STREAM_DATA packets, and ends it with
// the CLOSE option; every packet gets exactly one DataStreamReplyHeader back,
// in order. The framing, limits, error codes and ordering rules are in
// docs/protocol.md, written so that a client in another language can be built
// from it.
//
// The stream's data flows from the primary down a tree of peers described by
// a RoutingTable. Validate checks that a table really is such a tree;
// Star and Chain build the two common shapes. A request without a table
// means a star, the primary forwarding to every other peer itself; OrStar
// turns an empty table into that star, and Successors reads a peer's route.
//
// Packet options are bit flags in DataStreamPacketHeader.Options; test them
// with HasOption, and reject bits outside KnownOptions.
//
// The generated code is committed; see generate.go to regenerate it.
package pipestreamv1
