package datastream_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/grouptest"
	"github.com/pipestream/pipestream/internal/leaktest"
	"github.com/pipestream/pipestream/internal/smtest"
	"github.com/pipestream/pipestream/internal/testkit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

// patience bounds every wait, so that a bug fails a test instead of hanging
// it. Nothing is asserted about how long things take.
const patience = 20 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	t.Cleanup(cancel)
	return ctx
}

// cluster is n peers started on loopback.
type cluster struct {
	t       testing.TB
	servers []*server.Server
	sms     []statemachine.StateMachine
	peers   []group.Member
	stopped []bool
}

type groupOpts struct {
	kind  transport.Kind
	sm    func(i int) statemachine.StateMachine // default NewMemory
	tweak func(*server.Config)
}

// startGroup starts n peers, s1, s2 and so on, and waits until each
// reaches the others. Its cleanup shuts them down; register
// buffertest.Check before calling it, and release any gate after it.
func startGroup(t testing.TB, n int, o groupOpts) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	g := &cluster{t: t, stopped: make([]bool, n)}
	opts := grouptest.ServerOptions{Kind: o.kind, StateMachine: o.sm, Logger: testkit.QuietLogger()}
	if o.tweak != nil {
		opts.Config = func(_ int, c *server.Config) { o.tweak(c) }
	}
	g.servers, g.peers, g.sms = grouptest.StartServers(t, ctx, n, opts)
	return g
}

// stop shuts peer i down.
func (g *cluster) stop(i int) {
	g.t.Helper()
	g.stopped[i] = true
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := g.servers[i].Shutdown(ctx); err != nil {
		g.t.Errorf("shutdown %s: %v", g.peers[i].ID, err)
	}
}

// client returns a client of the group, closed when the test ends.
func (g *cluster) client(t testing.TB, opts ...datastream.Option) *datastream.Client {
	t.Helper()
	c, err := datastream.NewClient(g.peers, append([]datastream.Option{datastream.WithLogger(testkit.QuietLogger())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("client Close: %v", err)
		}
	})
	return c
}

func (g *cluster) memory(i int) *statemachine.Memory {
	switch sm := g.sms[i].(type) {
	case *gatedSM:
		return sm.Memory
	case *pausableSM:
		return sm.Memory
	default:
		return sm.(*statemachine.Memory)
	}
}

// checkCommitted checks that every running peer committed want for out.
func (g *cluster) checkCommitted(t testing.TB, c *datastream.Client, out *datastream.Output, want []byte) {
	t.Helper()
	k := key(c, out)
	for i := range g.servers {
		if g.stopped[i] {
			continue
		}
		m := g.memory(i)
		if got, ok := m.Sum(k); !ok || got != sha256.Sum256(want) {
			t.Errorf("%s: committed=%v, checksum match=%v (want %d bytes)", g.peers[i].ID, ok, got == sha256.Sum256(want), len(want))
		}
	}
}

// waitClean waits until no running peer holds an open stream or
// uncommitted data, and checks that none committed anything. Failures
// release resources asynchronously, across peers, so the test polls for
// that state, bounded.
func (g *cluster) waitClean(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		busy := ""
		for i, s := range g.servers {
			if g.stopped[i] {
				continue
			}
			if n := s.Streams().Active(); n != 0 {
				busy = fmt.Sprintf("%s has %d open streams", g.peers[i].ID, n)
			} else if n := g.memory(i).Open(); n != 0 {
				busy = fmt.Sprintf("%s holds %d uncommitted streams", g.peers[i].ID, n)
			}
		}
		if busy == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(busy)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := range g.servers {
		if n := len(g.memory(i).Committed()); !g.stopped[i] && n != 0 {
			t.Errorf("%s committed %d streams", g.peers[i].ID, n)
		}
	}
}

func key(c *datastream.Client, out *datastream.Output) statemachine.StreamKey {
	return statemachine.StreamKey{ClientID: string(c.ID()), StreamID: out.ID()}
}

// gatedSM is a Memory that counts what reaches it and, if gated, holds
// every write until the gate opens, so that a test can hold replies back.
type gatedSM struct {
	smtest.Wrapper
	gate   chan struct{}
	once   sync.Once
	writes atomic.Int64 // writes that reached the state machine (and the gate)
	closes atomic.Int64 // CLOSE packets that reached it
}

func newGated(gate bool) *gatedSM {
	g := &gatedSM{gate: make(chan struct{})}
	g.Wrapper = smtest.Wrapper{
		Memory: statemachine.NewMemory(),
		Wrap: func(ch statemachine.DataChannel) statemachine.DataChannel {
			return &gatedChannel{Channel: smtest.Channel{DataChannel: ch}, sm: g}
		},
	}
	if !gate {
		g.open()
	}
	return g
}

// open lets every write through, now and later.
func (g *gatedSM) open() { g.once.Do(func() { close(g.gate) }) }

