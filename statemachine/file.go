package statemachine

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pipestream/pipestream/internal/crashpoint"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// The layout of a FileStore's directory.
const (
	tmpDir       = "tmp"           // streams being written, one file each
	dataDir      = "data"          // committed files, by their final names
	logName      = "committed.log" // one JSON line per applied entry, oldest first
	closedSuffix = ".closed"       // a temporary file whose stream was closed

	maxNameLen     = 1024
	maxNameElemLen = 255
)

// FileStore is a StateMachine that stores each stream as a file under a
// directory:
//
//	dir/tmp/<hex client id>-<stream id>          a stream being written
//	dir/tmp/<hex client id>-<stream id>.closed   a closed stream waiting for its entry
//	dir/data/<name>                              a committed stream
//	dir/committed.log                            one JSON line per applied entry
//
// The file name comes from the stream header's RaftClientRequest.message
// (the CLI's put --name), checked by CleanName when the stream opens so a bad
// name fails the stream before any data moves. Subdirectories are created as
// needed. An empty message names the file after the stream key,
// "<hex client id>/<stream id>". A name that is already stored is replaced
// atomically by the newer stream; readers that opened the old file keep
// reading the old data.
//
// # Durability
//
// A stream's Close fsyncs its file (WithSyncOnClose) and renames it to its
// ".closed" name, and fsyncs the directory, before it returns: the peer
// acknowledges CLOSE only after that, so a copy that a peer acknowledged
// survives a crash. NewFileStore keeps every closed file it finds (an
// orphan) until its entry is applied, when Link with a nil channel links it,
// or until SweepOrphans decides the entry will never come; it removes the
// files of streams that never closed, which no peer acknowledged.
//
// Link makes a closed stream's file durable under its final name: it
// appends the entry (index, term, key, name, length and the SHA-256 computed
// while writing) to committed.log and fsyncs it, renames the temporary file
// and fsyncs the directory. Writing the record first means a crash between
// the two steps is finished by the next NewFileStore, which completes the
// rename of a temporary file the log names and whose length and hash match.
// A link whose record cannot be written (a full disk) keeps the file,
// reports the copy missing, and is retried by the next Link and by
// RetryDeferred; Link then returns an error matching ErrLinkDeferred.
//
// # Missing copies and versions
//
// committed.log is the authority for what was applied. Link with a nil
// channel (a replay, a peer that was not on the stream's route, or one that
// lost its copy) is a no-op for a key the log holds; otherwise it links an
// orphan of the key, or records the entry as missing: a log line with
// "missing": true, a WARN log, a count in Missing, and an entry with
// StoredFile.Missing in List. Under each name the entry with the highest
// index wins, whatever order links complete in: a name whose newest entry
// is missing is not served (Open fails with ErrMissing) and its older file
// is removed, so no peer serves an older version under a committed name.
//
// Link with a channel for a key already linked discards the channel; the
// first link wins. Whatever Link returns, it consumes the channel: its data
// is linked, removed, or kept for a deferred link, and a later CleanUp is a
// no-op. A channel still open is closed first; one holding a different
// number of bytes than the entry is removed and Link returns
// ErrLengthMismatch.
//
// The index of applied entries is kept in memory and committed.log is never
// compacted, so both grow with the number of streams ever linked. Only one
// FileStore may use a directory at a time.
type FileStore struct {
	root        *os.Root
	logger      *slog.Logger
	syncOnClose bool

	// linkMu serializes Link, RetryDeferred and SweepOrphans, so at most one
	// record is ahead of its rename (what NewFileStore's recovery relies
	// on), appends to log never interleave, and orphans and deferred links
	// change hands under one lock.
	linkMu   sync.Mutex
	log      *os.File
	logSize  int64
	orphans  map[StreamKey]orphan       // closed files whose entry has not been applied
	deferred map[StreamKey]deferredLink // applied entries whose record could not be written

	mu     sync.RWMutex
	byKey  map[StreamKey]StoredFile // every applied entry
	byName map[string]StoredFile    // the newest entry of each name
}

// StoredFile describes a committed stream held by a FileStore.
type StoredFile struct {
	Name        string // relative to the data directory, cleaned
	Index, Term uint64 // the committed entry
	Key         StreamKey
	Length      uint64
	SHA256      [32]byte // zero when Missing
	// Checksum is the entry's CRC32C of the data, when Checksummed: the
	// client sent checksums and every peer checked them on the way in.
	Checksum    uint32
	Checksummed bool
	// Missing is true when the entry is committed but this peer holds no
	// copy of its data: it was not on the stream's route, was down, lost its
	// copy, or could not record its link yet. Such a name is not served.
	Missing bool
}

