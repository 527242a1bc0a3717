package handler

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// StreamKey identifies a stream: the client that opened it and its id.
type StreamKey = statemachine.StreamKey

// Successor is a connection to a peer that streams are forwarded to. Many
// streams share one; *pipeline.Pipeline implements it.
type Successor interface {
	Write(msg any) error
	Flush() error
}

// PeerDialer returns the connection to the peer with the given id. It must
// not block: the router calls it on an event loop, so an implementation
// keeps connections up in the background and fails fast when one is down.
type PeerDialer func(id string) (Successor, error)

// Config is what the stages of every connection of one server share.
type Config struct {
	// GroupID, if set, is the only group id a header request may name.
	GroupID []byte
	// ID is this peer's id in the group.
	ID string
	// Peers lists every peer id of the group, this one included. Routing
	// tables may only name these.
	Peers []string
	// Dial reaches successors.
	Dial PeerDialer
	// StateMachine stores the streams.
	StateMachine statemachine.StateMachine
	// InlineWrites runs a plain data packet's DataChannel.Write on the
	// connection's event loop whenever the stream's executor is idle,
	// instead of waking the executor's goroutine: one goroutine hand-off
	// less per packet on every peer. Open, Sync, Close and CleanUp stay on
	// the executor, and so does a Write while it has work queued, so a
	// stream's calls stay in order and never overlap. Set it only for a
	// state machine whose Write never blocks and returns in microseconds
	// (a copy into memory, a counter): one that waits on a disk, a lock
	// held across I/O or the network would hold up every connection of the
	// loop. A setting rather than a method of the state machine, so that a
	// wrapper that blocks cannot inherit it by embedding.
	InlineWrites bool
	// VerifyEveryPeer has every peer check each packet's CRC32C, not only
	// the leaves of the routing tree. The leaves' checks already cover
	// every peer's copy, since a peer forwards the bytes it stores; set it
	// to catch a corruption inside an interior peer between receiving a
	// packet and forwarding it, for one more pass over the data there.
	VerifyEveryPeer bool
	// Committer commits closed streams on the primary. Nil runs
	// standalone: each peer links its stream as soon as CLOSE succeeded
	// everywhere downstream, under a local index.
	Committer statemachine.Committer
	// ReplyTimeout bounds how long a packet waits for its successors.
	ReplyTimeout time.Duration
	// CommitTimeout bounds the commit of a closed stream.
	CommitTimeout time.Duration
	// LinkTimeout bounds how long a closed stream waits for its committed
	// entry before its data is cleaned up.
	LinkTimeout time.Duration
	// MaxHeader bounds a packet header and a stream's header request.
	MaxHeader int
	// MaxStreams bounds the open streams of this peer.
	MaxStreams int
	// MaxStreamsPerConn bounds the open streams of one connection.
	MaxStreamsPerConn int
	// MaxConnBytes bounds the packet bytes one connection may have
	// admitted and not yet answered. A client keeps within it by its
	// window; one that does not has its packet refused and its stream
	// failed, rather than this peer's memory grown.
	MaxConnBytes int64
	// IdleTimeout fails a stream that receives no packet for this long.
	IdleTimeout time.Duration
	// WriteQuorum is how many peers, the primary included, must hold a
	// stream for its CLOSE to commit. 0 is a majority of Peers; QuorumAll,
	// or any value from len(Peers) up, is every peer. Below all, a stream
	// goes on when peers fail (routed around at the header, recovered
	// around mid-stream, the primary resumed elsewhere by the client) and
	// the peers that miss it repair their copy after the commit.
	WriteQuorum int
	// Events, if set, is told of streams, packets and connections; see
	// Events for what an implementation may do.
	Events Events
	Logger *slog.Logger
}

// QuorumAll is the WriteQuorum of every peer: one peer down fails
// every stream through it.
const QuorumAll = -1

