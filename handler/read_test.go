package handler_test

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// The example frames of docs/protocol.md's "Reading committed files" are
// what the messages encode to.
func TestReadExampleBytes(t *testing.T) {
	req, err := proto.Marshal(&pb.ReadRequest{Name: "a.txt", Length: 5})
	if err != nil {
		t.Fatal(err)
	}
	ph := &pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_READ, StreamId: 1, DataLength: uint64(len(req))}
	for _, tc := range []struct {
		name string
		h    proto.Message
		body []byte
		want string
	}{
		{"read", ph, req, "00000013000000061004180128090a05612e7478741805"},
		{"reply", &pb.DataStreamReplyHeader{PacketHeader: ph, Success: true, ServerId: "s1", Last: true,
			File: &pb.FileInfo{Name: "a.txt", Length: 5, Index: 3, Term: 1}}, []byte("hello"),
			"000000280000001f0a0610041801280918013a0273314801520d0a05612e74787410051803200168656c6c6f"},
		{"not found", &pb.DataStreamReplyHeader{PacketHeader: ph, ErrorCode: pb.ErrorCode_NOT_FOUND, ServerId: "s1", Last: true}, nil,
			"00000014000000100a0610041801280920113a0273314801"},
		{"list", &pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_LIST, StreamId: 2}, nil, "000000080000000410051802"},
	} {
		frame, err := dscodec.EncodePacket(tc.h, tc.body)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(frame.Bytes()); got != tc.want {
			t.Errorf("%s: %s, the doc says %s", tc.name, got, tc.want)
		}
		frame.Release()
	}
}

// shortReader is a state machine whose one file, "f", claims more bytes
// than its ReadAt returns, as a file truncated under the store would.
type shortReader struct {
	*statemachine.Memory
}

type shortHandle struct{ data []byte }

func (h shortHandle) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(h.data)) {
		return 0, io.EOF
	}
	n := copy(p, h.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (shortHandle) Close() error { return nil }
func (h shortHandle) Info() statemachine.StoredFile {
	return statemachine.StoredFile{Name: "f", Index: 1, Length: 2 * uint64(len(h.data))}
}

func (shortReader) OpenRead(name string) (statemachine.ReadHandle, error) {
	if name != "f" {
		return nil, statemachine.ErrNotFound
	}
	return shortHandle{data: []byte("0123456789")}, nil
}

func (shortReader) List() []statemachine.StoredFile {
	return []statemachine.StoredFile{shortHandle{data: []byte("0123456789")}.Info()}
}

// A read the state machine cannot complete is answered STATE_MACHINE,
// with none of the bytes it did read; a read within what it has succeeds,
// and so does a LIST. The stage reads such handles (not FileHandles) into
// buffers itself.
func TestReadStateMachineFails(t *testing.T) {
	buffertest.Check(t)
	p, streams, ct := readConn(t, nil)
	got := ask(t, p, ct, &pb.ReadRequest{Name: "f", Length: 20}, &pb.ReadRequest{Name: "f", Offset: 2, Length: 5}, nil)
	endReads(t, p, streams)
	if len(got) != 3 || got[0] != `1 STATE_MACHINE last=true ""` || got[1] != `2 ERROR_NONE last=true "23456"` || got[2][:18] != "3 ERROR_NONE last=" {
		t.Fatalf("replies:\n%s", strings.Join(got, "\n"))
	}
}

// A peer whose committer says it lags its group refuses the reads that
// name no version and the LIST (NOT_CAUGHT_UP): it could answer them with
// an older version. A read of a given entry gets that entry or NOT_FOUND
// from any peer, and is served.
func TestReadNotCaughtUp(t *testing.T) {
	buffertest.Check(t)
	p, streams, ct := readConn(t, lagging{})
	got := ask(t, p, ct, &pb.ReadRequest{Name: "f", Length: 5}, &pb.ReadRequest{Name: "f", Index: 1, Offset: 2, Length: 5}, nil)
	endReads(t, p, streams)
	if len(got) != 3 || got[0] != `1 NOT_CAUGHT_UP last=true ""` || got[1] != `2 ERROR_NONE last=true "23456"` || got[2] != `3 NOT_CAUGHT_UP last=true ""` {
		t.Fatalf("replies:\n%s", strings.Join(got, "\n"))
	}
}

// lagging is the committer of a peer that has not caught up with its
// group; it is never asked to commit.
type lagging struct{ statemachine.Committer }

func (lagging) Fresh() bool { return false }

// readConn returns a read connection to a standalone peer serving
// shortReader's one file, with committer c if not nil.
func readConn(t *testing.T, c statemachine.Committer) (*pipeline.Pipeline, *handler.Streams, *readTransport) {
	t.Helper()
	streams := handler.NewStreams(handler.Config{
		ID: self, Peers: []string{self}, StateMachine: shortReader{statemachine.NewMemory()},
		Committer: c, Logger: slog.New(slog.DiscardHandler),
	})
	ct := &readTransport{}
	p := pipeline.New(ct, pipeline.WithLogger(slog.New(slog.DiscardHandler)))
	if err := handler.Install(p, streams, 1<<16); err != nil {
		t.Fatal(err)
	}
	return p, streams, ct
}

// ask sends the requests on p, a nil one as a STREAM_LIST, stream ids 1,
// 2, ... in order, and returns the replies, one line each ("id code
// last=... body"), once there is one per request.
func ask(t *testing.T, p *pipeline.Pipeline, ct *readTransport, reqs ...*pb.ReadRequest) []string {
	t.Helper()
	var q buffer.Queue
	for i, req := range reqs {
		ph := &pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_LIST, StreamId: uint64(i + 1)}
		var body []byte
		if req != nil {
			body, _ = proto.Marshal(req)
			ph.Type, ph.DataLength = pb.DataStreamPacketHeader_STREAM_READ, uint64(len(body))
		}
		frame, err := dscodec.EncodePacket(ph, body)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = q.Write(frame.Bytes())
		frame.Release()
	}
	p.FireChannelRead(&q)
	// The executor answers in the background; the replies are in once
	// as many whole frames are.
	var got []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		ct.mu.Lock()
		out := append([]byte(nil), ct.out...)
		ct.mu.Unlock()
		got = got[:0]
		for len(out) >= 8 && len(out) >= 4+int(binary.BigEndian.Uint32(out)) {
			h, off, err := decodeReply(out)
			if err != nil {
				t.Fatal(err)
			}
			n := 4 + int(binary.BigEndian.Uint32(out))
			got = append(got, fmt.Sprintf("%d %v last=%v %q", h.GetPacketHeader().GetStreamId(), h.GetErrorCode(), h.GetLast(), out[off:n]))
			out = out[n:]
		}
		if len(got) >= len(reqs) || time.Now().After(deadline) {
			return got
		}
	}
}

// endReads is endConn failing the test unless every byte read for a
// reply was accounted back by then.
func endReads(t *testing.T, p *pipeline.Pipeline, streams *handler.Streams) {
	t.Helper()
	endConn(t, p, streams)
	if n := streams.ReadBytesInFlight(); n != 0 {
		t.Fatalf("%d read bytes accounted after the connection ended", n)
	}
}

func decodeReply(frame []byte) (*pb.DataStreamReplyHeader, int, error) {
	hl := int(binary.BigEndian.Uint32(frame[4:]))
	h := new(pb.DataStreamReplyHeader)
	return h, 8 + hl, proto.Unmarshal(frame[8:8+hl], h)
}