// orphan is a closed stream's file found at start-up.
type orphan struct {
	path string    // inside the root
	kept time.Time // when NewFileStore found it
}

// deferredLink is an applied entry whose data is closed on disk but whose
// committed.log record could not be written.
type deferredLink struct {
	sf  StoredFile
	tmp string
}

// FileOption configures a FileStore.
type FileOption func(*FileStore)

// WithLogger sets the logger for recovery and missing-data messages. The
// default is slog.Default().
func WithLogger(l *slog.Logger) FileOption { return func(s *FileStore) { s.logger = l } }

// WithSyncOnClose sets whether Close fsyncs a stream's file (and the rename
// that marks it closed). The default, true, makes a stream durable on
// every peer before its entry commits, which a replicated store needs; turn
// it off only when losing committed data in a crash is acceptable.
func WithSyncOnClose(on bool) FileOption { return func(s *FileStore) { s.syncOnClose = on } }

// NewFileStore opens or creates a FileStore in dir. It loads committed.log,
// finishes a link a crash interrupted, keeps the files of closed streams
// for their entries, and removes those of streams that never closed.
func NewFileStore(dir string, opts ...FileOption) (*FileStore, error) {
	s := &FileStore{
		logger:      slog.Default(),
		syncOnClose: true,
		orphans:     make(map[StreamKey]orphan),
		deferred:    make(map[StreamKey]deferredLink),
		byKey:       make(map[StreamKey]StoredFile),
		byName:      make(map[string]StoredFile),
	}
	for _, o := range opts {
		o(s)
	}
	for _, d := range []string{tmpDir, dataDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("statemachine: file store: %w", err)
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("statemachine: file store: %w", err)
	}
	s.root = root
	if err := s.loadLog(); err != nil {
		root.Close()
		return nil, err
	}
	if err := s.syncDir("."); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.recoverTmp(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the store's directory and log. Streams still open are not
// committed; the next NewFileStore on dir removes their files, and keeps
// those of closed streams.
func (s *FileStore) Close() error {
	var err error
	if s.log != nil {
		err = s.log.Close()
	}
	return errors.Join(err, s.root.Close())
}

// OpenStream implements StateMachine. It fails with ErrBadName when the
// request's message is not a valid file name or the name collides with a
// stored directory or file path, and with ErrDuplicateStream when the key is
// already open or closed and waiting for its entry.
func (s *FileStore) OpenStream(ctx context.Context, key StreamKey, req *pb.RaftClientRequest) (DataChannel, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("statemachine: open stream %v: %w", key, err)
	}
	name, err := streamName(key, req)
	if err != nil {
		return nil, fmt.Errorf("%w (stream %v)", err, key)
	}
	if err := s.checkConflict(name); err != nil {
		return nil, fmt.Errorf("%w (stream %v)", err, key)
	}
	tmp := tmpPath(key)
	if _, err := s.root.Lstat(tmp + closedSuffix); err == nil {
		return nil, fmt.Errorf("%w: %v is closed and waiting for its entry", ErrDuplicateStream, key)
	}
	f, err := s.root.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644) // read back by Truncate
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%w: %v", ErrDuplicateStream, key)
	}
	if err != nil {
		return nil, fmt.Errorf("statemachine: open stream %v: %w", key, err)
	}
	return &fileChannel{s: s, key: key, name: name, tmp: tmp, f: f, h: sha256.New()}, nil
}

// Link implements StateMachine; see FileStore for what it guarantees. It
// does not watch ctx: a link is a few small writes and fsyncs, and stopping
// one halfway would only leave more to recover.
func (s *FileStore) Link(_ context.Context, e Entry, ch DataChannel) error {
	var c *fileChannel
	if ch != nil {
		var ok bool
		if c, ok = ch.(*fileChannel); !ok || c.s != s {
			return fmt.Errorf("statemachine: link %v: channel %T does not belong to this FileStore", e.Key, ch)
		}
		if c.key != e.Key {
			return fmt.Errorf("statemachine: link %v: channel is for stream %v", e.Key, c.key)
		}
	}

	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	s.retryDeferredLocked()
	s.mu.RLock()
	prev, done := s.byKey[e.Key]
	s.mu.RUnlock()
	if c == nil {
		return s.linkWithoutChannel(e, prev, done)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.state == chanLinked:
		return nil
	case c.state == chanCleaned, c.state == chanReleased:
		return s.linkWithoutChannel(e, prev, done)
	case done && !prev.Missing:
		return c.cleanUpLocked()
	}
	// A copy that cannot be linked is discarded, and the entry recorded
	// missing here: it is committed, and the name's older version must not
	// stand in for it.
	if err := c.closeLocked(); err != nil {
		return errors.Join(fmt.Errorf("statemachine: link %v: %w", e.Key, err), c.cleanUpLocked(), s.recordMissing(e))
	}
	if c.n != e.Length {
		return errors.Join(fmt.Errorf("%w: stream %v holds %d bytes, entry %d names %d",
			ErrLengthMismatch, e.Key, c.n, e.Index, e.Length), c.cleanUpLocked(), s.recordMissing(e))
	}
	// The leaves of the stream's routing tree checked the bytes on the
	// wire; this checks what this peer wrote, so a copy that went wrong
	// between its memory and its disk is repaired, not linked.
	if e.Checksummed && c.crc != e.Checksum {
		return errors.Join(fmt.Errorf("%w: stream %v wrote CRC32C %08x, entry %d names %08x",
			ErrChecksumMismatch, e.Key, c.crc, e.Index, e.Checksum), c.cleanUpLocked(), s.recordMissing(e))
	}

	sf := StoredFile{Name: c.name, Index: e.Index, Term: e.Term, Key: e.Key, Length: c.n,
		Checksum: e.Checksum, Checksummed: e.Checksummed}
	c.h.Sum(sf.SHA256[:0])
	c.h = nil
	err := s.linkFile(sf, c.tmp)
	// Linked, or kept for a deferred link: the channel's file is no longer
	// its own to clean up either way.
	c.state = chanLinked
	return err
}

