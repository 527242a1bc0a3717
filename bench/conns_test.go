package bench_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
)

// Environment of BenchmarkConns's client process.
const (
	connsAddrEnv = "PIPESTREAM_BENCH_CONNS_ADDR" // the peer's address
	connsNEnv    = "PIPESTREAM_BENCH_CONNS_N"    // how many connections
)

const (
	// connsMany is the count of concurrent connections.
	connsMany = 10_000
	// connsFew is the count the throughput at connsMany is compared with.
	connsFew = 100
	// connsStream is each small stream's one write.
	connsStream = 4 << 10
	// connsDialers bounds the connections being set up at once, so that
	// the peer's accept backlog does not overflow.
	connsDialers = 32
)

// BenchmarkConns is many client connections to one peer, each streaming
// small streams:
//
//	BenchmarkConns/transport=<gnet|netconn>/conns=<100|10000>
//
// It runs only when the -bench regexp names it ("Conns"), never under
// -bench '.', for it opens 10,000 connections:
//
//	go test -run '^$' -bench 'Conns' -benchtime 20000x ./bench
//
// The peer (one server.Server, a counting state machine, no Raft) runs in
// this process and the clients in a child process of this test binary:
// one datastream.Client, and so one connection, each, on the net.Conn
// transport whatever the peer's, so that what this process measures is
// the peer's side alone (and so that the two sides' descriptors do not
// share one process's limit). Every client first opens and closes one
// stream, so that its connection is up; then, timed, the clients stream
// b.N small streams all together, spread evenly over the connections,
// each one stream at a time: open, one 4 KiB write, close, wait for the
// reply. One op is one such stream; streams/s is their rate.
//
// It reports heap+stack-B/conn, the growth of the peer process's
// runtime.MemStats HeapInuse+StackInuse from before the clients connected
// to when all of them are connected and idle (after a GC both times),
// divided by the connections; and goroutines/conn, the growth of runtime.NumGoroutine.
//
// A gnet connection holds two descriptors (its socket and the writer's
// duplicate), so under a descriptor limit below twice connsMany the gnet
// case opens as many as the limit allows, and its name says how many.
func BenchmarkConns(b *testing.B) {
	if !strings.Contains(flag.Lookup("test.bench").Value.String(), "Conns") {
		b.Skip("opens 10,000 connections: runs only with -bench naming Conns")
	}
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		sizes := []int{connsFew}
		if many := connsAllowed(kind); many > connsFew {
			sizes = append(sizes, many)
		} else {
			b.Logf("transport=%s: the descriptor limit allows only %d connections", kind, many)
		}
		for _, n := range sizes {
			b.Run(fmt.Sprintf("transport=%s/conns=%d", kind, n), func(b *testing.B) {
				benchConns(b, kind, n)
			})
		}
	}
}

// connsAllowed returns connsMany, or fewer if the descriptor limit would
// not let a peer on kind hold that many connections, with room for the
// process's other descriptors.
func connsAllowed(kind transport.Kind) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return connsMany
	}
	perConn := uint64(1)
	if kind == transport.Gnet {
		perConn = 2
	}
	const spare = 500
	if lim.Cur < spare {
		return 0
	}
	return int(min(uint64(connsMany), (lim.Cur-spare)/perConn))
}

func benchConns(b *testing.B, kind transport.Kind, n int) {
	peers, _ := startPeers(b, 1, kind, smMem)
	before := readFootprint()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	p := startLabProc(b, "conns client", cmd, false,
		connsAddrEnv+"="+peers[0].StreamAddr, connsNEnv+"="+strconv.Itoa(n))
	if _, err := p.waitLine("ready"); err != nil {
		b.Fatal(err)
	}
	after := readFootprint()

	b.SetBytes(connsStream)
	b.ReportAllocs()
	b.ResetTimer()
	if err := p.do(fmt.Sprintf("go %d", b.N)); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "streams/s")
	// Reported after the timed part: ResetTimer deletes reported metrics.
	b.ReportMetric((float64(after.mem)-float64(before.mem))/float64(n), "heap+stack-B/conn")
	b.ReportMetric(float64(after.goroutines-before.goroutines)/float64(n), "goroutines/conn")
}

// footprint is what a process holds for its connections.
type footprint struct {
	mem        uint64 // HeapInuse + StackInuse
	goroutines int
}

func readFootprint() footprint {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return footprint{mem: ms.HeapInuse + ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

// connsMain is BenchmarkConns's client process. It connects its clients,
// says "ready", and for every "go N" on stdin streams N small streams over
// them and says "ok" (or what failed). It ends when stdin does.
func connsMain(addr string) int {
	n, err := strconv.Atoi(os.Getenv(connsNEnv))
	if err == nil {
		err = runConnsClients(addr, n)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench conns client:", err)
		return 1
	}
	return 0
}

func runConnsClients(addr string, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	peers := []group.Member{{ID: "s1", StreamAddr: addr}}
	clients := make([]*datastream.Client, n)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	msg := latencyMessage()[:connsStream]
	var seq atomic.Uint64
	stream := func(c *datastream.Client, write bool) error {
		name := fmt.Appendf(nil, "conns-%d", seq.Add(1))
		out, err := c.Stream(ctx, name, datastream.WithRoutingTable(pb.Chain("s1")))
		if err != nil {
			return err
		}
		if write {
			out.WriteAsync(ctx, msg)
		}
		reply, err := out.Close(ctx).Wait(ctx)
		if err == nil && write && reply.BytesWritten() != connsStream {
			err = fmt.Errorf("stream closed at %d bytes, want %d", reply.BytesWritten(), connsStream)
		}
		return err
	}
	// Each client's first stream dials its connection.
	if err := forEach(n, connsDialers, func(i int) error {
		c, err := datastream.NewClient(peers, datastream.WithTransport(transport.NetConn), datastream.WithLogger(discardLogger()))
		if err != nil {
			return err
		}
		clients[i] = c
		return stream(c, false)
	}); err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	fmt.Println("ready")

	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		total, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "go "))
		if err != nil {
			return fmt.Errorf("command %q: %w", sc.Text(), err)
		}
		err = forEach(n, n, func(i int) error {
			k := total / n
			if i < total%n {
				k++
			}
			for range k {
				if err := stream(clients[i], true); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println("ok")
	}
	return sc.Err()
}

// forEach calls f(0) to f(n-1), at most par at a time, and returns the
// first error.
func forEach(n, par int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		next  atomic.Int64
	)
	for range min(n, par) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}
