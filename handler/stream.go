package handler

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipestream/pipestream/internal/fifo"
	"github.com/pipestream/pipestream/internal/serial"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// Stream is one open stream on one peer. Its work is split by goroutine:
//
//   - the router, on the event loop of the stream's upstream connection,
//     checks each packet's place (received, gen) and gives it its place in
//     the reply order (stream_reply.go);
//   - the executor, a goroutine of its own, runs the state-machine calls in
//     order (stream_exec.go);
//   - the forwarder sends each frame to the successors and takes their
//     replies, and recovers the pipeline when one fails
//     (stream_forward.go, stream_recover.go);
//   - the commit runs on a goroutine once the stream is closed everywhere
//     (stream_commit.go).
//
// Its states are in stream_state.go.
type Stream struct {
	// Key and Request are fixed at the header. A resume may change the
	// stream's primary and routing table, never its request's message.
	Key     StreamKey
	Request *pb.RaftClientRequest

	s       *Streams
	exec    *serial.Queue[task]
	primary atomic.Bool // this peer commits the stream
	verify  atomic.Bool // this peer checks checksums; see verifies
	opened  time.Time

	// lastActive tracks idleness without a clock read per packet, which
	// cost 6% of a 4 KiB chain's CPU: a packet sets it to 0, "active since
	// the last sweep", and the sweep that finds 0 stamps the time it
	// found it, which is after the packet. Otherwise it holds unix
	// nanoseconds: the open, or that stamp. A stream is so failed for
	// idleness never early, and at most two sweep intervals late (one to
	// be stamped, one to be failed).
	lastActive atomic.Int64
	ended      atomic.Bool // the connection's stream count was given back

	// Owned by the executor.
	ch      statemachine.DataChannel
	written uint64
	sum     streamSum
	execGen uint64 // the attachment whose packets the executor writes
	// closedHere: CLOSE was written to ch. A resume then leaves ch as it
	// is, and the replay up to replayedTo is taken as written.
	closedHere bool
	replayedTo uint64

	// fwd serializes what goes to the successors: the forwarder's frames
	// and a recovery's resume and replays, so that each successor sees one
	// stream in offset order. Taken before mu, never while holding it.
	fwd       sync.Mutex
	table     *pb.RoutingTable // the stream's tree as this peer knows it; under fwd
	primaryID string           // the stream's primary; under fwd
	summedFwd bool             // its data packets carry checksums; under fwd
	fwdGen    uint64           // the attachment whose packets are forwarded; under fwd
	forwarded uint64           // offset past the last data forwarded; under fwd
	crcFwd    uint32           // the stream's CRC32C through forwarded, if checksummed; under fwd
	// headerSent: a header (the stream's, or a resume from upstream) has
	// gone to the successors. Until then a recovery has nothing to
	// resume: the header, still to come, opens the stream on whatever
	// links there are by then. Under fwd.
	headerSent bool

	mu       sync.Mutex
	state    streamState
	upstream *pipeline.Pipeline // where new packets come from; replies go to each packet's own
	conn     *connState         // upstream's counters
	gen      uint64             // attachments so far: a resume from a new upstream adds one
	epoch    uint64             // recoveries made or seen upstream; goes to the entry
	received uint64             // offset past the last data routed
	replies  fifo.Queue[*Packet]
	links    []*link // successors, dropped ones included until the stream ends
	failed   *pb.Error
	commit   bool     // closed everywhere; finishClose has started
	length   uint64   // set with commit, as the stream's
	checksum uint32   // CRC32C, when checksummed
	summed   bool     // checksummed
	holders  []string // set with commit: the peers that hold all of it
	// unasked is set with commit when the stream closed orphaned: its
	// upstream went away first. A primary then does not commit it: its
	// client, gone, moves the stream to another peer, or gave it up.
	unasked bool
	// aborted is set with or after commit, by an ABORT from upstream:
	// see abortFrom.
	aborted bool
	// replayed is set on a parked stream that a new upstream resumed:
	// where its replay has got to (see resumeParked).
	replayed *parkedReplay

	orphanedAt time.Time // under mu, in stateOrphaned

	// Guarded by Streams.mu, while the stream is parked.
	parkedAt time.Time
	reopened bool // a header for its key came after it closed; see Streams.add
}

type taskKind uint8

const (
	taskWrite taskKind = iota
	taskResume
	taskCleanUp
	taskRelease
)

type task struct {
	kind taskKind
	p    *Packet
}

func newStream(s *Streams, key StreamKey, req *pb.RaftClientRequest, primary bool, up *pipeline.Pipeline, conn *connState, table *pb.RoutingTable) *Stream {
	st := &Stream{Key: key, Request: req, s: s, upstream: up, conn: conn, table: table, primaryID: req.GetServerId()}
	st.primary.Store(primary)
	st.exec = serial.New(st.run, &s.wg)
	st.opened = time.Now()
	st.lastActive.Store(st.opened.UnixNano())
	return st
}

