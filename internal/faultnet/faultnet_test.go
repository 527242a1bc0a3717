package faultnet_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/faultnet"
	"github.com/pipestream/pipestream/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

// sink accepts connections and hands each one's bytes, read to EOF, to got.
type sink struct {
	ln  net.Listener
	got chan []byte
}

func newSink(t *testing.T) *sink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{ln: ln, got: make(chan []byte, 16)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
				b, _ := io.ReadAll(c)
				s.got <- b
			}()
		}
	}()
	// The proxies, cleaned up first, close the connections to the sink.
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	return s
}

func (s *sink) next(t *testing.T) []byte {
	t.Helper()
	select {
	case b := <-s.got:
		return b
	case <-time.After(20 * time.Second):
		t.Fatal("the target saw no connection end")
		return nil
	}
}

func listen(t *testing.T, target string) *faultnet.Proxy {
	t.Helper()
	p, err := faultnet.Listen(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func dial(t *testing.T, p *faultnet.Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitOpen waits until the proxy holds n connections: Accept and the dial
// to the target happen on the proxy's goroutine, after the client's dial
// returned.
func waitOpen(t *testing.T, p *faultnet.Proxy, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.Open() != n {
		if time.Now().After(deadline) {
			t.Fatalf("proxy holds %d connections, want %d", p.Open(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// openThrough returns a sink, a proxy to it and a connection through the
// proxy, once the proxy holds it.
func openThrough(t *testing.T) (*sink, *faultnet.Proxy, net.Conn) {
	t.Helper()
	s := newSink(t)
	p := listen(t, s.ln.Addr().String())
	c := dial(t, p)
	waitOpen(t, p, 1)
	return s, p, c
}

// wantClosed fails the test unless a read from c finds the connection
// closed; what names c in the failure.
func wantClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s read %v, want the connection closed", what, err)
	}
}

func TestForward(t *testing.T) {
	s := newSink(t)
	p := listen(t, s.ln.Addr().String())
	c := dial(t, p)
	msg := bytes.Repeat([]byte("forward "), 100<<10)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	if got := s.next(t); !bytes.Equal(got, msg) {
		t.Fatalf("target got %d bytes, want the %d sent", len(got), len(msg))
	}
	if st := p.Stats(); st.Accepted != 1 || st.ToTarget != int64(len(msg)) {
		t.Fatalf("stats %+v", st)
	}
}

func TestDropAfter(t *testing.T) {
	for _, n := range []int64{0, 1, 1000, 100 << 10} {
		s, p, c := openThrough(t)
		p.DropAfter(n)
		msg := bytes.Repeat([]byte{0xab}, 256<<10)
		_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write(msg) // fails once the proxy closes its side
		if got := s.next(t); int64(len(got)) != n {
			t.Fatalf("DropAfter(%d): target got %d bytes", n, len(got))
		}
		// The dialing side sees its connection closed too.
		wantClosed(t, c, fmt.Sprintf("DropAfter(%d): dialing side", n))
		if st := p.Stats(); st.Dropped != 1 || st.ToTarget != n {
			t.Fatalf("DropAfter(%d): stats %+v", n, st)
		}
		// A new connection is not armed.
		c2 := dial(t, p)
		if _, err := c2.Write([]byte("next")); err != nil {
			t.Fatal(err)
		}
		_ = c2.Close()
		if got := s.next(t); string(got) != "next" {
			t.Fatalf("DropAfter(%d): next connection forwarded %q", n, got)
		}
	}
}

func TestPauseResume(t *testing.T) {
	s, p, c := openThrough(t)
	p.Pause()
	// Far more than the socket buffers on both sides of the proxy hold: a
	// write of it cannot finish while nothing is read. The deadline only
	// ends the attempt.
	msg := bytes.Repeat([]byte{7}, 64<<20)
	_ = c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := c.Write(msg)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n == len(msg) {
		t.Fatalf("write through a paused proxy: %d bytes, %v; want it stalled", n, err)
	}
	if st := p.Stats(); st.ToTarget != 0 {
		t.Fatalf("a paused proxy forwarded %d bytes", st.ToTarget)
	}
	p.Resume()
	_ = c.Close()
	if got := s.next(t); len(got) != n {
		t.Fatalf("after Resume the target got %d bytes, want the %d written", len(got), n)
	}
}

func TestCut(t *testing.T) {
	s := newSink(t)
	p := listen(t, s.ln.Addr().String())
	c := dial(t, p)
	if _, err := c.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	waitOpen(t, p, 1)
	p.Pause() // so that a Cut of a paused link ends its goroutines too
	p.Cut()
	if got := s.next(t); len(got) > len("before") {
		t.Fatalf("target got %q", got)
	}
	wantClosed(t, c, "dialing side")
	if st := p.Stats(); st.Cut != 1 || p.Open() != 0 {
		t.Fatalf("stats %+v, %d open", st, p.Open())
	}
}

func TestTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := listen(t, addr)
	c := dial(t, p)
	wantClosed(t, c, "a connection through a proxy whose target is down")
}

func TestCorruptAt(t *testing.T) {
	for _, n := range []int64{0, 1, 32<<10 - 1, 32 << 10, 100<<10 + 3} {
		s, p, c := openThrough(t)
		p.CorruptAt(n)
		msg := bytes.Repeat([]byte{0x5a}, 256<<10)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		got := s.next(t)
		if len(got) != len(msg) {
			t.Fatalf("CorruptAt(%d): target got %d bytes, want %d", n, len(got), len(msg))
		}
		for i := range got {
			if want := msg[i] ^ map[bool]byte{true: 0xff}[int64(i) == n]; got[i] != want {
				t.Fatalf("CorruptAt(%d): byte %d is %#x, want %#x", n, i, got[i], want)
			}
		}
	}
}
