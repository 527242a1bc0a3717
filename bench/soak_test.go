package bench_test

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/grouptest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

var soak = flag.Duration("soak", 0, "run TestSoak for this long (e.g. -soak=10m); 0 skips it")

// TestSoak streams mixed sizes over mixed routing tables through three
// peers for -soak, verifying every committed stream's checksum on every
// peer, and samples heap and goroutines to show they stay flat:
//
//	go test ./bench -run Soak -soak=10m -v
func TestSoak(t *testing.T) {
	if *soak <= 0 {
		t.Skip("soak runs only with -soak=DURATION")
	}
	sms := []*statemachine.Memory{statemachine.NewMemoryHashing(), statemachine.NewMemoryHashing(), statemachine.NewMemoryHashing()}
	peers := soakGroup(t, sms)
	c, err := datastream.NewClient(peers, datastream.WithLogger(discardLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ids := []string{peers[0].ID, peers[1].ID, peers[2].ID}
	tables := []func(primary int) *pb.RoutingTable{
		func(p int) *pb.RoutingTable { return pb.Chain(rotate(ids, p)...) },
		func(p int) *pb.RoutingTable { r := rotate(ids, p); return pb.Star(r[0], r[1:]...) },
	}

	var streams, bytes atomic.Int64
	var samples []sample
	ctx, cancel := context.WithTimeout(context.Background(), *soak)
	defer cancel()
	var wg sync.WaitGroup
	const workers = 8
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			for n := 0; ctx.Err() == nil; n++ {
				size := 1 << rng.IntN(25) // 1 B to 16 MiB
				size += rng.IntN(size)
				primary := rng.IntN(len(ids))
				table := tables[rng.IntN(len(tables))](primary)
				data := make([]byte, size)
				for i := range data {
					data[i] = byte(rng.Uint32())
				}
				sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
				out, err := c.Stream(sctx, []byte(fmt.Sprintf("soak-%d-%d", w, n)), datastream.WithPrimary(ids[primary]), datastream.WithRoutingTable(table))
				if err != nil {
					scancel()
					t.Errorf("stream: %v", err)
					return
				}
				for off := 0; off < len(data); {
					k := min(len(data)-off, 4<<10+rng.IntN(1<<20))
					out.WriteAsync(sctx, data[off:off+k])
					off += k
				}
				_, err = out.Close(sctx).Wait(sctx)
				scancel()
				if err != nil {
					t.Errorf("stream of %d bytes: %v", size, err)
					return
				}
				key := statemachine.StreamKey{ClientID: string(c.ID()), StreamID: out.ID()}
				want := sha256.Sum256(data)
				for i, sm := range sms {
					if got, ok := sm.Sum(key); !ok || got != want {
						t.Errorf("stream %v on peer %d: committed=%v checksum match=%v", key, i, ok, got == want)
					}
				}
				streams.Add(1)
				bytes.Add(int64(size))
			}
		}()
	}
	tick := time.NewTicker(max(*soak/20, time.Second))
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			samples = append(samples, takeSample(streams.Load(), bytes.Load()))
			s := samples[len(samples)-1]
			t.Logf("%6s streams=%d bytes=%d MiB heap=%d MiB goroutines=%d", s.at.Round(time.Second), s.streams, s.bytes>>20, s.heap>>20, s.goroutines)
		}
	}
	wg.Wait()
	if len(samples) < 4 {
		return
	}
	// Flat: the second half of the run may not grow past the first half's
	// peak by more than a margin for pool and GC noise.
	half := len(samples) / 2
	var peakHeap uint64
	peakG := 0
	for _, s := range samples[:half] {
		peakHeap, peakG = max(peakHeap, s.heap), max(peakG, s.goroutines)
	}
	for _, s := range samples[half:] {
		if s.heap > peakHeap*3/2+64<<20 {
			t.Errorf("heap grew: %d MiB at %v, first-half peak %d MiB", s.heap>>20, s.at, peakHeap>>20)
		}
		if s.goroutines > peakG+workers*4 {
			t.Errorf("goroutines grew: %d at %v, first-half peak %d", s.goroutines, s.at, peakG)
		}
	}
	t.Logf("soak: %d streams, %d MiB committed and verified on 3 peers", streams.Load(), bytes.Load()>>20)
}

type sample struct {
	at             time.Duration
	streams, bytes int64
	heap           uint64
	goroutines     int
}

var soakStart = time.Now()

func takeSample(streams, bytes int64) sample {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return sample{time.Since(soakStart), streams, bytes, m.HeapInuse, runtime.NumGoroutine()}
}

func rotate(ids []string, first int) []string {
	return append(append([]string(nil), ids[first:]...), ids[:first]...)
}

// soakGroup starts three peers with the given state machines.
func soakGroup(t *testing.T, sms []*statemachine.Memory) []group.Member {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, peers, _ := grouptest.StartServers(t, ctx, len(sms), grouptest.ServerOptions{
		ID:           func(i int) string { return fmt.Sprintf("soak-%d", i) },
		StateMachine: func(i int) statemachine.StateMachine { return sms[i] },
		Logger:       discardLogger(),
	})
	return peers
}
