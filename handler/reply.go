package handler

import (
	"sync"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Reply is an outbound reply: the header and, on CLOSE and on errors the
// primary reports, a RaftClientReply as body. The server's replies are
// pooled: the encoder releases each once it is encoded, so a stage that
// passes a Reply on must not touch it afterwards, and one that drops it
// calls Release.
type Reply struct {
	Header *pb.DataStreamReplyHeader
	Body   *pb.RaftClientReply

	hdr pb.DataStreamReplyHeader
	ph  pb.DataStreamPacketHeader // a copy: the packet may be released first
	cid [16]byte                  // room for a client id without allocating
}

var replies = sync.Pool{New: func() any { return new(Reply) }}

// newReply returns a pooled reply to the packet with header h, which it
// copies.
func newReply(h *pb.DataStreamPacketHeader) *Reply {
	r := replies.Get().(*Reply)
	r.Header = &r.hdr
	if h != nil {
		r.ph.Type, r.ph.StreamId, r.ph.StreamOffset = h.GetType(), h.GetStreamId(), h.GetStreamOffset()
		r.ph.DataLength, r.ph.Options = h.GetDataLength(), h.GetOptions()
		if id := h.GetClientId(); id != nil {
			r.ph.ClientId = append(r.cid[:0:len(r.cid)], id...)
		}
		r.hdr.PacketHeader = &r.ph
	}
	return r
}

// Release returns r to the pool.
func (r *Reply) Release() {
	h := &r.hdr
	h.PacketHeader, h.BytesWritten, h.Success, h.ErrorCode, h.ErrorMessage, h.CommitInfos, h.ServerId = nil, 0, false, 0, "", nil, ""
	h.Holders = nil
	r.ph.ClientId = nil
	r.Header, r.Body = nil, nil
	replies.Put(r)
}
