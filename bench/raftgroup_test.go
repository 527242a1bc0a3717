package bench_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/peer"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
	"github.com/pipestream/pipestream/statemachine"
)

// Helpers for benchmarks that need a Raft group: bare raft.Nodes for the
// log path, full peer.Peers for the streamed path.

// groupSize is the number of peers in a Raft group.
const groupSize = 3

// groupPatience bounds starting a group and waiting for its leader.
const groupPatience = 30 * time.Second

// Raft timeouts for benchmarks: generous, so that a busy machine syncing
// large batches does not depose the leader in the middle of a transfer.
const (
	benchHeartbeat   = 2 * time.Second
	benchLeaderLease = time.Second
)

// benchRaftTuning is the tuning of every Raft node the benchmarks start:
// the timeouts above, and snapshots small and often enough that the log
// path pays for its compaction during a run, as it would in service.
var benchRaftTuning = raft.Tuning{
	HeartbeatTimeout:   benchHeartbeat,
	ElectionTimeout:    benchHeartbeat,
	LeaderLeaseTimeout: benchLeaderLease,
	SnapshotInterval:   50 * time.Millisecond,
	SnapshotThreshold:  16,
	TrailingLogs:       16,
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// raftGroup is groupSize raft.Nodes on loopback.
type raftGroup struct {
	nodes []*raft.Node
}

// startRaftGroup starts a Raft group with boltdb stores under a temporary
// directory if onDisk, in memory otherwise, and waits for its leader. sink
// gives node i its DataSink. The log is snapshotted and truncated as it
// goes, so a GiB through it does not stay in memory.
func startRaftGroup(b *testing.B, onDisk bool, sink func(i int) raft.DataSink) *raftGroup {
	b.Helper()
	// The first TempDir registers its removal; taken before the cleanup
	// below, it runs after the nodes have stopped writing.
	b.TempDir()
	g := &raftGroup{}
	b.Cleanup(func() {
		for _, n := range g.nodes {
			if err := n.Shutdown(); err != nil {
				b.Error(err)
			}
		}
	})
	var peers []peer.Member
	for i := range groupSize {
		cfg := raft.Config{
			ID:         fmt.Sprintf("n%d", i),
			RaftAddr:   "127.0.0.1:0",
			CommitAddr: "127.0.0.1:0",
			Logger:     quietLog(),
			Tuning:     benchRaftTuning,
		}
		if onDisk {
			cfg.Dir = b.TempDir()
		}
		if sink != nil {
			cfg.DataSink = sink(i)
		}
		n, err := raft.New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		g.nodes = append(g.nodes, n)
		peers = append(peers, n.Addr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), groupPatience)
	defer cancel()
	for _, n := range g.nodes {
		if err := n.Start(ctx, peers); err != nil {
			b.Fatal(err)
		}
	}
	for _, n := range g.nodes {
		if _, err := n.WaitLeader(ctx); err != nil {
			b.Fatal(err)
		}
	}
	return g
}

// leader returns the node that leads.
func (g *raftGroup) leader(b *testing.B) *raft.Node {
	b.Helper()
	for range 1000 {
		for _, n := range g.nodes {
			if n.IsLeader() {
				return n
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatal("no leader")
	return nil
}

// fileSink is a raft.DataSink that appends every entry to one file, the
// log path's counterpart of a FileStore. The file starts over every
// rotate bytes, so that repeated transfers do not fill the disk. It does
// not sync: the Raft log, synced on every append, is the durable copy.
type fileSink struct {
	f      *os.File
	rotate int64
	off    int64
}

func newFileSink(b *testing.B, rotate int64) *fileSink {
	b.Helper()
	f, err := os.Create(filepath.Join(b.TempDir(), "entries"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return &fileSink{f: f, rotate: rotate}
}

// WriteEntry implements raft.DataSink; the FSM calls it from one goroutine.
func (s *fileSink) WriteEntry(_ uint64, data []byte) error {
	if s.off+int64(len(data)) > s.rotate {
		if err := s.f.Truncate(0); err != nil {
			return err
		}
		s.off = 0
	}
	n, err := s.f.WriteAt(data, s.off)
	s.off += int64(n)
	return err
}

// peerGroup is groupSize peer.Peers on loopback and a client for them.
type peerGroup struct {
	peers   []*peer.Peer
	members []peer.Member
	client  *datastream.Client
}

// startPeerGroup starts full peers, each with a DataDir under a temporary
// directory if onDisk (raft-boltdb and a FileStore), or in memory with the
// state machine newSM returns, and waits until they are ready. tune, if
// set, changes each peer's configuration last.
func startPeerGroup(b *testing.B, onDisk bool, newSM func() statemachine.StateMachine, tune func(*peer.Config), opts ...datastream.Option) *peerGroup {
	b.Helper()
	b.TempDir() // see startRaftGroup
	g := &peerGroup{}
	b.Cleanup(func() {
		if g.client != nil {
			g.client.Close()
		}
		for _, p := range g.peers {
			if err := p.Shutdown(context.Background()); err != nil {
				b.Error(err)
			}
		}
	})
	var ids []peer.Member
	for i := range groupSize {
		ids = append(ids, peer.Member{ID: fmt.Sprintf("p%d", i)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), groupPatience)
	defer cancel()
	for _, m := range ids {
		cfg := peer.Config{ID: m.ID, Peers: ids, Logger: quietLog(), Raft: peer.RaftTuning{
			HeartbeatTimeout:   benchHeartbeat,
			ElectionTimeout:    benchHeartbeat,
			LeaderLeaseTimeout: benchLeaderLease,
		}}
		if onDisk {
			cfg.DataDir = b.TempDir()
		} else {
			cfg.StateMachine = newSM()
		}
		if tune != nil {
			tune(&cfg)
		}
		p, err := peer.New(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		g.peers = append(g.peers, p)
		g.members = append(g.members, p.Addrs())
	}
	for _, p := range g.peers {
		if err := p.Start(ctx, g.members); err != nil {
			b.Fatal(err)
		}
	}
	for _, p := range g.peers {
		if err := p.WaitReady(ctx); err != nil {
			b.Fatal(err)
		}
	}
	c, err := datastream.NewClient(g.members, append([]datastream.Option{datastream.WithLogger(quietLog())}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	g.client = c
	return g
}

// leader returns the id of the member the peers know as the leader.
func (g *peerGroup) leader(b *testing.B) string {
	b.Helper()
	for range 1000 {
		if m, ok := g.peers[0].Leader(); ok {
			return m.ID
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatal("no leader")
	return ""
}

// nullStore is a StateMachine that counts bytes and keeps nothing, for
// comparing transports without a disk or a hash in the way.
type nullStore struct{}

func (nullStore) OpenStream(context.Context, statemachine.StreamKey, *pb.RaftClientRequest) (statemachine.DataChannel, error) {
	return new(nullChannel), nil
}

func (nullStore) Link(_ context.Context, e statemachine.Entry, ch statemachine.DataChannel) error {
	if c, ok := ch.(*nullChannel); ok && c.n != e.Length {
		return fmt.Errorf("bench: stream %v holds %d bytes, its entry says %d", e.Key, c.n, e.Length)
	}
	return nil
}

type nullChannel struct{ n uint64 }

func (c *nullChannel) Write(p []byte) (int, error) { c.n += uint64(len(p)); return len(p), nil }
func (c *nullChannel) Sync() error                 { return nil }
func (c *nullChannel) Close() error                { return nil }
func (c *nullChannel) CleanUp() error              { return nil }

// logFront is the network hop of the log path: a client sends each entry
// over TCP to the leader's process, which appends it to the Raft log, as a
// client of a store that replicates writes through its log would. Each
// entry is a 4-byte big-endian length and the bytes; a zero length ends a
// transfer, and the front answers it with the number of entries applied
// (8 bytes) once all of them are, or with all ones if one failed.
type logFront struct {
	ln       net.Listener
	leader   *raft.Node
	inFlight int
	wg       sync.WaitGroup

	mu  sync.Mutex
	err error // the last ApplyData error
}

func (f *logFront) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// lastErr returns the last error ApplyData returned, for the client's
// report; the client runs in the same process.
func (f *logFront) lastErr() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// startLogFront listens on loopback for clients of leader and applies up
// to inFlight of their entries at a time.
func startLogFront(b *testing.B, leader *raft.Node, inFlight int) *logFront {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	f := &logFront{ln: ln, leader: leader, inFlight: inFlight}
	f.wg.Add(1)
	go f.accept()
	b.Cleanup(func() {
		ln.Close()
		f.wg.Wait()
	})
	return f
}

func (f *logFront) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go f.serve(c)
	}
}

func (f *logFront) serve(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := bufio.NewReaderSize(c, 64<<10)
	sem := make(chan struct{}, f.inFlight)
	var (
		applying sync.WaitGroup
		applied  atomic.Uint64
		failed   atomic.Bool
		hdr      [8]byte
	)
	defer applying.Wait()
	for {
		if _, err := io.ReadFull(r, hdr[:4]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		if n == 0 {
			applying.Wait()
			res := applied.Swap(0)
			if failed.Swap(false) {
				res = ^uint64(0)
			}
			binary.BigEndian.PutUint64(hdr[:], res)
			if _, err := c.Write(hdr[:]); err != nil {
				return
			}
			continue
		}
		// A buffer of its own: the Raft log keeps the entry's bytes.
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return
		}
		sem <- struct{}{}
		applying.Add(1)
		go func() {
			defer applying.Done()
			if err := f.leader.ApplyData(ctx, data); err != nil {
				f.setErr(err)
				failed.Store(true)
			} else {
				applied.Add(1)
			}
			<-sem
		}()
	}
}

// logClient sends transfers to a logFront.
type logClient struct {
	c net.Conn
	f *logFront
}

func dialLogFront(b *testing.B, f *logFront) *logClient {
	b.Helper()
	c, err := net.Dial("tcp", f.ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return &logClient{c: c, f: f}
}

// transfer sends n bytes of payload, len(payload) at a time, and waits
// until the leader has applied every entry.
func (l *logClient) transfer(n int64, payload []byte) error {
	var hdr [8]byte
	entries := uint64(0)
	for off := int64(0); off < n; off += int64(len(payload)) {
		p := payload[:min(int64(len(payload)), n-off)]
		binary.BigEndian.PutUint32(hdr[:4], uint32(len(p)))
		bufs := net.Buffers{hdr[:4], p}
		if _, err := bufs.WriteTo(l.c); err != nil {
			return err
		}
		entries++
	}
	binary.BigEndian.PutUint32(hdr[:4], 0)
	if _, err := l.c.Write(hdr[:4]); err != nil {
		return err
	}
	if _, err := io.ReadFull(l.c, hdr[:]); err != nil {
		return err
	}
	if got := binary.BigEndian.Uint64(hdr[:]); got != entries {
		return fmt.Errorf("bench: the leader failed to apply all %d entries: %w", entries, l.f.lastErr())
	}
	return nil
}