// Defaults for Config's zero fields.
const (
	DefaultReplyTimeout  = 10 * time.Second
	DefaultCommitTimeout = 30 * time.Second
	DefaultLinkTimeout   = 5 * time.Minute
	DefaultIdleTimeout   = time.Minute

	DefaultMaxStreams        = 4096
	DefaultMaxStreamsPerConn = 1024
	DefaultMaxConnBytes      = 256 << 20
)

// Streams is one server's stream table, shared by its connections. It also
// implements statemachine.Linker for the commit path.
type Streams struct {
	cfg Config
	wg  sync.WaitGroup // executors and commit goroutines

	mu     sync.Mutex
	active map[StreamKey]*Stream
	closed map[StreamKey]*Stream // closed everywhere, waiting for Link
	shut   bool

	localIndex atomic.Uint64 // standalone commit index
	committer  atomic.Pointer[statemachine.Committer]
	peers      atomic.Pointer[[]string] // set by SetPeers; nil: cfg.Peers
}

// SetPeers replaces Config.Peers, the ids routing tables may name, for a
// group whose membership changed. Streams already open keep their
// successors; headers that arrive afterwards are checked against ids.
func (s *Streams) SetPeers(ids []string) {
	ids = append([]string(nil), ids...)
	s.peers.Store(&ids)
}

// groupPeers returns the group's peer ids as SetPeers or Config set them.
func (s *Streams) groupPeers() []string {
	if p := s.peers.Load(); p != nil {
		return *p
	}
	return s.cfg.Peers
}

// SetCommitter replaces Config.Committer; see server.Server.SetCommitter.
func (s *Streams) SetCommitter(c statemachine.Committer) { s.committer.Store(&c) }

func (s *Streams) commitHook() statemachine.Committer {
	if c := s.committer.Load(); c != nil {
		return *c
	}
	return nil
}

// NewStreams returns an empty stream table.
func NewStreams(cfg Config) *Streams {
	if cfg.ReplyTimeout <= 0 {
		cfg.ReplyTimeout = DefaultReplyTimeout
	}
	if cfg.CommitTimeout <= 0 {
		cfg.CommitTimeout = DefaultCommitTimeout
	}
	if cfg.LinkTimeout <= 0 {
		cfg.LinkTimeout = DefaultLinkTimeout
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if cfg.MaxConnBytes <= 0 {
		cfg.MaxConnBytes = DefaultMaxConnBytes
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxHeader <= 0 {
		cfg.MaxHeader = codec.DefaultMaxPacketHeader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Streams{
		cfg:    cfg,
		active: make(map[StreamKey]*Stream),
		closed: make(map[StreamKey]*Stream),
	}
	if cfg.Committer != nil {
		s.SetCommitter(cfg.Committer)
	}
	return s
}

// Config returns the configuration with defaults filled in.
func (s *Streams) Config() Config { return s.cfg }

func (s *Streams) members() []string { return s.groupPeers() }

// quorum returns the write quorum as a number of peers.
func (s *Streams) quorum() int {
	n := len(s.members())
	switch q := s.cfg.WriteQuorum; {
	case q == 0:
		return n/2 + 1
	case q < 0 || q > n:
		return n
	default:
		return q
	}
}

func (s *Streams) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shut
}

// recovers reports whether streams go on without a failed peer.
func (s *Streams) recovers() bool { return s.quorum() < len(s.members()) }

// tableFor validates a header's routing table and returns it with the star
// default spelled out. A resume's table is the stream's tree without the
// peers dropped from it, so it need only span some of the group.
func (s *Streams) tableFor(t *pb.RoutingTable, primary string, resume bool) (*pb.RoutingTable, error) {
	peers := s.members()
	if resume && len(t.GetRoutes()) > 0 {
		peers = tablePeers(t, primary)
		for _, id := range peers {
			if !slices.Contains(s.members(), id) {
				return nil, fmt.Errorf("%w: peer %q is not in the group", pb.ErrInvalidRoutingTable, id)
			}
		}
	}
	if err := t.Validate(primary, peers); err != nil {
		return nil, err
	}
	return t.OrStar(primary, peers), nil
}

// tablePeers lists the peers a routing table names, primary first.
func tablePeers(t *pb.RoutingTable, primary string) []string {
	out := []string{primary}
	add := func(id string) {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	for _, r := range t.GetRoutes() {
		add(r.GetPeer())
		for _, id := range r.GetSuccessors() {
			add(id)
		}
	}
	return out
}

// successorsIn returns this peer's successors in table t of a stream
// whose primary is primary.
func (s *Streams) successorsIn(t *pb.RoutingTable, primary string) []string {
	if len(t.GetRoutes()) == 0 {
		t = t.OrStar(primary, s.members())
	}
	return t.Successors(s.cfg.ID)
}

// checkQuorum refuses a stream, at its primary, when fewer peers of its
// table than the write quorum are reachable from here.
func (s *Streams) checkQuorum(t *pb.RoutingTable) *pb.Error {
	if !s.recovers() {
		return nil // every successor is dialed, and must answer, as before
	}
	up, down := []string{s.cfg.ID}, []string(nil)
	for _, id := range tablePeers(t, s.cfg.ID)[1:] {
		if _, err := s.cfg.Dial(id); err != nil {
			down = append(down, id)
		} else {
			up = append(up, id)
		}
	}
	if len(up) < s.quorum() {
		return errorf(pb.ErrorCode_NOT_ENOUGH_PEERS, "%d of %d peers reachable (%s), the write quorum is %d; unreachable: %s",
			len(up), len(up)+len(down), strings.Join(up, ", "), s.quorum(), strings.Join(down, ", "))
	}
	return nil
}

// Active returns the number of open streams.
func (s *Streams) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.active)
}

// Pending returns the number of closed streams waiting for their commit.
func (s *Streams) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.closed)
}

