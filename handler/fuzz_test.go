package handler_test

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// endConn ends p's connection and waits, up to 10 s, for streams to shut
// down.
func endConn(t *testing.T, p *pipeline.Pipeline, streams *handler.Streams) {
	t.Helper()
	p.FireChannelInactive()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// checkingTransport checks that every reply the stages write decodes, and
// drops it.
type checkingTransport struct {
	t      *testing.T
	closed bool
	ended  atomic.Bool // the connection is gone: its handlers are removed
}

func (c *checkingTransport) Write(msg any) error {
	defer pipeline.Release(msg)
	b, ok := msg.(*buffer.Buf)
	if !ok {
		if !c.ended.Load() {
			c.t.Errorf("transport got a %T", msg)
		}
		return pipeline.ErrClosed
	}
	if _, _, err := dscodec.DecodeReply(b.Bytes(), dscodec.DefaultMaxPacketHeader); err != nil {
		c.t.Errorf("the server wrote a reply that does not decode: %v", err)
	}
	return nil
}
func (c *checkingTransport) Flush() error         { return nil }
func (c *checkingTransport) Close() error         { c.closed = true; return nil }
func (c *checkingTransport) LocalAddr() net.Addr  { return nil }
func (c *checkingTransport) RemoteAddr() net.Addr { return nil }

// FuzzServerPipeline feeds arbitrary bytes to a standalone peer's stages,
// the way a connection would, split at an arbitrary point. Whatever comes
// in, nothing may panic, every reply must decode, and once the connection
// ends every buffer is released and every stream gone.
func FuzzServerPipeline(f *testing.F) {
	req, _ := proto.Marshal(&pb.RaftClientRequest{ClientId: []byte("c"), CallId: 1, ServerId: self, Type: pb.RaftClientRequest_STREAM})
	var seed []byte
	for _, pkt := range []struct {
		h    *pb.DataStreamPacketHeader
		body []byte
	}{
		{&pb.DataStreamPacketHeader{ClientId: []byte("c"), Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: 1, DataLength: uint64(len(req))}, req},
		{&pb.DataStreamPacketHeader{ClientId: []byte("c"), Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: 1, DataLength: 3}, []byte("abc")},
		{&pb.DataStreamPacketHeader{ClientId: []byte("c"), Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: 1, StreamOffset: 3, Options: 4}, nil},
		{&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}, nil},
	} {
		frame, err := dscodec.EncodePacket(pkt.h, pkt.body)
		if err != nil {
			f.Fatal(err)
		}
		seed = append(seed, frame.Bytes()...)
		frame.Release()
	}
	f.Add(seed, uint16(10))
	f.Add(seed, uint16(0x8000|10))
	f.Add(seed[:len(seed)-3], uint16(0))
	f.Add([]byte{0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff}, uint16(2))
	f.Fuzz(func(t *testing.T, in []byte, split uint16) {
		tr := buffer.StartTracking()
		streams := handler.NewStreams(handler.Config{
			ID: self, Peers: []string{self}, StateMachine: statemachine.NewMemory(),
			Logger: slog.New(slog.DiscardHandler), Limits: handler.Limits{MaxHeader: 1024},
			// Both ways of writing: on the executor, and inline (Memory's
			// Write never blocks), picked by the split's top bit.
			Policy: handler.Policy{InlineWrites: split&0x8000 != 0},
		})
		ct := &checkingTransport{t: t}
		p := pipeline.New(ct, pipeline.WithLogger(slog.New(slog.DiscardHandler)))
		if err := handler.Install(p, streams, 1<<16); err != nil {
			t.Fatal(err)
		}
		var q buffer.Queue
		cut := int(split&0x7fff) % (len(in) + 1)
		for _, part := range [][]byte{in[:cut], in[cut:]} {
			_, _ = q.Write(part)
			p.FireChannelRead(&q)
		}
		ct.ended.Store(true) // replies still in flight now reach a closed connection
		endConn(t, p, streams)
		if n := streams.Active(); n != 0 {
			t.Fatalf("%d streams left after the connection ended", n)
		}
		if r := tr.Stop(); r.Leaked != 0 || len(r.Misuses) != 0 {
			t.Fatalf("buffers: %d leaked, misuses %v", r.Leaked, r.Misuses)
		}
	})
}
