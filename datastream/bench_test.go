package datastream_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/testkit"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

func hashing(int) statemachine.StateMachine { return statemachine.NewMemoryHashing() }

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// BenchmarkWrite measures one stream's write throughput with WriteAsync
// (one copy of the caller's bytes into the frame), to one peer and through
// a chain of three, up to the commit of the last packet. One op is one
// packet. The peers run in the same process, so allocations per op count
// theirs too.
func BenchmarkWrite(b *testing.B) {
	for _, peers := range []int{1, 3} {
		for _, size := range []int{4 << 10, 64 << 10, 1 << 20, 4 << 20} {
			b.Run(fmt.Sprintf("peers=%d/packet=%s", peers, sizeName(size)), func(b *testing.B) {
				g := startGroup(b, peers, groupOpts{sm: hashing})
				c := g.client(b)
				ctx := context.Background()
				data := testkit.RandomBytes(1, size)
				out, err := c.Stream(ctx, []byte("bench"))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := out.HeaderFuture().Wait(ctx); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					out.WriteAsync(ctx, data)
				}
				reply, err := out.Close(ctx).Wait(ctx)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if got, want := reply.BytesWritten(), uint64(b.N)*uint64(size); got != want {
					b.Fatalf("wrote %d bytes, want %d", got, want)
				}
			})
		}
	}
}

// BenchmarkWriteFile measures WriteFile in 1 MiB packets through a chain
// of three: sendfile on net.Conn against pooled reads on gnet. One op is
// one packet.
func BenchmarkWriteFile(b *testing.B) {
	const packet, fileSize = 1 << 20, 32 << 20
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		b.Run(kind.String(), func(b *testing.B) {
			g := startGroup(b, 3, groupOpts{kind: kind, sm: hashing})
			c := g.client(b, datastream.WithTransport(kind))
			f := testkit.TempFile(b, testkit.RandomBytes(2, fileSize))
			ctx := context.Background()
			out, err := c.Stream(ctx, []byte("bench"))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := out.HeaderFuture().Wait(ctx); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(packet)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				out.WriteFile(ctx, f, int64(i%(fileSize/packet))*packet, packet)
			}
			reply, err := out.Close(ctx).Wait(ctx)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			if got, want := reply.BytesWritten(), uint64(b.N)*packet; got != want {
				b.Fatalf("wrote %d bytes, want %d", got, want)
			}
		})
	}
}