// Lookup returns the stream with key k while this peer holds it open (or
// failed, until its last reply is out), or nil.
func (s *Streams) Lookup(k StreamKey) *Stream { return s.get(k) }

func (s *Streams) get(k StreamKey) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[k]
}

// add registers st unless its key is taken.
func (s *Streams) add(st *Stream) *pb.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shut {
		return errorf(pb.ErrorCode_CANCELLED, "server is shutting down")
	}
	if len(s.active) >= s.cfg.MaxStreams {
		return errorf(pb.ErrorCode_LIMIT_EXCEEDED, "this peer has %d open streams, its limit", len(s.active))
	}
	if _, dup := s.active[st.Key]; dup {
		return errorf(pb.ErrorCode_DUPLICATE_HEADER, "stream %v is already open", st.Key)
	}
	if parked, dup := s.closed[st.Key]; dup {
		// The ABORT that may follow this refusal is meant for the
		// duplicate, not for the closed stream, whose entry may be
		// committed already: the parked stream stops taking aborts.
		parked.reopened = true
		return errorf(pb.ErrorCode_DUPLICATE_HEADER, "stream %v is already closed", st.Key)
	}
	if st.IsPrimary() {
		// Committing a key again would find the old entry (or, past the
		// committer's memory, link nothing) and call the new bytes
		// committed: a stream id is used once. The committer remembers
		// recent keys, a durable state machine every key it linked.
		for _, c := range []any{s.commitHook(), s.cfg.StateMachine} {
			if kc, ok := c.(statemachine.KeyChecker); ok {
				if idx, done := kc.Committed(st.Key); done {
					return errorf(pb.ErrorCode_DUPLICATE_HEADER, "stream %v was committed at index %d; a stream id may be used once", st.Key, idx)
				}
			}
		}
	}
	s.active[st.Key] = st
	return nil
}

func (s *Streams) remove(st *Stream) {
	s.mu.Lock()
	if s.active[st.Key] == st {
		delete(s.active, st.Key)
	}
	s.mu.Unlock()
}

