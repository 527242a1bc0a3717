package bench_test

import (
	"context"
	"flag"
	"fmt"
	"math/bits"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
)

var memoryGiB = flag.Float64("memory-gib", 0.25, "GiB that TestMemoryBounded streams through a chain of three peers (the issue's run is 4)")

// memoryPacket is the packet size of TestMemoryBounded.
const memoryPacket = 1 << 20

// TestMemoryBounded streams -memory-gib (256 MiB by default; 4 for the
// issue's run) on one stream through a chain of three peers in this
// process and checks that the heap stays within what the client's window
// lets be in flight, however much is streamed:
//
//	go test ./bench -run MemoryBounded -v -args -memory-gib=4
//
// A goroutine samples the runtime's heap every millisecond meanwhile,
// without forcing a collection: the bytes in in-use spans (HeapInuse) and
// the heap the last collection marked live. Their peaks, less what they
// were before the peers started, are logged beside memoryBound's
// formula; the heap in use must stay under the formula times
// 1+GOGC/100, since the collector lets the heap grow by that factor over
// what was live before it collects again. The state machine keeps
// nothing, so only the data path's buffers count. Buffer leak accounting
// (buffertest.Check) is left out on purpose: it takes buffers outside the
// pool and would change what is measured.
func TestMemoryBounded(t *testing.T) {
	total := int64(*memoryGiB * (1 << 30))
	total -= total % memoryPacket
	if total <= 0 {
		t.Skip("-memory-gib rounds to no packets")
	}
	gogc := debug.SetGCPercent(100)
	debug.SetGCPercent(gogc)
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		t.Run("transport="+kind.String(), func(t *testing.T) {
			bound := memoryBound(kind, chainLen, memoryPacket)
			peak, rate := streamSampled(t, kind, total)
			limit := bound.bytes() * int64(100+gogc) / 100
			t.Logf("memory: transport=%s streamed %s at %.0f MB/s: peak heap in use +%.1f MiB, peak live +%.1f MiB; formula %.1f MiB, limit %.1f MiB (GOGC=%d)",
				kind, sizeName(int(total)), rate, mib(peak.inuse), mib(peak.live), mib(bound.bytes()), mib(limit), gogc)
			t.Logf("memory: formula: %s", bound)
			if gogc > 0 && peak.inuse > limit {
				t.Errorf("heap in use grew by %.1f MiB, over the limit of %.1f MiB", mib(peak.inuse), mib(limit))
			}
		})
	}
}

// heapBound is what a chain of peers and its client may hold on the heap
// for one stream: a pooled copy of every packet in flight in each place
// one can be, and the transports' fixed read buffers.
type heapBound struct {
	packets   int   // in flight: the client's window over the packet size
	perPacket int64 // bytes of pooled copies of one packet in flight
	fixed     int64 // read buffers and partial frames
	why       string
}

func (h heapBound) bytes() int64 { return int64(h.packets)*h.perPacket + h.fixed }

func (h heapBound) String() string { return h.why }

// memoryBound is the formula docs/performance.md explains. The client
// keeps W = min(DefaultWindowBytes, DefaultWindowPackets packets,
// DefaultMaxOutstandingBytes) of a stream in flight, and a peer answers a
// packet only after its successor did, so no peer holds more of the
// stream than that either. Each packet in flight is, at one time, in at
// most these pooled buffers:
//
//   - on the client, its frame (header and body in one buffer, of the
//     power-of-two class above the packet: 2 MiB for 1 MiB of data) until
//     the writer goroutine has handed it to the socket;
//   - on every peer, the frame it received, of the same class, until it
//     is written locally, forwarded (the forward sends the same buffer)
//     and answered.
//
// That is 1 + n buffers of a frame's class for a chain of n peers. Fixed
// on top: each gnet event loop's read buffer
// (transport.DefaultReadBufferCap; each server has GOMAXPROCS loops for
// its listener and as many for its dialer, the client one) or, for
// net.Conn, a frame-sized read buffer at each end of each connection; and
// each receiving connection's leftover partial frame. The pools hold
// released buffers for reuse; they allocate only when empty, so they add
// no more than a few buffers stranded in another processor's cache.
func memoryBound(kind transport.Kind, peers, packet int) heapBound {
	window := min(int64(datastream.DefaultWindowBytes), int64(datastream.DefaultMaxOutstandingBytes))
	packets := int(min(int64(datastream.DefaultWindowPackets), (window+int64(packet)-1)/int64(packet)))
	frame := pow2(packet + 128) // prefix and a header of under 100 bytes
	perPacket := frame * int64(1+peers)
	// Connections that carry data in: the client's to the first peer and
	// one per hop; each may hold a partial frame.
	dataConns := int64(peers)
	var readBufs int64
	if kind == transport.Gnet {
		loops := int64(peers*2*runtime.GOMAXPROCS(0) + 1)
		readBufs = loops * transport.DefaultReadBufferCap
	} else {
		readBufs = 2 * dataConns * frame
	}
	fixed := readBufs + dataConns*frame
	return heapBound{
		packets: packets, perPacket: perPacket, fixed: fixed,
		why: fmt.Sprintf("%d packets in flight x %.0f MiB (the client's frame and each of %d peers' received frame, %.0f MiB each: a %.0f MiB packet and its header take the next power of two) + %.1f MiB read buffers + %.0f MiB partial frames = %.1f MiB",
			packets, mib(perPacket), peers, mib(frame), mib(int64(packet)), mib(readBufs), mib(dataConns*frame), mib(int64(packets)*perPacket+fixed)),
	}
}

