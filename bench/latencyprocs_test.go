package bench_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
)

var (
	latencyProcs    = flag.Bool("latency.procs", false, "run BenchmarkLatencyProcs: three pipestream serve processes and a client process")
	latencyProcsDir = flag.String("latency.dir", "/dev/shm", "where BenchmarkLatencyProcs's peers keep their data; the default tmpfs keeps the disk out of the comparison, and empty keeps everything in memory")
)

// Environment of BenchmarkLatencyProcs's client process, this test
// binary run again.
const (
	latencyClientEnv = "PIPESTREAM_BENCH_LATENCY_CLIENT" // the transport
	latencyPeersEnv  = "PIPESTREAM_BENCH_LATENCY_PEERS"  // id=stream_addr;... in chain order
)

// BenchmarkLatencyProcs is BenchmarkLatency's stream as a deployment
// runs it: every peer is a pipestream serve process of its own, and so
// is the client.
//
//	BenchmarkLatencyProcs/transport=<netconn|gnet>
//
// In one process a gnet hop is mostly the wake-up of the receiving event
// loop, a thread blocked in its own epoll_wait, by another thread of the
// same runtime, while net.Conn's writer finds the receiver ready through
// the runtime's shared netpoller; across processes every hop crosses a
// process boundary whatever the transport, and this measures what that
// leaves of the difference.
//
// For each transport it builds the command once, starts three serve
// processes on loopback from one group file, each with its own data
// directory under -latency.dir (a FileStore: a write and a SHA-256 per
// packet, and an fsync on SYNC, nearly free on the default tmpfs), and a
// client process with the same transport that opens a stream through
// p1 -> p2 -> p3 and writes one untimed 4 KiB SYNC packet. One op is one
// more 4 KiB write with the SYNC option, waited for until the primary's
// reply arrives; the client times each and reports p50-µs and p99-µs.
// net.Conn runs first, so that gnet also reports its percentiles as
// fractions of those of the same run: p50-vs-netconn and p99-vs-netconn.
// ns/op includes the parent's command to the client, one line each way
// for all b.N writes.
//
// It starts processes and needs a few seconds for each group's election,
// so it runs only with -latency.procs:
//
//	go test -run '^$' -bench LatencyProcs -benchtime 2000x ./bench -latency.procs
func BenchmarkLatencyProcs(b *testing.B) {
	if !*latencyProcs {
		b.Skip("a cross-process benchmark that builds pipestream and starts serve processes: run with -latency.procs")
	}
	bin := buildPipestream(b)
	var netconn struct{ p50, p99 float64 } // this run's
	for _, kind := range []transport.Kind{transport.NetConn, transport.Gnet} {
		// Started outside the sub-benchmark, which runs more than once, and
		// stopped before the next transport's processes start.
		client, stop := startLatencyProcs(b, bin, kind)
		b.Run("transport="+kind.String(), func(b *testing.B) {
			b.SetBytes(latencyPacket)
			b.ResetTimer()
			line, err := client.ask(fmt.Sprintf("sync %d", b.N))
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			var p50, p99 float64
			if _, err := fmt.Sscanf(line, "ok %g %g", &p50, &p99); err != nil {
				b.Fatalf("client answered %q", line)
			}
			b.ReportMetric(p50, "p50-µs")
			b.ReportMetric(p99, "p99-µs")
			switch {
			case kind == transport.NetConn:
				netconn.p50, netconn.p99 = p50, p99
			case netconn.p50 > 0:
				b.ReportMetric(p50/netconn.p50, "p50-vs-netconn")
				b.ReportMetric(p99/netconn.p99, "p99-vs-netconn")
			}
		})
		stop()
	}
}