// park moves a stream closed on every peer to the table of streams waiting
// for their entry.
func (s *Streams) park(st *Stream) {
	s.mu.Lock()
	if s.active[st.Key] == st {
		delete(s.active, st.Key)
	}
	st.parkedAt = time.Now()
	s.closed[st.Key] = st
	s.mu.Unlock()
	st.setState(stateParked)
}

// parked returns the stream with key k if it is parked.
func (s *Streams) parked(k StreamKey) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed[k]
}

// discard drops parked stream st, which will never commit, here and on
// its successors.
func (s *Streams) discard(st *Stream) {
	s.mu.Lock()
	if s.closed[st.Key] != st {
		s.mu.Unlock()
		return
	}
	delete(s.closed, st.Key)
	s.mu.Unlock()
	st.setState(stateDiscarded)
	st.cleanUp()
	st.abortSuccessors()
}

// dropParked cleans up the parked stream k on an ABORT from its upstream.
// A stream parks here once its CLOSE is written on this peer and every
// successor; its predecessor aborts it only while it has not begun to
// commit (fail does nothing after that), so the entry will never come and
// the data need not wait for the link timeout. A primary never receives
// such an ABORT: its upstream is the client, whose aborts after CLOSE
// find the stream committing.
func (s *Streams) dropParked(k StreamKey, up *pipeline.Pipeline) bool {
	s.mu.Lock()
	st := s.closed[k]
	s.mu.Unlock()
	if st == nil || !st.ownedBy(up) || st.IsPrimary() {
		return false
	}
	s.mu.Lock()
	reopened := st.reopened
	s.mu.Unlock()
	if reopened {
		return false
	}
	// The successors below have parked it too: discard passes the abort
	// on.
	s.discard(st)
	return true
}

func (s *Streams) unpark(k StreamKey) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.closed[k]
	delete(s.closed, k)
	return st
}

// Link implements statemachine.Linker: it hands the committed entry and the
// stream's closed channel, if this peer holds one, to the state machine.
func (s *Streams) Link(ctx context.Context, e statemachine.Entry) error {
	st := s.unpark(e.Key)
	if st != nil {
		st.setState(stateLinked)
	}
	if st != nil && !e.Holds(s.cfg.ID) {
		// Dropped from the stream's pipeline: what this peer holds may
		// lack the bytes replayed after it was dropped, or hold bytes the
		// others cut back. It is recorded missing and repaired from a
		// holder.
		s.cfg.Logger.Warn("handler: committed without this peer's copy; it will be repaired", "stream", e.Key, "index", e.Index, "holders", e.Holders)
		st.cleanUp()
		st = nil
	}
	if st == nil {
		return s.cfg.StateMachine.Link(ctx, e, nil)
	}
	// The channel is closed and its executor idle: no task touches it
	// after the CLOSE write, so Link may use it from this goroutine.
	err := s.cfg.StateMachine.Link(ctx, e, st.ch)
	if ev := s.cfg.Events; ev != nil && err == nil {
		ev.Stream(StreamEvent{Kind: StreamCommitted, Key: st.Key, Primary: st.IsPrimary(),
			Bytes: e.Length, Duration: time.Since(st.opened)})
	}
	return err
}

// Catalog implements statemachine.Cataloger for Raft snapshots: the state
// machine's catalog, or nothing when it keeps none.
func (s *Streams) Catalog() []statemachine.Entry {
	if c, ok := s.cfg.StateMachine.(statemachine.Cataloger); ok {
		return c.Catalog()
	}
	return nil
}

// linkLocal is the standalone commit: a local index, linked at once.
func (s *Streams) linkLocal(st *Stream) (*pb.RaftClientReply, error) {
	idx := s.localIndex.Add(1)
	e := statemachine.Entry{Index: idx, Key: st.Key, Request: st.Request, Length: st.length, Holders: st.holders}
	if err := s.Link(context.Background(), e); err != nil {
		return nil, err
	}
	return &pb.RaftClientReply{
		ClientId: st.Request.GetClientId(), CallId: st.Request.GetCallId(),
		ServerId: s.cfg.ID, Success: true, LogIndex: idx,
	}, nil
}

