package raft

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	hraft "github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/internal/crashpoint"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// DataSink receives the entries written with Node.ApplyData, on every peer,
// in log order. It is the baseline that streaming is measured against.
type DataSink interface {
	// WriteEntry stores one entry. data is only valid during the call.
	WriteEntry(index uint64, data []byte) error
}

// The kind of a log entry travels in raft.Log.Extensions rather than as a
// prefix of Data, so ApplyData need not copy its payload to tag it.
var (
	kindStream = []byte{1}
	kindData   = []byte{2}
)

// Stats is a snapshot of a Node's FSM.
type Stats struct {
	// LastIndex and LastTerm are those of the last entry the FSM applied.
	LastIndex, LastTerm uint64
	// Streams counts distinct stream entries applied (duplicates excluded).
	Streams uint64
	// DataEntries and DataBytes count ApplyData entries.
	DataEntries, DataBytes uint64
	// Keys is how many committed stream keys are remembered for dedup.
	Keys int
}

// committed is where a stream's entry was committed.
type committed struct{ index, term uint64 }

// applyResult is the FSM's response to a stream entry.
type applyResult struct {
	committed
	duplicate bool
	err       error // from the Linker
}

// fsm is the hraft.FSM of a Node. Apply, Snapshot and Restore run on raft's
// FSM goroutine; mu guards the state against readers on other goroutines.
type fsm struct {
	ctx     context.Context // canceled at Shutdown, bounds Link
	linker  statemachine.Linker
	sink    DataSink
	maxKeys int
	log     *slog.Logger

	// onMembers is told of each membership applied or restored; set
	// before raft starts.
	onMembers func(membership)

	mu       sync.Mutex
	st       Stats
	members  membership // as the last membership entry set it
	keys     map[statemachine.StreamKey]committed
	order    []statemachine.StreamKey // keys in commit order, oldest at head
	head     int
	watchers map[statemachine.StreamKey][]chan applyResult
}

var _ hraft.FSM = (*fsm)(nil)

func newFSM(ctx context.Context, cfg Config, log *slog.Logger) *fsm {
	return &fsm{
		ctx:      ctx,
		linker:   cfg.Linker,
		sink:     cfg.DataSink,
		maxKeys:  cfg.MaxDedupKeys,
		log:      log,
		keys:     make(map[statemachine.StreamKey]committed),
		watchers: make(map[statemachine.StreamKey][]chan applyResult),
	}
}

// Apply applies one committed entry. For a stream entry it returns an
// applyResult, for a data entry the DataSink's error; a malformed entry is
// skipped with an error, since every peer skips it alike.
func (f *fsm) Apply(l *hraft.Log) any {
	var resp any
	switch string(l.Extensions) {
	case string(kindStream):
		resp = f.applyStream(l)
	case string(kindData):
		resp = f.applyData(l)
	case string(kindMembers):
		resp = f.applyMembers(l)
	default:
		resp = fmt.Errorf("%w: index %d has unknown kind %x", ErrBadEntry, l.Index, l.Extensions)
	}
	f.mu.Lock()
	f.st.LastIndex, f.st.LastTerm = l.Index, l.Term
	f.mu.Unlock()
	if err, ok := resp.(error); ok && err != nil {
		f.log.Warn("raft: apply failed", "index", l.Index, "err", err)
	}
	return resp
}

func (f *fsm) applyStream(l *hraft.Log) any {
	var e pb.StreamEntry
	if err := proto.Unmarshal(l.Data, &e); err != nil {
		return fmt.Errorf("%w: index %d: %v", ErrBadEntry, l.Index, err)
	}
	key := statemachine.StreamKey{ClientID: string(e.GetClientId()), StreamID: e.GetStreamId()}

	f.mu.Lock()
	if c, ok := f.keys[key]; ok {
		f.mu.Unlock()
		res := applyResult{committed: c, duplicate: true}
		f.notify(key, res)
		return res
	}
	c := committed{l.Index, l.Term}
	f.remember(key, c)
	f.st.Streams++
	f.mu.Unlock()

	res := applyResult{committed: c}
	crashpoint.HitOn("raft.apply.before-link", string(e.GetMessage()))
	if f.linker != nil {
		res.err = f.linker.Link(f.ctx, statemachine.Entry{
			Index:       l.Index,
			Term:        l.Term,
			Key:         key,
			Request:     streamRequest(key, e.GetMessage()),
			Length:      e.GetLength(),
			Checksum:    e.GetCrc32C(),
			Checksummed: e.Crc32C != nil,
			Holders:     e.GetHolders(),
			Epoch:       e.GetEpoch(),
		})
	}
	if res.err != nil {
		f.log.Warn("raft: link failed", "key", key, "index", l.Index, "err", res.err)
	}
	f.notify(key, res)
	return res
}

func (f *fsm) applyData(l *hraft.Log) any {
	f.mu.Lock()
	f.st.DataEntries++
	f.st.DataBytes += uint64(len(l.Data))
	f.mu.Unlock()
	if f.sink == nil {
		return nil
	}
	return f.sink.WriteEntry(l.Index, l.Data)
}

