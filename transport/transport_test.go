package transport_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

// forEachKind runs f as a subtest for every transport.
func forEachKind(t *testing.T, f func(t *testing.T, k transport.Kind)) {
	for _, k := range kinds {
		t.Run(k.String(), func(t *testing.T) { f(t, k) })
	}
}

func TestRoundTrip(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		accepted := make(chan transport.Channel, 1)
		s := listen(t, k, func(ch transport.Channel) {
			echoServer(8)(ch)
			accepted <- ch
		})
		got := make(chan string, 4)
		ch := dial(t, dialerFor(t, k), s.Addr().String(), collect(8, got))

		if err := ch.Write([]byte("hello-01")); err != nil {
			t.Fatal(err)
		}
		if err := ch.Write(buffer.Copy([]byte("hello-02"))); err != nil {
			t.Fatal(err)
		}
		if err := ch.Flush(); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"hello-01", "hello-02"} {
			if m := recv(t, got, "echo"); m != want {
				t.Fatalf("echo = %q, want %q", m, want)
			}
		}

		sch := recv(t, accepted, "accepted channel")
		if ch.RemoteAddr().String() != s.Addr().String() {
			t.Errorf("client RemoteAddr = %v, server Addr = %v", ch.RemoteAddr(), s.Addr())
		}
		if ch.LocalAddr().String() != sch.RemoteAddr().String() {
			t.Errorf("client LocalAddr = %v, server sees %v", ch.LocalAddr(), sch.RemoteAddr())
		}
		if ch.ID() == sch.ID() {
			t.Errorf("client and server channel share ID %d", ch.ID())
		}

		if err := ch.Close(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ch.Done(), "client Done")
		waitFor(t, sch.Done(), "server channel Done after the client closed")
		if names := ch.Pipeline().Names(); len(names) != 0 {
			t.Errorf("handlers left after inactive: %v", names)
		}
	})
}

// A []byte is copied by Write: changing it afterwards changes nothing.
func TestWriteCopiesBytes(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		s := listen(t, k, echoServer(4))
		got := make(chan string, 1)
		ch := dial(t, dialerFor(t, k), s.Addr().String(), collect(4, got))
		p := []byte("abcd")
		if err := ch.Write(p); err != nil {
			t.Fatal(err)
		}
		copy(p, "XXXX")
		if err := ch.Flush(); err != nil {
			t.Fatal(err)
		}
		if m := recv(t, got, "echo"); m != "abcd" {
			t.Fatalf("echo = %q, want %q", m, "abcd")
		}
	})
}

// Writers on many goroutines share a channel; each one's messages arrive
// complete and in its order.
func TestWriteFromManyGoroutines(t *testing.T) {
	const writers, perWriter, size = 8, 300, 8
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		s := listen(t, k, echoServer(size))
		got := make(chan string, writers*perWriter)
		ch := dial(t, dialerFor(t, k), s.Addr().String(), collect(size, got))

		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := range perWriter {
					b := buffer.Get(size)
					binary.BigEndian.PutUint32(b.Bytes(), uint32(w))
					binary.BigEndian.PutUint32(b.Bytes()[4:], uint32(i))
					if err := ch.Write(b); err != nil {
						t.Error(err)
						return
					}
					if i%7 == 0 || i == perWriter-1 {
						if err := ch.Flush(); err != nil {
							t.Error(err)
							return
						}
					}
				}
			})
		}
		wg.Wait()

		next := make([]uint32, writers)
		for range writers * perWriter {
			m := []byte(recv(t, got, "echo"))
			w, i := binary.BigEndian.Uint32(m), binary.BigEndian.Uint32(m[4:])
			if w >= writers || i != next[w] {
				t.Fatalf("writer %d: got message %d, want %d", w, i, next[min(w, writers-1)])
			}
			next[w]++
		}
	})
}

func TestWriteAfterClose(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		s := listen(t, k, echoServer(8))
		ch := dial(t, dialerFor(t, k), s.Addr().String(), nil)
		if err := ch.Close(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ch.Done(), "Done")

		b := buffer.Get(8)
		if err := ch.Write(b); !errors.Is(err, transport.ErrClosed) || !errors.Is(err, net.ErrClosed) {
			t.Errorf("Write(*Buf) after Close = %v, want ErrClosed matching net.ErrClosed", err)
		}
		if b.Refs() != 0 {
			t.Errorf("buffer has %d references after a failed Write, want 0", b.Refs())
		}
		if err := ch.Write([]byte("x")); !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Write([]byte) after Close = %v, want ErrClosed", err)
		}
		if err := ch.Flush(); !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Flush after Close = %v, want ErrClosed", err)
		}
		if err := ch.Close(); err != nil {
			t.Errorf("second Close = %v, want nil", err)
		}
	})
}

