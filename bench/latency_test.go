package bench_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
)

// latencyPacket is the size of the SYNC write and of the ping.
const latencyPacket = 4 << 10

// BenchmarkLatency is the time to have one small write acknowledged by a
// chain of three peers, beside the cheapest ways to carry the same bytes
// to a third peer and hear back:
//
//	BenchmarkLatency/transport=<gnet|netconn>/sm=<mem|file>
//
// One op is one 4 KiB write with the SYNC option on an open stream through
// s1 -> s2 -> s3, waited for until the primary's reply arrives, followed by
// one 4 KiB round trip through a raw ping-pong over three TCP connections
// (two relaying hops and an end that answers with 8 bytes) in the same
// process: ns/op is the sum of the two. The timed part done, the peers
// are shut down and BenchmarkAlone runs the same ping-pong, and the same
// round trip through a chain of three grpc-go bidi streams, b.N times each
// in a fresh process of this test binary where no peer ever ran; then, on
// Linux, BenchmarkAloneEventLoops runs the ping-pong through event loops
// in another such process.
//
// It reports percentiles in µs: p50-µs and p99-µs for the stream;
// ping-p50-µs and ping-p99-µs for the ping-pong alone and grpc-p50-µs and
// grpc-p99-µs for grpc-go alone and loop-p50-µs and loop-p99-µs for the
// event-loop ping-pong alone, the baselines; ping-inproc-p50-µs and
// ping-inproc-p99-µs for the ping-pong beside the peers. A gnet peer's
// event loops slow every goroutine of their process (see BenchmarkAlone),
// so the in-process ping-pong flatters gnet; the ratios are to the
// baselines alone: p50-vs-ping, p99-vs-ping, p50-vs-grpc, p99-vs-grpc,
// p50-vs-loop, p99-vs-loop.
// With sm=file every peer fsyncs on SYNC, so that case measures the disk
// as well.
func BenchmarkLatency(b *testing.B) {
	for _, v := range []struct {
		kind transport.Kind
		sm   smKind
	}{
		{transport.Gnet, smMem},
		{transport.NetConn, smMem},
		{transport.Gnet, smFile},
	} {
		b.Run(fmt.Sprintf("transport=%s/sm=%s", v.kind, v.sm), func(b *testing.B) {
			benchLatency(b, v.kind, v.sm)
		})
	}
}

// latencyMessage returns the 4 KiB every round trip carries.
func latencyMessage() []byte {
	msg := make([]byte, latencyPacket)
	for i := range msg {
		msg[i] = byte(i)
	}
	return msg
}

func benchLatency(b *testing.B, kind transport.Kind, sm smKind) {
	peers, stopPeers := startPeers(b, chainLen, kind, sm)
	c, err := datastream.NewClient(peers, datastream.WithTransport(kind), datastream.WithLogger(discardLogger()))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), patience+time.Duration(b.N)*100*time.Millisecond)
	defer cancel()
	out, err := c.Stream(ctx, []byte("latency"), datastream.WithRoutingTable(pb.Chain(peerIDs(peers)...)))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := out.HeaderFuture().Wait(ctx); err != nil {
		b.Fatal(err)
	}
	ping := startPingPong(b)
	defer ping.close()
	msg := latencyMessage()
	// One untimed round of each, so that neither pays for a first use.
	if _, err := out.WriteAsync(ctx, msg, datastream.Sync).Wait(ctx); err != nil {
		b.Fatal(err)
	}
	if err := ping.roundTrip(msg); err != nil {
		b.Fatal(err)
	}

	sched := startSchedLatency()
	stream, pong := timeRounds(b,
		func() error {
			_, err := out.WriteAsync(ctx, msg, datastream.Sync).Wait(ctx)
			return err
		},
		func() error { return ping.roundTrip(msg) })
	sched.report(b)
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		b.Fatal(err)
	}
	// The baselines alone, while nothing of this process runs.
	c.Close()
	stopPeers()
	alone := runAlone(b, "BenchmarkAlone", b.N)
	baselines := []string{"ping", "grpc"}
	if runtime.GOOS == "linux" {
		maps.Copy(alone, runAlone(b, "BenchmarkAloneEventLoops", b.N))
		baselines = append(baselines, "loop")
	}

	sp50, sp99 := percentiles(stream)
	ip50, ip99 := percentiles(pong)
	b.ReportMetric(micros(sp50), "p50-µs")
	b.ReportMetric(micros(sp99), "p99-µs")
	b.ReportMetric(micros(ip50), "ping-inproc-p50-µs")
	b.ReportMetric(micros(ip99), "ping-inproc-p99-µs")
	for _, base := range baselines {
		p50, p99 := alone[base+"-p50-µs"], alone[base+"-p99-µs"]
		if p50 <= 0 || p99 <= 0 {
			b.Fatalf("the baselines alone reported no %s percentiles: %v", base, alone)
		}
		b.ReportMetric(p50, base+"-p50-µs")
		b.ReportMetric(p99, base+"-p99-µs")
		b.ReportMetric(micros(sp50)/p50, "p50-vs-"+base)
		b.ReportMetric(micros(sp99)/p99, "p99-vs-"+base)
	}
}

