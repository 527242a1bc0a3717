package bench_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
)

// topology is a shape of group and the routing table its streams use.
type topology struct {
	name  string
	peers int
	table func(ids []string) *pb.RoutingTable
	// relayConns is the length of the relay that is its ceiling, or 0
	// when no relay moves the same bytes the same way (a star's primary
	// sends every byte twice).
	relayConns int
}

var topologies = []topology{
	{"single", 1, func(ids []string) *pb.RoutingTable { return pb.Chain(ids...) }, 1},
	{"chain", 3, func(ids []string) *pb.RoutingTable { return pb.Chain(ids...) }, 3},
	{"star", 3, func(ids []string) *pb.RoutingTable { return pb.Star(ids[0], ids[1:]...) }, 0},
}

var (
	matrixPackets = []int{4 << 10, 64 << 10, 1 << 20, 4 << 20}
	matrixStreams = []int{1, 8, 64}
	matrixSMs     = []smKind{smMem, smFile}
)

// BenchmarkMatrix is the end-to-end data path over every shape the issue
// asks about:
//
//	BenchmarkMatrix/topo=<single|chain|star>/packet=<4KiB|64KiB|1MiB|4MiB>/streams=<1|8|64>/sm=<mem|file>/transport=<gnet|netconn>
//
// One op is one packet; MB/s is the payload rate of all streams together.
// The streams, opened and answered before the timer starts, share one
// client (its default window and budget) and b.N packets, each written
// from a goroutine of its own with WriteAsync; the timed part ends when
// every packet is answered, that is, written and forwarded by every peer
// and acknowledged back along the routing table. The streams are then
// closed and committed (standalone, without Raft) untimed: a commit costs
// per stream, not per byte, and BenchmarkCommitPath measures it.
//
//   - topo: single is one peer; chain forwards s1 -> s2 -> s3; star has s1
//     send to s2 and s3 itself.
//   - sm: mem counts bytes and keeps nothing (the data path alone); file is
//     a statemachine.FileStore, which writes every byte to a file and
//     hashes it (its fsync on close falls in the untimed commit).
//   - transport: gnet everywhere; netconn too for chain with 1 MiB packets,
//     the comparison of the two transports.
//
// Besides MB/s, B/op and allocs/op, every case reports allocs/packet
// (process-wide mallocs, unrounded; see the package doc), and single and
// chain also vs-relay: the throughput as a fraction of a relay of as many
// TCP connections moving the same bytes right after the timed part.
//
// The full matrix is 78 cases and takes several minutes; pick a subset
// with the -bench regexp, whose parts match the name's levels one by one:
//
//	go test -run '^$' -bench 'Matrix/topo=chain/packet=1MiB/' ./bench
//	go test -run '^$' -bench 'Matrix/.*/.*/streams=1/sm=mem' ./bench
//	go test -run '^$' -bench 'Matrix/topo=star/packet=(64KiB|1MiB)/streams=8/' -benchtime 2s ./bench
func BenchmarkMatrix(b *testing.B) {
	for _, topo := range topologies {
		for _, size := range matrixPackets {
			for _, streams := range matrixStreams {
				for _, sm := range matrixSMs {
					kinds := []transport.Kind{transport.Gnet}
					if topo.name == "chain" && size == 1<<20 {
						kinds = append(kinds, transport.NetConn)
					}
					for _, kind := range kinds {
						name := fmt.Sprintf("topo=%s/packet=%s/streams=%d/sm=%s/transport=%s", topo.name, sizeName(size), streams, sm, kind)
						b.Run(name, func(b *testing.B) {
							benchMatrix(b, matrixCase{topo, size, streams, sm, kind})
						})
					}
				}
			}
		}
	}
}

type matrixCase struct {
	topo    topology
	packet  int
	streams int
	sm      smKind
	kind    transport.Kind
}

func benchMatrix(b *testing.B, mc matrixCase) {
	peers, stopPeers := startPeers(b, mc.topo.peers, mc.kind, mc.sm)
	c, err := datastream.NewClient(peers, datastream.WithTransport(mc.kind), datastream.WithLogger(discardLogger()))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), patience+time.Duration(b.N)*100*time.Millisecond)
	defer cancel()

	table := mc.topo.table(peerIDs(peers))
	outs := make([]*datastream.Output, mc.streams)
	for i := range outs {
		// A name of its own, for the FileStore.
		outs[i], err = c.Stream(ctx, fmt.Appendf(nil, "matrix-%d", i), datastream.WithRoutingTable(table))
		if err != nil {
			b.Fatal(err)
		}
	}
	for _, out := range outs {
		if _, err := out.HeaderFuture().Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
	payload := make([]byte, mc.packet)
	for i := range payload {
		payload[i] = byte(i)
	}

	b.SetBytes(int64(mc.packet))
	b.ReportAllocs()
	errs := make([]error, len(outs))
	sent := make([]int, len(outs))
	var wg sync.WaitGroup
	m := startMallocs(b)
	for i, out := range outs {
		sent[i] = b.N / len(outs)
		if i < b.N%len(outs) {
			sent[i]++
		}
		wg.Go(func() {
			var last *datastream.Future[*datastream.Reply]
			for range sent[i] {
				last = out.WriteAsync(ctx, payload)
			}
			if last != nil { // replies come in order: the last is the latest
				_, errs[i] = last.Wait(ctx)
			}
		})
	}
	wg.Wait()
	m.stop(b)
	// Closing commits each stream, a cost per stream rather than per byte
	// (for the FileStore, an fsync on every peer and a link), which
	// BenchmarkCommitPath measures; it stays out of the time.
	for i, out := range outs {
		wg.Go(func() {
			reply, err := out.Close(ctx).Wait(ctx)
			if err == nil && reply.BytesWritten() != uint64(sent[i]*mc.packet) {
				err = fmt.Errorf("stream %d closed at %d bytes, want %d", i, reply.BytesWritten(), sent[i]*mc.packet)
			}
			errs[i] = errors.Join(errs[i], err)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	if mc.topo.relayConns > 0 {
		// The relay runs alone, as BenchmarkChain/relay does.
		c.Close()
		stopPeers()
		relay := relayOver(b, mc.topo.relayConns, int64(b.N)*int64(mc.packet), mc.packet)
		b.ReportMetric(float64(relay)/float64(b.Elapsed()), "vs-relay")
	}
}
