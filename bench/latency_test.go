package bench_test

import (
	"context"
	"fmt"
	"io"
	"net"
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
// chain of three peers, beside a raw ping-pong over three TCP hops:
//
//	BenchmarkLatency/transport=<gnet|netconn>/sm=<mem|file>
//
// One op is one 4 KiB write with the SYNC option on an open stream through
// s1 -> s2 -> s3, waited for until the primary's reply arrives, followed by
// one round trip of 4 KiB through a relay of three TCP connections (two
// relaying hops and an end that answers with 8 bytes), the cheapest way to
// carry the same bytes to the third peer and hear back. Both run in the
// same process and alternate, so load on the machine touches both alike.
// ns/op is the sum of the two.
//
// It reports the percentiles of each, in µs: p50-µs and p99-µs for the
// stream, ping-p50-µs and ping-p99-µs for the ping-pong, and their ratio
// p50-vs-ping (the stream's p50 over the ping-pong's). With sm=file every
// peer fsyncs on SYNC, so that case measures the disk as well.
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

func benchLatency(b *testing.B, kind transport.Kind, sm smKind) {
	peers, _ := startPeers(b, chainLen, kind, sm)
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
	msg := make([]byte, latencyPacket)
	for i := range msg {
		msg[i] = byte(i)
	}
	// One untimed round of each, so that neither pays for a first use.
	if _, err := out.WriteAsync(ctx, msg, datastream.Sync).Wait(ctx); err != nil {
		b.Fatal(err)
	}
	if err := ping.roundTrip(msg); err != nil {
		b.Fatal(err)
	}

	stream := make([]time.Duration, 0, b.N)
	pong := make([]time.Duration, 0, b.N)
	b.SetBytes(latencyPacket)
	b.ReportAllocs()
	sched := startSchedLatency()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := out.WriteAsync(ctx, msg, datastream.Sync).Wait(ctx); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := ping.roundTrip(msg); err != nil {
			b.Fatal(err)
		}
		stream = append(stream, mid.Sub(start))
		pong = append(pong, time.Since(mid))
	}
	b.StopTimer()
	sched.report(b)
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		b.Fatal(err)
	}
	sp50, sp99 := percentiles(stream)
	pp50, pp99 := percentiles(pong)
	b.ReportMetric(micros(sp50), "p50-µs")
	b.ReportMetric(micros(sp99), "p99-µs")
	b.ReportMetric(micros(pp50), "ping-p50-µs")
	b.ReportMetric(micros(pp99), "ping-p99-µs")
	b.ReportMetric(float64(sp50)/float64(pp50), "p50-vs-ping")
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
	p := &pingPong{}
	addr, ready := startAnswerer(b, &p.wg)
	readies := []chan struct{}{ready}
	for range chainLen - 1 {
		addr, ready = startHop(b, &p.wg, addr, "")
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
	return serveOne(b, wg, func(c net.Conn) {
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
