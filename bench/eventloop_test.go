//go:build linux

package bench_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkAloneEventLoops is the raw 3-hop ping-pong of BenchmarkAlone
// with every hop and the end served the way gnet's event loops serve
// their connections: a goroutine that waits in epoll_wait, holding its
// thread while it blocks, on sockets that the runtime's poller does not
// know, reading and writing them inline. No gnet and no pipestream code
// runs: it models what such loops cost by themselves, one thread wake-up
// per hop, where the runtime's poller lets one thread carry a message
// through every hop of a process (see docs/performance.md, "Latency").
// BenchmarkLatency runs it in a fresh process of this test binary after
// BenchmarkAlone's, and reports loop-p50-µs and loop-p99-µs.
//
// It is skipped unless PIPESTREAM_BENCH_ALONE=1.
func BenchmarkAloneEventLoops(b *testing.B) {
	if os.Getenv(aloneEnv) != "1" {
		b.Skip("runs only as BenchmarkLatency's child process, with " + aloneEnv + "=1")
	}
	p := startLoopPingPong(b)
	defer p.close()
	msg := latencyMessage()
	if err := p.roundTrip(msg); err != nil {
		b.Fatal(err)
	}
	rounds := make([]time.Duration, 0, b.N)
	b.SetBytes(latencyPacket)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := p.roundTrip(msg); err != nil {
			b.Fatal(err)
		}
		rounds = append(rounds, time.Since(start))
	}
	b.StopTimer()
	p50, p99 := percentiles(rounds)
	b.ReportMetric(micros(p50), "loop-p50-µs")
	b.ReportMetric(micros(p99), "loop-p99-µs")
}

// startLoopPingPong is startPingPong with hops and an end that serve
// their connections from event loops (serveLoop). The client is a plain
// net.Conn, as in the ping-pong.
func startLoopPingPong(b *testing.B) *pingPong {
	return chainPingPong(b,
		func(b *testing.B, wg *sync.WaitGroup) (string, chan struct{}) {
			return serveOne(b, wg, "", func(up, _ net.Conn) { serveLoop(b, up, nil) })
		},
		func(b *testing.B, wg *sync.WaitGroup, next string) (string, chan struct{}) {
			return serveOne(b, wg, next, func(up, down net.Conn) { serveLoop(b, up, down) })
		})
}

// serveLoop takes up and down (nil for the end) away from the runtime's
// poller and serves them until both reach EOF: a hop relays each
// direction to the other side, the end answers every latencyPacket bytes
// with 8. It waits as gnet's poller does (gnet/v2 pkg/netpoll, Polling):
// after events it polls once more without blocking, and when that finds
// nothing it yields (runtime.Gosched) and then blocks in epoll_wait; like
// pipestream's gnet loops it is not locked to its thread. The blocking
// wait's timeout only bounds a test that went wrong.
func serveLoop(b *testing.B, up, down net.Conn) {
	l, err := newLoop(up, down)
	if err != nil {
		b.Error(err)
		return
	}
	defer l.close()
	if err := l.run(time.Now().Add(patience + time.Duration(b.N)*100*time.Millisecond)); err != nil {
		b.Error(err)
	}
}

// loop is one event loop of serveLoop.
type loop struct {
	ep       int
	fds      []int // up, then down if there is one
	buf      []byte
	answered int // bytes of the end's current message read so far
}

func newLoop(conns ...net.Conn) (*loop, error) {
	l := &loop{ep: -1, buf: make([]byte, relayBuffer)}
	var err error
	if l.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	for _, c := range conns {
		if c == nil {
			continue
		}
		fd, err := detach(c)
		if err != nil {
			l.close()
			return nil, err
		}
		l.fds = append(l.fds, fd)
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			l.close()
			return nil, fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	return l, nil
}

// detach returns a descriptor of c's socket that only the caller uses,
// and closes c, which takes the socket out of the runtime's poller: a
// poller that also watched it would wake a thread of its own on every
// message, which an event loop's socket never does. The descriptor
// shares c's open file, and so its O_NONBLOCK.
func detach(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(s uintptr) { fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, fmt.Errorf("dup: %w", dupErr)
	}
	_ = c.Close()
	return fd, nil
}

func (l *loop) close() {
	for _, fd := range l.fds {
		_ = unix.Close(fd)
	}
	if l.ep >= 0 {
		_ = unix.Close(l.ep)
	}
}

// other returns the descriptor a hop relays fd's bytes to.
func (l *loop) other(fd int) int {
	if fd == l.fds[0] {
		return l.fds[1]
	}
	return l.fds[0]
}

func (l *loop) run(deadline time.Time) error {
	events := make([]unix.EpollEvent, len(l.fds))
	wait := 1000 // ms, blocking: see serveLoop
	for open := len(l.fds); open > 0; {
		n, err := unix.EpollWait(l.ep, events, wait)
		if n <= 0 && (err == nil || errors.Is(err, unix.EINTR)) {
			if wait != 0 && time.Now().After(deadline) {
				return errors.New("event loop: no EOF before the deadline")
			}
			wait = 1000
			runtime.Gosched()
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		wait = 0
		for _, ev := range events[:n] {
			eof, err := l.drain(int(ev.Fd), deadline)
			if err != nil {
				return err
			}
			if eof {
				open--
			}
		}
	}
	return nil
}

// drain reads fd until it would block, passing on what it reads, and
// reports whether it reached EOF, which it passes on too.
func (l *loop) drain(fd int, deadline time.Time) (eof bool, err error) {
	for {
		n, err := unix.Read(fd, l.buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return false, nil
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return false, fmt.Errorf("read: %w", err)
		case n == 0:
			if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
				return true, fmt.Errorf("epoll_ctl: %w", err)
			}
			if len(l.fds) > 1 {
				_ = unix.Shutdown(l.other(fd), unix.SHUT_WR)
			}
			return true, nil
		}
		if len(l.fds) > 1 {
			if err := writeAll(l.other(fd), l.buf[:n], deadline); err != nil {
				return false, err
			}
			continue
		}
		for l.answered += n; l.answered >= latencyPacket; l.answered -= latencyPacket {
			if err := writeAll(fd, l.buf[:8], deadline); err != nil {
				return false, err
			}
		}
	}
}

// writeAll writes p to the non-blocking fd, waiting in poll(2) while the
// socket is full.
func writeAll(fd int, p []byte, deadline time.Time) error {
	for len(p) > 0 {
		n, err := unix.Write(fd, p)
		switch {
		case errors.Is(err, unix.EAGAIN):
			if time.Now().After(deadline) {
				return errors.New("event loop: socket full past the deadline")
			}
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, 1000)
		case errors.Is(err, unix.EINTR):
		case err != nil:
			return fmt.Errorf("write: %w", err)
		default:
			p = p[n:]
		}
	}
	return nil
}