// pow2 returns the power of two at or above n, the size class of a pooled
// buffer of n bytes.
func pow2(n int) int64 { return 1 << bits.Len(uint(n-1)) }

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// heapPeak is the most the heap grew over what it was before the peers
// started.
type heapPeak struct{ inuse, live int64 }

// streamSampled starts a chain of peers, streams total bytes through it on
// one stream while sampling the heap, and returns the heap's peak growth
// and the stream's rate in MB/s.
func streamSampled(t *testing.T, kind transport.Kind, total int64) (heapPeak, float64) {
	runtime.GC()
	runtime.GC() // the second empties the pools' victim caches
	base := readHeap()

	var peakMu sync.Mutex
	peak := base
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			h := readHeap()
			peakMu.Lock()
			peak.inuse, peak.live = max(peak.inuse, h.inuse), max(peak.live, h.live)
			peakMu.Unlock()
			select {
			case <-tick.C:
			case <-stop:
				return
			}
		}
	})

	rate := streamChain(t, kind, total)
	close(stop)
	sampler.Wait()
	peakMu.Lock()
	defer peakMu.Unlock()
	return heapPeak{peak.inuse - base.inuse, peak.live - base.live}, rate
}

// streamChain streams total bytes in memoryPacket packets through a fresh
// chain of three peers and returns the rate in MB/s. The peers are shut
// down when it returns.
func streamChain(t *testing.T, kind transport.Kind, total int64) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience+time.Duration(total/memoryPacket)*100*time.Millisecond)
	defer cancel()
	// A subtest of its own, so that the peers' cleanups have run, and
	// their buffers are garbage, before the caller stops sampling.
	var rate float64
	t.Run("stream", func(t *testing.T) {
		peers, _ := startPeers(t, chainLen, kind, smMem)
		c, err := datastream.NewClient(peers, datastream.WithTransport(kind), datastream.WithLogger(discardLogger()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		out, err := c.Stream(ctx, []byte("memory"), datastream.WithRoutingTable(pb.Chain(peerIDs(peers)...)))
		if err != nil {
			t.Fatal(err)
		}
		payload := make([]byte, memoryPacket)
		for i := range payload {
			payload[i] = byte(i)
		}
		start := time.Now()
		for range total / memoryPacket {
			out.WriteAsync(ctx, payload)
		}
		reply, err := out.Close(ctx).Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rate = float64(total) / 1e6 / time.Since(start).Seconds()
		if got := reply.BytesWritten(); got != uint64(total) {
			t.Fatalf("stream closed at %d bytes, want %d", got, total)
		}
	})
	return rate
}

var heapMetrics = []string{
	"/memory/classes/heap/objects:bytes", // with unused: HeapInuse
	"/memory/classes/heap/unused:bytes",
	"/gc/heap/live:bytes",
}

// readHeap reads the heap without stopping the world.
func readHeap() heapPeak {
	s := make([]metrics.Sample, len(heapMetrics))
	for i, name := range heapMetrics {
		s[i].Name = name
	}
	metrics.Read(s)
	return heapPeak{
		inuse: int64(s[0].Value.Uint64() + s[1].Value.Uint64()),
		live:  int64(s[2].Value.Uint64()),
	}
}
