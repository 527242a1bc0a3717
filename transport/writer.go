package transport

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/pipestream/pipestream/buffer"
)

// closeLinger bounds how long Close waits for a slow peer to take what was
// written before it.
const closeLinger = time.Second

// tlsWriteSize is the most a connection without writev gathers into one
// write: four TLS records of the largest size.
const tlsWriteSize = 64 << 10

// maxBatchBytes bounds what the writer takes from the queue at once.
const maxBatchBytes = 4 << 20

// writer sends a connection's outbound queue from a goroutine of its own,
// one writev per batch, so that no caller ever blocks on the socket and no
// byte is copied on its way out. Both transports use it: the net.Conn
// transport on its connection, the gnet transport on a duplicate of the
// socket that gnet reads (see gnetChannel for why).
//
// The goroutine runs while there is something to send: Flush starts it,
// and it returns once the queue is empty. An idle connection holds none,
// which on the gnet transport, whose reads run on the event loops, leaves
// an idle connection with no goroutine at all. Starting one costs about
// what waking a parked one does.
//
// A batch is written in full before the next is taken; when the socket is
// full the goroutine parks in the runtime's poller and the queued buffers
// wait where they are, so the memory a slow peer costs is what the
// WithMaxOutbound bound lets callers queue.
type writer struct {
	conn net.Conn
	opts *options
	// teardown ends the connection, from the writer goroutine, after a
	// write failed or Close's bytes are out; the transport then calls
	// end.
	teardown func()

	wg sync.WaitGroup // the goroutine, while it runs
	// run is w.loop bound once: a method value made at each go statement
	// would be a heap allocation per burst of writes.
	run func()

	// Owned by the goroutine.
	batch []outbound
	iov   net.Buffers
	// bw gathers a batch into one write for connections without writev,
	// such as TLS, where each Write would be a record of its own.
	bw *bufio.Writer
	// tcp is set on plain TCP connections, which send file regions with
	// sendfile(2).
	tcp *net.TCPConn

	mu      sync.Mutex
	q       []outbound
	pending int  // bytes in q and in the goroutine's batch
	running bool // the goroutine runs; only it clears this
	closing bool // Close was called, or a write failed
	closed  bool // end was called
}

// outbound is a queued message: a buffer, or a file region for sendfile.
type outbound struct {
	buf    *buffer.Buf
	region *FileRegion
}

func (m outbound) len() int {
	if m.region != nil {
		return int(m.region.Count)
	}
	return m.buf.Len()
}

func (m outbound) release() {
	if m.region != nil {
		m.region.Release()
	} else {
		m.buf.Release()
	}
}

// newWriter returns a writer on conn and sets conn's TCP_NODELAY.
func newWriter(conn net.Conn, opts *options, teardown func()) *writer {
	w := &writer{conn: conn, opts: opts, teardown: teardown}
	w.run = w.loop
	switch c := conn.(type) {
	case *net.TCPConn:
		_ = c.SetNoDelay(opts.noDelay)
		if sendfileSupported {
			w.tcp = c
		}
	case *tls.Conn:
		if tc, ok := c.NetConn().(*net.TCPConn); ok {
			_ = tc.SetNoDelay(opts.noDelay)
		}
		w.bw = bufio.NewWriterSize(conn, tlsWriteSize)
	default:
		w.bw = bufio.NewWriterSize(conn, tlsWriteSize)
	}
	return w
}

// write queues msg; see the package doc for ownership. A file region's
// bytes count towards WithMaxOutbound like a buffer's.
func (w *writer) write(msg any) error {
	var m outbound
	if r, ok := msg.(*FileRegion); ok && w.tcp != nil {
		if r.Count < 0 || r.Offset < 0 {
			r.Release()
			return fmt.Errorf("transport: file region of %d bytes at %d is out of range", r.Count, r.Offset)
		}
		m.region = r
	} else {
		b, err := toBuf(msg)
		if err != nil {
			return err
		}
		m.buf = b
	}
	n := m.len()
	w.mu.Lock()
	if w.closed || w.closing {
		w.mu.Unlock()
		m.release()
		return ErrClosed
	}
	if w.pending+n > w.opts.maxOutbound {
		w.mu.Unlock()
		m.release()
		return ErrOutboundFull
	}
	w.q = append(w.q, m)
	w.pending += n
	w.mu.Unlock()
	return nil
}

