package main

// The durability checker: what the crash tests assert once a group has been
// healed. It is kept apart from the fault schedules so that later tests
// (repair, pipeline recovery) can record their puts in a history and check
// the same invariant on the peers' data directories:
//
//   - For each name, the committed put with the highest log index is the
//     truth. On every peer the name's newest record (committed.log, highest
//     index) is that entry, holding its bytes (SHA-256 of the file under
//     data/ and in the record) or marked missing; a peer never serves an
//     older version under the name.
//   - A record never belongs to a put that failed with a definite "not
//     committed" error (see outcomeOf), and a linked record's bytes are
//     exactly its own put's.
//   - Every peer holds the same newest index for each name: once all peers
//     have applied the whole log, an entry one peer applied is applied (and
//     recorded, missing or not) on all of them.
//
// The checker reads the data directories itself, as the FileStore documents
// them, so it does not depend on the CLI's ls and get.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// outcome is what a client learned of one put.
type outcome int

const (
	// outCommitted: the reply to CLOSE was successful (or put printed
	// committed), with a log index and term.
	outCommitted outcome = iota
	// outFailed: an error that proves the entry was never submitted.
	outFailed
	// outIndeterminate: the entry may or may not have committed (a failed
	// commit, a lost connection, a timeout).
	outIndeterminate
)

func (o outcome) String() string {
	return [...]string{"committed", "failed", "indeterminate"}[o]
}

// outcomeOf classifies the error a put failed with. The primary submits the
// entry only once every peer has acknowledged CLOSE (handler finishClose),
// and from then on the stream cannot fail (Stream.fail ignores a stream in
// commit), so a failure the server names before that point is definite:
// a successor that failed or was lost, a bad header or offset, an unknown
// stream, a limit, a refused group. docs/protocol.md says a failed reply to
// CLOSE with TIMEOUT, COMMIT_FAILED or NOT_LEADER does not prove that the
// entry did not commit; STATE_MACHINE may be a committed entry this peer
// could not link (raft.LinkError), CANCELLED may be a commit cut short by
// a shutdown and INTERNAL a reply the client could not make sense of. A
// client-side error (connection lost, no reply in time, the context) says
// nothing of the commit either.
func outcomeOf(err error) outcome {
	if err == nil {
		return outCommitted
	}
	var e *pb.Error
	if !errors.As(err, &e) {
		return outIndeterminate
	}
	switch e.Code {
	case pb.ErrorCode_TIMEOUT, pb.ErrorCode_COMMIT_FAILED, pb.ErrorCode_NOT_LEADER,
		pb.ErrorCode_STATE_MACHINE, pb.ErrorCode_CANCELLED, pb.ErrorCode_INTERNAL:
		return outIndeterminate
	}
	return outFailed
}

// putRecord is one put of a history.
type putRecord struct {
	Name    string
	Size    int
	SHA256  [32]byte
	Primary string
	// Client and Stream are the stream key (hex client id, stream id) the
	// peers record; Client is empty when the test does not know it (a put
	// run as a process), and then records are matched by Index.
	Client string
	Stream uint64

	Outcome     outcome
	Index, Term uint64 // the committed entry
	Err         string // why it failed, if it did

	// Start and End bound the put: from before it opened the stream to
	// after it learned the outcome (streamPut sets them).
	Start, End time.Time
}

func (p *putRecord) String() string {
	stream := "?"
	if p.Client != "" {
		stream = strconv.FormatUint(p.Stream, 10)
	}
	s := fmt.Sprintf("put %s (%d B, sha256 %.12x, primary %s, stream %s): %v", p.Name, p.Size, p.SHA256[:], p.Primary, stream, p.Outcome)
	switch p.Outcome {
	case outCommitted:
		s += fmt.Sprintf(" at index %d term %d", p.Index, p.Term)
	default:
		s += ": " + p.Err
	}
	return s
}

// history is the puts of a test, safe for concurrent use.
type history struct {
	mu   sync.Mutex
	puts []*putRecord
}

func (h *history) add(p *putRecord) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.puts = append(h.puts, p)
}

// counts returns how many puts had each outcome.
func (h *history) counts() (c [3]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.puts {
		c[p.Outcome]++
	}
	return c
}

