package bench_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// relayBuffer is each hop's user-space copy buffer: the size of a packet,
// as the gnet transport's read buffer is.
const relayBuffer = 1 << 20

// benchRelay moves b.N packets' worth of bytes from a client through two
// relaying hops to a counting sink, the cheapest data path a three-peer
// chain could have: no framing, no replies until the end, no state
// machine.
func benchRelay(b *testing.B) { runRelay(b, false) }

// benchRelayFile is benchRelay with every peer of the chain, the two
// hops and the sink, also writing each byte it reads to a file of its own
// and fsyncing it at the end of the stream before passing the end on: what
// a FileStore chain does with its bytes (a write per peer, an fsync per
// peer on close), without framing, hashing or replies. It is the baseline
// of BenchmarkChain/stream-file.
func benchRelayFile(b *testing.B) { runRelay(b, true) }

func runRelay(b *testing.B, files bool) {
	r := startRelay(b, files)
	defer r.wait()
	b.SetBytes(packetSize)
	b.ReportAllocs()
	m := startMallocs(b)
	err := r.send(b.N)
	m.stop(b)
	if err != nil {
		b.Fatal(err)
	}
}

// relayTime runs n packets through a fresh relay chain, untimed by b, and
// returns how long they took; with files, through the chain of
// benchRelayFile.
func relayTime(b *testing.B, n int, files bool) time.Duration {
	r := startRelay(b, files)
	defer r.wait()
	start := time.Now()
	if err := r.send(n); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// relayChain is a client connection to the first of three hops, all
// connected and ready to carry bytes.
type relayChain struct {
	c  *net.TCPConn
	wg sync.WaitGroup
}

func startRelay(b *testing.B, files bool) *relayChain {
	r := &relayChain{}
	store := func() string {
		if files {
			return b.TempDir()
		}
		return ""
	}
	var ready []chan struct{}
	addr, rd := startSink(b, &r.wg, store())
	ready = append(ready, rd)
	for range chainLen - 1 {
		addr, rd = startHop(b, &r.wg, addr, store())
		ready = append(ready, rd)
	}
	c, err := net.DialTimeout("tcp", addr, patience)
	if err != nil {
		b.Fatal(err)
	}
	r.c = c.(*net.TCPConn)
	_ = r.c.SetDeadline(time.Now().Add(patience + time.Duration(b.N)*100*time.Millisecond))
	for _, rd := range ready {
		select {
		case <-rd:
		case <-time.After(patience):
			_ = r.c.Close()
			b.Fatal("relay chain did not connect")
		}
	}
	return r
}

// send writes n packets, ends the stream and waits for the sink's count.
func (r *relayChain) send(n int) error {
	payload := make([]byte, packetSize)
	for i := range payload {
		payload[i] = byte(i)
	}
	for range n {
		if _, err := r.c.Write(payload); err != nil {
			return err
		}
	}
	if err := r.c.CloseWrite(); err != nil {
		return err
	}
	var ack [8]byte
	if _, err := io.ReadFull(r.c, ack[:]); err != nil {
		return err
	}
	if got, want := binary.BigEndian.Uint64(ack[:]), uint64(n)*packetSize; got != want {
		return fmt.Errorf("sink counted %d bytes, want %d", got, want)
	}
	return nil
}

// wait closes the client's connection and waits for the hops to end.
func (r *relayChain) wait() {
	_ = r.c.Close()
	r.wg.Wait()
}

// serveOne accepts one connection on a new loopback listener and runs
// serve on it, then closes it. serve gets the connection it accepted, up,
// and with next a connection it dialed there, down, else nil: the end of a
// chain or a hop. Both have the deadline every part of a chain gets.
// ready is closed once they are up.
func serveOne(b *testing.B, wg *sync.WaitGroup, next string, serve func(up, down net.Conn)) (addr string, ready chan struct{}) {
	ln := listenLoopback(b)
	ready = make(chan struct{})
	wg.Go(func() {
		defer ln.Close()
		up, err := ln.Accept()
		if err != nil {
			b.Error(err)
			return
		}
		defer up.Close()
		deadline := time.Now().Add(patience + time.Duration(b.N)*100*time.Millisecond)
		_ = up.SetDeadline(deadline)
		var down net.Conn
		if next != "" {
			if down, err = net.DialTimeout("tcp", next, patience); err != nil {
				b.Error(err)
				return
			}
			defer down.Close()
			_ = down.SetDeadline(deadline)
		}
		close(ready)
		serve(up, down)
	})
	return ln.Addr().String(), ready
}

// startSink accepts one connection, counts and discards what it reads
// until EOF, and answers with the count as a big-endian uint64. With a
// store directory it also writes what it reads to a file there, and
// fsyncs it before it answers.
func startSink(b *testing.B, wg *sync.WaitGroup, store string) (addr string, ready chan struct{}) {
	return serveOne(b, wg, "", func(c, _ net.Conn) {
		buf := make([]byte, relayBuffer)
		f := createStore(b, store)
		var total uint64
		for {
			n, err := c.Read(buf)
			total += uint64(n)
			if f != nil && n > 0 {
				if _, werr := f.Write(buf[:n]); werr != nil {
					b.Error(werr)
					return
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
		if err := syncStore(f); err != nil {
			b.Error(err)
			return
		}
		binary.BigEndian.PutUint64(buf, total)
		if _, err := c.Write(buf[:8]); err != nil {
			b.Error(err)
		}
	})
}

// startHop accepts one connection and relays it to next in both
// directions through user-space buffers. ready is closed once both
// connections are up. With a store directory the hop also writes what it
// forwards to a file there, and fsyncs it before it passes the end of the
// stream on.
func startHop(b *testing.B, wg *sync.WaitGroup, next, store string) (addr string, ready chan struct{}) {
	return serveOne(b, wg, next, func(up, down net.Conn) {
		f := createStore(b, store)
		var forward sync.WaitGroup
		forward.Go(func() {
			var dst io.Writer = down
			if f != nil {
				// The file first, as a peer writes before it forwards.
				dst = io.MultiWriter(f, down)
			}
			if err := relay(dst, up); err != nil {
				b.Error(err)
			}
			if err := syncStore(f); err != nil {
				b.Error(err)
			}
			_ = down.(*net.TCPConn).CloseWrite()
		})
		if err := relay(up, down); err != nil { // the sink's count
			b.Error(err)
		}
		forward.Wait()
	})
}

// relay copies src to dst until EOF through a buffer of its own. The
// wrappers hide ReadFrom and WriteTo, which for TCP would splice in the
// kernel and skip the user-space copy being measured.
func relay(dst io.Writer, src io.Reader) error {
	buf := make([]byte, relayBuffer)
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}

func listenLoopback(b *testing.B) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ln.Close() })
	return ln
}

// createStore creates a file in dir for a relay's peer to write to, or
// returns nil for an empty dir. The file is closed when b ends.
func createStore(b *testing.B, dir string) *os.File {
	if dir == "" {
		return nil
	}
	f, err := os.CreateTemp(dir, "relay-")
	if err != nil {
		b.Error(err)
		return nil
	}
	b.Cleanup(func() { _ = f.Close() })
	return f
}

// syncStore fsyncs f, if there is one.
func syncStore(f *os.File) error {
	if f == nil {
		return nil
	}
	return f.Sync()
}
