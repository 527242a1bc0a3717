package handler_test

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/internal/smtest"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

const (
	self    = "s1"
	client  = "client-0123456789"
	waitFor = 10 * time.Second // bounds a wait for a reply; nothing is timed
)

// conn is one upstream connection of a single standalone peer, fed by
// hand: the server stages on a pipeline whose transport decodes each reply
// frame it is given.
type conn struct {
	t       *testing.T
	sm      *statemachine.Memory
	gate    *smtest.Gate // holds the data writes
	streams *handler.Streams
	p       *pipeline.Pipeline
	replies chan reply
	got     []reply
}

type reply struct {
	h   *pb.DataStreamReplyHeader
	rcr *pb.RaftClientReply
}

// newConn returns a connection to a fresh peer. If gated, the peer's data
// writes wait until c.release, which lets a test fail a stream while
// earlier packets are still being written.
func newConn(t *testing.T, gated bool, opts ...func(*handler.Config)) *conn {
	c := &conn{
		t: t, sm: statemachine.NewMemory(), gate: smtest.NewGate(64),
		replies: make(chan reply, maxReplies),
	}
	if !gated {
		c.gate.Open()
	}
	cfg := handler.Config{
		ID: self, Peers: []string{self}, StateMachine: c.gate.Hold(c.sm),
		Logger: slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		o(&cfg)
	}
	c.streams = handler.NewStreams(cfg)
	c.p = pipeline.New(replyTransport{c}, pipeline.WithLogger(slog.New(slog.DiscardHandler)))
	if err := handler.Install(c.p, c.streams, dscodec.DefaultMaxPacketFrame); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.release()
		c.p.FireChannelInactive()
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := c.streams.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return c
}

func (c *conn) release() { c.gate.Open() }

// replyTransport decodes the reply frames that reach the head.
type replyTransport struct{ c *conn }

func (r replyTransport) Write(msg any) error {
	defer pipeline.Release(msg)
	b, ok := msg.(*buffer.Buf)
	if !ok {
		r.c.t.Errorf("transport got a %T", msg)
		return nil
	}
	h, rcr, err := dscodec.DecodeReply(b.Bytes(), dscodec.DefaultMaxPacketHeader)
	if err != nil {
		r.c.t.Error(err)
		return nil
	}
	// A transport's Write queues and never waits for the peer to read,
	// and the handler writes a stream's replies holding the stream's lock:
	// blocking here would deadlock a test whose goroutine is sending to
	// that stream.
	select {
	case r.c.replies <- reply{h, rcr}:
	default:
		r.c.t.Errorf("more than %d replies unread", maxReplies)
	}
	return nil
}

// maxReplies is more than any test's replies in all.
const maxReplies = 4096

func (replyTransport) Flush() error         { return nil }
func (replyTransport) Close() error         { return nil }
func (replyTransport) LocalAddr() net.Addr  { return nil }
func (replyTransport) RemoteAddr() net.Addr { return nil }

// send feeds one packet to the pipeline as if it had been read.
func (c *conn) send(h *pb.DataStreamPacketHeader, body []byte) {
	c.t.Helper()
	if h.ClientId == nil {
		h.ClientId = []byte(client)
	}
	h.DataLength = uint64(len(body))
	frame, err := dscodec.EncodePacket(h, body)
	if err != nil {
		c.t.Fatal(err)
	}
	var in buffer.Queue
	_, _ = in.Write(frame.Bytes())
	frame.Release()
	c.p.FireChannelRead(&in)
}