// Buffers written but never flushed are released when the connection ends.
func TestUnflushedWritesReleasedOnClose(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		accepted := make(chan transport.Channel, 1)
		s := listen(t, k, func(ch transport.Channel) { accepted <- ch })
		ch := dial(t, dialerFor(t, k), s.Addr().String(), nil)
		sch := recv(t, accepted, "accepted channel")
		for range 10 {
			if err := sch.Write(buffer.Get(1024)); err != nil {
				t.Fatal(err)
			}
		}
		_ = ch.Close() // the peer goes away; the server side is torn down
		waitFor(t, sch.Done(), "server channel Done")
	})
}

func TestWriteUnsupportedType(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		s := listen(t, k, nil)
		ch := dial(t, dialerFor(t, k), s.Addr().String(), nil)
		err := ch.Write(42)
		if err == nil || errors.Is(err, transport.ErrClosed) {
			t.Fatalf("Write(42) = %v, want a type error", err)
		}
	})
}

func TestOutboundFull(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		s := listen(t, k, nil)
		ch := dial(t, dialerFor(t, k, transport.WithMaxOutbound(16)), s.Addr().String(), nil)
		for range 2 {
			if err := ch.Write(buffer.Get(8)); err != nil {
				t.Fatal(err)
			}
		}
		if err := ch.Write(buffer.Get(1)); !errors.Is(err, transport.ErrOutboundFull) {
			t.Fatalf("Write past the bound = %v, want ErrOutboundFull", err)
		}
		if err := ch.Write(buffer.Get(32)); !errors.Is(err, transport.ErrOutboundFull) {
			t.Fatalf("Write larger than the bound = %v, want ErrOutboundFull", err)
		}
	})
}

// lifecycle counts a pipeline's active and inactive events.
type lifecycle struct {
	active, inactive atomic.Int32
}

func (l *lifecycle) handler() pipeline.Handler {
	return struct {
		pipeline.ActiveFunc
		pipeline.InactiveFunc
	}{
		func(ctx *pipeline.Context) { l.active.Add(1); ctx.FireChannelActive() },
		func(ctx *pipeline.Context) { l.inactive.Add(1); ctx.FireChannelInactive() },
	}
}

// A server that writes a greeting and closes at once: the client gets the
// greeting, then sees the connection end; each side fires active and
// inactive exactly once.
func TestServerCloses(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		var server, client lifecycle
		s := listen(t, k, func(ch transport.Channel) {
			_ = ch.Pipeline().AddLast("count", server.handler())
			_ = ch.Pipeline().AddLast("greet", pipeline.ActiveFunc(func(ctx *pipeline.Context) {
				_ = ctx.Write([]byte("welcome!"))
				_ = ctx.Flush()
				_ = ctx.Close()
			}))
		})
		got := make(chan string, 1)
		ch := dial(t, dialerFor(t, k), s.Addr().String(), func(ch transport.Channel) {
			_ = ch.Pipeline().AddLast("count", client.handler())
			collect(8, got)(ch)
		})
		if m := recv(t, got, "greeting"); m != "welcome!" {
			t.Errorf("greeting = %q", m)
		}
		waitFor(t, ch.Done(), "client Done after the server closed")
		if a, i := client.active.Load(), client.inactive.Load(); a != 1 || i != 1 {
			t.Errorf("client: %d active, %d inactive; want 1 and 1", a, i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if a, i := server.active.Load(), server.inactive.Load(); a != 1 || i != 1 {
			t.Errorf("server: %d active, %d inactive; want 1 and 1", a, i)
		}
	})
}

func TestShutdownClosesChannels(t *testing.T) {
	const clients = 5
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		accepted := make(chan transport.Channel, clients)
		s, err := k.Listen(context.Background(), "127.0.0.1:0", func(ch transport.Channel) {
			echoServer(8)(ch)
			accepted <- ch
		}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		d := dialerFor(t, k)
		var cs []transport.Channel
		for range clients {
			cs = append(cs, dial(t, d, s.Addr().String(), nil))
		}
		var ss []transport.Channel
		for range clients {
			ss = append(ss, recv(t, accepted, "accepted channel"))
		}
		// Leave something queued on a server channel: Shutdown releases it.
		_ = ss[0].Write(buffer.Get(64))

		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		for i, ch := range ss {
			select {
			case <-ch.Done():
			default:
				t.Errorf("server channel %d not done when Shutdown returned", i)
			}
		}
		for _, ch := range cs {
			waitFor(t, ch.Done(), "client Done after server shutdown")
		}
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("second Shutdown: %v", err)
		}
		if _, err := d(ctx, s.Addr().String(), nil); err == nil {
			t.Error("Dial after Shutdown succeeded")
		}
	})
}