// remember records key as committed at c, forgetting the oldest key beyond
// maxKeys. Eviction follows log order, so every peer forgets alike.
// Call with mu held.
func (f *fsm) remember(key statemachine.StreamKey, c committed) {
	f.keys[key] = c
	f.order = append(f.order, key)
	for len(f.keys) > f.maxKeys {
		delete(f.keys, f.order[f.head])
		f.order[f.head] = statemachine.StreamKey{}
		f.head++
	}
	if f.head > len(f.order)/2 {
		f.order = append(f.order[:0], f.order[f.head:]...)
		f.head = 0
	}
}

// watch returns a channel that receives the result of the next entry
// applied for key. Call the returned function to stop watching.
func (f *fsm) watch(key statemachine.StreamKey) (<-chan applyResult, func()) {
	ch := make(chan applyResult, 1)
	f.mu.Lock()
	f.watchers[key] = append(f.watchers[key], ch)
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		ws := f.watchers[key]
		for i, w := range ws {
			if w == ch {
				ws = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(ws) == 0 {
			delete(f.watchers, key)
		} else {
			f.watchers[key] = ws
		}
	}
}

func (f *fsm) notify(key statemachine.StreamKey, res applyResult) {
	f.mu.Lock()
	ws := f.watchers[key]
	delete(f.watchers, key)
	f.mu.Unlock()
	for _, w := range ws {
		w <- res // buffered, and each watcher is notified once
	}
}

func (f *fsm) stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.st
	s.Keys = len(f.keys)
	return s
}

// Snapshot copies the small state; Persist writes it while Apply goes on.
func (f *fsm) Snapshot() (hraft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	buf := make([]byte, 0, 64+len(f.keys)*32)
	buf = append(buf, snapshotMagic...)
	for _, v := range []uint64{
		f.st.LastIndex, f.st.LastTerm, f.st.Streams, f.st.DataEntries, f.st.DataBytes,
		uint64(len(f.order) - f.head),
	} {
		buf = binary.AppendUvarint(buf, v)
	}
	for _, k := range f.order[f.head:] {
		c := f.keys[k]
		buf = appendBytes(buf, k.ClientID)
		buf = binary.AppendUvarint(buf, k.StreamID)
		buf = binary.AppendUvarint(buf, c.index)
		buf = binary.AppendUvarint(buf, c.term)
	}
	// The state machine's catalog: what a peer that restores this snapshot
	// must hold, so that it links what it has and reports what it lacks.
	var catalog []statemachine.Entry
	if c, ok := f.linker.(statemachine.Cataloger); ok {
		catalog = c.Catalog()
	}
	buf = binary.AppendUvarint(buf, uint64(len(catalog)))
	for _, e := range catalog {
		buf = appendBytes(buf, e.Key.ClientID)
		buf = binary.AppendUvarint(buf, e.Key.StreamID)
		buf = binary.AppendUvarint(buf, e.Index)
		buf = binary.AppendUvarint(buf, e.Term)
		buf = binary.AppendUvarint(buf, e.Length)
		buf = appendBytes(buf, string(e.Request.GetMessage()))
		if e.Checksummed {
			buf = binary.BigEndian.AppendUint32(append(buf, 1), e.Checksum)
		} else {
			buf = append(buf, 0)
		}
	}
	// The membership, so that a peer restored from this snapshot knows
	// every member's addresses (version 3).
	buf = binary.AppendUvarint(buf, f.members.index)
	if f.members.index > 0 {
		buf = appendBytes(buf, string(f.members.marshal()))
	}
	return fsmSnapshot(buf), nil
}