// streamPut streams data to the group through c as name, via primary, with
// opts (a routing table), and records what the client learned. It returns
// the record, which it has added to h.
func streamPut(ctx context.Context, h *history, c *datastream.Client, name, primary string, data []byte, events *putEvents, opts ...datastream.StreamOption) *putRecord {
	rec := &putRecord{Name: name, Size: len(data), SHA256: sha256.Sum256(data), Primary: primary, Client: hex.EncodeToString(c.ID()), Start: time.Now()}
	defer func() {
		rec.End = time.Now()
		h.add(rec)
	}()
	fail := func(err error) *putRecord {
		rec.Outcome, rec.Err = outcomeOf(err), err.Error()
		return rec
	}
	out, err := c.Stream(ctx, []byte(name), append([]datastream.StreamOption{datastream.WithPrimary(primary)}, opts...)...)
	if err != nil {
		// No stream: nothing was sent that could commit.
		rec.Outcome, rec.Err = outFailed, err.Error()
		return rec
	}
	rec.Stream = out.ID()
	// The futures of the writes are not waited for: the window throttles
	// the writer, and the stream's first failure fails the close too.
	const piece = datastream.DefaultPacketSize
	var last *datastream.Future[*datastream.Reply]
	for off := 0; off < len(data); off += piece {
		events.at(off)
		last = out.WriteAsync(ctx, data[off:min(off+piece, len(data))])
		if isDone(last) || off == 0 && events != nil && events.opened {
			if _, err := last.Wait(ctx); err != nil {
				return fail(err)
			}
		}
	}
	if events != nil && events.drain && last != nil {
		if _, err := last.Wait(ctx); err != nil {
			return fail(err)
		}
	}
	events.at(len(data))
	f := out.Close(ctx)
	events.closed()
	reply, err := f.Wait(ctx)
	if err != nil {
		return fail(err)
	}
	rcr := reply.RaftClientReply
	if reply.BytesWritten() != uint64(len(data)) {
		return fail(fmt.Errorf("the group wrote %d bytes, the put had %d", reply.BytesWritten(), len(data)))
	}
	rec.Outcome, rec.Index, rec.Term = outCommitted, rcr.GetLogIndex(), rcr.GetTerm()
	events.replied()
	return rec
}

// putEvents lets a fault schedule act at a point of a put: once offset
// bytes have been handed to the stream, once CLOSE is sent, once its reply
// came. A nil *putEvents does nothing. With drain, CLOSE is sent only once
// every write is acknowledged, so that closeSent is close to the commit.
// With opened, the first write is acknowledged (so every peer of the
// stream holds it open) before the rest is handed over.
type putEvents struct {
	drain      bool // wait for every write's reply before sending CLOSE
	opened     bool // wait for the first write's reply before the others
	offset     int
	atOffset   chan struct{}
	closeSent  chan struct{}
	closeReply chan struct{}
	once       [3]sync.Once
}

func newPutEvents(offset int) *putEvents {
	return &putEvents{offset: offset, atOffset: make(chan struct{}), closeSent: make(chan struct{}), closeReply: make(chan struct{})}
}

func (e *putEvents) at(off int) {
	if e != nil && off >= e.offset {
		e.once[0].Do(func() { close(e.atOffset) })
	}
}

func (e *putEvents) closed() {
	if e != nil {
		e.once[1].Do(func() { close(e.closeSent) })
	}
}

func (e *putEvents) replied() {
	if e != nil {
		e.once[2].Do(func() { close(e.closeReply) })
	}
}

// storeRecord is one line of a FileStore's committed.log.
type storeRecord struct {
	Index   uint64 `json:"index"`
	Term    uint64 `json:"term"`
	Client  string `json:"client"` // hex
	Stream  uint64 `json:"stream"`
	Name    string `json:"name"`
	Length  uint64 `json:"length"`
	SHA256  string `json:"sha256"` // hex; empty when missing
	Missing bool   `json:"missing"`
}

// peerStore is what one peer's FileStore directory holds.
type peerStore struct {
	id      string
	records []storeRecord          // committed.log, oldest first
	newest  map[string]storeRecord // per name, the record with the highest index
	dataSum map[string]string      // per name in newest: hex SHA-256 of data/<name>, "" if absent
}

