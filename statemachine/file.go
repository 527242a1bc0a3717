package statemachine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// The layout of a FileStore's directory.
const (
	tmpDir  = "tmp"           // streams being written, one file each
	dataDir = "data"          // committed files, by their final names
	logName = "committed.log" // one JSON line per linked stream, oldest first

	maxNameLen     = 1024
	maxNameElemLen = 255
)

// FileStore is a StateMachine that stores each stream as a file under a
// directory:
//
//	dir/tmp/<hex client id>-<stream id>   a stream being written
//	dir/data/<name>                       a committed stream
//	dir/committed.log                     one JSON line per committed stream
//
// The file name comes from the stream header's RaftClientRequest.message
// (the CLI's put --name), checked by CleanName when the stream opens so a bad
// name fails the stream before any data moves. Subdirectories are created as
// needed. An empty message names the file after the stream key,
// "<hex client id>/<stream id>". A name that is already stored is replaced
// atomically by the newer stream; readers that opened the old file keep
// reading the old data.
//
// Link makes a closed stream's file durable under its final name: it
// appends the entry (index, term, key, name, length and the SHA-256 computed
// while writing) to committed.log and fsyncs it, renames the temporary file
// and fsyncs the directory. Writing the record first means a crash between
// the two steps is finished by the next NewFileStore, which completes the
// rename of a temporary file the log names and whose length and hash match.
//
// committed.log is the authority for what was linked: Link with a nil
// channel (a replay, or a peer that was not on the stream's route) is a
// no-op for a key the log holds and otherwise counts the entry in Missing
// and returns nil, since Apply must not fail on a peer that has no data. A
// file left under the same name by an earlier stream is not this entry's
// data. Link with a channel for a key already linked discards the channel;
// the first link wins.
//
// Whatever Link returns, it consumes the channel: its data is linked or
// removed, and a later CleanUp is a no-op. A channel still open is closed
// first; one holding a different number of bytes than the entry is removed
// and Link returns ErrLengthMismatch.
//
// The index of linked entries is kept in memory and committed.log is never
// compacted, so both grow with the number of streams ever linked. Only one
// FileStore may use a directory at a time.
type FileStore struct {
	root        *os.Root
	logger      *slog.Logger
	syncOnClose bool

	missing atomic.Int64

	// linkMu serializes Link, so at most one record is ahead of its rename
	// (what NewFileStore's recovery relies on) and appends to log never
	// interleave.
	linkMu  sync.Mutex
	log     *os.File
	logSize int64

	mu     sync.RWMutex
	byKey  map[StreamKey]StoredFile // every linked entry
	byName map[string]StoredFile    // the entry each stored name holds now
}

// StoredFile describes a committed stream held by a FileStore.
type StoredFile struct {
	Name        string // relative to the data directory, cleaned
	Index, Term uint64 // the committed entry
	Key         StreamKey
	Length      uint64
	SHA256      [32]byte
}

// FileOption configures a FileStore.
type FileOption func(*FileStore)

// WithLogger sets the logger for recovery and missing-data messages. The
// default is slog.Default().
func WithLogger(l *slog.Logger) FileOption { return func(s *FileStore) { s.logger = l } }

// WithSyncOnClose sets whether Close fsyncs a stream's file when data was
// written since the last Sync. The default, true, makes a stream durable on
// every peer before its entry commits, which a replicated store needs; turn
// it off only when losing committed data in a crash is acceptable.
func WithSyncOnClose(on bool) FileOption { return func(s *FileStore) { s.syncOnClose = on } }