func appendBytes(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

// Snapshot formats: the magic's last byte is the version. Version 1 holds
// the stats and the dedup keys; version 2 adds the state machine's
// catalog; version 3 the membership.
const (
	snapshotMagicV1 = "PSRAFT\x01"
	snapshotMagicV2 = "PSRAFT\x02"
	snapshotMagic   = "PSRAFT\x03"
)

// Limits on what Restore accepts, so a corrupt snapshot fails instead of
// allocating without bound.
const (
	maxSnapshotKeys  = 1 << 24
	maxClientIDBytes = 1 << 10
	maxMessageBytes  = MaxMessageSize
)

// Restore replaces the state with a snapshot's, then links every entry of
// the snapshot's catalog with no data in hand: the Linker links a copy
// this peer holds (a closed stream whose entry the snapshot covers, one
// kept across a restart) and records what it lacks as missing, so a peer
// that restores onto an empty disk reports every copy it lacks. On a peer
// that already linked them, as at every restart, each link is a no-op.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	r := bufio.NewReader(rc)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(r, magic); err != nil || (string(magic) != snapshotMagic && string(magic) != snapshotMagicV2 && string(magic) != snapshotMagicV1) {
		return fmt.Errorf("%w: not a pipestream raft snapshot", ErrBadEntry)
	}
	var st Stats
	var n uint64
	for _, p := range []*uint64{&st.LastIndex, &st.LastTerm, &st.Streams, &st.DataEntries, &st.DataBytes, &n} {
		v, err := binary.ReadUvarint(r)
		if err != nil {
			return fmt.Errorf("%w: snapshot header: %v", ErrBadEntry, err)
		}
		*p = v
	}
	if n > maxSnapshotKeys {
		return fmt.Errorf("%w: snapshot holds %d keys", ErrBadEntry, n)
	}
	keys := make(map[statemachine.StreamKey]committed, n)
	order := make([]statemachine.StreamKey, 0, n)
	for range n {
		k, c, err := readSnapshotKey(r)
		if err != nil {
			return err
		}
		keys[k] = c
		order = append(order, k)
	}
	var catalog []statemachine.Entry
	if string(magic) != snapshotMagicV1 {
		var err error
		if catalog, err = readCatalog(r); err != nil {
			return err
		}
	}
	var members membership
	if string(magic) == snapshotMagic {
		var err error
		if members, err = readMembership(r); err != nil {
			return err
		}
	}
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: trailing bytes in snapshot", ErrBadEntry)
	}

	f.mu.Lock()
	f.st, f.keys, f.order, f.head = st, keys, order, 0
	for len(f.keys) > f.maxKeys { // a peer configured with fewer keys
		delete(f.keys, f.order[f.head])
		f.head++
	}
	f.mu.Unlock()
	if members.index > 0 {
		f.setMembers(members)
	}

	if f.linker == nil {
		return nil
	}
	failed := 0
	for _, e := range catalog {
		if err := f.linker.Link(f.ctx, e); err != nil {
			failed++
			f.log.Warn("raft: link from snapshot failed", "key", e.Key, "index", e.Index, "err", err)
		}
		crashpoint.Hit("raft.restore.linking")
	}
	if len(catalog) > 0 {
		f.log.Info("raft: restored snapshot", "index", st.LastIndex, "entries", len(catalog), "link_errors", failed)
	}
	return nil
}

func readCatalog(r *bufio.Reader) ([]statemachine.Entry, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("%w: snapshot catalog: %v", ErrBadEntry, err)
	}
	if n > maxSnapshotKeys {
		return nil, fmt.Errorf("%w: snapshot catalog holds %d entries", ErrBadEntry, n)
	}
	out := make([]statemachine.Entry, 0, n)
	for range n {
		var e statemachine.Entry
		client, err := readBytes(r, maxClientIDBytes)
		if err != nil {
			return nil, fmt.Errorf("%w: snapshot catalog: %v", ErrBadEntry, err)
		}
		e.Key.ClientID = string(client)
		for _, p := range []*uint64{&e.Key.StreamID, &e.Index, &e.Term, &e.Length} {
			if *p, err = binary.ReadUvarint(r); err != nil {
				return nil, fmt.Errorf("%w: snapshot catalog: %v", ErrBadEntry, err)
			}
		}
		msg, err := readBytes(r, maxMessageBytes)
		if err != nil {
			return nil, fmt.Errorf("%w: snapshot catalog: %v", ErrBadEntry, err)
		}
		e.Request = streamRequest(e.Key, msg)
		has, err := r.ReadByte()
		if err == nil && has > 1 {
			err = fmt.Errorf("checksum flag %d", has)
		}
		if err == nil && has == 1 {
			var sum [4]byte
			_, err = io.ReadFull(r, sum[:])
			e.Checksum, e.Checksummed = binary.BigEndian.Uint32(sum[:]), true
		}
		if err != nil {
			return nil, fmt.Errorf("%w: snapshot catalog: %v", ErrBadEntry, err)
		}
		out = append(out, e)
	}
	return out, nil
}

func readBytes(r *bufio.Reader, limit uint64) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, fmt.Errorf("field of %d bytes, more than %d", n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// streamRequest is the part of a stream's header request that its entry
// keeps, and that a state machine links by.
func streamRequest(key statemachine.StreamKey, msg []byte) *pb.RaftClientRequest {
	return &pb.RaftClientRequest{
		ClientId: []byte(key.ClientID),
		CallId:   key.StreamID,
		Type:     pb.RaftClientRequest_STREAM,
		Message:  msg,
	}
}

func readSnapshotKey(r *bufio.Reader) (statemachine.StreamKey, committed, error) {
	var k statemachine.StreamKey
	var c committed
	id, err := readBytes(r, maxClientIDBytes)
	if err != nil {
		return k, c, fmt.Errorf("%w: snapshot key: %v", ErrBadEntry, err)
	}
	k.ClientID = string(id)
	for _, p := range []*uint64{&k.StreamID, &c.index, &c.term} {
		if *p, err = binary.ReadUvarint(r); err != nil {
			return k, c, fmt.Errorf("%w: snapshot key: %v", ErrBadEntry, err)
		}
	}
	return k, c, nil
}

// fsmSnapshot is the encoded state.
type fsmSnapshot []byte

func (s fsmSnapshot) Persist(sink hraft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return fmt.Errorf("raft: write snapshot: %w", err)
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}