// PeerDown recovers every stream that forwards to peer id around it, or
// fails it where the write quorum does not allow going on without it: its
// connection is gone, so their packets will never be acknowledged.
func (s *Streams) PeerDown(id string, cause error) {
	e := errorf(pb.ErrorCode_SUCCESSOR_FAILED, "connection to successor %s lost: %v", id, cause)
	for _, st := range s.snapshot() {
		st.mu.Lock()
		l := st.linkTo(id)
		st.mu.Unlock()
		if l != nil {
			st.linkFailed(l, e)
		}
	}
}

// UpstreamClosed handles the end of connection up, over which a
// predecessor (peer true) or a client forwarded streams. Where the write
// quorum allows recovery, its streams are orphaned, waiting for a resume:
// a predecessor's from another predecessor or from their client, a
// client's (whose primary is here) from the client, which moves the
// stream to another peer and so fences this one off. Otherwise they fail,
// since they can never be completed, and the primary aborts them
// downstream.
func (s *Streams) UpstreamClosed(up *pipeline.Pipeline, peer bool) {
	for _, st := range s.snapshot() {
		if st.ownedBy(up) {
			st.orphan(s.recovers())
		}
	}
}

func (s *Streams) snapshot() []*Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Stream, 0, len(s.active))
	for _, st := range s.active {
		out = append(out, st)
	}
	return out
}

// Sweep fails streams whose successors have not answered within the reply
// timeout and cleans up closed streams whose entry never came. Servers call
// it on a tick, since gnet has no deadlines.
func (s *Streams) Sweep(now time.Time) {
	for _, st := range s.snapshot() {
		l, since := st.oldestUnanswered()
		switch {
		case l != nil && now.Sub(since) > s.cfg.ReplyTimeout:
			st.linkFailed(l, errorf(pb.ErrorCode_TIMEOUT, "no reply from successor %s within %v", l.id, s.cfg.ReplyTimeout))
		case st.orphanedFor(now) > s.cfg.ReplyTimeout:
			st.fail(errorf(pb.ErrorCode_CANCELLED, "upstream connection closed, and no peer resumed the stream within %v", s.cfg.ReplyTimeout))
		default:
			if idle := now.Sub(time.Unix(0, st.lastActive.Load())); idle > s.cfg.IdleTimeout && !st.waitingForReplies() {
				st.fail(errorf(pb.ErrorCode_TIMEOUT, "no packet for %v", s.cfg.IdleTimeout))
			}
		}
	}
	var stale []*Stream
	s.mu.Lock()
	for k, st := range s.closed {
		if now.Sub(st.parkedAt) > s.cfg.LinkTimeout {
			delete(s.closed, k)
			stale = append(stale, st)
		}
	}
	s.mu.Unlock()
	for _, st := range stale {
		s.cfg.Logger.Warn("handler: closed stream was never committed; cleaning up", "stream", st.Key)
		st.setState(stateDiscarded)
		st.cleanUp()
	}
}

// Shutdown fails every open stream, lets go of every closed one waiting
// for its entry, and waits for executors and commits to end or ctx to
// expire. A closed stream's data is kept where the state machine can keep
// it (its channel is a Releaser): this peer acknowledged it, and the entry
// may have committed, so a restart must find it to link. Others are
// cleaned up.
func (s *Streams) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shut = true
	closed := s.closed
	s.closed = make(map[StreamKey]*Stream)
	s.mu.Unlock()
	for _, st := range s.snapshot() {
		st.fail(errorf(pb.ErrorCode_CANCELLED, "server is shutting down"))
	}
	for _, st := range closed {
		st.setState(stateReleased)
		st.release()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("handler: shutdown: %w", ctx.Err())
	}
}
