// Package handler holds the DataStream server's pipeline stages and the
// stream state they share.
//
// A peer's connection pipeline is, in order:
//
//	frame    codec.FrameDecoder: whole length-prefixed frames, one copy each
//	read     ReadServer: on a connection that opens with STREAM_READ or
//	         STREAM_LIST, serves committed files; elsewhere passes frames on
//	packet   PacketDecoder: frame -> *Packet{Header, Frame, Body}
//	router   Router: (client id, stream id) -> *Stream; HEADER opens, DATA appends
//	write    Writer: the local state-machine write, on the stream's executor
//	forward  Forwarder: the same frame, by reference, to each successor
//	reply    Replier: one reply upstream when the local write and every
//	         successor's reply are in, in stream order
//	encode   ReplyEncoder: reply header (+ RaftClientReply) -> frame
//
// Each stage is registered under the name above (see the Stage constants),
// so a user can insert a stage between two of them, wrap one, or replace
// one with pipeline.AddAfter / Replace. Stages between router and reply see
// *Packet messages with Stream set.
//
// Ownership: a *Packet holds one reference on its frame; its Body is a view
// of the frame. The Replier keeps the packet until its reply is written and
// then releases it. The local write reads Body while the packet lives; the
// forwarder hands the transport a reference of its own on Frame.
package handler
