package handler_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// readTransport gathers what the read stage sends, buffers and file
// regions alike, into one byte stream.
type readTransport struct {
	mu  sync.Mutex
	out []byte
	err error
}

func (c *readTransport) Write(msg any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch m := msg.(type) {
	case *buffer.Buf:
		c.out = append(c.out, m.Bytes()...)
		m.Release()
	case *transport.FileRegion:
		b := make([]byte, m.Count)
		if _, err := m.File.ReadAt(b, m.Offset); err != nil && c.err == nil {
			c.err = err
		}
		c.out = append(c.out, b...)
		m.Release()
	default:
		pipeline.Release(msg)
		if c.err == nil {
			c.err = errUnexpected
		}
	}
	return nil
}
func (c *readTransport) Flush() error         { return nil }
func (c *readTransport) Close() error         { return nil }
func (c *readTransport) LocalAddr() net.Addr  { return nil }
func (c *readTransport) RemoteAddr() net.Addr { return nil }

var errUnexpected = net.UnknownNetworkError("a message that is neither a buffer nor a file region")

// readStore returns a FileStore holding name with data.
func readStore(tb testing.TB, dir, name string, data []byte) *statemachine.FileStore {
	tb.Helper()
	fs, err := statemachine.NewFileStore(dir, statemachine.WithLogger(slog.New(slog.DiscardHandler)), statemachine.WithSyncOnClose(false))
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	key := statemachine.StreamKey{ClientID: "c", StreamID: 1}
	req := &pb.RaftClientRequest{Type: pb.RaftClientRequest_STREAM, Message: []byte(name)}
	ch, err := fs.OpenStream(ctx, key, req)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := ch.Write(data); err != nil {
		tb.Fatal(err)
	}
	if err := ch.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := fs.Link(ctx, statemachine.Entry{Index: 1, Key: key, Request: req, Length: uint64(len(data))}, ch); err != nil {
		tb.Fatal(err)
	}
	return fs
}

// FuzzReadServer feeds arbitrary bytes to a peer's stages on a connection
// that opens with a read. Whatever comes in, nothing may panic, the bytes
// sent back must be whole reply frames whose headers decode, every byte a
// read reply carries must be the file's at its offset, and once the
// connection ends every buffer is released and no read byte is accounted.
func FuzzReadServer(f *testing.F) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096+3)
	fs := readStore(f, f.TempDir(), "dir/a", data)
	f.Cleanup(func() { _ = fs.Close() })
	var seed []byte
	for i, req := range []*pb.ReadRequest{
		{Name: "dir/a", Length: 1 << 20},
		{Name: "dir/a", Offset: 100, Length: 10, Index: 1},
		{Name: "../x", Length: 1},
		{Name: "dir/a", Offset: 1 << 30},
		{Name: "none"},
	} {
		body, _ := proto.Marshal(req)
		frame, err := dscodec.EncodePacket(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_READ, StreamId: uint64(i + 1), DataLength: uint64(len(body))}, body)
		if err != nil {
			f.Fatal(err)
		}
		seed = append(seed, frame.Bytes()...)
		frame.Release()
	}
	list, _ := dscodec.EncodePacket(&pb.DataStreamPacketHeader{Type: pb.DataStreamPacketHeader_STREAM_LIST, StreamId: 9}, nil)
	seed = append(seed, list.Bytes()...)
	list.Release()
	f.Add(seed, uint16(10))
	f.Add(seed[:len(seed)-3], uint16(0))
	f.Add(seed[len(seed)-len(list.Bytes()):], uint16(0))
	f.Fuzz(func(t *testing.T, in []byte, split uint16) {
		tr := buffer.StartTracking()
		streams := handler.NewStreams(handler.Config{
			ID: self, Peers: []string{self}, StateMachine: fs,
			Logger: slog.New(slog.DiscardHandler), Limits: handler.Limits{MaxHeader: 1024},
		})
		ct := &readTransport{}
		p := pipeline.New(ct, pipeline.WithLogger(slog.New(slog.DiscardHandler)))
		if err := handler.Install(p, streams, 1<<16); err != nil {
			t.Fatal(err)
		}
		var q buffer.Queue
		cut := int(split) % (len(in) + 1)
		for _, part := range [][]byte{in[:cut], in[cut:]} {
			_, _ = q.Write(part)
			p.FireChannelRead(&q)
		}
		endReads(t, p, streams)
		ct.mu.Lock()
		out, err := ct.out, ct.err
		ct.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		for len(out) > 0 {
			if len(out) < 4 || len(out) < 4+int(binary.BigEndian.Uint32(out)) {
				t.Fatalf("the server sent %d bytes that are not a whole frame", len(out))
			}
			n := 4 + int(binary.BigEndian.Uint32(out))
			frame := out[:n]
			out = out[n:]
			hl := int(binary.BigEndian.Uint32(frame[4:]))
			var h pb.DataStreamReplyHeader
			if 8+hl > len(frame) || proto.Unmarshal(frame[8:8+hl], &h) != nil {
				t.Fatalf("the server sent a reply whose header does not decode")
			}
			body := frame[8+hl:]
			if h.GetSuccess() && h.GetPacketHeader().GetType() == pb.DataStreamPacketHeader_STREAM_READ {
				off := h.GetReadOffset()
				if off+uint64(len(body)) > uint64(len(data)) || !bytes.Equal(body, data[off:off+uint64(len(body))]) {
					t.Fatalf("a read reply of %d bytes at %d does not hold the file's bytes", len(body), off)
				}
			}
		}
		if r := tr.Stop(); r.Leaked != 0 || len(r.Misuses) != 0 {
			t.Fatalf("buffers: %d leaked, misuses %v", r.Leaked, r.Misuses)
		}
	})
}