// timeRounds times b.N rounds of a latencyPacket round trip through
// first and then one through second, alternating so that load touches
// both alike, and returns each one's times. The timer runs only over the
// rounds.
func timeRounds(b *testing.B, first, second func() error) (firsts, seconds []time.Duration) {
	firsts = make([]time.Duration, 0, b.N)
	seconds = make([]time.Duration, 0, b.N)
	b.SetBytes(latencyPacket)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := first(); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := second(); err != nil {
			b.Fatal(err)
		}
		firsts = append(firsts, mid.Sub(start))
		seconds = append(seconds, time.Since(mid))
	}
	b.StopTimer()
	return firsts, seconds
}

// percentiles returns the median and the 99th percentile of ds, which it
// sorts.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	slices.Sort(ds)
	n := len(ds)
	return ds[(n-1)/2], ds[(n*99+99)/100-1]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// pingPong is a client connection to the first of two relaying hops in
// front of an end that answers every latencyPacket bytes with 8 bytes.
type pingPong struct {
	c   *net.TCPConn
	ack [8]byte
	wg  sync.WaitGroup
}

func startPingPong(b *testing.B) *pingPong {
	return chainPingPong(b, startAnswerer, func(b *testing.B, wg *sync.WaitGroup, next string) (string, chan struct{}) {
		return startHop(b, wg, next, "")
	})
}

// chainPingPong starts the ping-pong's end with end and its relaying hops
// with hop, and dials the first hop.
func chainPingPong(b *testing.B,
	end func(*testing.B, *sync.WaitGroup) (addr string, ready chan struct{}),
	hop func(b *testing.B, wg *sync.WaitGroup, next string) (addr string, ready chan struct{}),
) *pingPong {
	p := &pingPong{}
	addr, ready := end(b, &p.wg)
	readies := []chan struct{}{ready}
	for range chainLen - 1 {
		addr, ready = hop(b, &p.wg, addr)
		readies = append(readies, ready)
	}
	p.c = dialRelay(b, addr, readies)
	return p
}

func (p *pingPong) roundTrip(msg []byte) error {
	if _, err := p.c.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(p.c, p.ack[:])
	return err
}

// close ends the client's side; the hops and the end see EOF in turn.
func (p *pingPong) close() {
	_ = p.c.CloseWrite()
	_, _ = io.Copy(io.Discard, p.c)
	_ = p.c.Close()
	p.wg.Wait()
}

// startAnswerer accepts one connection and answers every latencyPacket
// bytes it reads with 8 bytes, until EOF.
func startAnswerer(b *testing.B, wg *sync.WaitGroup) (addr string, ready chan struct{}) {
	return serveOne(b, wg, "", func(c, _ net.Conn) {
		buf := make([]byte, latencyPacket)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				if err != io.EOF {
					b.Error(err)
				}
				return
			}
			if _, err := c.Write(buf[:8]); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
