package bench_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The grpc-go baseline of BenchmarkLatency: the 4 KiB round trip over
// three hops that the raw ping-pong makes, made by the RPC framework a
// replicated-write service would most likely be built on instead. Each
// hop serves one bidirectional stream; the first two open a stream of
// their own to the next hop and relay every message down and every answer
// up, and the last hop answers every message with 8 bytes. There is no
// .proto: the service is a hand-written grpc.ServiceDesc and the messages
// are plain []byte through a codec that does not marshal, so that what is
// measured is grpc-go's transport (HTTP/2 framing, flow control, its
// goroutines), not protobuf.

// grpcMethod is the one method's full name.
const grpcMethod = "/pipestream.bench.Relay/Relay"

// bytesCodec carries *[]byte messages as they are.
type bytesCodec struct{}

func (bytesCodec) Marshal(v any) ([]byte, error) {
	p, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("bench: bytesCodec cannot marshal %T", v)
	}
	return *p, nil
}

func (bytesCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("bench: bytesCodec cannot unmarshal into %T", v)
	}
	// A copy of its own, as protobuf's Unmarshal makes: grpc may reuse
	// data once Unmarshal returns, and a hop hands the message to SendMsg,
	// after which it must not change (grpc-go may still be writing it).
	*p = bytes.Clone(data)
	return nil
}

func (bytesCodec) Name() string { return "pipestream-bench-bytes" }

// grpcRelayStream is the method as a client opens it.
var grpcRelayStream = grpc.StreamDesc{StreamName: "Relay", ServerStreams: true, ClientStreams: true}

// grpcRelayDesc describes the service by hand, as protoc would have.
var grpcRelayDesc = grpc.ServiceDesc{
	ServiceName: "pipestream.bench.Relay",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Relay",
		Handler:       func(srv any, s grpc.ServerStream) error { return srv.(*grpcHop).serve(s) },
		ServerStreams: true,
		ClientStreams: true,
	}},
}

// grpcHop is one hop's service: a relay to next, or the answering end
// when next is nil.
type grpcHop struct{ next *grpc.ClientConn }

func (h *grpcHop) serve(up grpc.ServerStream) error {
	var msg []byte
	if h.next == nil {
		ack := make([]byte, 8)
		for {
			if err := up.RecvMsg(&msg); err != nil {
				return ignoreEOF(err)
			}
			if err := up.SendMsg(&ack); err != nil {
				return err
			}
		}
	}
	ctx, cancel := context.WithCancel(up.Context())
	defer cancel()
	down, err := h.next.NewStream(ctx, &grpcRelayStream, grpcMethod)
	if err != nil {
		return err
	}
	answers := make(chan error, 1)
	go func() {
		var ack []byte
		for {
			if err := down.RecvMsg(&ack); err != nil {
				answers <- ignoreEOF(err)
				return
			}
			if err := up.SendMsg(&ack); err != nil {
				answers <- err
				return
			}
		}
	}()
	for {
		if err := up.RecvMsg(&msg); err != nil {
			if err := ignoreEOF(err); err != nil {
				return err
			}
			break
		}
		if err := down.SendMsg(&msg); err != nil {
			return err
		}
	}
	if err := down.CloseSend(); err != nil {
		return err
	}
	return <-answers
}

func ignoreEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// grpcChain is a client's stream to the first of chainLen grpc hops.
type grpcChain struct {
	servers []*grpc.Server
	conns   []*grpc.ClientConn
	stream  grpc.ClientStream
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	ack     []byte
}

// startGRPCChain starts the hops, last first, and opens the client's
// stream; tb fails if any of it does.
func startGRPCChain(tb testing.TB) *grpcChain {
	tb.Helper()
	g := &grpcChain{}
	var next *grpc.ClientConn
	for range chainLen {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			g.close()
			tb.Fatal(err)
		}
		s := grpc.NewServer(grpc.ForceServerCodec(bytesCodec{}))
		s.RegisterService(&grpcRelayDesc, &grpcHop{next: next})
		g.servers = append(g.servers, s)
		g.wg.Go(func() { _ = s.Serve(ln) })
		if next, err = dialGRPC(ln.Addr().String()); err != nil {
			g.close()
			tb.Fatal(err)
		}
		g.conns = append(g.conns, next)
	}
	var ctx context.Context
	ctx, g.cancel = context.WithCancel(context.Background())
	s, err := next.NewStream(ctx, &grpcRelayStream, grpcMethod)
	if err != nil {
		g.close()
		tb.Fatal(err)
	}
	g.stream = s
	return g
}

func dialGRPC(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(bytesCodec{})))
}

// roundTrip sends msg down the chain and waits for the last hop's answer.
func (g *grpcChain) roundTrip(msg []byte) error {
	if err := g.stream.SendMsg(&msg); err != nil {
		return err
	}
	if err := g.stream.RecvMsg(&g.ack); err != nil {
		return err
	}
	if len(g.ack) != 8 {
		return fmt.Errorf("grpc chain answered %d bytes, want 8", len(g.ack))
	}
	return nil
}

// close ends the stream, the connections and the servers.
func (g *grpcChain) close() {
	if g.stream != nil {
		_ = g.stream.CloseSend()
		_ = g.stream.RecvMsg(&g.ack) // EOF once the chain has wound down
	}
	if g.cancel != nil {
		g.cancel()
	}
	for _, c := range g.conns {
		_ = c.Close()
	}
	for _, s := range g.servers {
		s.Stop()
	}
	g.wg.Wait()
}

// benchGRPC is BenchmarkChain's grpc-go baseline: b.N packets of
// packetSize down the same chain of grpc hops as BenchmarkLatency's, each
// answered by the last hop with 8 bytes that travel back up, as a
// stream's packets are answered; the client sends without waiting for the
// answers (grpc-go's flow control holds it back) and the timed part ends
// with the last answer.
func benchGRPC(b *testing.B) {
	g := startGRPCChain(b)
	defer g.close()
	payload := make([]byte, packetSize)
	for i := range payload {
		payload[i] = byte(i)
	}
	b.SetBytes(packetSize)
	b.ReportAllocs()
	m := startMallocs(b)
	sent := make(chan error, 1)
	go func() {
		for range b.N {
			if err := g.stream.SendMsg(&payload); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	for i := range b.N {
		if err := g.stream.RecvMsg(&g.ack); err != nil {
			b.Fatalf("answer %d: %v (sending: %v)", i, err, <-sent)
		}
	}
	m.stop(b)
	if err := <-sent; err != nil {
		b.Fatal(err)
	}
}