// readPeerStore reads the FileStore directory dir (DATA_DIR/files) of peer
// id. Run it while the peer is up or down; a torn last line is ignored, as
// the FileStore drops it.
func readPeerStore(id, dir string) (*peerStore, error) {
	s := &peerStore{id: id, newest: map[string]storeRecord{}, dataSum: map[string]string{}}
	data, err := os.ReadFile(filepath.Join(dir, "committed.log"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if i := bytes.LastIndexByte(data, '\n'); i+1 < len(data) {
		data = data[:i+1]
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r storeRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s: committed.log: %q: %w", id, sc.Text(), err)
		}
		s.records = append(s.records, r)
		if old, ok := s.newest[r.Name]; !ok || r.Index >= old.Index {
			s.newest[r.Name] = r
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for name := range s.newest {
		f, err := os.Open(filepath.Join(dir, "data", filepath.FromSlash(name)))
		if errors.Is(err, os.ErrNotExist) {
			s.dataSum[name] = ""
			continue
		}
		if err != nil {
			return nil, err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return nil, err
		}
		s.dataSum[name] = hex.EncodeToString(h.Sum(nil))
	}
	return s, nil
}

// record returns the peer's newest record at index, if any.
func (s *peerStore) record(index uint64) (storeRecord, bool) {
	for i := len(s.records) - 1; i >= 0; i-- {
		if s.records[i].Index == index {
			return s.records[i], true
		}
	}
	return storeRecord{}, false
}

// check returns every violation of the invariant (see the top of this
// file) on the given stores, which must be read after every peer applied
// the whole log. names limits the check to those names; nil checks every
// name a put or a store holds.
func (h *history) check(stores []*peerStore, names []string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var v []string
	report := func(format string, args ...any) { v = append(v, fmt.Sprintf(format, args...)) }

	byKey := map[string]*putRecord{}
	byIndex := map[uint64]*putRecord{}
	truth := map[string]*putRecord{}
	all := map[string]bool{}
	for _, p := range h.puts {
		all[p.Name] = true
		if p.Client != "" && p.Stream != 0 {
			byKey[fmt.Sprintf("%s-%d", p.Client, p.Stream)] = p
		}
		if p.Outcome == outCommitted {
			byIndex[p.Index] = p
			if t := truth[p.Name]; t == nil || p.Index > t.Index {
				truth[p.Name] = p
			}
		}
	}
	// putOf finds the put a record belongs to.
	putOf := func(r storeRecord) *putRecord {
		if p := byKey[fmt.Sprintf("%s-%d", r.Client, r.Stream)]; p != nil {
			return p
		}
		if p := byIndex[r.Index]; p != nil && p.Client == "" {
			return p
		}
		return nil
	}
	for _, s := range stores {
		for name := range s.newest {
			all[name] = true
		}
		// Nothing reported failed becomes visible, in any record.
		for _, r := range s.records {
			if p := putOf(r); p != nil && p.Outcome == outFailed {
				report("%s: %s at index %d is the entry of a failed put: %v", s.id, r.Name, r.Index, p)
			}
		}
	}
	// entry describes the put of the entry at index, as any store records it.
	entry := func(index uint64) string {
		for _, s := range stores {
			if r, ok := s.record(index); ok {
				if p := putOf(r); p != nil {
					return p.String()
				}
				return fmt.Sprintf("stream %s-%d, of no put of this test", r.Client, r.Stream)
			}
		}
		if p := byIndex[index]; p != nil {
			return p.String()
		}
		return "no record anywhere"
	}
	if names == nil {
		for name := range all {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		// The newest entry for the name: the truth, or a later one that
		// some peer applied (an indeterminate put that committed).
		var want uint64
		if t := truth[name]; t != nil {
			want = t.Index
		}
		for _, s := range stores {
			if r, ok := s.newest[name]; ok {
				want = max(want, r.Index)
			}
		}
		if want == 0 {
			continue // nothing of the name committed anywhere
		}
		for _, s := range stores {
			r, ok := s.newest[name]
			switch {
			case !ok:
				if old, had := s.record(want); had {
					report("%s: %s has no record at index %d, yet %v", s.id, name, want, old)
				} else {
					report("%s: %s: no record; the name's newest entry is index %d (%s)", s.id, name, want, entry(want))
				}
				continue
			case r.Index < want:
				p := putOf(r)
				served := "missing"
				if !r.Missing {
					served = "its bytes"
				}
				report("%s: %s: newest record is index %d (%s, %v), not the newest entry %d (%s): an older version under a committed name",
					s.id, name, r.Index, served, p, want, entry(want))
				continue
			}
			p := putOf(r)
			if p == nil {
				report("%s: %s at index %d (stream %s-%d) is no put of this test", s.id, name, r.Index, r.Client, r.Stream)
				continue
			}
			if p.Outcome == outCommitted && p.Index != r.Index {
				report("%s: %s recorded at index %d, its put committed at %d", s.id, name, r.Index, p.Index)
			}
			if r.Length != uint64(p.Size) {
				report("%s: %s at index %d records %d bytes, the put had %d", s.id, name, r.Index, r.Length, p.Size)
			}
			if r.Missing {
				if r.SHA256 != "" {
					report("%s: %s at index %d is missing yet records sha256 %s", s.id, name, r.Index, r.SHA256)
				}
				continue
			}
			sum := hex.EncodeToString(p.SHA256[:])
			if r.SHA256 != sum {
				report("%s: %s at index %d records sha256 %.12s, the put's is %.12s", s.id, name, r.Index, r.SHA256, sum)
			}
			if got := s.dataSum[name]; got != sum {
				if got == "" {
					got = "no file"
				}
				report("%s: %s at index %d: data/%s holds %.12s, the put's bytes are %.12s", s.id, name, r.Index, name, got, sum)
			}
		}
	}
	return v
}

// healTimeout bounds how long the group may take, once the faults end, to
// repair every copy a peer reported missing.
const healTimeout = 60 * time.Second

// missingCopies lists the names whose newest record on some peer is a
// missing copy, as "peer:name".
func missingCopies(stores []*peerStore) []string {
	var out []string
	for _, s := range stores {
		for name, r := range s.newest {
			if r.Missing {
				out = append(out, s.id+":"+name)
			}
		}
	}
	slices.Sort(out)
	return out
}

// describe lists the stores' newest records per name, for a failure.
func describe(stores []*peerStore) string {
	var b strings.Builder
	for _, s := range stores {
		fmt.Fprintf(&b, "%s: %d records\n", s.id, len(s.records))
		names := make([]string, 0, len(s.newest))
		for name := range s.newest {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			r := s.newest[name]
			fmt.Fprintf(&b, "  %s index %d stream %d len %d sha %.12s missing %v data %.12s\n", name, r.Index, r.Stream, r.Length, r.SHA256, r.Missing, s.dataSum[name])
		}
	}
	return b.String()
}