// flush starts the goroutine, unless it runs already or nothing is
// queued.
func (w *writer) flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.closing {
		return ErrClosed
	}
	if len(w.q) > 0 {
		w.startLocked()
	}
	return nil
}

// startLocked starts the goroutine unless it runs. w.mu is held.
func (w *writer) startLocked() {
	if w.running || w.closed {
		return
	}
	w.running = true
	w.wg.Add(1)
	go w.run()
}

// close makes the goroutine send what was written before it, giving a slow
// peer up to closeLinger to take it, and then call teardown.
func (w *writer) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.closing {
		return
	}
	w.closing = true
	_ = w.conn.SetWriteDeadline(time.Now().Add(closeLinger))
	w.startLocked()
}

// end stops the writer once the connection has ended: it closes conn,
// which makes a write stuck on a slow peer return at once (on gnet, the
// socket ends with this duplicate), waits for the goroutine, and releases
// what was still queued. The transport calls it once, before
// ChannelInactive.
func (w *writer) end() {
	w.mu.Lock()
	w.closed = true
	q := w.q
	w.q, w.pending = nil, 0
	w.mu.Unlock()
	_ = w.conn.Close()
	w.wg.Wait()
	for _, m := range q {
		m.release()
	}
}

// loop sends batches until the queue is empty, and returns. It tears the
// connection down once Close's bytes are out, or a write failed.
func (w *writer) loop() {
	defer w.wg.Done()
	for {
		w.mu.Lock()
		if w.closed {
			w.running = false
			w.mu.Unlock()
			return
		}
		if len(w.q) == 0 {
			w.running = false
			closing := w.closing
			w.mu.Unlock()
			if closing {
				w.teardown()
			}
			return
		}
		// A bounded batch: pending counts a batch until its last byte is
		// written, and a peer answering the batch's first packets
		// meanwhile lets the sender queue more, so an unbounded batch let
		// pending overshoot the bytes really outstanding.
		k, size := 0, 0
		for k < len(w.q) && (k == 0 || size+w.q[k].len() <= maxBatchBytes) {
			size += w.q[k].len()
			k++
		}
		w.batch = append(w.batch[:0], w.q[:k]...)
		rest := copy(w.q, w.q[k:])
		clear(w.q[rest:])
		w.q = w.q[:rest]
		w.mu.Unlock()

		err := w.send()
		for _, m := range w.batch {
			m.release()
		}
		clear(w.batch)
		w.batch = w.batch[:0]
		w.mu.Lock()
		w.pending -= size
		if err != nil {
			// Nothing more goes out on this connection: later writes
			// fail rather than queue for nobody.
			w.closing, w.running = true, false
		}
		w.mu.Unlock()
		if err != nil {
			w.teardown()
			return
		}
	}
}

// send writes the batch: buffers gathered into writevs, file regions with
// sendfile in their place between them.
func (w *writer) send() error {
	for _, m := range w.batch {
		if m.region == nil {
			if m.buf.Len() > 0 {
				w.iov = append(w.iov, m.buf.Bytes())
			}
			continue
		}
		// The buffers before a region go first.
		if err := w.writeIov(); err != nil {
			return err
		}
		if err := sendRegion(w.tcp, m.region); err != nil {
			return err
		}
	}
	return w.writeIov()
}

// writeIov sends w.iov and empties it.
func (w *writer) writeIov() error {
	iov := w.iov
	if len(iov) == 0 {
		return nil
	}
	defer func() {
		clear(iov)
		w.iov = iov[:0]
	}()
	if w.bw == nil {
		_, err := w.iov.WriteTo(w.conn) // consumes w.iov
		return err
	}
	for _, p := range iov {
		if _, err := w.bw.Write(p); err != nil {
			return err
		}
	}
	return w.bw.Flush()
}
