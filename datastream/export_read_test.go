package datastream

import (
	"context"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

type nopTransport struct{ closed bool }

func (t *nopTransport) Write(msg any) error  { pipeline.Release(msg); return nil }
func (t *nopTransport) Flush() error         { return nil }
func (t *nopTransport) Close() error         { t.closed = true; return nil }
func (t *nopTransport) LocalAddr() net.Addr  { return nil }
func (t *nopTransport) RemoteAddr() net.Addr { return nil }

// DeliverReadReplies runs frames through a read connection's reply stage
// while one call of type typ for [off, off+n) is pending, then ends the
// connection. It returns the bytes the call received, whether it was
// done before the end, its error, and whether the stage closed the
// connection.
func DeliverReadReplies(frames [][]byte, typ pb.DataStreamPacketHeader_Type, off, n int64) (data []byte, done bool, err error, closed bool) {
	o := defaultOptions()
	o.logger = slog.New(slog.DiscardHandler)
	rc := &readConn{peerConn: peerConn{c: &Client{opts: o}, peer: group.Member{ID: "p"}, kind: "read connection"}, calls: make(map[uint64]*readCall)}
	call := &readCall{rc: rc, id: 1, off: off, n: n, next: off, signal: make(chan struct{}, 1)}
	rc.calls[1] = call
	tr := &nopTransport{}
	p := pipeline.New(tr, pipeline.WithLogger(o.logger))
	if err := p.AddLast("read-replies", (*readReplies)(rc)); err != nil {
		panic(err)
	}
	for _, f := range frames {
		p.FireChannelRead(buffer.Copy(f))
	}
	call.mu.Lock()
	done, err = call.done, call.err
	call.mu.Unlock()
	p.FireChannelInactive()
	for {
		b, terr := call.take(context.Background(), time.Second)
		if terr != nil {
			if terr != io.EOF && err == nil {
				err = terr
			}
			break
		}
		data = append(data, b.Bytes()...)
		b.Release()
	}
	return data, done, err, tr.closed
}