func (c *conn) header(stream uint64) {
	c.t.Helper()
	body, err := proto.Marshal(&pb.RaftClientRequest{
		ClientId: []byte(client), CallId: stream, ServerId: self, Type: pb.RaftClientRequest_STREAM,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.send(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_HEADER, StreamId: stream}, body)
}

func (c *conn) data(stream, offset uint64, body string, opts ...pb.DataStreamPacketHeader_Option) {
	c.t.Helper()
	var bits uint32
	for _, o := range opts {
		bits |= uint32(o)
	}
	c.send(&pb.DataStreamPacketHeader{
		Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: stream, StreamOffset: offset, Options: bits,
	}, []byte(body))
}

// writing waits until a data write has started.
func (c *conn) writing() {
	c.t.Helper()
	select {
	case <-c.gate.Entered():
	case <-time.After(waitFor):
		c.t.Fatal("no data write started")
	}
}

// await collects the next n replies.
func (c *conn) await(n int) {
	c.t.Helper()
	timeout := time.After(waitFor)
	for range n {
		select {
		case r := <-c.replies:
			c.got = append(c.got, r)
		case <-timeout:
			c.t.Fatalf("%d replies so far, waiting for %d more", len(c.got), n)
		}
	}
}

// want is an expected reply: its stream, offset, error code and, on
// success, bytes written.
type want struct {
	stream, offset uint64
	code           pb.ErrorCode
	written        uint64
}

func TestStages(t *testing.T) {
	const (
		OK    = pb.ErrorCode_ERROR_NONE
		CLOSE = pb.DataStreamPacketHeader_CLOSE
		ABORT = pb.DataStreamPacketHeader_ABORT
	)
	for _, tc := range []struct {
		name  string
		gated bool
		send  func(c *conn)
		want  []want
	}{
		{"stream", false, func(c *conn) {
			c.header(1)
			c.data(1, 0, "hello, ")
			c.data(1, 7, "pipeline", CLOSE)
		}, []want{{1, 0, OK, 0}, {1, 0, OK, 7}, {1, 7, OK, 15}}},
		{"empty close", false, func(c *conn) {
			c.header(1)
			c.data(1, 0, "", CLOSE)
		}, []want{{1, 0, OK, 0}, {1, 0, OK, 0}}},
		{"data without header", false, func(c *conn) {
			c.data(1, 0, "x")
		}, []want{{1, 0, pb.ErrorCode_UNKNOWN_STREAM, 0}}},
		{"duplicate header", false, func(c *conn) {
			c.header(1)
			c.await(1)
			c.header(1)
		}, []want{{1, 0, OK, 0}, {1, 0, pb.ErrorCode_DUPLICATE_HEADER, 0}}},
		{"offset gap", false, func(c *conn) {
			c.header(1)
			c.data(1, 0, "abc")
			c.await(2)
			c.data(1, 9, "xyz")
			c.data(1, 3, "late") // finds the stream gone: its cause
		}, []want{{1, 0, OK, 0}, {1, 0, OK, 3}, {1, 9, pb.ErrorCode_OFFSET_MISMATCH, 0}, {1, 3, pb.ErrorCode_OFFSET_MISMATCH, 0}}},
		{"a failure fails packets in flight, in order", true, func(c *conn) {
			c.header(1)
			c.await(1)
			c.data(1, 0, "abc") // its write waits for the gate
			c.data(1, 3, "def")
			c.data(1, 9, "xyz")
			c.release()
		}, []want{{1, 0, OK, 0}, {1, 0, pb.ErrorCode_OFFSET_MISMATCH, 0}, {1, 3, pb.ErrorCode_OFFSET_MISMATCH, 0}, {1, 9, pb.ErrorCode_OFFSET_MISMATCH, 0}}},
		{"data after close", true, func(c *conn) {
			c.header(1)
			c.await(1)
			c.data(1, 0, "abc", CLOSE)
			c.data(1, 3, "more")
			c.release()
		}, []want{{1, 0, OK, 0}, {1, 0, pb.ErrorCode_BAD_HEADER, 0}, {1, 3, pb.ErrorCode_BAD_HEADER, 0}}},
		{"abort", false, func(c *conn) {
			c.header(1)
			c.data(1, 0, "abc")
			c.await(2)
			c.data(1, 3, "", ABORT)
		}, []want{{1, 0, OK, 0}, {1, 0, OK, 3}, {1, 3, pb.ErrorCode_CANCELLED, 0}}},
		{"unknown option", false, func(c *conn) {
			c.send(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_DATA, StreamId: 1, Options: 1 << 20}, nil)
		}, []want{{1, 0, pb.ErrorCode_BAD_HEADER, 0}}},
		{"ping", false, func(c *conn) {
			c.send(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_PING}, nil)
		}, []want{{0, 0, OK, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			c := newConn(t, tc.gated)
			tc.send(c)
			c.await(len(tc.want) - len(c.got))
			c.check(tc.want)
			select {
			case r := <-c.replies:
				t.Errorf("unexpected reply %v", r.h)
			default:
			}
		})
	}
}

