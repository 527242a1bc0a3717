package bench_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/grouptest"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// Helpers shared by BenchmarkMatrix, BenchmarkLatency and
// TestMemoryBounded: groups of any size, state machines by name, and a
// relay of any length.

// smKind names the state machine a benchmark's peers store into.
type smKind string

const (
	// smMem keeps nothing but a count of each stream's bytes: the data
	// path alone, comparable with the relay, which stores nothing either.
	smMem smKind = "mem"
	// smFile is a statemachine.FileStore in a temporary directory: a file
	// per stream, a SHA-256 of it, and an fsync on close and on SYNC.
	smFile smKind = "file"
)

// newSM returns a state machine of kind k for one peer. A FileStore is
// closed when tb ends, after the peers (cleanups run last-registered first).
func newSM(tb testing.TB, k smKind) statemachine.StateMachine {
	tb.Helper()
	switch k {
	case smMem:
		return &countingSM{}
	case smFile:
		fs, err := statemachine.NewFileStore(tb.TempDir(), statemachine.WithLogger(discardLogger()))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() {
			if err := fs.Close(); err != nil {
				tb.Error(err)
			}
		})
		return fs
	}
	tb.Fatalf("unknown state machine %q", k)
	return nil
}

// startPeers starts n server.Server peers on loopback, storing into state
// machines of kind sm, and waits until each reaches the others. They are
// shut down when tb ends, or before by stop, so that a baseline can run
// alone: idle gnet engines keep threads in epoll_wait that hold the
// runtime's Ps (see BenchmarkLatency), which slowed a relay beside them by
// a few percent.
func startPeers(tb testing.TB, n int, kind transport.Kind, sm smKind) (peers []group.Member, stop func()) {
	tb.Helper()
	// The state machines first, so that their cleanups run after the
	// servers have shut down.
	sms := make([]statemachine.StateMachine, n)
	for i := range sms {
		sms[i] = newSM(tb, sm)
	}
	return startServers(tb, kind, sms)
}

// startServers starts a server.Server peer on loopback for each state
// machine, s1, s2 and so on, and waits until each reaches the others. They
// are shut down when tb ends, or before by stop.
func startServers(tb testing.TB, kind transport.Kind, sms []statemachine.StateMachine, tune ...func(i int, c *server.Config)) (peers []group.Member, stop func()) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	servers, peers, _ := grouptest.StartServers(tb, ctx, len(sms), grouptest.ServerOptions{
		Kind:         kind,
		StateMachine: func(i int) statemachine.StateMachine { return sms[i] },
		Logger:       discardLogger(),
		Config: func(i int, c *server.Config) {
			c.InlineWrites = writesInline(sms[i])
			for _, f := range tune {
				f(i, c)
			}
		},
	})
	// The test's cleanup shuts them down again, which does nothing.
	stop = sync.OnceFunc(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		for _, s := range servers {
			if err := s.Shutdown(ctx); err != nil {
				tb.Errorf("shutdown %s: %v", s.ID(), err)
			}
		}
	})
	return peers, stop
}

// peerIDs returns the ids of peers, in order.
func peerIDs(peers []group.Member) []string {
	ids := make([]string, len(peers))
	for i, p := range peers {
		ids[i] = p.ID
	}
	return ids
}

// sizeName names a byte count the way the benchmarks' names do: 4KiB, 1MiB.
func sizeName(n int) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// relayOver moves n bytes from a client through a relay of conns TCP
// connections (conns-1 relaying hops and a counting sink, as benchRelay's
// chain has three), untimed by b, and returns how long that took: the
// ceiling of a topology of conns peers. The client writes packet bytes at a
// time, as the stream it is compared with sends packets of that size (a
// relay fed 1 MiB writes would flatter itself against 4 KiB packets); the
// hops copy through buffers of relayBuffer bytes, whatever the packet.
func relayOver(b *testing.B, conns int, n int64, packet int) time.Duration {
	b.Helper()
	var wg sync.WaitGroup
	addr, ready := startSink(b, &wg, "")
	readies := []chan struct{}{ready}
	for range conns - 1 {
		addr, ready = startHop(b, &wg, addr, "")
		readies = append(readies, ready)
	}
	c := dialRelay(b, addr, readies)
	defer func() {
		_ = c.Close()
		wg.Wait()
	}()

	payload := make([]byte, packet)
	for i := range payload {
		payload[i] = byte(i)
	}
	start := time.Now()
	for left := n; left > 0; left -= int64(len(payload)) {
		if _, err := c.Write(payload[:min(int64(len(payload)), left)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	if got := binary.BigEndian.Uint64(ack[:]); got != uint64(n) {
		b.Fatalf("relay sink counted %d bytes, want %d", got, n)
	}
	return elapsed
}

// dialRelay connects to the first hop at addr and waits until every hop
// of the relay is connected.
func dialRelay(b *testing.B, addr string, readies []chan struct{}) *net.TCPConn {
	b.Helper()
	c, err := net.DialTimeout("tcp", addr, patience)
	if err != nil {
		b.Fatal(err)
	}
	tc := c.(*net.TCPConn)
	_ = tc.SetDeadline(time.Now().Add(patience + time.Duration(b.N)*100*time.Millisecond))
	for _, rd := range readies {
		select {
		case <-rd:
		case <-time.After(patience):
			_ = tc.Close()
			b.Fatal("relay did not connect")
		}
	}
	return tc
}

// schedLatency measures how long goroutines waited to run, from becoming
// runnable to running (the runtime's /sched/latencies:seconds), over part
// of a benchmark.
type schedLatency struct{ start *metrics.Float64Histogram }

func startSchedLatency() schedLatency { return schedLatency{readSchedLatencies()} }

func readSchedLatencies() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	return s[0].Value.Float64Histogram()
}

// report reports the median and the 99th percentile of the waits since
// start, in µs, as the upper bounds of the runtime's histogram buckets.
func (s schedLatency) report(b *testing.B) {
	end := readSchedLatencies()
	counts := make([]uint64, len(end.Counts))
	var total uint64
	for i := range counts {
		counts[i] = end.Counts[i] - s.start.Counts[i]
		total += counts[i]
	}
	if total == 0 {
		return
	}
	quantile := func(q float64) float64 {
		rank := uint64(q * float64(total))
		var cum uint64
		for i, c := range counts {
			if cum += c; cum > rank {
				return end.Buckets[i+1] * 1e6
			}
		}
		return math.Inf(1)
	}
	b.ReportMetric(quantile(0.5), "sched-p50-µs")
	b.ReportMetric(quantile(0.99), "sched-p99-µs")
}
