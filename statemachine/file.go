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
	"sync"
	"time"

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