// check compares the replies collected with want, in order.
func (c *conn) check(want []want) {
	c.t.Helper()
	for i, w := range want {
		r := c.got[i]
		ph := r.h.GetPacketHeader()
		ok := w.code == pb.ErrorCode_ERROR_NONE
		if ph.GetStreamId() != w.stream || ph.GetStreamOffset() != w.offset || r.h.GetErrorCode() != w.code ||
			r.h.GetSuccess() != ok || (ok && r.h.GetBytesWritten() != w.written) {
			c.t.Errorf("reply %d = stream %d offset %d %v (%s) written %d, want stream %d offset %d %v written %d",
				i, ph.GetStreamId(), ph.GetStreamOffset(), r.h.GetErrorCode(), r.h.GetErrorMessage(), r.h.GetBytesWritten(),
				w.stream, w.offset, w.code, w.written)
		}
		if ph.GetOptions()&uint32(pb.DataStreamPacketHeader_CLOSE) != 0 && ok && (!r.rcr.GetSuccess() || r.rcr.GetLogIndex() == 0) {
			c.t.Errorf("reply to CLOSE carries %v, want a committed RaftClientReply", r.rcr)
		}
	}
}

// TestRepliesInOrderAfterFailure: a packet that arrives after its stream
// failed, while earlier packets of the stream are still being written, is
// answered after them, with the stream's error, not at once.
func TestRepliesInOrderAfterFailure(t *testing.T) {
	buffertest.Check(t)
	c := newConn(t, true)
	c.header(1)
	c.await(1)
	c.data(1, 0, "abc")
	c.writing()         // its write has started and waits for the gate
	c.data(1, 9, "xyz") // fails the stream
	c.data(1, 3, "def") // arrives while the failed stream still owes replies
	c.release()
	c.await(3)
	mismatch := pb.ErrorCode_OFFSET_MISMATCH
	c.check([]want{{1, 0, pb.ErrorCode_ERROR_NONE, 0}, {1, 0, mismatch, 0}, {1, 9, mismatch, 0}, {1, 3, mismatch, 0}})
}

// TestStagesStateMachine checks what the stages leave in the state
// machine: a closed stream is linked with its bytes, a failed one is
// cleaned up.
func TestStagesStateMachine(t *testing.T) {
	buffertest.Check(t)
	c := newConn(t, false)
	c.header(1)
	c.data(1, 0, "kept", pb.DataStreamPacketHeader_CLOSE)
	c.header(2)
	c.data(2, 0, "dropped")
	c.await(4)
	c.data(2, 1, "bad offset")
	c.await(1)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.streams.Shutdown(ctx); err != nil { // waits for the executors
		t.Fatal(err)
	}
	key := handler.StreamKey{ClientID: client, StreamID: 1}
	if got, ok := c.sm.Data(key); !ok || string(got) != "kept" {
		t.Errorf("stream 1 linked %q, %v; want \"kept\"", got, ok)
	}
	if n := len(c.sm.Committed()); n != 1 {
		t.Errorf("%d streams committed, want 1", n)
	}
	if c.sm.Open() != 0 || c.sm.CleanedUp() != 1 {
		t.Errorf("open %d, cleaned up %d; want 0 and 1", c.sm.Open(), c.sm.CleanedUp())
	}
}

// TestUserStageFailsStream: a stage between the router and the replier
// refuses a stream with Stream.Fail and passes the packet on; the refused
// packet is answered with its error, in order, and a later one with an
// error too: the stream's own while it still owes replies, UNKNOWN_STREAM
// once it is gone.
func TestUserStageFailsStream(t *testing.T) {
	buffertest.Check(t)
	c := newConn(t, false)
	quota := pipeline.Inbound(func(ctx *pipeline.Context, p *handler.Packet) {
		if p.Header.GetStreamOffset() >= 6 {
			p.Stream.Fail(&pb.Error{Code: pb.ErrorCode_LIMIT_EXCEEDED, Message: "quota"})
		}
		ctx.FireChannelRead(p)
	})
	if err := c.p.AddAfter(handler.StageRouter, "quota", quota); err != nil {
		t.Fatal(err)
	}
	c.header(1)
	c.data(1, 0, "abc")
	c.data(1, 3, "def")
	c.await(3) // a failure fails every packet not yet answered
	c.data(1, 6, "ghi")
	c.data(1, 9, "jkl")
	c.await(2)
	over := pb.ErrorCode_LIMIT_EXCEEDED
	c.check([]want{{1, 0, pb.ErrorCode_ERROR_NONE, 0}, {1, 0, pb.ErrorCode_ERROR_NONE, 3}, {1, 3, pb.ErrorCode_ERROR_NONE, 6}, {1, 6, over, 0}})
	if last := c.got[4].h; last.GetSuccess() || (last.GetErrorCode() != over && last.GetErrorCode() != pb.ErrorCode_UNKNOWN_STREAM) {
		t.Errorf("packet after the refusal: %v", last)
	}
}