// NewFileStore opens or creates a FileStore in dir. It loads committed.log,
// finishes a link a crash interrupted, and removes the temporary files of
// streams that were never committed.
func NewFileStore(dir string, opts ...FileOption) (*FileStore, error) {
	s := &FileStore{
		logger:      slog.Default(),
		syncOnClose: true,
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
// committed; the next NewFileStore on dir removes their files.
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
// already open.
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
	f, err := s.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
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
	s.mu.RLock()
	_, done := s.byKey[e.Key]
	s.mu.RUnlock()
	if c == nil {
		if !done {
			s.noteMissing(e)
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
			s.noteMissing(e)
		}
		return nil
	case done:
		return c.cleanUpLocked()
	}
	if err := c.closeLocked(); err != nil {
		return errors.Join(fmt.Errorf("statemachine: link %v: %w", e.Key, err), c.cleanUpLocked())
	}
	if c.n != e.Length {
		return errors.Join(fmt.Errorf("%w: stream %v holds %d bytes, entry %d names %d",
			ErrLengthMismatch, e.Key, c.n, e.Index, e.Length), c.cleanUpLocked())
	}

	sf := StoredFile{Name: c.name, Index: e.Index, Term: e.Term, Key: e.Key, Length: c.n}
	c.h.Sum(sf.SHA256[:0])
	committed, err := s.commit(sf, c.tmp)
	if !committed {
		return errors.Join(err, c.cleanUpLocked())
	}
	c.state = chanLinked
	c.h = nil
	return err
}

// commit records sf and moves its temporary file into place. committed
// reports whether the record stands: the file is in place, or the next
// NewFileStore will put it there.
func (s *FileStore) commit(sf StoredFile, tmp string) (committed bool, err error) {
	dst := filepath.Join(dataDir, sf.Name)
	if err := s.mkdirs(filepath.Dir(dst)); err != nil {
		return false, fmt.Errorf("statemachine: link %v: %w", sf.Key, err)
	}
	before := s.logSize
	if err := s.appendRecord(sf); err != nil {
		return false, errors.Join(fmt.Errorf("statemachine: link %v: %w", sf.Key, err), s.truncateLog(before))
	}
	if err := s.root.Rename(tmp, dst); err != nil {
		err = fmt.Errorf("statemachine: link %v: %w", sf.Key, err)
		if terr := s.truncateLog(before); terr != nil {
			// The record stands: restart finishes the rename.
			return true, errors.Join(err, terr)
		}
		return false, err
	}
	s.mu.Lock()
	s.byKey[sf.Key] = sf
	s.byName[sf.Name] = sf
	s.mu.Unlock()
	if err := s.syncDir(filepath.Dir(dst)); err != nil {
		return true, fmt.Errorf("statemachine: link %v: %w", sf.Key, err)
	}
	return true, nil
}

func (s *FileStore) noteMissing(e Entry) {
	s.missing.Add(1)
	s.logger.Info("statemachine: committed stream has no data on this peer",
		"index", e.Index, "stream", e.Key.String())
}

// Missing returns the number of entries Link was given no data for, since
// the store was opened.
func (s *FileStore) Missing() int { return int(s.missing.Load()) }

// List returns the files the store holds, in link order: for each name, the
// entry that wrote it last.
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
	n, err := CleanName(name)
	if err != nil {
		return StoredFile{}, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	sf, ok := s.byName[n]
	return sf, ok
}

// Open opens a committed file for reading. A name the store does not hold
// fails with an error matching fs.ErrNotExist.
func (s *FileStore) Open(name string) (*os.File, error) {
	sf, ok := s.Lookup(name)
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return s.root.Open(filepath.Join(dataDir, sf.Name))
}

// CleanName checks a client-chosen file name and returns it cleaned. It
// rejects, with ErrBadName, a name that is empty, absolute, longer than 1024
// bytes or with an element longer than 255, or that holds a NUL or a ".."
// element. Subdirectories ("a/b") are allowed.
func CleanName(name string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w %q: %s", ErrBadName, name, why)
	}
	switch {
	case name == "":
		return bad("empty")
	case len(name) > maxNameLen:
		return bad("longer than " + strconv.Itoa(maxNameLen) + " bytes")
	case strings.IndexByte(name, 0) >= 0:
		return bad("contains NUL")
	case filepath.IsAbs(name) || name[0] == '/' || name[0] == '\\':
		return bad("absolute")
	}
	// Split on both separators so a name means the same on every OS.
	for _, el := range strings.FieldsFunc(name, func(r rune) bool { return r == '/' || r == '\\' }) {
		if el == ".." {
			return bad(`contains ".."`)
		}
		if len(el) > maxNameElemLen {
			return bad("has an element longer than " + strconv.Itoa(maxNameElemLen) + " bytes")
		}
	}
	c := filepath.Clean(name)
	if c == "." || !filepath.IsLocal(c) {
		return bad("names no file in the store")
	}
	return c, nil
}

// streamName is the file name a stream is stored under.
func streamName(key StreamKey, req *pb.RaftClientRequest) (string, error) {
	if m := req.GetMessage(); len(m) > 0 {
		return CleanName(string(m))
	}
	if key.ClientID == "" {
		return strconv.FormatUint(key.StreamID, 10), nil
	}
	return CleanName(key.String())
}

