package datastream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Errors of reads, matched with errors.Is. As with streams, they are
// *pb.Error values matched by code.
var (
	// ErrNotFound: no peer read from holds a committed file by that name
	// (or, resuming a read, not the version being read).
	ErrNotFound error = &pb.Error{Code: pb.ErrorCode_NOT_FOUND}
	// ErrMissing: the file's newest entry is committed but the peer holds
	// no copy of it. Peers never serve an older version instead.
	ErrMissing error = &pb.Error{Code: pb.ErrorCode_MISSING}
	// ErrOutOfRange: a read starts beyond the end of the file.
	ErrOutOfRange error = &pb.Error{Code: pb.ErrorCode_OUT_OF_RANGE}
	// ErrNotCaughtUp: the peer has not caught up with its group (it has
	// just started, or lost touch with the leader) and refuses reads it
	// could answer with an older version; another peer may serve them.
	ErrNotCaughtUp error = &pb.Error{Code: pb.ErrorCode_NOT_CAUGHT_UP}
)

// Defaults for the read options.
const (
	// DefaultReadRequest and DefaultReadWindow bound a Reader's bytes in
	// flight: it asks for ranges of at most DefaultReadRequest bytes and
	// keeps at most DefaultReadWindow of them outstanding, so a reader that
	// stops reading holds up the server instead of growing memory. 8 MiB
	// is within the server's per-connection read limit
	// (handler.MaxConnReadBytes).
	DefaultReadRequest = 1 << 20
	DefaultReadWindow  = 8
	// DefaultReadTimeout is how long a read waits for the peer's next
	// reply before it moves to another peer. Reads do not wait for a
	// commit, so it is shorter than DefaultReplyTimeout.
	DefaultReadTimeout = 10 * time.Second
	// DefaultReadAttempts bounds the peers a Reader tries over its life,
	// the first included: each failure (a lost connection, an error reply,
	// a timeout) moves it to the next peer and counts once.
	DefaultReadAttempts = 4
)

type readOptions struct {
	peers    []string
	request  int64
	window   int
	timeout  time.Duration
	attempts int
}

// ReadOption configures Open.
type ReadOption func(*readOptions)

// WithReadPeer names the peers to read from, in order of preference; a
// read that fails on one moves to the next, and round again. The default
// is every peer of the client, starting at a random one. WithReadPeer(id)
// reads from id alone.
func WithReadPeer(ids ...string) ReadOption {
	return func(o *readOptions) { o.peers = append([]string(nil), ids...) }
}

// WithReadWindow sets the size of each range a Reader asks for and how many
// it keeps outstanding.
func WithReadWindow(request int, requests int) ReadOption {
	return func(o *readOptions) { o.request, o.window = int64(request), requests }
}

// WithReadTimeout sets how long a read waits for a peer's next reply.
func WithReadTimeout(d time.Duration) ReadOption { return func(o *readOptions) { o.timeout = d } }

// WithReadAttempts bounds the peers a Reader tries over its life.
func WithReadAttempts(n int) ReadOption { return func(o *readOptions) { o.attempts = n } }

// FileInfo describes a committed file as one peer holds it.
type FileInfo struct {
	Name        string
	Length      uint64
	Index, Term uint64 // the committed entry that wrote it
	// Missing is true when the entry is committed but the peer holds no
	// copy of it.
	Missing  bool
	SHA256   []byte // empty when Missing
	ClientID []byte // the stream that wrote it
	StreamID uint64
	Peer     string // the peer that answered
}

func fileInfo(fi *pb.FileInfo, peer string) FileInfo {
	return FileInfo{
		Name: fi.GetName(), Length: fi.GetLength(), Index: fi.GetIndex(), Term: fi.GetTerm(),
		Missing: fi.GetMissing(), SHA256: fi.GetSha256(), ClientID: fi.GetClientId(),
		StreamID: fi.GetStreamId(), Peer: peer,
	}
}