// linkWithoutChannel applies e on a peer that has no open channel for it:
// a replay of an entry already applied, a closed file found at start-up,
// or no copy at all. prev is what the log holds for the key, if done.
func (s *FileStore) linkWithoutChannel(e Entry, prev StoredFile, done bool) error {
	if done && !prev.Missing {
		return nil
	}
	if o, ok := s.orphans[e.Key]; ok {
		delete(s.orphans, e.Key)
		sf, err := s.adopt(e, o)
		if err == nil {
			s.logger.Info("statemachine: linked a copy kept across a restart", "name", sf.Name, "index", e.Index)
			return s.linkFile(sf, o.path)
		}
		s.logger.Warn("statemachine: discarding a kept copy that does not match its entry",
			"stream", e.Key.String(), "index", e.Index, "err", err)
		if rerr := s.root.Remove(o.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
		if done {
			return err
		}
		return errors.Join(err, s.recordMissing(e))
	}
	if done {
		return nil // already recorded missing
	}
	return s.recordMissing(e)
}

// linkFile links sf to the closed file tmp, or defers the link when its
// record cannot be written. Call with linkMu held.
func (s *FileStore) linkFile(sf StoredFile, tmp string) error {
	committed, err := s.commit(sf, tmp)
	if committed {
		return err
	}
	// The entry is committed and the bytes are here: keep them, hide the
	// older version the name held, and try again later.
	s.deferred[sf.Key] = deferredLink{sf: sf, tmp: tmp}
	missing := sf
	missing.Missing, missing.SHA256 = true, [32]byte{}
	s.mu.RLock()
	cur, held := s.byName[sf.Name]
	s.mu.RUnlock()
	s.setEntry(missing)
	if held && cur.Index < sf.Index && !cur.Missing {
		// A crash before the retry must not leave the older version to
		// be served under the name: the log still holds only its record.
		err = errors.Join(err, s.removeData(sf.Name))
	}
	s.logger.Warn("statemachine: could not record a link; the copy is kept, reported missing and retried",
		"name", sf.Name, "index", sf.Index, "err", err)
	return fmt.Errorf("%w: %w", ErrLinkDeferred, err)
}

// commit records sf and moves its temporary file into place. committed
// reports whether the record stands: the file is in place, or the next
// NewFileStore will put it there. A newer entry already holding sf.Name
// keeps it; sf is recorded and its file removed.
func (s *FileStore) commit(sf StoredFile, tmp string) (committed bool, err error) {
	s.mu.RLock()
	cur, held := s.byName[sf.Name]
	s.mu.RUnlock()
	superseded := held && cur.Index > sf.Index
	dst := filepath.Join(dataDir, sf.Name)
	if !superseded {
		if err := s.mkdirs(filepath.Dir(dst)); err != nil {
			return false, fmt.Errorf("statemachine: link %v: %w", sf.Key, err)
		}
	}
	before := s.logSize
	if err := s.appendRecord(sf); err != nil {
		return false, errors.Join(fmt.Errorf("statemachine: link %v: %w", sf.Key, err), s.truncateLog(before))
	}
	crashpoint.HitOn("filestore.link.recorded", sf.Name)
	if superseded {
		s.setEntry(sf)
		if err := s.root.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return true, fmt.Errorf("statemachine: link %v: remove superseded copy: %w", sf.Key, err)
		}
		return true, nil
	}
	if err := s.root.Rename(tmp, dst); err != nil {
		err = fmt.Errorf("statemachine: link %v: %w", sf.Key, err)
		if terr := s.truncateLog(before); terr != nil {
			// The record stands: restart finishes the rename.
			return true, errors.Join(err, terr)
		}
		return false, err
	}
	s.setEntry(sf)
	crashpoint.HitOn("filestore.link.renamed", sf.Name)
	if err := s.syncDir(filepath.Dir(dst)); err != nil {
		return true, fmt.Errorf("statemachine: link %v: %w", sf.Key, err)
	}
	return true, nil
}