type gatedChannel struct {
	smtest.Channel
	sm *gatedSM
}

func (c *gatedChannel) Write(p []byte) (int, error) {
	c.sm.writes.Add(1)
	<-c.sm.gate
	return c.DataChannel.Write(p)
}

func (c *gatedChannel) Close() error {
	c.sm.closes.Add(1)
	return c.DataChannel.Close()
}

// gated returns a groupOpts.sm that gives every peer a gatedSM, gated for
// the peers for which which(i) holds, and the state machines. Open them in
// a cleanup registered after startGroup, so that the peers can shut down.
func gated(which func(i int) bool) (func(int) statemachine.StateMachine, []*gatedSM) {
	sms := make([]*gatedSM, 8)
	return func(i int) statemachine.StateMachine {
		sms[i] = newGated(which(i))
		return sms[i]
	}, sms
}

func openAll(sms []*gatedSM) {
	for _, g := range sms {
		if g != nil {
			g.open()
		}
	}
}

// fakePeer is a loopback server that speaks the framing but answers as a
// test says: never, wrongly, or with errors.
type fakePeer struct {
	t  testing.TB
	ln net.Listener
	// answer is called for every request packet, on the connection's
	// goroutine; it writes replies with reply.
	answer func(c net.Conn, h *pb.DataStreamPacketHeader)
	ended  atomic.Int32 // connections the client closed

	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
	packets []*pb.DataStreamPacketHeader // every packet received
}

func startFake(t testing.TB, answer func(c net.Conn, h *pb.DataStreamPacketHeader)) *fakePeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePeer{t: t, ln: ln, answer: answer}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			_ = c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

// client returns a client of the fake peer, with the tests' quiet logger
// and opts, closed when the test ends.
func (f *fakePeer) client(t testing.TB, opts ...datastream.Option) *datastream.Client {
	t.Helper()
	c, err := datastream.NewClient(f.peers(), append([]datastream.Option{datastream.WithLogger(testkit.QuietLogger())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (f *fakePeer) peers() []group.Member {
	return []group.Member{{ID: "fake", StreamAddr: f.ln.Addr().String()}}
}

func (f *fakePeer) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		f.wg.Add(1)
		go f.serve(c)
	}
}

func (f *fakePeer) serve(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	for {
		frame, err := readFrame(c)
		if err != nil {
			if err == io.EOF {
				f.ended.Add(1)
			}
			return
		}
		h, _, err := dscodec.DecodePacket(frame, dscodec.DefaultMaxPacketHeader)
		if err != nil {
			f.t.Errorf("fake peer: %v", err)
			return
		}
		f.mu.Lock()
		f.packets = append(f.packets, h)
		f.mu.Unlock()
		if f.answer != nil {
			f.answer(c, h)
		}
	}
}

// waitPacket waits for a packet that match accepts.
func (f *fakePeer) waitPacket(t testing.TB, what string, match func(*pb.DataStreamPacketHeader) bool) {
	t.Helper()
	seen := 0
	eventually(t, "the fake peer to get "+what, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for ; seen < len(f.packets); seen++ {
			if match(f.packets[seen]) {
				return true
			}
		}
		return false
	})
}

// reply writes a reply frame for h; rcr, if not nil, is its body.
func reply(c net.Conn, h *pb.DataStreamReplyHeader, rcr *pb.RaftClientReply) {
	var body []byte
	if rcr != nil {
		var err error
		if body, err = proto.Marshal(rcr); err != nil {
			panic(err)
		}
	}
	frame, err := dscodec.EncodePacket(h, body)
	if err != nil {
		panic(err)
	}
	defer frame.Release()
	_, _ = c.Write(frame.Bytes())
}

// success answers h as a healthy single peer would.
func success(c net.Conn, h *pb.DataStreamPacketHeader) {
	var rcr *pb.RaftClientReply
	if h.HasOption(pb.DataStreamPacketHeader_CLOSE) {
		rcr = &pb.RaftClientReply{ClientId: h.GetClientId(), CallId: h.GetStreamId(), Success: true, LogIndex: 1}
	}
	written := uint64(0)
	if h.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
		written = h.GetStreamOffset() + h.GetDataLength()
	}
	reply(c, &pb.DataStreamReplyHeader{PacketHeader: h, BytesWritten: written, Success: true, ServerId: "fake"}, rcr)
}

// eventually polls cond, bounded by patience, for state that settles
// asynchronously.
func eventually(t testing.TB, what string, cond func() bool, detail ...*string) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			for _, d := range detail {
				what += ":" + *d
			}
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// readFrame reads one whole frame, its length prefix included, from c. It
// returns io.EOF only when c ended between frames.
func readFrame(c io.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return nil, err
	}
	frame := make([]byte, 4+binary.BigEndian.Uint32(n[:]))
	copy(frame, n[:])
	if _, err := io.ReadFull(c, frame[4:]); err != nil {
		return nil, err
	}
	return frame, nil
}