// touch marks the stream active for the next sweep (see lastActive). It
// stores only when the mark is not there yet, so that the packets between
// two sweeps do not take the cache line from each other.
func (st *Stream) touch() {
	if st.lastActive.Load() != 0 {
		st.lastActive.Store(0)
	}
}

// idleFor returns how long the stream has had no packet, as of a sweep
// at now. A mark is stamped with the clock, not with now, which a caller
// may have read a while ago or set ahead; concurrent sweeps agree on one
// stamp.
func (st *Stream) idleFor(now time.Time) time.Duration {
	t := st.lastActive.Load()
	if t == 0 {
		// Read after the packets that marked it. If another sweep's
		// stamp wins, it was read after them too.
		t = time.Now().UnixNano()
		st.lastActive.CompareAndSwap(0, t)
	}
	return now.Sub(time.Unix(0, t))
}

// IsPrimary reports whether this peer is the stream's primary, the one
// that commits it. A client that resumes a stream on another peer after
// its primary failed makes that peer the primary.
func (st *Stream) IsPrimary() bool { return st.primary.Load() }

// end gives the stream's place on its connection back, once.
func (st *Stream) end() {
	if st.ended.CompareAndSwap(false, true) {
		st.mu.Lock()
		c := st.conn
		st.mu.Unlock()
		c.streams.Add(-1)
	}
}

// Successors returns the ids of the peers this stream is forwarded to now.
func (st *Stream) Successors() []string {
	st.mu.Lock()
	defer st.mu.Unlock()
	var ids []string
	for _, l := range st.links {
		if !l.dropped {
			ids = append(ids, l.id)
		}
	}
	return ids
}

// Fail fails the stream with e, as the server's own stages do: every
// packet not yet answered gets e, successors are told to abort, and the
// local data is cleaned up. A user stage between the router and the
// replier calls it to refuse a stream mid-way (an auth or quota check) and
// then passes the packet on as usual, so that its reply keeps its place.
// It does nothing once the stream failed or closed on every peer.
func (st *Stream) Fail(e *pb.Error) { st.fail(e) }

// Err returns the stream's failure, or nil.
func (st *Stream) Err() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.failed == nil {
		return nil
	}
	return st.failed
}

// fail ends the stream with e: every queued packet is answered with the
// error once its local part is done, successors are told to abort, and the
// local data is cleaned up after the writes already queued. The stream stays
// in the table until its queued replies are out, so that packets still
// arriving for it are answered in order, after them, with the same error.
func (st *Stream) fail(e *pb.Error) {
	st.mu.Lock()
	st.failLocked(e)
}

// abortFrom takes an ABORT from up, the stream's upstream, and reports
// whether the stream had closed here and on every successor. An open
// stream fails. A closed one is parked, or about to be, and fail does
// nothing by then: it is marked aborted, so that finishClose discards it
// instead of parking it, and dropParked discards it if it parked first.
// Its entry will never come. The test and the mark are one step: a
// stream that closed between them would lose the ABORT and stay parked
// until the link timeout. A primary's aborts come from its client and
// find the stream committing.
func (st *Stream) abortFrom(up *pipeline.Pipeline) bool {
	st.mu.Lock()
	if !st.commit || st.IsPrimary() {
		st.failLocked(errorf(pb.ErrorCode_CANCELLED, "stream aborted by its client"))
		return false
	}
	st.aborted = true
	st.mu.Unlock()
	st.s.dropParked(st.Key, up)
	return true
}

// failLocked is fail with st.mu held; it unlocks it.
func (st *Stream) failLocked(e *pb.Error) {
	if st.failed != nil || st.commit {
		// Once every peer has closed the stream its fate is the commit's.
		st.mu.Unlock()
		return
	}
	st.failed = e
	st.setStateLocked(stateFailed)
	var released []*Packet
	for _, l := range st.links {
		released = append(released, l.awaiting.Take()...)
	}
	st.mu.Unlock()
	if ev := st.s.cfg.Events; ev != nil {
		ev.Stream(StreamEvent{Kind: StreamFailed, Key: st.Key, Primary: st.IsPrimary(), Duration: time.Since(st.opened), Code: e.Code})
	}

	st.end()
	if st.IsPrimary() || !st.s.recovers() || !recoverable(e.Code) || e.Code == pb.ErrorCode_CANCELLED && !st.s.shuttingDown() {
		st.abortSuccessors()
	}
	// Otherwise this peer failed on its own (its disk, a timeout below
	// it, its shutdown): its predecessor recovers the pipeline around it and resumes
	// its successors, which an abort would have failed. They time out if
	// nobody does.
	st.exec.Submit(task{kind: taskCleanUp})
	st.exec.Close()
	for _, p := range released {
		st.partDone(p)
	}
	st.flushReplies()
}

// cleanUp discards the local data of a stream that will not be linked.
func (st *Stream) cleanUp() { st.exec.Submit(task{kind: taskCleanUp}) }

// release lets go of a closed stream at shutdown, keeping its data for a
// restart when the state machine can. It runs on the executor after
// whatever is queued, like cleanUp.
func (st *Stream) release() { st.exec.Submit(task{kind: taskRelease}) }