// setEntry records sf as applied; it becomes its name's entry unless a
// newer one holds the name.
func (s *FileStore) setEntry(sf StoredFile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byKey[sf.Key] = sf
	if cur, ok := s.byName[sf.Name]; !ok || cur.Index <= sf.Index {
		s.byName[sf.Name] = sf
	}
}

// recordMissing records e as applied without data on this peer, and removes
// the older version its name held so it is not served in e's place.
func (s *FileStore) recordMissing(e Entry) error {
	name, err := streamName(e.Key, e.Request)
	if err != nil {
		// The primary checked the name; an entry whose name this peer
		// refuses cannot be stored here under any name.
		s.logger.Warn("statemachine: committed stream has an unusable name on this peer",
			"index", e.Index, "stream", e.Key.String(), "err", err)
		return fmt.Errorf("statemachine: link %v: %w", e.Key, err)
	}
	sf := StoredFile{Name: name, Index: e.Index, Term: e.Term, Key: e.Key, Length: e.Length, Missing: true,
		Checksum: e.Checksum, Checksummed: e.Checksummed}
	s.logger.Warn("statemachine: committed stream has no data on this peer; its copy is missing",
		"name", name, "index", e.Index, "stream", e.Key.String())
	s.mu.RLock()
	cur, held := s.byName[name]
	s.mu.RUnlock()
	before := s.logSize
	aerr := s.appendRecord(sf)
	if aerr != nil {
		aerr = errors.Join(fmt.Errorf("statemachine: record missing %v: %w", e.Key, aerr), s.truncateLog(before))
	}
	// Recorded or not, this process must not serve the older version.
	s.setEntry(sf)
	if held && cur.Index < sf.Index && !cur.Missing {
		aerr = errors.Join(aerr, s.removeData(name))
	}
	return aerr
}

// removeData removes the copy stored under name, durably.
func (s *FileStore) removeData(name string) error {
	p := filepath.Join(dataDir, name)
	if err := s.root.Remove(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("statemachine: remove superseded %s: %w", name, err)
	}
	return s.syncDir(filepath.Dir(p))
}

// Committed implements KeyChecker: whether an entry for key was applied
// here, linked or missing, and at which index.
func (s *FileStore) Committed(key StreamKey) (uint64, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sf, ok := s.byKey[key]
	return sf.Index, ok
}

// Missing returns the number of names whose newest committed entry has no
// copy on this peer (StoredFile.Missing).
func (s *FileStore) Missing() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, sf := range s.byName {
		if sf.Missing {
			n++
		}
	}
	return n
}

// List returns, for each name, the newest entry that wrote it, in log
// order, including entries whose copy is missing on this peer.
func (s *FileStore) List() []StoredFile {
	s.mu.RLock()
	out := make([]StoredFile, 0, len(s.byName))
	for _, sf := range s.byName {
		out = append(out, sf)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b StoredFile) int {
		if c := cmpUint(a.Index, b.Index); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// Catalog implements Cataloger: the newest entry of every name, in log
// order, whether this peer holds its copy or not.
func (s *FileStore) Catalog() []Entry {
	files := s.List()
	out := make([]Entry, len(files))
	for i, sf := range files {
		out[i] = Entry{Index: sf.Index, Term: sf.Term, Key: sf.Key, Length: sf.Length, Request: nameRequest(sf),
			Checksum: sf.Checksum, Checksummed: sf.Checksummed}
	}
	return out
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Lookup returns what the store holds under name.
func (s *FileStore) Lookup(name string) (StoredFile, bool) {
	n, err := safeName(name) // a name stored before CleanName's newer rules too
	if err != nil {
		return StoredFile{}, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	sf, ok := s.byName[n]
	return sf, ok
}

// Open opens a committed file for reading. A name the store does not hold
// fails with an error matching fs.ErrNotExist; one whose newest entry has
// no copy here, with one matching ErrMissing.
func (s *FileStore) Open(name string) (*os.File, error) {
	sf, ok := s.Lookup(name)
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	if sf.Missing {
		return nil, &fs.PathError{Op: "open", Path: name, Err: ErrMissing}
	}
	return s.root.Open(filepath.Join(dataDir, sf.Name))
}
