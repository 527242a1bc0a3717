package bench_test

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/leaktest"
	"github.com/pipestream/pipestream/metrics"
	"github.com/pipestream/pipestream/peer"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(labRoleEnv); role != "" {
		os.Exit(labMain(role)) // a process of BenchmarkLab
	}
	if addr := os.Getenv(connsAddrEnv); addr != "" {
		os.Exit(connsMain(addr)) // the clients of BenchmarkConns
	}
	if kind := os.Getenv(latencyClientEnv); kind != "" {
		os.Exit(latencyClientMain(kind)) // the client of BenchmarkLatencyProcs
	}
	leaktest.VerifyTestMain(m)
}

const (
	packetSize = 1 << 20
	chainLen   = 3
	// patience bounds every wait, so that a bug fails a benchmark instead
	// of hanging it.
	patience = 60 * time.Second
)

// BenchmarkChain compares one stream through three peers with a plain TCP
// relay over three hops; see the package doc. Each stream variant also runs
// the relay with as many packets right after its timed part, untimed, and
// reports its throughput as a fraction of that relay's (vs-relay), so the
// ratio compares two runs moments apart on the same, possibly busy,
// machine.
func BenchmarkChain(b *testing.B) {
	b.Run("relay", benchRelay)
	b.Run("relay-file", benchRelayFile)
	b.Run("grpc", benchGRPC)
	counting := func(testing.TB) statemachine.StateMachine { return &countingSM{} }
	fileStore := func(tb testing.TB) statemachine.StateMachine { return newSM(tb, smFile) }
	for _, v := range []struct {
		name   string
		kind   transport.Kind
		sm     func(testing.TB) statemachine.StateMachine
		opts   []datastream.Option
		events bool
		// files: compared with benchRelayFile instead of benchRelay.
		files bool
		// packet is the packet size, packetSize unless set.
		packet int
		// raft: full peer.Peers that commit the CLOSE through Raft
		// instead of bare server.Servers that commit it alone.
		raft bool
	}{
		{"stream", transport.Gnet, counting, nil, false, false, 0, false},
		{"stream-netconn", transport.NetConn, counting, nil, false, false, 0, false},
		{"stream-sha256", transport.Gnet, func(testing.TB) statemachine.StateMachine { return statemachine.NewMemoryHashing() }, nil, false, false, 0, false},
		// A FileStore on every peer: a write, a SHA-256 and, on CLOSE, an
		// fsync per peer, against relay-file's write and fsync per peer.
		{"stream-file", transport.Gnet, fileStore, nil, false, true, 0, false},
		// What end-to-end checksums cost: the same stream without them.
		{"stream-nochecksum", transport.Gnet, counting, []datastream.Option{datastream.WithChecksums(false)}, false, false, 0, false},
		// What the events hook costs: the stream with every peer's
		// server.Config.Events set to a metrics.Metrics.
		{"stream-events", transport.Gnet, counting, nil, true, false, 0, false},
		// Smaller packets, each against a relay whose client writes
		// packets of the same size.
		{"stream-64KiB", transport.Gnet, counting, nil, false, false, 64 << 10, false},
		{"stream-4KiB", transport.Gnet, counting, nil, false, false, 4 << 10, false},
		// What the commit of a real group costs: stream through three
		// peer.Peers, its CLOSE committed by a Raft entry.
		{"stream-raft", transport.Gnet, counting, nil, false, false, 0, true},
	} {
		b.Run(v.name, func(b *testing.B) {
			size := cmp.Or(v.packet, packetSize)
			if v.raft {
				benchStreamRaft(b, v.kind, v.sm, size, v.opts...)
			} else {
				benchStream(b, v.kind, v.sm, v.events, size, v.opts...)
			}
			var relay time.Duration
			if size == packetSize {
				relay = relayTime(b, b.N, v.files)
			} else {
				relay = relayOver(b, chainLen, int64(b.N)*int64(size), size)
			}
			b.ReportMetric(float64(relay)/float64(b.Elapsed()), "vs-relay")
		})
	}
}