func TestInitializerPanics(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		s := listen(t, k, func(transport.Channel) { panic("server init") })
		ch := dial(t, dialerFor(t, k), s.Addr().String(), nil)
		waitFor(t, ch.Done(), "client Done after the server's initializer panicked")

		s2 := listen(t, k, nil)
		ch2 := dial(t, dialerFor(t, k), s2.Addr().String(), func(transport.Channel) { panic("client init") })
		waitFor(t, ch2.Done(), "Done after the client's initializer panicked")
	})
}

func TestDialErrors(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closedAddr := ln.Addr().String()
		_ = ln.Close()

		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if _, err := k.Dial(ctx, closedAddr, nil, quiet); err == nil {
			t.Error("Dial to a closed port succeeded")
		}
		if _, err := k.Dial(ctx, "udp://"+closedAddr, nil, quiet); err == nil {
			t.Error("Dial udp:// succeeded")
		}
		canceled, cancel2 := context.WithCancel(context.Background())
		cancel2()
		if _, err := k.Dial(canceled, closedAddr, nil, quiet); err == nil {
			t.Error("Dial with a canceled context succeeded")
		}
	})
}

func TestListenErrors(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		s := listen(t, k, nil)
		if s2, err := k.Listen(context.Background(), s.Addr().String(), nil, quiet); err == nil {
			_ = s2.Shutdown(context.Background())
			t.Error("Listen on a port in use succeeded")
		}
		if _, err := k.Listen(context.Background(), "udp://127.0.0.1:0", nil, quiet); err == nil {
			t.Error("Listen udp:// succeeded")
		}
		canceled, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := k.Listen(canceled, "127.0.0.1:0", nil, quiet); err == nil {
			t.Error("Listen with a canceled context succeeded")
		}
	})
}

// One flush of more buffers than one writev takes, then of more bytes than
// one turn of the event loop sends: everything arrives, in order.
func TestLargeBatches(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		s := listen(t, k, func(ch transport.Channel) {
			addFraming(t, ch.Pipeline())
			_ = ch.Pipeline().AddLast("echo", echo{})
		})
		got := make(chan *buffer.Buf, 4096)
		ch := dial(t, dialerFor(t, k), s.Addr().String(), func(ch transport.Channel) {
			addFraming(t, ch.Pipeline())
			_ = ch.Pipeline().AddLast("collect", pipeline.Inbound(func(_ *pipeline.Context, b *buffer.Buf) { got <- b }))
		})
		var sizes []int
		for range 3000 {
			sizes = append(sizes, 8)
		}
		for range 10 {
			sizes = append(sizes, 1<<20)
		}
		for round, n := range []int{3000, 10} {
			batch := sizes[:n]
			sizes = sizes[n:]
			for i, size := range batch {
				b := buffer.Get(size)
				for j := range b.Bytes() {
					b.Bytes()[j] = byte(round + i + j)
				}
				if err := ch.Pipeline().Write(b); err != nil {
					t.Fatal(err)
				}
			}
			if err := ch.Pipeline().Flush(); err != nil {
				t.Fatal(err)
			}
			for i, size := range batch {
				b := recv(t, got, "echo")
				ok := b.Len() == size
				for j := 0; ok && j < size; j++ {
					ok = b.Bytes()[j] == byte(round+i+j)
				}
				b.Release()
				if !ok {
					t.Fatalf("round %d: echo %d is not what was sent", round, i)
				}
			}
		}
	})
}

// TestRelistenAfterShutdown: a server can bind the port of one that just
// shut down while that one's connections are still in TIME_WAIT.
func TestRelistenAfterShutdown(t *testing.T) {
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		t.Run(kind.String(), func(t *testing.T) {
			ctx := context.Background()
			accepted := make(chan struct{}, 1)
			srv, err := kind.Listen(ctx, "127.0.0.1:0", func(transport.Channel) { accepted <- struct{}{} })
			if err != nil {
				t.Fatal(err)
			}
			addr := srv.Addr().String()
			ch, err := kind.Dial(ctx, addr, func(transport.Channel) {})
			if err != nil {
				t.Fatal(err)
			}
			// The server closes first, so its side of the connection is
			// the one left in TIME_WAIT. It must own the connection by
			// then: gnet 2.9.7 leaks a socket it accepts while its loops
			// stop (the task that would register it never runs), and
			// that connection would never end.
			waitFor(t, accepted, "the server to accept")
			if err := srv.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			waitFor(t, ch.Done(), "the client's channel to end")
			again, err := kind.Listen(ctx, addr, func(transport.Channel) {})
			if err != nil {
				t.Fatalf("listen on %s again: %v", addr, err)
			}
			if err := again.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}
