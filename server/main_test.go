package server_test

import (
	"crypto/sha256"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/grouptest"
	"github.com/pipestream/pipestream/internal/leaktest"
	"github.com/pipestream/pipestream/internal/testkit"

	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

func quietLogger() *slog.Logger {
	if os.Getenv("PIPESTREAM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// cluster is n peers started on loopback.
type cluster struct {
	servers []*server.Server
	sms     []statemachine.StateMachine
	peers   []group.Member
}

type groupOpts struct {
	// quorum is the servers' WriteQuorum. The tests of what a failed peer
	// does to a stream without recovery set handler.QuorumAll;
	// recovery_test.go has them with the default majority.
	quorum int
	kind   transport.Kind
	sm     func(i int) statemachine.StateMachine
	tweak  func(*server.Config)
}

// startGroup starts n peers and waits until each reaches the others. Its
// cleanup shuts them down; register buffertest.Check before calling it.
func startGroup(t testing.TB, n int, o groupOpts) *cluster {
	t.Helper()
	g, _ := startGroupVia(t, n, o)
	return g
}

// options returns the grouptest options of o; the state machines default
// to statemachine.NewMemoryHashing.
func (o groupOpts) options() grouptest.ServerOptions {
	opts := grouptest.ServerOptions{ID: peerID, Kind: o.kind, Quorum: o.quorum, StateMachine: o.sm, Logger: quietLogger()}
	if opts.StateMachine == nil {
		opts.StateMachine = func(int) statemachine.StateMachine { return statemachine.NewMemoryHashing() }
	}
	if o.tweak != nil {
		opts.Config = func(_ int, c *server.Config) { o.tweak(c) }
	}
	return opts
}

func peerID(i int) string { return string(rune('a'+i)) + "-peer" }

func (g *cluster) client(t testing.TB, opts ...datastream.Option) *datastream.Client {
	t.Helper()
	c, err := datastream.NewClient(g.peers, append([]datastream.Option{datastream.WithLogger(quietLogger())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (g *cluster) memory(i int) *statemachine.Memory { return g.sms[i].(*statemachine.Memory) }

// randomBytes fills n bytes from a seeded generator: fast, and the same for
// the same seed.
var randomBytes = testkit.RandomBytes

func key(c *datastream.Client, out *datastream.Output) statemachine.StreamKey {
	return statemachine.StreamKey{ClientID: string(c.ID()), StreamID: out.ID()}
}

func sum(b []byte) [32]byte { return sha256.Sum256(b) }

// raw is a bare protocol connection for sending frames a correct client
// never would.
type raw struct {
	t      testing.TB
	c      net.Conn
	client []byte
}

func dialRaw(t testing.TB, addr string) *raw {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &raw{t: t, c: c, client: []byte("raw-client-0001!")}
}

func (r *raw) sendFrame(h *pb.DataStreamPacketHeader, body []byte) {
	r.t.Helper()
	frame, err := dscodec.EncodePacket(h, body)
	if err != nil {
		r.t.Fatal(err)
	}
	defer frame.Release()
	if _, err := r.c.Write(frame.Bytes()); err != nil {
		r.t.Fatal(err)
	}
}

func (r *raw) header(stream uint64, req *pb.RaftClientRequest) {
	r.t.Helper()
	body, err := protoMarshal(req)
	if err != nil {
		r.t.Fatal(err)
	}
	r.sendFrame(&pb.DataStreamPacketHeader{
		ClientId: r.client, Type: pb.DataStreamPacketHeader_STREAM_HEADER,
		StreamId: stream, DataLength: uint64(len(body)),
	}, body)
}

// resume sends a header with the RESUME option, as a client's failover
// does: the stream moved to primary at offset, through table, in its
// first epoch after the move.
func (r *raw) resume(stream, offset uint64, primary string, table *pb.RoutingTable) {
	r.t.Helper()
	body, err := protoMarshal(r.request(stream, primary, table))
	if err != nil {
		r.t.Fatal(err)
	}
	r.sendFrame(&pb.DataStreamPacketHeader{
		ClientId: r.client, Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: stream,
		StreamOffset: offset, DataLength: uint64(len(body)), Options: uint32(pb.DataStreamPacketHeader_RESUME), Epoch: 1,
	}, body)
}

func (r *raw) data(stream, offset uint64, body []byte, opts ...pb.DataStreamPacketHeader_Option) {
	r.t.Helper()
	var bits uint32
	for _, o := range opts {
		bits |= uint32(o)
	}
	r.sendFrame(&pb.DataStreamPacketHeader{
		ClientId: r.client, Type: pb.DataStreamPacketHeader_STREAM_DATA,
		StreamId: stream, StreamOffset: offset, DataLength: uint64(len(body)), Options: bits,
	}, body)
}

// reply reads the next reply frame.
func (r *raw) reply() (*pb.DataStreamReplyHeader, *pb.RaftClientReply) {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var n [4]byte
	if _, err := io.ReadFull(r.c, n[:]); err != nil {
		r.t.Fatalf("read reply: %v", err)
	}
	b := make([]byte, 4+binary.BigEndian.Uint32(n[:]))
	copy(b, n[:])
	if _, err := io.ReadFull(r.c, b[4:]); err != nil {
		r.t.Fatalf("read reply: %v", err)
	}
	h, rcr, err := dscodec.DecodeReply(b, dscodec.DefaultMaxPacketHeader)
	if err != nil {
		r.t.Fatal(err)
	}
	return h, rcr
}

func (r *raw) request(stream uint64, primary string, table *pb.RoutingTable) *pb.RaftClientRequest {
	return &pb.RaftClientRequest{
		ClientId: r.client, CallId: stream, ServerId: primary,
		Type: pb.RaftClientRequest_STREAM, Message: []byte("raw"), RoutingTable: table,
	}
}

func encodeFrameBytes(h *pb.DataStreamPacketHeader, body []byte) ([]byte, error) {
	frame, err := dscodec.EncodePacket(h, body)
	if err != nil {
		return nil, err
	}
	defer frame.Release()
	return append([]byte(nil), frame.Bytes()...), nil
}