// Reader reads one committed file from the group's peers. It is an
// io.ReadCloser, reading sequentially with its window of requests ahead,
// and an io.ReaderAt, safe for concurrent use; the two do not share a
// position. It reads the entry Open found (Info), whichever peer serves
// it: a read that moves to another peer asks for that entry and no other.
type Reader struct {
	c    *Client
	name string
	o    readOptions
	info FileInfo

	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   func() bool // stops closing with the client

	mu       sync.Mutex // guards rc, the peer order and the attempts
	rc       *readConn
	peers    []group.Member
	next     int // the index in peers of the next peer to try
	attempts int
	closed   bool

	smu     sync.Mutex // the sequential reader's state
	off     int64      // what Read has returned
	fetched int64      // what ahead asks for ends here
	ahead   []*readCall
	cur     *buffer.Buf // the partly read chunk
}

// Open opens the committed file name for reading. It asks the peers in
// turn (see WithReadPeer) for the file's entry and returns once one
// answers; a peer that does not have it (ErrNotFound, ErrMissing), has not
// caught up with the group (ErrNotCaughtUp) or fails is skipped. If none
// has it, the error matches what each answered. ctx bounds the Reader's
// whole life: once it is done, reads fail.
func (c *Client) Open(ctx context.Context, name string, opts ...ReadOption) (*Reader, error) {
	o := readOptions{request: DefaultReadRequest, window: DefaultReadWindow, timeout: DefaultReadTimeout, attempts: DefaultReadAttempts}
	for _, opt := range opts {
		opt(&o)
	}
	switch {
	case o.request <= 0 || o.request > maxPayload || o.window <= 0:
		return nil, fmt.Errorf("datastream: read window of %d requests of %d bytes", o.window, o.request)
	case o.timeout <= 0 || o.attempts <= 0:
		return nil, errors.New("datastream: read timeout and attempts must be positive")
	}
	r := &Reader{c: c, name: name, o: o}
	if o.peers == nil {
		r.peers = c.Peers()
		r.next = rand.IntN(len(r.peers))
	} else {
		for _, id := range o.peers {
			p, ok := c.peer(id)
			if !ok {
				return nil, fmt.Errorf("datastream: read from %q, not a peer of the group", id)
			}
			r.peers = append(r.peers, p)
		}
		if len(r.peers) == 0 {
			return nil, errors.New("datastream: WithReadPeer names no peer")
		}
	}
	r.ctx, r.cancel = context.WithCancelCause(ctx)
	// A Reader left open when its client closes is closed with it, so its
	// connection does not outlive the client.
	stop := context.AfterFunc(c.ctx, func() { _ = r.Close() })
	r.mu.Lock()
	r.stop = stop // under mu: the func may already be running Close
	r.mu.Unlock()
	// Each peer is asked once: one that has no copy now will not have one
	// a moment later.
	var errs []error
	for range min(len(r.peers), o.attempts) {
		info, err := r.stat()
		if err == nil {
			r.info = info
			// The peers that had no copy are not held against the read.
			r.mu.Lock()
			r.attempts = 1
			r.mu.Unlock()
			return r, nil
		}
		errs = append(errs, err)
		if fatal(err) || r.ctx.Err() != nil {
			break
		}
	}
	r.Close()
	return nil, fmt.Errorf("datastream: open %q: %w", name, errors.Join(errs...))
}

// stat asks the next peer for the file's entry, leaving the connection
// open for the reads if it answers.
func (r *Reader) stat() (FileInfo, error) {
	rc, err := r.conn()
	if err != nil {
		return FileInfo{}, err
	}
	call, err := rc.startRead(r.name, 0, 0, 0)
	if err == nil {
		if err = call.wait(r.ctx, r.o.timeout); err == nil && call.info == nil {
			err = pb.Errorf(pb.ErrorCode_INTERNAL, "%s answered a read without the file's entry", rc.peer.ID)
		}
		call.cancel()
	}
	if err != nil {
		r.drop(rc)
		return FileInfo{}, err
	}
	return fileInfo(call.info, rc.peer.ID), nil
}

