package datastream

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/pipestream/pipestream/buffer"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
)

// WriteFile sends count bytes of the regular file f from position pos, in
// packets of the client's packet size with opts on the last one, and
// returns the future of the last packet. Packets are not copied through the
// client: on the net.Conn transport over plain TCP on Linux, without
// failover (WithFailover, which must keep each packet's bytes until its
// reply), the kernel sends them from the page cache with sendfile(2);
// elsewhere each is read straight into the pooled buffer that goes to the
// socket (gnet copies whatever it sends into its own buffers, so it cannot
// do better).
//
// WriteFile returns once every packet is queued and the transport is done
// with f, so f may be closed or changed then; it does not read f's position
// or move it. With sendfile that means the bytes were handed to the
// kernel, which a peer that stops reading delays until the reply timeout
// closes the connection. If WriteFile fails after some of the region was sent, the
// stream fails with it, since its offset no longer says what the caller
// meant to send; if it fails before, the stream carries on.
func (o *Output) WriteFile(ctx context.Context, f *os.File, pos, count int64, opts ...WriteOption) *Future[*Reply] {
	if pos < 0 || count < 0 {
		return failedFuture[*Reply](fmt.Errorf("datastream: WriteFile at %d for %d bytes", pos, count))
	}
	fi, err := f.Stat()
	if err != nil {
		return failedFuture[*Reply](fmt.Errorf("datastream: WriteFile: %w", err))
	}
	if !fi.Mode().IsRegular() || pos+count > fi.Size() {
		return failedFuture[*Reply](fmt.Errorf("datastream: WriteFile: %s (%d bytes, %v) has no bytes [%d, %d)", f.Name(), fi.Size(), fi.Mode().Type(), pos, pos+count))
	}
	if count == 0 {
		return o.WriteAsync(ctx, nil, opts...)
	}
	// The transport releases each region once it has sent it, or dropped
	// it on a failure. Only the last packet's future is returned, so the
	// others go without one (a failure of theirs fails the stream, and so
	// the last packet).
	var sending sync.WaitGroup
	defer sending.Wait()
	var last *Future[*Reply]
	// With failover a packet's bytes must outlive the write, to be sent
	// again on another primary: they go in pooled buffers.
	o.mu.Lock()
	sendfile := o.cn.sendfile && !o.retain
	o.mu.Unlock()
	for off := int64(0); off < count; {
		n := min(int64(o.c.opts.packetSize), count-off)
		var bits uint32
		if off+n == count {
			bits = optionBits(opts)
		}
		if sendfile {
			sending.Add(1)
			r := &transport.FileRegion{File: f, Offset: pos + off, Count: n, OnRelease: sending.Done}
			last = o.send(ctx, pb.DataStreamPacketHeader_STREAM_DATA, nil, r, n, bits, false, off+n < count)
		} else {
			b := buffer.Get(int(n))
			if _, err := f.ReadAt(b.Bytes(), pos+off); err != nil {
				b.Release()
				last = failedFuture[*Reply](fmt.Errorf("datastream: read %s at %d: %w", f.Name(), pos+off, err))
			} else {
				last = o.send(ctx, pb.DataStreamPacketHeader_STREAM_DATA, nil, b, n, bits, false, off+n < count)
			}
		}
		if err := last.failedNow(); err != nil {
			if off > 0 {
				o.fail(fmt.Errorf("datastream: WriteFile stopped after %d of %d bytes: %w", off, count, err), true)
			}
			return last
		}
		off += n
	}
	return last
}
