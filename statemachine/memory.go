package statemachine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"slices"
	"sync"
	"sync/atomic"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Memory is a StateMachine that keeps streams in memory, for tests and
// benchmarks. Its query methods (Committed, Data, Sum, Open, ...) let a test
// check what was linked and prove that no stream was left half-done.
//
// Link follows the StateMachine contract the way a real store must:
//   - Link with a nil channel for a key already linked is a no-op (a replay).
//   - Link with a nil channel for a key never linked records the entry with
//     no data and counts it in Missing: this peer was not on the stream's
//     route, or lost its data. Committed lists it; Data and Sum report false.
//   - Link with a channel for a key already linked discards the channel's
//     data; the first link wins.
//   - Link closes a channel that is still open, and treats one that was
//     cleaned up like a nil channel.
//   - Link discards the data and returns ErrLengthMismatch when the channel
//     holds a different number of bytes than e.Length.
//
// After Link returns, the channel is linked or discarded either way; a later
// CleanUp is a no-op.
//
// Memory is safe for concurrent use.
type Memory struct {
	hashing bool

	syncs   atomic.Int64
	cleaned atomic.Int64
	missing atomic.Int64

	mu        sync.Mutex
	open      map[StreamKey]*memChannel // opened, not yet linked or cleaned up
	linked    map[StreamKey]*memStream
	committed []Entry // in link order
}

// memStream is what Memory holds for a linked stream.
type memStream struct {
	data   [][]byte // chunks; nil when hashing or missing
	sum    [32]byte
	hasSum bool // false when the peer held no data
}

// NewMemory returns a Memory that keeps every byte of every stream.
func NewMemory() *Memory {
	return &Memory{open: make(map[StreamKey]*memChannel), linked: make(map[StreamKey]*memStream)}
}

// NewMemoryHashing returns a Memory that keeps only a running SHA-256 and the
// length of each stream, so a benchmark can push GiBs through it. Data
// always reports false for it; use Sum.
func NewMemoryHashing() *Memory {
	m := NewMemory()
	m.hashing = true
	return m
}

// OpenStream implements StateMachine. Opening a key that is already open
// fails with ErrDuplicateStream.
func (m *Memory) OpenStream(ctx context.Context, key StreamKey, _ *pb.RaftClientRequest) (DataChannel, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("statemachine: open stream %v: %w", key, err)
	}
	c := &memChannel{m: m, key: key}
	if m.hashing {
		c.h = sha256.New()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.open[key]; ok {
		return nil, fmt.Errorf("%w: %v", ErrDuplicateStream, key)
	}
	m.open[key] = c
	return c, nil
}

// Link implements StateMachine; see Memory for how it treats replays,
// missing data and mismatched lengths.
func (m *Memory) Link(_ context.Context, e Entry, ch DataChannel) error {
	c, err := linkChannel[*memChannel](m, "Memory", e.Key, ch)
	if err != nil {
		return err
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	_, done := m.linked[e.Key]
	if c == nil {
		if !done {
			m.record(e, &memStream{})
			m.missing.Add(1)
		}
		return nil
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.state == chanLinked:
		return nil
	case c.state == chanCleaned:
		if !done {
			m.record(e, &memStream{})
			m.missing.Add(1)
		}
		return nil
	case done:
		m.discardLocked(c)
		return nil
	case c.n != e.Length:
		m.discardLocked(c)
		return fmt.Errorf("%w: stream %v holds %d bytes, entry %d names %d", ErrLengthMismatch, e.Key, c.n, e.Index, e.Length)
	}

	s := &memStream{hasSum: true}
	if m.hashing {
		c.h.Sum(s.sum[:0])
	} else {
		s.data = c.data
		h := sha256.New()
		for _, b := range c.data {
			h.Write(b)
		}
		h.Sum(s.sum[:0])
	}
	c.data, c.h = nil, nil
	c.state = chanLinked
	delete(m.open, c.key)
	m.record(e, s)
	return nil
}

// record adds a linked entry; m.mu is held.
func (m *Memory) record(e Entry, s *memStream) {
	m.linked[e.Key] = s
	m.committed = append(m.committed, e)
}

// discardLocked drops c's data and counts it as cleaned up; m.mu and c.mu
// are held.
func (m *Memory) discardLocked(c *memChannel) {
	if c.state == chanCleaned || c.state == chanLinked {
		return
	}
	c.state = chanCleaned
	c.data, c.h = nil, nil
	if m.open[c.key] == c {
		delete(m.open, c.key)
	}
	m.cleaned.Add(1)
}

// Committed returns the linked entries in link order, including those the
// peer held no data for.
func (m *Memory) Committed() []Entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.committed)
}

