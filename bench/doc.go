// Package bench holds pipestream's end-to-end benchmarks and the baselines
// they are judged against. It has no API: everything is in its _test.go
// files. Run them all with
//
//	go test -run '^$' -bench . ./bench
//
// # BenchmarkChain
//
// One stream through a chain of three peers on loopback, 1 MiB packets,
// beside the cheapest way to move the same bytes over the same three hops.
// One op is one 1 MiB packet (the MB/s column is the stream's payload rate).
//
//   - stream: three server.Server peers on gnet (the default transport) and
//     a datastream.Client. The stream is opened, and its header answered,
//     before the timer starts; the timed part sends b.N packets with Send,
//     one pooled buffer again and again, as the relay's client writes the
//     same bytes again and again (the client's window keeps up to 16 MiB in
//     flight), and then closes the stream and waits for the reply to CLOSE,
//     which comes once every peer has written, forwarded, acknowledged and
//     linked all of it. The state machine counts bytes and stores nothing,
//     so that the numbers are the data path's and not a hash's or a disk's;
//     since counting never blocks, the peers run with
//     server.Config.InlineWrites.
//   - stream-netconn: the same over the net.Conn transport.
//   - stream-raft: the same through three peer.Peers instead of bare
//     server.Servers: a Raft group with in-memory logs, the leader first
//     in the chain, the same counting state machine and InlineWrites. Its
//     CLOSE is answered only once the group has committed the stream's
//     Raft entry, as in service; the bare servers commit alone.
//   - stream-sha256: the same as stream with statemachine.NewMemoryHashing,
//     which hashes every byte on every peer: what a state machine that
//     touches the data costs on top.
//   - relay: the baseline. The client writes the same bytes to hop 1, which
//     copies them to hop 2 and on to hop 3 through a 1 MiB user-space buffer
//     per hop (io.CopyBuffer with splice and sendfile ruled out), with no
//     framing, no replies and no state machine; hop 3 counts and discards,
//     and at the end sends the total back along the chain, so that the
//     client knows that everything arrived.
//   - relay-file and stream-file: the same pair with files. relay-file's
//     hops and sink also write every byte to a file and fsync it at the
//     end; stream-file's peers store into a statemachine.FileStore (a
//     write, a SHA-256, an fsync on CLOSE), and its vs-relay is against
//     relay-file.
//   - grpc: the packets down a chain of three grpc-go bidi streams (a
//     hand-written service relaying []byte messages hop to hop, the last
//     hop answering each with 8 bytes, see grpc_test.go): what the same
//     chain costs built on grpc-go. Its MB/s is its own run's.
//   - stream-64KiB and stream-4KiB: stream with packets of that size,
//     each against a relay whose client writes packets of the same size.
//
// Each stream variant also reports vs-relay: its throughput as a fraction
// of the relay's, where the relay carries the same number of packets right
// after the stream's timed part (untimed, so it does not change ns/op). The
// machine these run on is shared and loopback throughput swings from run
// to run; a ratio of two runs moments apart is steadier than either
// number. Compare with -count and benchstat rather than single numbers.
//
// Besides B/op and allocs/op, each variant reports allocs/packet: the
// process-wide heap allocations (runtime.MemStats.Mallocs) in the timed
// part divided by the packets, which allocs/op also counts but rounds; and
// steady-allocs/packet and steady-gcs, the allocations per packet and the
// garbage collections in the second half of the packets, before the CLOSE,
// without the stream's fixed costs (the first half fills the pools up to
// what the window keeps in flight; the commit comes after), and the
// same part's bytes allocated and collections per GiB streamed
// (steady-B/GiB, steady-gcs/GiB). Client
// and servers share the process, so these count both; to see which
// sites allocate, and which side they are on, profile every allocation:
//
//	go test -run '^$' -bench 'Chain/stream$' -memprofile mem.out -memprofilerate 1 ./bench
//	go tool pprof -sample_index=alloc_objects -top mem.out
//	go tool pprof -sample_index=alloc_objects -top -focus=datastream mem.out  # the client's share
//
// # The other benchmarks
//
// BenchmarkMatrix covers topologies, packet sizes, stream counts and state
// machines; BenchmarkLatency times a 4 KiB SYNC write against a raw TCP
// ping-pong and a grpc-go bidi-stream chain, both run alone in a child
// process (BenchmarkAlone), and against the ping-pong served by event
// loops in another (BenchmarkAloneEventLoops); BenchmarkLatencyProcs
// (only with -latency.procs) times the same write with every peer and the
// client a process of its own; BenchmarkCommitPath compares streaming with
// the Raft log; BenchmarkConns (only when -bench names it) opens 10,000
// client connections to one peer. bench/report.sh runs the ones the
// issue's goals name and prints each goal with its ratio.
package bench