// startLatencyProcs starts three serve processes with transport kind and
// a client process, and waits until the client has its stream open. stop
// ends them all and removes their data; the benchmark's end does the same
// if stop has not.
func startLatencyProcs(b *testing.B, bin string, kind transport.Kind) (client *labProc, stop func()) {
	b.Helper()
	dir, err := os.MkdirTemp(*latencyProcsDir, "pipestream-latency-")
	if err != nil {
		b.Fatal(err)
	}
	remove := func() { os.RemoveAll(dir) }
	b.Cleanup(remove) // after the processes' cleanups, registered below
	ids := []string{"p1", "p2", "p3"}
	var serves []*labProc
	// A port free a moment ago may be taken by the time a peer binds it,
	// and then that peer exits: try other ports, up to three times.
	for attempt := 1; ; attempt++ {
		var addrs []string
		// A directory of its own, so that no peer finds the Raft state of
		// a group on other ports.
		try := filepath.Join(dir, fmt.Sprint(attempt))
		if err := os.Mkdir(try, 0o755); err != nil {
			b.Fatal(err)
		}
		serves, addrs, err = startLatencyServes(b, bin, try, kind, ids)
		if err == nil {
			var peers []string
			for i, id := range ids {
				peers = append(peers, id+"="+addrs[i])
			}
			client = startLabProc(b, "latency client", exec.Command(os.Args[0], "-test.run=^$"), false,
				latencyClientEnv+"="+kind.String(), latencyPeersEnv+"="+strings.Join(peers, ";"))
			_, err = client.waitLine("ready")
			break
		}
		for _, p := range serves {
			p.stop()
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		b.Logf("attempt %d: %v; retrying on other ports", attempt, err)
	}
	stop = func() {
		if client != nil {
			client.stop()
		}
		for _, p := range serves {
			p.stop()
		}
		remove()
	}
	if err != nil {
		stop()
		b.Fatal(err)
	}
	return client, stop
}

// startLatencyServes writes a group file of the peers ids on free
// loopback ports into dir, starts a serve process for each, with its data
// in dir/ID unless -latency.dir is empty, and waits until each is ready. It returns the processes
// started and the peers' stream addresses.
func startLatencyServes(b *testing.B, bin, dir string, kind transport.Kind, ids []string) ([]*labProc, []string, error) {
	addrs, err := freeLoopbackAddrs(3 * len(ids))
	if err != nil {
		return nil, nil, err
	}
	members := make([]group.Member, len(ids))
	for i, id := range ids {
		members[i] = group.Member{ID: id, StreamAddr: addrs[3*i], RaftAddr: addrs[3*i+1], CommitAddr: addrs[3*i+2]}
	}
	config := writeGroupFile(b, dir, "", members)
	var serves []*labProc
	streams := make([]string, len(ids))
	for i, id := range ids {
		args := []string{"serve", "--config", config, "--id", id, "--transport", kind.String(), "--log-level", "warn"}
		if *latencyProcsDir != "" {
			args = append(args, "--data-dir", filepath.Join(dir, id))
		}
		cmd := exec.Command(bin, args...)
		serves = append(serves, startLabProc(b, "serve "+id, cmd, true))
		streams[i] = addrs[3*i]
	}
	for i, p := range serves {
		if _, err := p.waitLine(ids[i] + " ready: leader "); err != nil {
			return serves, nil, err
		}
	}
	return serves, streams, nil
}

// freeLoopbackAddrs returns n loopback addresses whose ports were free a
// moment ago: each was bound to port 0 and closed.
func freeLoopbackAddrs(n int) ([]string, error) {
	var addrs []string
	for range n {
		// Held until all are picked, so that no two are the same.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

// latencyClientMain runs BenchmarkLatencyProcs's client and returns its
// exit code.
func latencyClientMain(kind string) int {
	if err := runLatencyClient(kind); err != nil {
		fmt.Fprintln(os.Stderr, "bench latency client:", err)
		return 1
	}
	return 0
}

// runLatencyClient opens a stream through the peers of latencyPeersEnv,
// says "ready" once one SYNC write has gone through, and answers each
// command "sync N" with N timed SYNC writes of latencyPacket bytes:
// "ok P50 P99", in µs, or "error ...". When stdin ends it closes the
// stream.
func runLatencyClient(kindName string) error {
	kind, err := transport.ParseKind(kindName)
	if err != nil {
		return err
	}
	var (
		peers []group.Member
		ids   []string
	)
	for p := range strings.SplitSeq(os.Getenv(latencyPeersEnv), ";") {
		id, addr, _ := strings.Cut(p, "=")
		peers = append(peers, group.Member{ID: id, StreamAddr: addr})
		ids = append(ids, id)
	}
	c, err := datastream.NewClient(peers, datastream.WithTransport(kind), datastream.WithLogger(quietLog()))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	out, err := c.Stream(ctx, []byte("latency-procs"), datastream.WithRoutingTable(pb.Chain(ids...)))
	if err != nil {
		return err
	}
	if _, err := out.HeaderFuture().Wait(ctx); err != nil {
		return err
	}
	msg := latencyMessage()
	// Untimed, so that the timed writes pay for no first use.
	if _, err := out.WriteAsync(ctx, msg, datastream.Sync).Wait(ctx); err != nil {
		return err
	}
	fmt.Println("ready")

	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var n int
		if _, err := fmt.Sscanf(sc.Text(), "sync %d", &n); err != nil || n < 1 {
			fmt.Printf("error bad command %q\n", sc.Text())
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), patience+time.Duration(n)*100*time.Millisecond)
		ds := make([]time.Duration, 0, n)
		for range n {
			start := time.Now()
			if _, err = out.WriteAsync(ctx, msg, datastream.Sync).Wait(ctx); err != nil {
				break
			}
			ds = append(ds, time.Since(start))
		}
		cancel()
		if err != nil {
			fmt.Println("error", err)
			return err
		}
		p50, p99 := percentiles(ds)
		fmt.Printf("ok %g %g\n", micros(p50), micros(p99))
	}
	ctx, cancel = context.WithTimeout(context.Background(), patience)
	defer cancel()
	_, err = out.Close(ctx).Wait(ctx)
	return err
}
