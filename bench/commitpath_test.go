package bench_test

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
	"github.com/pipestream/pipestream/statemachine"
)

var benchLarge = flag.Bool("bench-large", false, "also run BenchmarkCommitPath's 1 GiB transfers")

// Shape of BenchmarkCommitPath's transfers.
const (
	commitEntry = 1 << 20 // bytes per log entry and per stream packet
	// commitInFlight is how many entries the log path keeps in flight:
	// hashicorp/raft's MaxAppendEntries, the most it sends in one batch.
	// Fewer hold the baseline back (8 gave half the disk throughput), more
	// gain nothing.
	commitInFlight = 64
)

// BenchmarkCommitPath is the comparison streaming exists for: the same
// bytes committed to a Raft group of three, once written through the Raft
// log and once streamed beside it and committed with one entry. One op is
// one transfer of the size in the name; MB/s is its payload rate.
//
//		BenchmarkCommitPath/<store>/<path>/<size>
//
//	  - path log: the client sends 1 MiB entries over a TCP connection to
//	    the leader's process, which appends each with raft.Node.ApplyData, 64
//	    in flight (hashicorp/raft batches what is queued); a transfer ends
//	    when every entry is committed and applied on the leader. The group
//	    snapshots and truncates its log as it goes. Both paths thus start
//	    with the client's bytes on the wire to one peer.
//	  - path stream: one stream from a datastream.Client through a chain of
//	    three peer.Peers, the leader first, in 1 MiB packets (the client's
//	    default window), closed and committed with one Raft entry.
//	  - store disk: both paths keep the Raft log in raft-boltdb, which syncs
//	    every append. The log path's nodes also append every entry to a file
//	    (not synced: the log is the durable copy); the stream path's peers
//	    store the stream in a statemachine.FileStore, which syncs it on close
//	    and renames it into place on commit.
//	  - store mem: in-memory Raft log and no storage at all (the log path's
//	    nodes count entries; the stream path's state machine counts bytes),
//	    to compare the transports alone.
//
// The 1 GiB transfers run only with -bench-large:
//
//	go test -run '^$' -bench CommitPath ./bench                    # 64 MiB
//	go test -run '^$' -bench CommitPath ./bench -args -bench-large # and 1 GiB
//
// When a size's log path ran first in the same process, the stream path
// also reports stream/log, the ratio of the two throughputs.
func BenchmarkCommitPath(b *testing.B) {
	sizes := []struct {
		name  string
		bytes int64
	}{{"64MiB", 64 << 20}, {"1GiB", 1 << 30}}
	rates := make(map[string]float64) // log path MB/s by store/size
	for _, store := range []struct {
		name   string
		onDisk bool
	}{{"disk", true}, {"mem", false}} {
		b.Run(store.name, func(b *testing.B) {
			b.Run("log", func(b *testing.B) {
				var sink func(int) raft.DataSink
				if store.onDisk {
					sink = func(int) raft.DataSink { return newFileSink(b, 256<<20) }
				}
				g := startRaftGroup(b, store.onDisk, sink)
				client := dialLogFront(b, startLogFront(b, g.leader(b), commitInFlight))
				for _, size := range sizes {
					b.Run(size.name, func(b *testing.B) {
						skipLarge(b, size.bytes)
						rates[store.name+size.name] = runTransfers(b, size.bytes, func(context.Context) error {
							return client.transfer(size.bytes, commitPayload)
						})
					})
				}
			})
			b.Run("stream", func(b *testing.B) {
				g := startPeerGroup(b, store.onDisk, func() statemachine.StateMachine { return nullStore{} }, nil)
				leader := g.leader(b)
				route := []string{leader}
				for _, m := range g.members {
					if m.ID != leader {
						route = append(route, m.ID)
					}
				}
				for _, size := range sizes {
					b.Run(size.name, func(b *testing.B) {
						skipLarge(b, size.bytes)
						rate := runTransfers(b, size.bytes, func(ctx context.Context) error {
							return streamTransfer(ctx, g.client, route, "commit-path-"+size.name, size.bytes)
						})
						if logRate := rates[store.name+size.name]; logRate > 0 {
							b.ReportMetric(rate/logRate, "stream/log")
						}
					})
				}
			})
		})
	}
}

func skipLarge(b *testing.B, n int64) {
	if n > 64<<20 && !*benchLarge {
		b.Skip("1 GiB transfers run with -bench-large")
	}
}

// runTransfers times b.N transfers of n bytes and returns their rate in
// MB/s, as the benchmark reports it.
func runTransfers(b *testing.B, n int64, transfer func(context.Context) error) float64 {
	b.SetBytes(n)
	b.ReportAllocs()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if err := transfer(ctx); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	return float64(n) * float64(b.N) / 1e6 / elapsed.Seconds()
}

// commitPayload is every entry's and packet's bytes; nothing modifies it,
// as ApplyData requires.
var commitPayload = func() []byte {
	p := make([]byte, commitEntry)
	for i := range p {
		p[i] = byte(i * 7)
	}
	return p
}()

// streamTransfer streams n bytes under name through the chain route, the
// first its primary, and returns once the stream is committed.
func streamTransfer(ctx context.Context, c *datastream.Client, route []string, name string, n int64) error {
	return streamTransferTable(ctx, c, route[0], pb.Chain(route...), name, n)
}

// streamTransferTable is streamTransfer through primary and the routing
// table.
func streamTransferTable(ctx context.Context, c *datastream.Client, primary string, table *pb.RoutingTable, name string, n int64) error {
	out, err := c.Stream(ctx, []byte(name), datastream.WithPrimary(primary), datastream.WithRoutingTable(table))
	if err != nil {
		return err
	}
	for off := int64(0); off < n; off += commitEntry {
		out.WriteAsync(ctx, commitPayload[:min(commitEntry, n-off)])
	}
	r, err := out.Close(ctx).Wait(ctx)
	if err != nil {
		return err
	}
	if got := r.BytesWritten(); got != uint64(n) {
		return fmt.Errorf("stream committed %d bytes, sent %d", got, n)
	}
	return nil
}