// checkConflict fails a name whose path runs through a stored file, or that
// names a directory. It is a best-effort check, racing with other streams,
// so that the common mistake fails the stream rather than its link.
func (s *FileStore) checkConflict(name string) error {
	p := dataDir
	elems := strings.Split(name, string(filepath.Separator))
	for i, el := range elems {
		p = filepath.Join(p, el)
		fi, err := s.root.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("statemachine: check name %q: %w", name, err)
		}
		last := i == len(elems)-1
		if !last && !fi.IsDir() {
			return fmt.Errorf("%w %q: %q is a file", ErrBadName, name, filepath.Join(elems[:i+1]...))
		}
		if last && fi.IsDir() {
			return fmt.Errorf("%w %q: is a directory", ErrBadName, name)
		}
	}
	return nil
}

// mkdirs creates dir and its missing parents inside the root, fsyncing the
// parent of each directory it creates so the new entries survive a crash.
func (s *FileStore) mkdirs(dir string) error {
	elems := strings.Split(dir, string(filepath.Separator))
	p := ""
	for _, el := range elems {
		parent := p
		p = filepath.Join(p, el)
		err := s.root.Mkdir(p, 0o755)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return err
		}
		if parent == "" {
			parent = "."
		}
		if err := s.syncDir(parent); err != nil {
			return err
		}
	}
	return nil
}