// benchStream writes b.N packets on one stream through a chain of three
// server.Servers, each committing alone, and closes it (sendStream).
// With events, each peer's server.Config.Events is a metrics.Metrics, and
// each must have counted every packet written.
func benchStream(b *testing.B, kind transport.Kind, sm func(testing.TB) statemachine.StateMachine, events bool, size int, opts ...datastream.Option) {
	var (
		tune []func(int, *server.Config)
		regs [chainLen]*prometheus.Registry
	)
	if events {
		tune = append(tune, func(i int, c *server.Config) {
			regs[i] = prometheus.NewRegistry()
			c.Events = metrics.New(regs[i])
		})
	}
	peers, sms := startChain(b, kind, sm, tune...)
	sendStream(b, kind, peers, sms, size, opts...)
	for i, reg := range regs {
		if reg == nil {
			continue
		}
		// b.N data packets and the CLOSE.
		if got := writtenPackets(b, reg); got != float64(b.N+1) {
			b.Fatalf("%s: events counted %v packets written, want %d", peers[i].ID, got, b.N+1)
		}
	}
}

// benchStreamRaft is benchStream through a Raft group of three
// peer.Peers (in-memory Raft logs, the state machines sm returns), the
// leader first, so that the CLOSE's reply waits for a Raft entry committed
// by the group as well as for every peer's copy.
func benchStreamRaft(b *testing.B, kind transport.Kind, sm func(testing.TB) statemachine.StateMachine, size int, opts ...datastream.Option) {
	var sms []statemachine.StateMachine
	g := startPeerGroup(b, false, func() statemachine.StateMachine {
		s := sm(b)
		sms = append(sms, s)
		return s
	}, func(c *peer.Config) {
		c.Transport = kind
		c.InlineWrites = writesInline(c.StateMachine)
	})
	// The leader first, as BenchmarkCommitPath routes: its commit is then
	// applied where the CLOSE arrives.
	id := g.leader(b)
	leader := slices.IndexFunc(g.members, func(m group.Member) bool { return m.ID == id })
	peers := append(slices.Clone(g.members[leader:]), g.members[:leader]...)
	sms = append(slices.Clone(sms[leader:]), sms[:leader]...)
	// The leader's state machine links the stream before the CLOSE is
	// answered; the followers' link it when their Raft logs apply the
	// entry, a moment later, waited for here with the timer stopped.
	sendStream(b, kind, peers, sms[:1], size, opts...)
	want := uint64(b.N) * uint64(size)
	deadline := time.Now().Add(patience)
	for i, sm := range sms {
		n, ok := sm.(*countingSM)
		for ok && n.linked.Load() != want {
			if time.Now().After(deadline) {
				b.Fatalf("%s linked %d bytes within %v, want %d", peers[i].ID, n.linked.Load(), patience, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// sendStream writes b.N packets on one stream through peers, a chain in
// their order, and closes it: the timed part of every BenchmarkChain
// stream variant. sms are the state machines of the first peers, which
// must have linked every byte once the CLOSE is answered.
func sendStream(b *testing.B, kind transport.Kind, peers []group.Member, sms []statemachine.StateMachine, size int, opts ...datastream.Option) {
	b.Helper()
	opts = append([]datastream.Option{datastream.WithTransport(kind), datastream.WithLogger(discardLogger())}, opts...)
	c, err := datastream.NewClient(peers, opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), patience+time.Duration(b.N)*100*time.Millisecond)
	defer cancel()
	ids := make([]string, len(peers))
	for i, p := range peers {
		ids[i] = p.ID
	}
	out, err := c.Stream(ctx, []byte("bench"), datastream.WithRoutingTable(pb.Chain(ids...)))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := out.HeaderFuture().Wait(ctx); err != nil {
		b.Fatal(err)
	}
	// Like the relay's client, which writes the same bytes for every
	// packet, the stream sends one pooled buffer again and again: Send
	// takes a reference and neither copies nor allocates.
	payload := buffer.Get(size)
	defer payload.Release()
	for i := range payload.Bytes() {
		payload.Bytes()[i] = byte(i)
	}

	b.SetBytes(int64(size))
	b.ReportAllocs()
	m := startMallocs(b)
	// allocs/packet spreads the stream's fixed costs (pools filling up,
	// the CLOSE and its commit) over b.N packets; steady-allocs/packet
	// counts only what the process allocates while the second half of
	// the packets goes out, the data path's running cost once the pools
	// hold what the window keeps in flight (a few windows' worth), and
	// steady-gcs the garbage collections meanwhile; steady-B/GiB and
	// steady-gcs/GiB are the bytes allocated and the collections per GiB
	// streamed in that part, the garbage the data path makes.
	warm := b.N / 2
	var steady runtime.MemStats
	for i := range b.N {
		if i == warm {
			runtime.ReadMemStats(&steady)
		}
		if err := out.Send(ctx, payload.Retain()); err != nil {
			b.Fatal(err)
		}
	}
	if n := b.N - warm; n > 0 {
		var end runtime.MemStats
		runtime.ReadMemStats(&end)
		b.ReportMetric(float64(end.Mallocs-steady.Mallocs)/float64(n), "steady-allocs/packet")
		b.ReportMetric(float64(end.NumGC-steady.NumGC), "steady-gcs")
		gib := float64(n) * float64(size) / (1 << 30)
		b.ReportMetric(float64(end.TotalAlloc-steady.TotalAlloc)/gib, "steady-B/GiB")
		b.ReportMetric(float64(end.NumGC-steady.NumGC)/gib, "steady-gcs/GiB")
	}
	reply, err := out.Close(ctx).Wait(ctx)
	m.stop(b)
	if err != nil {
		b.Fatal(err)
	}
	want := uint64(b.N) * uint64(size)
	if got := reply.BytesWritten(); got != want {
		b.Fatalf("stream closed at %d bytes, want %d", got, want)
	}
	for i, sm := range sms {
		if n, ok := sm.(*countingSM); ok && n.linked.Load() != want {
			b.Fatalf("%s linked %d bytes, want %d", peers[i].ID, n.linked.Load(), want)
		}
	}
}

// writtenPackets reads pipestream_packets_total{stage="written"} from reg.
func writtenPackets(b *testing.B, reg *prometheus.Registry) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "pipestream_packets_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "stage" && l.GetValue() == "written" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	b.Fatal("no pipestream_packets_total{stage=\"written\"}")
	return 0
}

// startChain starts three peers, each with a state machine from newSM,
// and waits until each reaches the others. They are shut down when b ends.
func startChain(b *testing.B, kind transport.Kind, newSM func(testing.TB) statemachine.StateMachine, tune ...func(int, *server.Config)) ([]group.Member, []statemachine.StateMachine) {
	b.Helper()
	sms := make([]statemachine.StateMachine, chainLen)
	for i := range sms {
		sms[i] = newSM(b)
	}
	peers, _ := startServers(b, kind, sms, tune...)
	return peers, sms
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// countingSM is a state machine that stores nothing: it counts each
// stream's bytes, so that Link can check the length and the benchmark can
// check that every byte reached every peer.
type countingSM struct {
	linked atomic.Uint64 // bytes of the streams linked so far
}

func (m *countingSM) OpenStream(context.Context, statemachine.StreamKey, *pb.RaftClientRequest) (statemachine.DataChannel, error) {
	return &countingChannel{}, nil
}

func (m *countingSM) Link(_ context.Context, e statemachine.Entry, ch statemachine.DataChannel) error {
	if ch == nil {
		return nil
	}
	if n := ch.(*countingChannel).n; n != e.Length {
		return fmt.Errorf("bench: stream %v holds %d bytes, entry names %d", e.Key, n, e.Length)
	}
	m.linked.Add(e.Length)
	return nil
}

// writesInline reports whether sm's writes may run on the event loop
// (server.Config.InlineWrites): the counting state machine's only add to a
// counter. Memory's hashing and FileStore's page-cache writes take longer
// and stay on the executor.
func writesInline(sm statemachine.StateMachine) bool {
	_, ok := sm.(*countingSM)
	return ok
}

// countingChannel is used by one executor at a time.
type countingChannel struct{ n uint64 }

func (c *countingChannel) Write(p []byte) (int, error) { c.n += uint64(len(p)); return len(p), nil }
func (c *countingChannel) Sync() error                 { return nil }
func (c *countingChannel) Close() error                { return nil }
func (c *countingChannel) CleanUp() error              { return nil }

// mallocs measures the heap allocations of the whole process over the
// timed part of a benchmark and reports them per packet.
type mallocs struct{ start uint64 }

// startMallocs resets the timer and starts counting.
func startMallocs(b *testing.B) mallocs {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ResetTimer()
	return mallocs{start: ms.Mallocs}
}

// stop stops the timer and reports allocs/packet.
func (m mallocs) stop(b *testing.B) {
	b.StopTimer()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.Mallocs-m.start)/float64(b.N), "allocs/packet")
}
