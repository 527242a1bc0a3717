package server_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

// The fault tests of issue 9. In every case: no committed stream has wrong
// bytes, no stream is committed that should not be, and every goroutine
// (TestMain) and pooled buffer (buffertest) is released.

// TestFaultSuccessorKilled kills a successor while streams are in flight:
// some committed before the kill, some held mid-stream across it, some
// racing it.
//
// Without a Committer (standalone) each peer links a stream as soon as
// CLOSE succeeded on it and on everything downstream, so links happen
// downstream first: a stream may be committed on a successor and fail on
// its predecessors when the kill falls between the two. What holds, and is
// checked, is the order: committed on a peer implies committed on every
// peer downstream of it, and committed on the primary is the same as a
// successful reply to the client. So a stream the client was told is
// committed is committed, with the right bytes, on every peer of its
// route.
//
// With a Committer (here one that stands in for Raft by linking the entry
// on every live peer) only the committed entry links: committed on any
// peer is committed on every live one, and the same as the client's
// success. A peer that parked a closed stream which is then never
// committed lets go of it at the link timeout.
func TestFaultSuccessorKilled(t *testing.T) {
	chain := func(ids []string) *pb.RoutingTable { return pb.Chain(ids...) }
	star := func(ids []string) *pb.RoutingTable { return pb.Star(ids[0], ids[1:]...) }
	for _, tc := range []struct {
		name   string
		table  func(ids []string) *pb.RoutingTable
		victim int
		commit bool // with a Committer
		// downstream lists, for each peer, the peers where a stream
		// committed on it must be committed too.
		downstream [][]int
	}{
		{"standalone/chain-middle", chain, 1, false, [][]int{{1}, {2}, {}}},
		{"standalone/chain-tail", chain, 2, false, [][]int{{1}, {2}, {}}},
		{"standalone/star", star, 1, false, [][]int{{1, 2}, {}, {}}},
		{"committer/chain-middle", chain, 1, true, [][]int{{2}, {0, 2}, {0}}},
		{"committer/star", star, 1, true, [][]int{{2}, {0, 2}, {0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buffertest.Check(t)
			g := startGroup(t, 3, groupOpts{quorum: handler.QuorumAll})
			fc := &fanoutCommitter{peers: g.servers, down: map[int]bool{}}
			if tc.commit {
				for _, s := range g.servers {
					s.SetCommitter(fc)
				}
			}
			c := g.client(t)
			table := tc.table(g.ids())
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			type result struct {
				class string // before, held or racing
				key   statemachine.StreamKey
				sum   [32]byte
				err   error
			}
			var (
				mu      sync.Mutex
				results []result
				wg      sync.WaitGroup
			)
			run := func(class string, seed uint64, size, pkt int, midway func()) {
				defer wg.Done()
				data := randomBytes(seed, size)
				r := result{class: class, sum: sum(data)}
				out, err := c.Stream(ctx, []byte(fmt.Sprintf("%s-%d", class, seed)), datastream.WithRoutingTable(table))
				if err != nil {
					r.err = err
					if midway != nil {
						midway() // so that the kill does not wait for it
					}
				} else {
					r.key = key(c, out)
					if midway != nil {
						half := size / 2
						var last *datastream.Future[*datastream.Reply]
						for off := 0; off < half; off += pkt {
							last = out.WriteAsync(ctx, data[off:min(off+pkt, half)])
						}
						if _, err := last.Wait(ctx); err != nil {
							t.Errorf("%s stream %d failed before the kill: %v", class, seed, err)
						}
						midway()
						data = data[half:] // the stream's offset is at half
					}
					r.err = writeAll(ctx, out, data, pkt)
				}
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}

			// Committed before the kill.
			for i, size := range []int{1 << 10, 300 << 10, 2 << 20} {
				wg.Add(1)
				run("before", uint64(i), size, 64<<10, nil)
			}
			// Held mid-stream, every packet so far acknowledged by every
			// peer, until the victim is dead.
			killed := make(chan struct{})
			var ready sync.WaitGroup
			for i := range 3 {
				ready.Add(1)
				wg.Add(1)
				go run("held", uint64(10+i), 2<<20+i, 64<<10, func() { ready.Done(); <-killed })
			}
			ready.Wait()
			// Racing the kill: writing and closing while it happens. The
			// kill comes when the first two are done, so that others are
			// likely closing.
			sizes := []int{16 << 10, 64 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20}
			finished := make(chan struct{}, len(sizes))
			for i, size := range sizes {
				wg.Add(1)
				go func() {
					run("racing", uint64(20+i), size, 64<<10, nil)
					finished <- struct{}{}
				}()
			}
			<-finished
			<-finished
			fc.markDown(tc.victim)
			g.kill(t, tc.victim)
			close(killed)
			wg.Wait()

			committed := make([]map[statemachine.StreamKey]bool, len(g.servers))
			for p := range g.servers {
				committed[p] = committedKeys(g.memory(p))
			}
			outcomes := map[string]int{}
			for _, r := range results {
				if r.key == (statemachine.StreamKey{}) {
					t.Errorf("%s stream not opened: %v", r.class, r.err)
					continue
				}
				on := ""
				for p := range g.servers {
					if !committed[p][r.key] {
						continue
					}
					on += g.peers[p].ID[:1]
					// No committed stream has wrong (or no) bytes.
					if got, ok := g.memory(p).Sum(r.key); !ok || got != r.sum {
						t.Errorf("%s stream %v committed on %s: has data=%v, checksum match=%v", r.class, r.key, g.peers[p].ID, ok, got == r.sum)
					}
					for _, d := range tc.downstream[p] {
						if !committed[d][r.key] {
							t.Errorf("%s stream %v committed on %s but not downstream on %s", r.class, r.key, g.peers[p].ID, g.peers[d].ID)
						}
					}
				}
				if (r.err == nil) != committed[0][r.key] {
					t.Errorf("%s stream %v: client error %v, committed on the primary=%v", r.class, r.key, r.err, committed[0][r.key])
				}
				// A stream that fails with nothing in flight, as the held
				// ones, has no packet to answer with the cause; the
				// primary drops it at once and answers its next packet
				// with UNKNOWN_STREAM.
				if r.err != nil && !isCode(r.err, pb.ErrorCode_SUCCESSOR_FAILED, pb.ErrorCode_CANCELLED, pb.ErrorCode_UNKNOWN_STREAM) {
					t.Errorf("%s stream %v failed with %v, want SUCCESSOR_FAILED, CANCELLED or UNKNOWN_STREAM", r.class, r.key, r.err)
				}
				switch r.class {
				case "before":
					if r.err != nil || on != "abc" {
						t.Errorf("stream committed before the kill: error %v, committed on %q", r.err, on)
					}
				case "held":
					if r.err == nil || on != "" {
						t.Errorf("stream held across the kill: error %v, committed on %q", r.err, on)
					}
				}
				outcomes[fmt.Sprintf("%s committed on %q", r.class, on)]++
			}
			t.Logf("outcomes: %v", outcomes)
			if tc.commit {
				// A peer that parked a closed stream keeps it until its
				// entry comes or the link timeout passes: it cannot tell
				// whether the primary will still commit it. Let that
				// time pass once the open streams are gone.
				waitFor(t, 10*time.Second, "open streams ending", func() bool {
					for _, s := range g.servers {
						if s.Streams().Active() != 0 {
							return false
						}
					}
					return true
				})
				for p, s := range g.servers {
					if n := s.Streams().Pending(); n > 0 {
						t.Logf("%s holds %d closed streams that were never committed", g.peers[p].ID, n)
					}
					s.Streams().Sweep(time.Now().Add(s.Streams().Config().LinkTimeout + time.Second))
				}
			}
			// Survivors and the victim alike hold no open stream and no
			// uncommitted data once the failures have run their course.
			g.waitClean(t)
		})
	}
}

// fanoutCommitter stands in for Raft: it commits a stream's entry by
// linking it, in log order, on every peer not marked down, as each peer's
// log applier would.
type fanoutCommitter struct {
	mu    sync.Mutex
	index uint64
	peers []*server.Server
	down  map[int]bool
}

func (f *fanoutCommitter) Commit(ctx context.Context, s statemachine.StreamInfo) (*pb.RaftClientReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index++
	e := statemachine.Entry{Index: f.index, Term: 1, Key: s.Key, Request: s.Request, Length: s.Length, Holders: s.Holders, Epoch: s.Epoch}
	for i, p := range f.peers {
		if f.down[i] {
			continue
		}
		if err := p.Streams().Link(ctx, e); err != nil {
			return nil, fmt.Errorf("link on %s: %w", p.ID(), err)
		}
	}
	return &pb.RaftClientReply{
		ClientId: s.Request.GetClientId(), CallId: s.Request.GetCallId(),
		Success: true, LogIndex: e.Index, Term: e.Term,
	}, nil
}

// commitByFanout makes every server of g commit through one
// fanoutCommitter, which links each stream on every peer but the down ones.
func (g *cluster) commitByFanout(down ...int) {
	fc := &fanoutCommitter{peers: g.servers, down: map[int]bool{}}
	for _, i := range down {
		fc.down[i] = true
	}
	for _, s := range g.servers {
		s.SetCommitter(fc)
	}
}

// markDown stops linking on peer i; it returns once no commit links there.
func (f *fanoutCommitter) markDown(i int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down[i] = true
}

// TestFaultSuccessorStopsReading puts a proxy between the primary and its
// successor and pauses it, so the successor reads nothing more, while a
// client streams 256 MiB. The client's window fills and its writes block:
// what the primary buffers stays within the window, not the stream. The
// primary's reply timeout then fails the stream, and once the successor
// reads again (resume) or its connection is cut, every peer lets go of it
// and the chain serves new streams.
func TestFaultSuccessorStopsReading(t *testing.T) {
	for _, then := range []string{"resume", "cut"} {
		t.Run(then, func(t *testing.T) {
			buffertest.Check(t)
			const replyTimeout = 2 * time.Second
			g, proxies := startGroupVia(t, 3, groupOpts{quorum: handler.QuorumAll, tweak: func(c *server.Config) {
				c.ReplyTimeout = replyTimeout
				c.RedialInterval = 100 * time.Millisecond
			}}, edge{0, 1})
			px := proxies[edge{0, 1}]
			c := g.client(t, datastream.WithReplyTimeout(2*replyTimeout))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out := openStream(t, ctx, c, "stalled")
			if _, err := out.HeaderFuture().Wait(ctx); err != nil {
				t.Fatal(err)
			}
			const (
				total  = 256 << 20
				pkt    = 1 << 20
				window = datastream.DefaultWindowBytes
			)
			chunk := randomBytes(5, pkt)
			var base runtime.MemStats
			runtime.GC()
			runtime.GC()
			runtime.ReadMemStats(&base)

			px.Pause()
			var sent atomic.Int64 // bytes WriteAsync took; may count one failed write
			done := make(chan error, 1)
			go func() {
				for off := 0; off < total && out.Err() == nil; off += pkt {
					out.WriteAsync(ctx, chunk)
					sent.Add(pkt)
				}
				_, err := out.Close(ctx).Wait(ctx)
				done <- err
			}()
			// Slowed: the window fills and stays full, nothing is
			// answered; or, on a machine slow enough to take the reply
			// timeout to send a window, failed first.
			waitFor(t, 10*time.Second, "the client's window filling", func() bool {
				n, _, _ := out.InFlight()
				return n == window || out.Err() != nil
			})
			_, _, peak := out.InFlight()
			var stalled runtime.MemStats
			runtime.GC()
			runtime.GC() // and idle pooled buffers, which sync.Pool keeps for one more
			runtime.ReadMemStats(&stalled)
			// The primary holds each packet's frame until the successor
			// answers: a window of packets, in pooled buffers of the next
			// power of two, so twice the window for 1 MiB packets, whose
			// frames are a little over 1 MiB. gnet holds a copy of what
			// the socket to the proxy did not take, in a buffer that
			// grows by doubling: up to twice the window again. The
			// client's frames leave as the primary reads them. 16 MiB
			// covers the rest. All of it is bounded by the window, not
			// the 256 MiB stream.
			grown := int64(stalled.HeapInuse) - int64(base.HeapInuse)
			if limit := int64(4*window + 16<<20); grown > limit {
				t.Errorf("heap grew by %d MiB with the successor stalled, more than the %d MiB the window allows", grown>>20, limit>>20)
			}
			t.Logf("heap grew by %.1f MiB with the successor stalled", float64(grown)/(1<<20))

			// Then failed: the primary's reply timeout (or the client's)
			// ends the stream.
			var err error
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("the stalled stream neither failed nor finished")
			}
			if !errors.Is(err, datastream.ErrTimeout) && !errors.Is(err, datastream.ErrReplyTimeout) {
				t.Fatalf("stalled stream: %v, want a reply timeout", err)
			}
			st := px.Stats()
			if _, _, p := out.InFlight(); p > window {
				t.Errorf("%d bytes were in flight at once; the window is %d", p, window)
			}
			// Nothing was answered that the successor did not get, so the
			// client sent at most that plus one window.
			if s := sent.Load(); s > st.ToTarget+window+pkt || s >= total {
				t.Errorf("the client sent %d MiB while the successor got %d MiB", s>>20, st.ToTarget>>20)
			}
			t.Logf("client sent %d MiB, successor got %d bytes, window filled: %v, stream failed with: %v", sent.Load()>>20, st.ToTarget, peak == window, err)

			switch then {
			case "resume":
				px.Resume()
			case "cut":
				px.Cut()
				px.Resume() // for the connection the primary dials next
			}
			g.waitClean(t)
			for p := range g.servers {
				if committedKeys(g.memory(p))[key(c, out)] {
					t.Errorf("%s committed the failed stream", g.peers[p].ID)
				}
			}
			g.commitsEventually(t, c, pb.Chain(g.ids()...), func(err error) bool {
				return isCode(err, pb.ErrorCode_SUCCESSOR_FAILED)
			})
		})
	}
}
