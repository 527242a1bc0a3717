package datastream

import (
	"context"
	"io"

	"github.com/pipestream/pipestream/buffer"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Writer returns an io.WriteCloser view of the stream, for io.Copy and
// friends. Write sends p in packets of the client's packet size and
// returns once they are queued; wrap the writer in a bufio.Writer of the
// packet size when writes are small, since every Write is at least one
// packet. ReadFrom, which io.Copy uses, reads each packet straight into
// the pooled buffer that is sent. Close closes the stream and waits for
// its commit. The errors of packets in flight surface on a later Write or
// on Close. ctx bounds every wait, as for WriteAsync.
func (o *Output) Writer(ctx context.Context) io.WriteCloser { return &writer{o: o, ctx: ctx} }

type writer struct {
	o   *Output
	ctx context.Context
}

// Write implements io.Writer.
func (w *writer) Write(p []byte) (int, error) {
	if err := w.o.Err(); err != nil {
		return 0, err
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), w.o.c.opts.packetSize)
		if err := w.o.send(w.ctx, pb.DataStreamPacketHeader_STREAM_DATA, p[:n], nil, int64(n), 0, false, true).failedNow(); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// ReadFrom implements io.ReaderFrom: it reads r into pooled packets until
// io.EOF. A packet is sent when it is full or r ends.
func (w *writer) ReadFrom(r io.Reader) (int64, error) {
	if err := w.o.Err(); err != nil {
		return 0, err
	}
	var total int64
	for {
		b := buffer.Get(w.o.c.opts.packetSize)
		n, err := fill(r, b.Bytes())
		if n == 0 {
			b.Release()
		} else {
			b.Truncate(n)
			if werr := w.o.Send(w.ctx, b); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		switch {
		case err == io.EOF:
			return total, nil
		case err != nil:
			return total, err
		}
	}
}

// fill reads from r until p is full or r fails; unlike io.ReadFull it
// leaves r's own errors, io.EOF included, as they are.
func fill(r io.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := r.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Close implements io.Closer: it closes the stream and waits for the
// commit.
func (w *writer) Close() error {
	_, err := w.o.Close(w.ctx).Wait(w.ctx)
	return err
}