func (s *FileStore) syncDir(dir string) error {
	d, err := s.root.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

func tmpPath(key StreamKey) string {
	return filepath.Join(tmpDir, hex.EncodeToString([]byte(key.ClientID))+"-"+strconv.FormatUint(key.StreamID, 10))
}

func parseTmpName(base string) (StreamKey, bool) {
	i := strings.LastIndexByte(base, '-')
	if i < 0 {
		return StreamKey{}, false
	}
	client, err := hex.DecodeString(base[:i])
	if err != nil {
		return StreamKey{}, false
	}
	id, err := strconv.ParseUint(base[i+1:], 10, 64)
	if err != nil {
		return StreamKey{}, false
	}
	return StreamKey{ClientID: string(client), StreamID: id}, true
}

// record is one line of committed.log.
type record struct {
	Index  uint64 `json:"index"`
	Term   uint64 `json:"term"`
	Client string `json:"client"` // hex
	Stream uint64 `json:"stream"`
	Name   string `json:"name"`
	Length uint64 `json:"length"`
	SHA256 string `json:"sha256"` // hex
}

func (s *FileStore) appendRecord(sf StoredFile) error {
	line, err := json.Marshal(record{
		Index: sf.Index, Term: sf.Term,
		Client: hex.EncodeToString([]byte(sf.Key.ClientID)), Stream: sf.Key.StreamID,
		Name: filepath.ToSlash(sf.Name), Length: sf.Length,
		SHA256: hex.EncodeToString(sf.SHA256[:]),
	})
	if err != nil {
		return err
	}
	line = append(line, '\n')
	// One write, so a crash leaves at most a torn last line, which has no
	// newline and is dropped by loadLog.
	n, err := s.log.Write(line)
	s.logSize += int64(n)
	if err != nil {
		return err
	}
	return s.log.Sync()
}

func (s *FileStore) truncateLog(size int64) error {
	if err := s.log.Truncate(size); err != nil {
		return fmt.Errorf("statemachine: roll back %s: %w", logName, err)
	}
	s.logSize = size
	if err := s.log.Sync(); err != nil {
		return fmt.Errorf("statemachine: roll back %s: %w", logName, err)
	}
	return nil
}

// loadLog reads committed.log into the index and leaves it open for
// appending. A last line without a newline is a torn write and is cut off;
// any other bad line fails the store, since the log is its only record.
func (s *FileStore) loadLog() error {
	f, err := s.root.OpenFile(logName, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("statemachine: file store: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("statemachine: file store: read %s: %w", logName, err)
	}
	s.log = f
	off, line := 0, 1
	for off < len(data) {
		i := bytes.IndexByte(data[off:], '\n')
		if i < 0 {
			s.logger.Warn("statemachine: dropping torn last line of "+logName, "bytes", len(data)-off)
			if err := s.truncateLog(int64(off)); err != nil {
				return err
			}
			break
		}
		sf, err := parseRecord(data[off : off+i])
		if err != nil {
			return fmt.Errorf("statemachine: file store: %s line %d: %w", logName, line, err)
		}
		s.byKey[sf.Key] = sf
		s.byName[sf.Name] = sf
		off += i + 1
		line++
	}
	s.logSize = int64(off)
	return nil
}

func parseRecord(line []byte) (StoredFile, error) {
	var r record
	if err := json.Unmarshal(line, &r); err != nil {
		return StoredFile{}, err
	}
	client, err := hex.DecodeString(r.Client)
	if err != nil {
		return StoredFile{}, fmt.Errorf("client: %w", err)
	}
	sf := StoredFile{
		Index: r.Index, Term: r.Term,
		Key:    StreamKey{ClientID: string(client), StreamID: r.Stream},
		Length: r.Length,
	}
	if sf.Name, err = CleanName(filepath.FromSlash(r.Name)); err != nil {
		return StoredFile{}, err
	}
	sum, err := hex.DecodeString(r.SHA256)
	if err != nil || len(sum) != len(sf.SHA256) {
		return StoredFile{}, fmt.Errorf("bad sha256 %q", r.SHA256)
	}
	copy(sf.SHA256[:], sum)
	return sf, nil
}

// recoverTmp finishes the link a crash interrupted after its record was
// written, and removes every other temporary file: those streams were never
// committed.
func (s *FileStore) recoverTmp() error {
	d, err := s.root.Open(tmpDir)
	if err != nil {
		return fmt.Errorf("statemachine: file store: %w", err)
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("statemachine: file store: %w", err)
	}
	removed := 0
	for _, de := range entries {
		p := filepath.Join(tmpDir, de.Name())
		if key, ok := parseTmpName(de.Name()); ok && de.Type().IsRegular() {
			if sf, ok := s.byKey[key]; ok && s.byName[sf.Name].Key == key && s.matches(p, sf) {
				if err := s.commitRecovered(sf, p); err != nil {
					return err
				}
				s.logger.Info("statemachine: finished an interrupted link", "name", sf.Name, "index", sf.Index)
				continue
			}
		}
		if err := s.root.RemoveAll(p); err != nil {
			return fmt.Errorf("statemachine: file store: remove stale %s: %w", p, err)
		}
		removed++
	}
	if removed > 0 {
		s.logger.Info("statemachine: removed temporary files of uncommitted streams", "count", removed)
	}
	return nil
}

// matches reports whether the file at p holds sf's data.
func (s *FileStore) matches(p string, sf StoredFile) bool {
	f, err := s.root.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return err == nil && uint64(n) == sf.Length && [32]byte(h.Sum(nil)) == sf.SHA256
}

func (s *FileStore) commitRecovered(sf StoredFile, tmp string) error {
	dst := filepath.Join(dataDir, sf.Name)
	err := s.mkdirs(filepath.Dir(dst))
	if err == nil {
		err = s.root.Rename(tmp, dst)
	}
	if err == nil {
		err = s.syncDir(filepath.Dir(dst))
	}
	if err != nil {
		return fmt.Errorf("statemachine: file store: recover %s: %w", sf.Name, err)
	}
	return nil
}

// fileChannel is FileStore's DataChannel: a temporary file and a running
// SHA-256 of what was written to it.
type fileChannel struct {
	s    *FileStore
	key  StreamKey
	name string // final name, checked at open
	tmp  string // path inside the root

	mu    sync.Mutex
	state chanState
	f     *os.File // nil once closed
	h     hash.Hash
	n     uint64
	dirty bool // written since the last fsync
}

func (c *fileChannel) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != chanOpen {
		return 0, ErrChannelClosed
	}
	n, err := c.f.Write(p)
	c.h.Write(p[:n])
	c.n += uint64(n)
	c.dirty = c.dirty || n > 0
	return n, err
}

func (c *fileChannel) Sync() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != chanOpen {
		return ErrChannelClosed
	}
	if err := c.f.Sync(); err != nil {
		return err
	}
	c.dirty = false
	return nil
}

// Close is idempotent; it fails only after CleanUp.
func (c *fileChannel) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeLocked()
}

func (c *fileChannel) closeLocked() error {
	switch c.state {
	case chanCleaned:
		return ErrChannelClosed
	case chanClosed, chanLinked:
		return nil
	}
	var err error
	if c.dirty && c.s.syncOnClose {
		err = c.f.Sync()
	}
	// The file is closed even when the fsync failed; its data is suspect,
	// so the error stands and the stream should be cleaned up.
	err = errors.Join(err, c.f.Close())
	c.f, c.state = nil, chanClosed
	return err
}

// CleanUp removes the temporary file. It is idempotent, and a no-op after
// Link.
func (c *fileChannel) CleanUp() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cleanUpLocked()
}

func (c *fileChannel) cleanUpLocked() error {
	if c.state == chanCleaned || c.state == chanLinked {
		return nil
	}
	var err error
	if c.f != nil {
		err = c.f.Close()
		c.f = nil
	}
	c.state, c.h = chanCleaned, nil
	if rerr := c.s.root.Remove(c.tmp); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("statemachine: clean up %v: %w", c.key, rerr))
	}
	return err
}