// fatal reports whether err ends a read on every peer: the request itself
// is wrong, or the reader was closed or cancelled.
func fatal(err error) bool {
	return errors.Is(err, ErrBadHeader) || errors.Is(err, ErrOutOfRange) || errors.Is(err, ErrClosed) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// conn returns the connection reads go to, connecting to the next peer if
// there is none. Each connection attempt counts against the attempts.
func (r *Reader) conn() (*readConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.rc == nil {
		switch {
		case r.closed:
			return nil, ErrClosed
		case r.attempts >= r.o.attempts:
			return nil, fmt.Errorf("datastream: read %q: gave up after %d attempts", r.name, r.attempts)
		}
		r.attempts++
		p := r.peers[r.next]
		r.next = (r.next + 1) % len(r.peers)
		rc, err := r.c.dialRead(r.ctx, p)
		if err != nil {
			if fatal(err) || r.attempts >= r.o.attempts {
				return nil, err
			}
			continue
		}
		r.rc = rc
	}
	return r.rc, nil
}

// drop gives up on rc after a failure: the next request goes to another
// peer. Several reads may fail on one connection; only the first drops it.
func (r *Reader) drop(rc *readConn) {
	r.mu.Lock()
	if r.rc == rc {
		r.rc = nil
	} else {
		rc = nil
	}
	r.mu.Unlock()
	if rc != nil {
		rc.close()
	}
}

// Info returns the entry being read, as the peer that answered Open
// holds it.
func (r *Reader) Info() FileInfo { return r.info }

// Size returns the file's length.
func (r *Reader) Size() int64 { return int64(r.info.Length) }

// Name returns the name the reader was opened with.
func (r *Reader) Name() string { return r.name }

// request starts a read of [off, off+n) on the current peer.
func (r *Reader) request(off, n int64) (*readCall, error) {
	rc, err := r.conn()
	if err != nil {
		return nil, err
	}
	call, err := rc.startRead(r.info.Name, r.info.Index, off, n)
	if err != nil {
		r.drop(rc)
		return nil, err
	}
	return call, nil
}

// retry decides what follows a failed read on call's peer: the error to
// return, or nil to start again on the next peer.
func (r *Reader) retry(rc *readConn, err error) error {
	if fatal(err) {
		if r.ctx.Err() != nil && !errors.Is(err, ErrClosed) {
			err = context.Cause(r.ctx)
		}
		return err
	}
	if rc != nil {
		r.drop(rc)
	}
	r.mu.Lock()
	spent := r.attempts >= r.o.attempts
	r.mu.Unlock()
	if spent {
		return fmt.Errorf("datastream: read %q: gave up after %d attempts: %w", r.name, r.o.attempts, err)
	}
	return nil
}

// Close ends the reader: pending reads fail with ErrClosed and its
// connection is closed. Close of a closed Reader does nothing.
func (r *Reader) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	rc, stop := r.rc, r.stop
	r.rc = nil
	r.mu.Unlock()
	r.cancel(ErrClosed)
	if stop != nil {
		stop()
	}
	if rc != nil {
		rc.close()
	}
	r.smu.Lock()
	r.dropAhead()
	if r.cur != nil {
		r.cur.Release()
		r.cur = nil
	}
	r.smu.Unlock()
	return nil
}

// List returns the catalog of the peer with the given id: the newest
// committed entry of each name, in log order, including those whose copy
// is missing there.
func (c *Client) List(ctx context.Context, peerID string) ([]FileInfo, error) {
	p, ok := c.peer(peerID)
	if !ok {
		return nil, fmt.Errorf("datastream: list %q, not a peer of the group", peerID)
	}
	rc, err := c.dialRead(ctx, p)
	if err != nil {
		return nil, err
	}
	defer rc.close()
	call, err := rc.start(pb.DataStreamPacketHeader_STREAM_LIST, nil, 0, 0)
	if err != nil {
		return nil, err
	}
	defer call.cancel()
	if err := call.wait(ctx, DefaultReadTimeout); err != nil {
		return nil, fmt.Errorf("datastream: list %s: %w", peerID, err)
	}
	out := make([]FileInfo, len(call.files))
	for i, fi := range call.files {
		out[i] = fileInfo(fi, peerID)
	}
	return out, nil
}
