package bench_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// aloneEnv, set to 1, lets BenchmarkAlone run: BenchmarkLatency runs it
// in a fresh process of this test binary, and nowhere else does it mean
// what it is for.
const aloneEnv = "PIPESTREAM_BENCH_ALONE"

// BenchmarkAlone is the baselines of BenchmarkLatency measured in a
// process where no pipestream peer, and so no gnet event loop, ever ran:
// BenchmarkLatency runs it as a child process (see runAlone). gnet's loops
// block in epoll_wait holding the runtime's Ps, which slows every other
// goroutine of their process; a baseline measured beside them (the
// ping-inproc of BenchmarkLatency) is up to several times slower than
// the same baseline alone, and a ratio to it flatters gnet.
//
// One op is one 4 KiB round trip through the raw 3-hop TCP ping-pong
// followed by one through the grpc-go bidi-stream chain (grpc_test.go),
// alternating so that load touches both alike. It reports ping-p50-µs,
// ping-p99-µs, grpc-p50-µs and grpc-p99-µs.
//
// It is skipped unless PIPESTREAM_BENCH_ALONE=1.
func BenchmarkAlone(b *testing.B) {
	if os.Getenv(aloneEnv) != "1" {
		b.Skip("runs only as BenchmarkLatency's child process, with " + aloneEnv + "=1")
	}
	ping := startPingPong(b)
	defer ping.close()
	g := startGRPCChain(b)
	defer g.close()
	msg := latencyMessage()
	if err := ping.roundTrip(msg); err != nil {
		b.Fatal(err)
	}
	if err := g.roundTrip(msg); err != nil {
		b.Fatal(err)
	}
	pings, rpcs := timeRounds(b,
		func() error { return ping.roundTrip(msg) },
		func() error { return g.roundTrip(msg) })
	p50, p99 := percentiles(pings)
	b.ReportMetric(micros(p50), "ping-p50-µs")
	b.ReportMetric(micros(p99), "ping-p99-µs")
	p50, p99 = percentiles(rpcs)
	b.ReportMetric(micros(p50), "grpc-p50-µs")
	b.ReportMetric(micros(p99), "grpc-p99-µs")
}

// runAlone runs the benchmark name (BenchmarkAlone or
// BenchmarkAloneEventLoops) for n round trips of each baseline in a child
// process of this test binary and returns its metrics by unit.
func runAlone(b *testing.B, name string, n int) map[string]float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience+time.Duration(n)*10*time.Millisecond)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run", "^$", "-test.bench", "^"+name+"$",
		"-test.benchtime", fmt.Sprintf("%dx", n), "-test.count", "1")
	cmd.Env = append(os.Environ(), aloneEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("%s in a child process: %v\n%s%s", name, err, out, stderr.Bytes())
	}
	metrics := parseBenchLine(out, name)
	if metrics == nil {
		b.Fatalf("%s in a child process printed no result:\n%s", name, out)
	}
	return metrics
}

// parseBenchLine returns the values by unit of the first result line of
// the benchmark name in a test binary's output, or nil.
func parseBenchLine(out []byte, name string) map[string]float64 {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || (f[0] != name && !strings.HasPrefix(f[0], name+"-")) {
			continue
		}
		m := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				m[f[i+1]] = v
			}
		}
		return m
	}
	return nil
}
