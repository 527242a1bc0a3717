package handler

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
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
	cfg.Limits = cfg.Limits.WithDefaults()
	cfg.Timeouts = cfg.Timeouts.WithDefaults()
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

func (s *Streams) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shut
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
		if idx, _, done := s.committedEntry(st.Key); done {
			return errorf(pb.ErrorCode_DUPLICATE_HEADER, "stream %v was committed at index %d; a stream id may be used once", st.Key, idx)
		}
	}
	s.active[st.Key] = st
	return nil
}

// committedEntry reports whether the committer or the state machine
// remembers an entry committed for k, and its index and term (0 from a
// KeyChecker that is not a TermChecker).
func (s *Streams) committedEntry(k StreamKey) (index, term uint64, ok bool) {
	for _, c := range []any{s.commitHook(), s.cfg.StateMachine} {
		if tc, is := c.(statemachine.TermChecker); is {
			if index, term, ok = tc.CommittedEntry(k); ok {
				return index, term, true
			}
		} else if kc, is := c.(statemachine.KeyChecker); is {
			if index, ok = kc.Committed(k); ok {
				return index, 0, true
			}
		}
	}
	return 0, 0, false
}

func (s *Streams) remove(st *Stream) {
	s.mu.Lock()
	if s.active[st.Key] == st {
		delete(s.active, st.Key)
	}
	s.mu.Unlock()
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
