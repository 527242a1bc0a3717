package handler_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// errorCounts wraps the reply encoder: it counts a connection's error
// replies by code and then lets the encoder it wraps do its work. Replies
// are written from many goroutines, hence the lock.
type errorCounts struct {
	next pipeline.WriteHandler

	mu     sync.Mutex
	counts map[pb.ErrorCode]int
}

func (w *errorCounts) Write(ctx *pipeline.Context, msg any) error {
	if r, ok := msg.(*handler.Reply); ok && !r.Header.GetSuccess() {
		w.mu.Lock()
		w.counts[r.Header.GetErrorCode()]++
		w.mu.Unlock()
	}
	return w.next.Write(ctx, msg)
}

// Wrap a server stage: replace it under its own name with a handler that
// calls the original. Here the pipeline is fed by hand instead of by a
// connection; in a server the same code goes in server.Config.Pipeline.
func Example_wrapStage() {
	streams := handler.NewStreams(handler.Config{
		ID: "s1", Peers: []string{"s1"},
		StateMachine: statemachine.NewMemory(),
		Logger:       slog.New(slog.DiscardHandler),
	})
	defer streams.Shutdown(context.Background())
	sent := &countingTransport{}
	p := pipeline.New(sent)
	if err := handler.Install(p, streams, dscodec.DefaultMaxPacketFrame); err != nil {
		fmt.Println(err)
		return
	}

	wrapped := &errorCounts{
		next:   p.Get(handler.StageEncode).(pipeline.WriteHandler),
		counts: make(map[pb.ErrorCode]int),
	}
	if _, err := p.Replace(handler.StageEncode, handler.StageEncode, wrapped); err != nil {
		fmt.Println(err)
		return
	}

	// Data for a stream that was never opened, as if it came off the wire.
	frame, err := dscodec.EncodePacket(&pb.DataStreamPacketHeader{
		ClientId: []byte("client-0"), Type: pb.DataStreamPacketHeader_STREAM_DATA,
		StreamId: 7, DataLength: 5,
	}, []byte("hello"))
	if err != nil {
		fmt.Println(err)
		return
	}
	var in buffer.Queue
	in.Write(frame.Bytes())
	frame.Release()
	p.FireChannelRead(&in)
	p.FireChannelInactive()

	fmt.Println(p.Names()) // empty: the connection has ended
	fmt.Println(wrapped.counts, "frames sent:", sent.frames)
	// Output:
	// []
	// map[UNKNOWN_STREAM:1] frames sent: 1
}

// countingTransport stands in for a connection: it counts the frames that
// reach it and releases them.
type countingTransport struct{ frames int }

func (t *countingTransport) Write(msg any) error {
	t.frames++
	pipeline.Release(msg)
	return nil
}

func (*countingTransport) Flush() error         { return nil }
func (*countingTransport) Close() error         { return nil }
func (*countingTransport) LocalAddr() net.Addr  { return nil }
func (*countingTransport) RemoteAddr() net.Addr { return nil }