// Data returns a copy of a linked stream's bytes. It reports false for a
// stream that is not linked, that was linked with no data, or when m keeps
// only hashes.
func (m *Memory) Data(key StreamKey) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.linked[key]
	if !ok || !s.hasSum || m.hashing {
		return nil, false
	}
	return bytes.Join(s.data, nil), true
}

// Sum returns the SHA-256 of a linked stream's bytes. It reports false for a
// stream that is not linked or was linked with no data.
func (m *Memory) Sum(key StreamKey) ([32]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.linked[key]
	if !ok || !s.hasSum {
		return [32]byte{}, false
	}
	return s.sum, true
}

// Open returns the number of streams opened and not yet linked or cleaned
// up. A test that ends with Open() != 0 left a stream half-done.
func (m *Memory) Open() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.open)
}

// CleanedUp returns the number of channels whose data was discarded: by
// CleanUp, or by Link for a duplicate or a length mismatch.
func (m *Memory) CleanedUp() int { return int(m.cleaned.Load()) }

// Syncs returns the number of successful Sync calls on m's channels.
func (m *Memory) Syncs() int { return int(m.syncs.Load()) }

// Missing returns the number of entries linked with no data.
func (m *Memory) Missing() int { return int(m.missing.Load()) }

// memChannel is Memory's DataChannel. Its own lock makes misuse from two
// goroutines a clean error rather than a data race; it costs nothing
// measurable next to the copy or the hash.
type memChannel struct {
	m   *Memory
	key StreamKey

	mu    sync.Mutex
	state chanState
	data  [][]byte  // see appendChunked
	h     hash.Hash // when hashing
	n     uint64
}

func (c *memChannel) owner() any           { return c.m }
func (c *memChannel) streamKey() StreamKey { return c.key }

func (c *memChannel) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != chanOpen {
		return 0, ErrChannelClosed
	}
	if c.h != nil {
		c.h.Write(p) // a hash.Hash never returns an error
	} else {
		c.data = appendChunked(c.data, int(c.n), p)
	}
	c.n += uint64(len(p))
	return len(p), nil
}

// Truncate implements Truncater. A hashing Memory keeps no data to cut,
// so it can only keep what it has.
func (c *memChannel) Truncate(size uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.state != chanOpen:
		return ErrChannelClosed
	case size > c.n:
		return fmt.Errorf("statemachine: truncate %v to %d bytes: it holds %d", c.key, size, c.n)
	case size == c.n:
		return nil
	case c.h != nil:
		return fmt.Errorf("statemachine: a hashing Memory cannot truncate %v", c.key)
	}
	keep := size
	for i, ch := range c.data {
		if uint64(len(ch)) >= keep {
			c.data[i] = ch[:keep]
			clear(c.data[i+1:])
			c.data = c.data[:i+1]
			break
		}
		keep -= uint64(len(ch))
	}
	c.n = size
	return nil
}

func (c *memChannel) Sync() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != chanOpen {
		return ErrChannelClosed
	}
	c.m.syncs.Add(1)
	return nil
}

// Close is idempotent; it fails only after CleanUp.
func (c *memChannel) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case chanOpen:
		c.state = chanClosed
	case chanCleaned:
		return ErrChannelClosed
	}
	return nil
}

// CleanUp is idempotent, and a no-op after Link.
func (c *memChannel) CleanUp() error {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m.discardLocked(c)
	return nil
}

// maxChunk is the size of the chunks a Memory stream grows by once it is
// large: growing one slice by append would copy a 256 MiB stream about
// eight times over, and briefly hold two copies.
const maxChunk = 1 << 20

// appendChunked appends p to chunks, which hold total bytes, filling the
// last chunk first. New chunks double with the stream up to maxChunk, so a
// small stream wastes little and a large one is never copied.
func appendChunked(chunks [][]byte, total int, p []byte) [][]byte {
	for len(p) > 0 {
		if n := len(chunks); n > 0 && len(chunks[n-1]) < cap(chunks[n-1]) {
			last := chunks[n-1]
			k := copy(last[len(last):cap(last)], p)
			chunks[n-1] = last[:len(last)+k]
			p, total = p[k:], total+k
			continue
		}
		size := min(max(total, len(p), 4<<10), maxChunk)
		chunks = append(chunks, make([]byte, 0, size))
	}
	return chunks
}
